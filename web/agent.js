/*! deskmate agent console — vanilla JavaScript, no build step, no dependencies.
 *
 * Served at /agent with agent.html and agent.css. Signs in over the agent socket
 * (/ws/agent: `login` with name and password, then `auth` with the token kept in
 * sessionStorage on reload), lists conversations live, watches one at a time and
 * acts on it (take over, reply, note, hand back, close). Three more views: the knowledge
 * review (approve or reject what the bot learns from agents' answers, live) and, for
 * admins, the insights report in a sandboxed frame; and ad copy for a catalog product.
 *
 * Wire contract: docs/protocol.md, agent socket /ws/agent. Everything a customer, the
 * bot or another agent wrote is put in the DOM through textContent or element
 * construction, never through innerHTML: HTML in a message stays text.
 */
(function () {
  "use strict";

  // ---------------------------------------------------------------- configuration

  var WS_URL = new URL("ws/agent", location.href); // /agent -> /ws/agent (keeps a proxy prefix)
  WS_URL.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  WS_URL = WS_URL.href;
  var TOKEN_KEY = "deskmate:agent:v1"; // sessionStorage: { token, agent, role, expires_at }
  var OPEN_KEY = "deskmate:agent:open"; // sessionStorage: the open conversation's id
  var SOUND_KEY = "deskmate:agent:sound"; // localStorage: "1" when alerts beep
  var VIEW_KEY = "deskmate:agent:view"; // sessionStorage: the view shown (a reload keeps it)
  var VIEWS = ["conversations", "review", "insights", "copy"];
  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 10000;
  var TYPING_IDLE_MS = 3000; // typing "off" after this long without a keystroke
  var TYPING_TIMEOUT_MS = 20000; // a lost "typing off" must not show dots forever
  var STATUS_LABEL = { bot: "bot", waiting: "waiting", agent: "agent", closed: "closed" };
  var SENTIMENT_VALUE = { negative: -1, neutral: 0, positive: 1 };

  // ---------------------------------------------------------------- small helpers

  function $(id) { return document.getElementById(id); }

  function str(v) {
    return typeof v === "string" ? v : v == null ? "" : String(v);
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  /** `e` laid out in the direction of its own text (Arabic, Hebrew: right to left). */
  function bidi(e) {
    e.dir = "auto";
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function load(area, key) {
    try { var v = window[area].getItem(key); return v ? JSON.parse(v) : null; } catch (e) { return null; }
  }
  function save(area, key, value) {
    try {
      if (value == null) window[area].removeItem(key);
      else window[area].setItem(key, JSON.stringify(value));
    } catch (e) { /* storage unavailable: the console still works, it just forgets */ }
  }

  function newClientId() {
    var c = window.crypto;
    if (c && typeof c.randomUUID === "function") {
      try { return c.randomUUID(); } catch (e) { /* insecure context: fall through */ }
    }
    return "c-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }

  function clock(ts) {
    if (typeof ts !== "number") return "";
    return new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  /** "42s", "3m 05s", "2h 10m": how long ago `ts` (seconds since the epoch) was. */
  function since(ts) {
    var s = Math.max(0, Math.floor(Date.now() / 1000 - ts));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
  }

  // ---------------------------------------------------------------- safe Markdown subset
  // What the widget renders for the customer (web/widget.js): bold, italics, inline code,
  // http(s) and relative links, bullet and numbered lists, built as DOM nodes. Anything
  // else stays literal text, so agents see their replies as the customer does.

  var INLINE = "\\*\\*([^*\\n]+?)\\*\\*|`([^`\\n]+)`|\\[([^\\]\\n]+)\\]\\(([^)\\s]+)\\)" +
    "|(^|[\\s(])([*_])([^*_\\n]+?)\\6(?=$|[\\s.,!?;:)])" +
    "|(https?:\\/\\/[^\\s<>()]*[^\\s<>().,!?;:'\"])";

  /** An absolute http(s) URL for `raw` (relative to this server), or null. */
  function safeUrl(raw) {
    try {
      var u = new URL(String(raw).trim(), location.href);
      return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  function link(href, text) {
    var a = el("a", null, text);
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }

  function appendInline(parent, text) {
    var re = new RegExp(INLINE, "g");
    var last = 0;
    var m;
    while ((m = re.exec(text)) !== null) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      last = re.lastIndex;
      if (m[1] != null) {
        var b = el("strong");
        appendInline(b, m[1]);
        parent.appendChild(b);
      } else if (m[2] != null) {
        parent.appendChild(el("code", null, m[2]));
      } else if (m[3] != null) {
        var href = safeUrl(m[4]);
        parent.appendChild(href ? link(href, m[3]) : document.createTextNode(m[0]));
      } else if (m[7] != null) {
        if (m[5]) parent.appendChild(document.createTextNode(m[5]));
        parent.appendChild(el("em", null, m[7]));
      } else if (m[8] != null) {
        var url = safeUrl(m[8]);
        parent.appendChild(url ? link(url, m[8]) : document.createTextNode(m[8]));
      }
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function renderRich(container, text) {
    clear(container);
    var list = null;
    var para = [];
    function flush() {
      if (!para.length) return;
      var p = bidi(el("p"));
      appendInline(p, para.join("\n"));
      container.appendChild(p);
      para = [];
    }
    str(text).split("\n").forEach(function (line) {
      var ul = /^\s*[-*•]\s+(.*)$/.exec(line);
      var ol = ul ? null : /^\s*\d{1,3}[.)]\s+(.*)$/.exec(line);
      if (ul || ol) {
        flush();
        var type = ul ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== type) container.appendChild((list = el(type)));
        var li = bidi(el("li"));
        appendInline(li, (ul || ol)[1]);
        list.appendChild(li);
        return;
      }
      list = null;
      if (line.trim()) para.push(line);
      else flush();
    });
    flush();
  }

  function customerName(s) {
    var c = (s && s.customer) || {};
    var name = str(c.name) || str(c.email);
    return name || "Visitor " + str(s && s.session_id).slice(0, 6);
  }

  // ---------------------------------------------------------------- state

  var saved = load("sessionStorage", TOKEN_KEY); // { token, agent, role, expires_at }
  var me = saved ? str(saved.agent) : "";
  var myRole = saved ? str(saved.role) : "";
  var sessions = new Map(); // session_id -> summary
  var flagged = new Set(); // session ids that need attention, until opened
  var current = saved ? load("sessionStorage", OPEN_KEY) : null; // the open conversation's id
  var rendered = new Map(); // event_id -> row, for the open conversation
  var streams = new Map(); // stream_id -> { row, bubble }
  var outbox = []; // agent messages not yet acked: resent (same client_id) after a reconnect
  var viewed = []; // product ids the open conversation's customer viewed, newest first
  var typingSent = false;
  var typingIdle = 0;
  var typingTimer = 0;
  var view = load("sessionStorage", VIEW_KEY) || "conversations";
  var proposals = new Map(); // proposal id -> the newest proposal seen (pending ones)
  var cards = new Map(); // proposal id -> its card in the review list (kept: it holds edits)
  var learningOn = true;
  var reporting = false;
  var copying = false; // a `copy` frame is out: Generate waits for its copy_result or error

  // ---------------------------------------------------------------- connection

  var ws = null;
  var authed = false;
  var attempt = 0;
  var retryTimer = 0;
  var lastError = "";
  var signingOut = false;

  function connect(firstFrame) {
    if (ws) { ws.onclose = null; ws.close(); ws = null; }
    clearTimeout(retryTimer);
    retryTimer = 0;
    authed = false;
    lastError = "";
    setConn(attempt ? "reconnecting" : "connecting");
    var sock;
    try {
      sock = new WebSocket(WS_URL);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    sock.onopen = function () {
      sock.send(JSON.stringify(firstFrame || { type: "auth", token: saved ? saved.token : "" }));
    };
    sock.onmessage = function (ev) {
      if (ws !== sock || typeof ev.data !== "string") return;
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      if (!f || typeof f !== "object" || typeof f.type !== "string") return;
      var handler = HANDLERS[f.type];
      if (!handler) return; // a newer server's frame: ignore
      try {
        handler(f);
      } catch (err) {
        if (window.console) console.error("[deskmate] could not handle frame", f.type, err);
      }
    };
    sock.onclose = function (ev) {
      if (ws !== sock) return;
      ws = null;
      authed = false;
      streams.forEach(function (s) { s.row.classList.add("interrupted"); });
      streams.clear();
      hideTyping();
      if (copying) copyDone("Connection lost; generate again.");
      if (ev.code === 4401 || signingOut) {
        signedOut(signingOut ? "" : lastError || "Please sign in again.");
        return;
      }
      scheduleReconnect();
    };
    sock.onerror = function () { /* a close event follows */ };
  }

  function scheduleReconnect() {
    if (!saved) {
      // A sign-in that did not get through (server busy, unreachable, refused): back to the
      // form with the reason, instead of a disabled button and no word.
      showLogin(lastError || "Could not reach the server; try again.");
      return;
    }
    if (retryTimer) return;
    var cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, attempt));
    attempt++;
    setConn("reconnecting");
    retryTimer = setTimeout(function () {
      retryTimer = 0;
      connect();
    }, cap / 2 + Math.random() * (cap / 2));
  }

  function sendFrame(frame) {
    if (!ws || !authed || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  function setConn(state) {
    var conn = $("conn");
    conn.dataset.state = state;
    conn.textContent = state === "online" ? "Online" : state === "reconnecting" ? "Reconnecting…" : "Connecting…";
  }

  // ---------------------------------------------------------------- signing in and out

  function showLogin(message) {
    $("app-view").hidden = true;
    $("login-view").hidden = false;
    $("login-submit").disabled = false;
    var err = $("login-error");
    err.textContent = message || "";
    err.hidden = !message;
    $(message ? "login-password" : "login-name").focus();
  }

  function signedOut(message) {
    signingOut = false;
    saved = null;
    save("sessionStorage", TOKEN_KEY, null);
    save("sessionStorage", OPEN_KEY, null);
    current = null;
    sessions.clear();
    flagged.clear();
    outbox = [];
    proposals.clear();
    cards.clear();
    renderProposals();
    clear($("report-box")); // the next person to sign in may not be an admin
    reportDone("");
    clear($("copy-list"));
    $("copy-summary").textContent = "";
    copyDone("");
    renderList();
    showConversation(null);
    showLogin(message);
  }

  $("login-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var name = $("login-name").value.trim();
    var password = $("login-password").value;
    if (!name || !password) return;
    $("login-submit").disabled = true;
    $("login-error").hidden = true;
    attempt = 0;
    connect({ type: "login", name: name, password: password });
  });

  $("logout").addEventListener("click", function () {
    signingOut = true;
    if (!sendFrame({ type: "logout" })) signedOut("");
  });

  function onAuthOk(f) {
    authed = true;
    attempt = 0;
    me = str(f.agent);
    myRole = str(f.role);
    saved = { token: str(f.token), agent: me, role: myRole, expires_at: f.expires_at };
    save("sessionStorage", TOKEN_KEY, saved);
    $("login-password").value = "";
    $("login-view").hidden = true;
    $("app-view").hidden = false;
    $("me").textContent = me + (myRole === "admin" ? " (admin)" : "");
    setConn("online");
    if (current) sendFrame({ type: "watch", session_id: current }); // replayed from the start
    outbox.forEach(function (m) { sendFrame(m.frame); }); // deduplicated by client_id
    sendFrame({ type: "proposals" }); // the review list, then its changes, live
    $("tab-insights").hidden = myRole !== "admin";
    showView(view);
    updateActions();
  }

  // ---------------------------------------------------------------- alerts

  var audio = null;

  function needsAttention(s) {
    return s.status === "waiting" || (s.sentiment === "negative" && s.status !== "closed");
  }

  function alertFor(sid) {
    if (sid !== current || document.hidden) flagged.add(sid);
    updateTitle();
    if ($("sound-toggle").checked) beep();
  }

  function updateTitle() {
    document.title = (flagged.size ? "(" + flagged.size + ") " : "") + "deskmate · agent console";
  }

  function beep() {
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    try {
      audio = audio || new Ctx();
      if (audio.state === "suspended") audio.resume();
      var osc = audio.createOscillator();
      var gain = audio.createGain();
      osc.type = "sine";
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.0001, audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.2, audio.currentTime + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + 0.35);
      osc.connect(gain);
      gain.connect(audio.destination);
      osc.start();
      osc.stop(audio.currentTime + 0.4);
    } catch (e) { /* no sound, the highlight still shows */ }
  }

  $("sound-toggle").checked = load("localStorage", SOUND_KEY) === 1;
  $("sound-toggle").addEventListener("change", function () {
    save("localStorage", SOUND_KEY, this.checked ? 1 : null);
    if (this.checked) beep(); // a user gesture: lets the browser start audio, and previews it
  });

  // ---------------------------------------------------------------- the session list

  function rank(s) {
    if (s.status === "waiting") return 0;
    if (s.status === "closed") return 3;
    if (s.sentiment === "negative") return 1;
    return 2;
  }

  function compareSessions(a, b) {
    var r = rank(a) - rank(b);
    if (r) return r;
    if (a.status === "waiting") return (a.waiting_since || 0) - (b.waiting_since || 0); // longest first
    return (b.updated_at || 0) - (a.updated_at || 0);
  }

  function onSessions(f) {
    var fresh = new Map();
    (Array.isArray(f.sessions) ? f.sessions : []).forEach(function (s) {
      if (!s || typeof s.session_id !== "string") return;
      var known = sessions.get(s.session_id);
      // An update that overtook the snapshot is newer: keep it.
      fresh.set(s.session_id, known && (known.updated_at || 0) > (s.updated_at || 0) ? known : s);
    });
    if (current && !fresh.has(current) && sessions.has(current)) fresh.set(current, sessions.get(current));
    sessions = fresh;
    renderList();
    updateActions();
  }

  function onSessionUpdate(f) {
    var s = f.session;
    if (!s || typeof s.session_id !== "string") return;
    var before = sessions.get(s.session_id);
    if (before && (before.updated_at || 0) > (s.updated_at || 0)) return; // stale
    sessions.set(s.session_id, s);
    var turnedNegative = s.sentiment === "negative" && (!before || before.sentiment !== "negative");
    var startedWaiting = s.status === "waiting" && (!before || before.status !== "waiting");
    if (needsAttention(s) && (turnedNegative || startedWaiting)) alertFor(s.session_id);
    if (s.session_id === current) {
      showHeader(s);
      updateActions();
    }
    scheduleList();
  }

  var listPending = false;
  function scheduleList() {
    if (listPending) return;
    listPending = true;
    requestAnimationFrame(function () {
      listPending = false;
      renderList();
    });
  }

  function sparkline(values) {
    var NS = "http://www.w3.org/2000/svg";
    var w = 54, h = 16;
    var svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    svg.setAttribute("width", String(w));
    svg.setAttribute("height", String(h));
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "sentiment trend " + values.join(" "));
    var base = document.createElementNS(NS, "line");
    base.setAttribute("x1", "0"); base.setAttribute("x2", String(w));
    base.setAttribute("y1", String(h / 2)); base.setAttribute("y2", String(h / 2));
    base.setAttribute("class", "spark-base");
    svg.appendChild(base);
    var step = values.length > 1 ? (w - 4) / (values.length - 1) : 0;
    var points = values.map(function (v, i) {
      var x = 2 + i * step;
      var y = h / 2 - Math.max(-1, Math.min(1, Number(v) || 0)) * (h / 2 - 2);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    if (values.length === 1) points.push((w - 2) + "," + points[0].split(",")[1]);
    var line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", points.join(" "));
    var last = Number(values[values.length - 1]) || 0;
    line.setAttribute("class", "spark-line " + (last < 0 ? "neg" : last > 0 ? "pos" : "neu"));
    svg.appendChild(line);
    return svg;
  }

  function sentimentBadge(sentiment) {
    var s = str(sentiment);
    var b = el("span", "senti " + (SENTIMENT_VALUE.hasOwnProperty(s) ? s : "unknown"), s || "–");
    b.title = "sentiment";
    return b;
  }

  function sessionItem(s) {
    var li = el("li", "session status-" + str(s.status));
    li.dataset.sid = s.session_id;
    li.tabIndex = 0;
    li.setAttribute("role", "button");
    if (s.session_id === current) li.classList.add("active");
    if (flagged.has(s.session_id)) li.classList.add("alert");

    var top = el("div", "line1");
    top.appendChild(el("span", "status-badge " + str(s.status), STATUS_LABEL[s.status] || str(s.status)));
    top.appendChild(el("b", "who", customerName(s)));
    var time = el("span", "time");
    if (s.status === "waiting" && typeof s.waiting_since === "number") {
      time.dataset.since = String(s.waiting_since);
      time.dataset.prefix = "waiting ";
      time.classList.add("waiting");
    } else if (typeof s.updated_at === "number") {
      time.dataset.since = String(s.updated_at);
      time.dataset.suffix = " ago";
    }
    top.appendChild(time);
    li.appendChild(top);

    var last = el("div", "line2");
    if (s.last_message) {
      var role = str(s.last_role);
      last.appendChild(el("span", "last-role", role === "user" ? "Customer: " : role === "agent" ? "Agent: " : role === "bot" ? "Bot: " : ""));
      last.appendChild(document.createTextNode(str(s.last_message)));
    } else {
      last.textContent = "No messages yet";
      last.classList.add("muted");
    }
    li.appendChild(last);

    var meta = el("div", "line3");
    if (s.last_intent) meta.appendChild(el("span", "intent", str(s.last_intent)));
    meta.appendChild(sentimentBadge(s.sentiment));
    if (Array.isArray(s.sentiment_trend) && s.sentiment_trend.length) meta.appendChild(sparkline(s.sentiment_trend));
    if (s.agent) meta.appendChild(el("span", "owner" + (s.agent === me ? " mine" : ""), s.agent === me ? "you" : str(s.agent)));
    li.appendChild(meta);
    return li;
  }

  function renderList() {
    var list = $("session-list");
    var showClosed = $("show-closed").checked;
    var all = Array.from(sessions.values()).sort(compareSessions);
    var shown = all.filter(function (s) { return showClosed || s.status !== "closed" || s.session_id === current; });
    // The list is built anew on every update: an agent moving through it with the keyboard
    // keeps focus on the same conversation, wherever it moved to.
    var focused = document.activeElement;
    var focusedSid = focused && focused.parentNode === list ? focused.dataset.sid : null;
    clear(list);
    shown.forEach(function (s) {
      var li = sessionItem(s);
      list.appendChild(li);
      if (s.session_id === focusedSid) li.focus({ preventScroll: true });
    });
    $("no-sessions").hidden = shown.length > 0;
    var waiting = all.filter(function (s) { return s.status === "waiting"; }).length;
    $("session-count").textContent = shown.length + (waiting ? " · " + waiting + " waiting" : "");
    tick();
  }

  function tick() {
    var nodes = document.querySelectorAll("[data-since]");
    for (var i = 0; i < nodes.length; i++) {
      var n = nodes[i];
      n.textContent = str(n.dataset.prefix) + since(Number(n.dataset.since)) + str(n.dataset.suffix);
    }
  }
  setInterval(tick, 1000);

  $("show-closed").addEventListener("change", renderList);
  $("session-list").addEventListener("click", function (ev) {
    var li = ev.target.closest("li.session");
    if (li) openSession(li.dataset.sid);
  });
  $("session-list").addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter" && ev.key !== " ") return;
    var li = ev.target.closest("li.session");
    if (li) { ev.preventDefault(); openSession(li.dataset.sid); }
  });

  // ---------------------------------------------------------------- the open conversation

  function openSession(sid) {
    if (!sid) return;
    flagged.delete(sid);
    updateTitle();
    if (sid !== current) {
      stopTyping();
      if (current) sendFrame({ type: "unwatch", session_id: current });
      current = sid;
      save("sessionStorage", OPEN_KEY, sid); // a reload opens it again
      showConversation(sid);
      sendFrame({ type: "watch", session_id: sid });
    }
    renderList();
  }

  function showConversation(sid) {
    $("no-selection").hidden = !!sid;
    $("conversation").hidden = !sid;
    clear($("transcript"));
    rendered.clear();
    joinedLine = null;
    streams.clear();
    viewed = [];
    renderViewed();
    clear($("last-turn"));
    hideTyping();
    showError("");
    var s = sid ? sessions.get(sid) : null;
    if (s) showHeader(s);
    renderProfile(s);
    updateActions();
  }

  function showHeader(s) {
    $("conv-customer").textContent = customerName(s);
    var badge = $("conv-status");
    badge.className = "status-badge " + str(s.status);
    badge.textContent = STATUS_LABEL[s.status] || str(s.status);
    $("conv-agent").textContent = s.agent ? "with " + (s.agent === me ? "you" : s.agent) : "";
    renderProfile(s);
  }

  function renderProfile(s) {
    var dl = $("profile");
    clear(dl);
    if (!s) return;
    function row(k, v) {
      dl.appendChild(el("dt", null, k));
      dl.appendChild(el("dd", null, v));
    }
    var c = s.customer && typeof s.customer === "object" ? s.customer : {};
    Object.keys(c).forEach(function (k) {
      var v = c[k];
      row(k, typeof v === "object" && v !== null ? JSON.stringify(v) : str(v));
    });
    row("conversation", str(s.session_id));
    if (typeof s.created_at === "number") row("started", new Date(s.created_at * 1000).toLocaleString());
    if (s.handoff_reason) row("handoff reason", str(s.handoff_reason));
  }

  function renderViewed() {
    var ol = $("viewed");
    clear(ol);
    viewed.forEach(function (p) {
      var li = el("li", null, p.name ? p.name + " (" + p.id + ")" : p.id);
      ol.appendChild(li);
    });
    if (!viewed.length) ol.appendChild(el("li", "muted", "none yet"));
  }

  function updateActions() {
    var s = current ? sessions.get(current) : null;
    var status = s ? s.status : "";
    var mine = !!s && status === "agent" && s.agent === me;
    var admin = myRole === "admin";
    $("btn-takeover").disabled = !s || status === "closed" || mine;
    $("btn-handback").disabled = !s || status !== "agent" || !(mine || admin);
    $("btn-close").disabled = !s || status === "closed";
    $("assign-box").hidden = !admin;
    $("reply-text").disabled = !mine;
    $("reply-send").disabled = !mine;
    $("reply-text").placeholder = mine ? "Reply to the customer…" : "Take the conversation over to reply";
    $("note-text").disabled = !s;
    $("note-send").disabled = !s;
  }

  function showError(text) {
    var e = $("conv-error");
    e.textContent = text;
    e.hidden = !text;
  }

  function transcript() { return $("transcript"); }

  function nearBottom() {
    var t = transcript();
    return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
  }

  function append(row, after) {
    var t = transcript();
    var stick = nearBottom();
    if (after && after.parentNode === t) t.insertBefore(row, after.nextSibling);
    else t.appendChild(row);
    if (stick) t.scrollTop = t.scrollHeight;
  }

  function whoFor(f) {
    var s = sessions.get(current);
    if (f.role === "user") return customerName(s);
    if (f.role === "agent") return str(f.agent) || "Agent";
    return "Bot";
  }

  function messageRow(f) {
    var role = ["user", "bot", "agent", "system"].indexOf(f.role) >= 0 ? f.role : "bot";
    var row = el("div", "msg " + role);
    if (role === "system") {
      row.appendChild(bidi(el("div", "sys", str(f.text))));
      return row;
    }
    var head = el("div", "msg-head");
    head.appendChild(el("b", null, whoFor(f)));
    head.appendChild(el("time", null, clock(f.ts)));
    row.appendChild(head);
    var bubble = bidi(el("div", "bubble"));
    if (role === "user") bubble.textContent = str(f.text); // as the customer typed it
    else renderRich(bubble, f.text);
    row.appendChild(bubble);
    extras(row, f);
    return row;
  }

  function extras(row, f) {
    var titles = (Array.isArray(f.sources) ? f.sources : []).map(function (src) {
      return src && typeof src === "object" ? str(src.title) || str(src.id) : str(src);
    }).filter(Boolean);
    if (titles.length && !row.querySelector(".sources")) {
      row.appendChild(el("div", "sources", (titles.length > 1 ? "Sources: " : "Source: ") + titles.join(", ")));
    }
    if (Array.isArray(f.buttons) && f.buttons.length) {
      var chips = el("div", "chips");
      f.buttons.forEach(function (b) { chips.appendChild(bidi(el("span", "chip", str(b && b.title)))); });
      row.appendChild(chips);
    }
    if (Array.isArray(f.cards) && f.cards.length) {
      var cards = el("div", "chips cards");
      f.cards.forEach(function (c) { cards.appendChild(cardChip(c)); });
      row.appendChild(cards);
    }
  }

  /** A card as the customer got it, in short: its title, or "[image]" for a card that is
   *  only an image (an `image:` response), as a link to the image. */
  function cardChip(c) {
    c = c && typeof c === "object" ? c : {};
    var title = str(c.title);
    if (title || !c.image) return bidi(el("span", "chip card", title || "[card]"));
    var image = safeUrl(c.image); // data: images cannot be opened in a tab: a label only
    if (!image) return el("span", "chip card image", "[image]");
    var a = link(image, "[image]");
    a.className = "chip card image";
    return a;
  }

  function stored(f) {
    var id = typeof f.event_id === "string" ? f.event_id : null;
    if (!id || f.session_id !== current) return null;
    if (rendered.has(id)) return null; // already shown
    return id;
  }

  function onMessage(f) {
    var id = stored(f);
    if (!id) return;
    if (f.role === "system") {
      // A takeover, a close or an interrupted turn: the answer still streaming is never stored.
      streams.forEach(function (s) {
        s.row.classList.remove("streaming");
        s.row.classList.add("interrupted");
      });
      streams.clear();
    }
    if (f.role === "system" && joinedLine && str(f.agent) === joinedLine.agent) {
      // The customer's copy of the takeover just shown as "… took over" (see onHandoff).
      rendered.set(id, joinedLine.row);
      joinedLine = null;
      return;
    }
    joinedLine = null;
    var row = messageRow(f);
    rendered.set(id, row);
    append(row);
    if (f.role === "agent" && typeof f.client_id === "string") ackOutbox(f.client_id);
  }

  function onNote(f) {
    var id = stored(f);
    if (!id) return;
    var row = el("div", "msg note");
    var head = el("div", "msg-head");
    head.appendChild(el("b", null, "Internal note · " + (str(f.agent) || "agent")));
    head.appendChild(el("time", null, clock(f.ts)));
    row.appendChild(head);
    row.appendChild(el("div", "bubble", str(f.text)));
    rendered.set(id, row);
    append(row);
  }

  function onTurn(f) {
    var id = stored(f);
    if (!id) return;
    var row = el("div", "analysis");
    row.appendChild(el("span", "intent", str(f.intent) || "?"));
    if (typeof f.confidence === "number") row.appendChild(el("span", "conf", f.confidence.toFixed(2)));
    row.appendChild(sentimentBadge(f.sentiment));
    if (f.policy) row.appendChild(el("span", "policy", "policy " + str(f.policy)));
    if (f.reason) row.title = str(f.reason);
    rendered.set(id, row);
    append(row, rendered.get(str(f.reply_to)));
    var dl = $("last-turn");
    clear(dl);
    [["intent", str(f.intent)], ["confidence", typeof f.confidence === "number" ? f.confidence.toFixed(2) : ""],
     ["sentiment", str(f.sentiment) || "–"], ["policy", str(f.policy)], ["why", str(f.reason)]]
      .forEach(function (kv) {
        if (!kv[1]) return;
        dl.appendChild(el("dt", null, kv[0]));
        dl.appendChild(el("dd", null, kv[1]));
      });
  }

  // A takeover stores a `handoff` agent_joined and, right after it, a system message with the
  // same news for the customer: one line here.
  var joinedLine = null; // { agent, row } while the newest event is an agent_joined

  function onHandoff(f) {
    var id = stored(f);
    if (!id) return;
    joinedLine = null;
    var who = str(f.agent) || "An agent";
    var text = f.state === "requested" ? "Waiting for a person" + (f.reason ? ": " + str(f.reason) : "")
      : f.state === "agent_joined" ? who + " took over"
      : f.state === "agent_left" ? who + " handed back to the bot" : "handoff: " + str(f.state);
    var row = el("div", "msg system handoff");
    row.appendChild(el("div", "sys", text));
    rendered.set(id, row);
    append(row);
    if (f.state === "agent_joined") joinedLine = { agent: str(f.agent), row: row };
  }

  function onTrack(f) {
    var id = stored(f);
    if (!id) return;
    var data = f.data && typeof f.data === "object" ? f.data : {};
    var pid = str(data.product_id || data.id || data.sku);
    var label = str(data.name || data.title);
    if (f.name === "view_product" && pid) {
      viewed = viewed.filter(function (p) { return p.id !== pid; });
      viewed.unshift({ id: pid, name: label });
      renderViewed();
    }
    var row = el("div", "activity", str(f.name).replace(/_/g, " ") + (pid ? " · " + (label || pid) : ""));
    rendered.set(id, row);
    append(row);
  }

  function onStreamStart(f) {
    if (f.session_id !== current || typeof f.stream_id !== "string") return;
    var row = messageRow({ role: f.role || "bot", text: "", agent: f.agent, ts: Date.now() / 1000 });
    row.classList.add("streaming");
    streams.set(f.stream_id, { row: row, bubble: row.querySelector(".bubble"), text: "" });
    append(row);
  }

  function onStreamDelta(f) {
    var s = streams.get(f.stream_id);
    if (!s || f.session_id !== current) return;
    var stick = nearBottom();
    s.text += str(f.text);
    renderRich(s.bubble, s.text);
    if (stick) transcript().scrollTop = transcript().scrollHeight;
  }

  function onStreamEnd(f) {
    var s = streams.get(f.stream_id);
    if (!s || f.session_id !== current) return;
    streams.delete(f.stream_id);
    s.row.classList.remove("streaming");
    if (f.dropped === true) s.row.classList.add("interrupted"); // cut off, never stored
    renderRich(s.bubble, f.text);
    extras(s.row, f);
    if (typeof f.event_id === "string") rendered.set(f.event_id, s.row);
  }

  function onTyping(f) {
    if (f.session_id !== current) return;
    if (!f.on) { hideTyping(); return; }
    if (f.role === "agent" && f.agent === me) return;
    var t = $("typing");
    t.textContent = (f.role === "agent" ? str(f.agent) || "An agent" : "The bot") + " is typing…";
    t.hidden = false;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(hideTyping, TYPING_TIMEOUT_MS);
  }

  function hideTyping() {
    clearTimeout(typingTimer);
    $("typing").hidden = true;
  }

  function onWatching(f) {
    if (f.session_id !== current) return;
    // A (re)watch replays the conversation from the start: begin from a clean slate.
    clear(transcript());
    rendered.clear();
    joinedLine = null;
    streams.clear();
    viewed = [];
    renderViewed();
    if (f.session && typeof f.session === "object") {
      var known = sessions.get(f.session_id);
      if (!known || (known.updated_at || 0) <= (f.session.updated_at || 0)) sessions.set(f.session_id, f.session);
      showHeader(sessions.get(f.session_id));
    }
    updateActions();
  }

  function onOk(f) {
    if (f.proposal_id) {
      reviewed(str(f.proposal_id), f.action === "approve" ? "approved" : "rejected", me);
      return;
    }
    if (f.session_id === current) showError("");
  }

  function onAck(f) {
    ackOutbox(str(f.client_id));
  }

  function ackOutbox(clientId) {
    outbox = outbox.filter(function (m) { return m.frame.client_id !== clientId; });
  }

  function onError(f) {
    var message = str(f.message) || str(f.code);
    lastError = message;
    if (!authed) return; // the close (4401) that follows shows it on the sign-in form
    if (f.proposal_id) { proposalError(str(f.proposal_id), str(f.code), message); return; }
    if (f.action === "report") { reportDone(message); return; }
    if (f.action === "copy") { copyDone(message); return; }
    if (f.action === "proposals") { $("review-log").textContent = message; return; }
    if (f.action === "send" && f.client_id) {
      // Not delivered (not the owner any more, say): give the text back to the agent.
      var failed = outbox.filter(function (m) { return m.frame.client_id === f.client_id; })[0];
      ackOutbox(str(f.client_id));
      if (failed && failed.frame.session_id === current && !$("reply-text").value) $("reply-text").value = failed.frame.text;
    }
    if (f.action === "watch" && f.code === "unknown_session" && f.session_id === current) {
      // The conversation open before a reload has expired since.
      current = null;
      save("sessionStorage", OPEN_KEY, null);
      showConversation(null);
      renderList();
      return;
    }
    if (!f.session_id || f.session_id === current) showError(message);
  }

  var HANDLERS = {
    auth_ok: onAuthOk,
    sessions: onSessions,
    session_update: onSessionUpdate,
    watching: onWatching,
    message: onMessage,
    note: onNote,
    turn: onTurn,
    handoff: onHandoff,
    track: onTrack,
    stream_start: onStreamStart,
    stream_delta: onStreamDelta,
    stream_end: onStreamEnd,
    typing: onTyping,
    ok: onOk,
    ack: onAck,
    error: onError,
    proposals: onProposals,
    proposal: onProposal,
    proposal_update: onProposalUpdate,
    report: onReport,
    copy_result: onCopyResult,
  };

  // ---------------------------------------------------------------- views

  function showView(name) {
    if (VIEWS.indexOf(name) < 0 || (name === "insights" && myRole !== "admin")) name = "conversations";
    view = name;
    save("sessionStorage", VIEW_KEY, name === "conversations" ? null : name);
    $("app-view").dataset.view = name;
    $("review-view").hidden = name !== "review";
    $("insights-view").hidden = name !== "insights";
    $("copy-view").hidden = name !== "copy";
    var tabs = document.querySelectorAll(".view-tab");
    for (var i = 0; i < tabs.length; i++) {
      tabs[i].setAttribute("aria-pressed", String(tabs[i].dataset.view === name));
    }
  }

  document.querySelector(".views").addEventListener("click", function (ev) {
    var tab = ev.target.closest(".view-tab");
    if (tab) showView(tab.dataset.view);
  });

  // ---------------------------------------------------------------- knowledge review
  // Proposals come from the server (bot/learning.py); each carries a `rev` that grows with
  // every change, so a late or repeated frame never undoes a newer one.

  function onProposals(f) {
    learningOn = f.enabled !== false;
    var fresh = new Map();
    (Array.isArray(f.proposals) ? f.proposals : []).forEach(function (p) {
      if (!p || typeof p.id !== "string") return;
      var known = proposals.get(p.id);
      fresh.set(p.id, known && (known.rev || 0) > (p.rev || 0) ? known : p);
    });
    proposals = fresh;
    renderProposals();
  }

  function onProposal(f) {
    var p = f.proposal;
    if (!p || typeof p.id !== "string" || p.status !== "pending") return;
    var known = proposals.get(p.id);
    if (known && (known.rev || 0) >= (p.rev || 0)) return; // stale or repeated
    proposals.set(p.id, p);
    renderProposals();
  }

  function onProposalUpdate(f) {
    var p = f.proposal;
    if (!p || typeof p.id !== "string") return;
    reviewed(p.id, str(p.status), str(p.reviewed_by), p.question);
  }

  /** `pid` was approved or rejected (by this console or another): off the list. */
  function reviewed(pid, status, who, question) {
    var known = proposals.get(pid);
    if (!known && !cards.has(pid)) return;
    var text = str(question) || (known ? str(known.question) : "");
    proposals.delete(pid);
    renderProposals();
    var verb = status === "approved" ? "Approved" : status === "rejected" ? "Rejected" : "Reviewed";
    $("review-log").textContent = verb + (who ? " by " + (who === me ? "you" : who) : "") +
      (text ? ": \u201c" + text + "\u201d" : "") + (status === "approved" ? " (the bot uses it now)" : "");
  }

  function proposalError(pid, code, message) {
    var card = cards.get(pid);
    if (code === "already_reviewed" || code === "unknown_proposal") {
      proposals.delete(pid); // decided elsewhere (or expired): nothing left to do here
      renderProposals();
      $("review-log").textContent = message;
      return;
    }
    if (!card) return;
    var err = card.querySelector(".p-error");
    err.textContent = message;
    err.hidden = false;
    setBusy(card, false);
  }

  function setBusy(card, busy) {
    card.querySelector(".p-approve").disabled = busy;
    card.querySelector(".p-reject").disabled = busy;
  }

  function proposalCard(p) {
    var li = el("li", "proposal");
    li.dataset.pid = p.id;
    var meta = el("div", "p-meta");
    li.appendChild(meta);
    var q = el("label", null, "Customer question");
    var question = el("textarea", "p-question");
    question.rows = 2;
    question.maxLength = 2000;
    q.appendChild(question);
    li.appendChild(q);
    var a = el("label", null, "Answer the bot will give");
    var answer = el("textarea", "p-answer");
    answer.rows = 4;
    answer.maxLength = 8000;
    a.appendChild(answer);
    li.appendChild(a);
    var changed = el("p", "p-changed", "The agent's answer changed since you started editing.");
    changed.hidden = true;
    li.appendChild(changed);
    var err = el("p", "p-error");
    err.setAttribute("role", "alert");
    err.hidden = true;
    li.appendChild(err);
    var actions = el("div", "p-actions");
    var approve = el("button", "primary p-approve", "Approve");
    approve.type = "button";
    var reject = el("button", "danger p-reject", "Reject");
    reject.type = "button";
    actions.appendChild(approve);
    actions.appendChild(reject);
    li.appendChild(actions);
    [question, answer].forEach(function (box) {
      box.addEventListener("input", function () { li.dataset.dirty = "1"; });
    });
    approve.addEventListener("click", function () { decide(li, "approve"); });
    reject.addEventListener("click", function () { decide(li, "reject"); });
    return li;
  }

  function fillCard(li, p) {
    var meta = li.querySelector(".p-meta");
    clear(meta);
    meta.appendChild(el("span", null, "Answered by " + (str(p.agent) || "an agent")));
    if (typeof p.updated_at === "number") meta.appendChild(el("time", null, new Date(p.updated_at * 1000).toLocaleString()));
    var open = el("button", "link", "Open the conversation");
    open.type = "button";
    open.addEventListener("click", function () {
      showView("conversations");
      openSession(str(p.session_id));
    });
    meta.appendChild(open);
    if (li.dataset.dirty && li.dataset.rev && li.dataset.rev !== String(p.rev)) {
      li.querySelector(".p-changed").hidden = false; // keep the reviewer's edits
    } else if (!li.dataset.dirty) {
      li.querySelector(".p-question").value = str(p.question);
      li.querySelector(".p-answer").value = str(p.answer);
    }
    li.dataset.rev = String(p.rev);
  }

  function decide(li, action) {
    var pid = li.dataset.pid;
    var err = li.querySelector(".p-error");
    err.hidden = true;
    var frame = { type: action, proposal_id: pid };
    if (action === "approve") {
      frame.question = li.querySelector(".p-question").value.trim();
      frame.answer = li.querySelector(".p-answer").value.trim();
      if (!frame.question || !frame.answer) {
        err.textContent = "Both the question and the answer are needed.";
        err.hidden = false;
        return;
      }
    }
    setBusy(li, true);
    if (!sendFrame(frame)) {
      setBusy(li, false);
      err.textContent = "Not connected; try again in a moment.";
      err.hidden = false;
    }
  }

  function renderProposals() {
    var list = $("proposal-list");
    var pending = Array.from(proposals.values()).sort(function (a, b) {
      return (a.created_at || 0) - (b.created_at || 0);
    });
    cards.forEach(function (card, pid) {
      if (!proposals.has(pid)) { card.remove(); cards.delete(pid); }
    });
    pending.forEach(function (p) {
      var card = cards.get(p.id);
      if (!card) cards.set(p.id, (card = proposalCard(p)));
      fillCard(card, p);
      list.appendChild(card); // in order; moving a node keeps its edits and focus
    });
    $("no-proposals").hidden = pending.length > 0 || !learningOn;
    $("review-off").hidden = learningOn;
    var badge = $("review-count");
    badge.textContent = String(pending.length);
    badge.hidden = !pending.length;
  }

  // ---------------------------------------------------------------- insights

  $("report-build").addEventListener("click", function () {
    if (reporting) return;
    if (!sendFrame({ type: "report", since: $("report-since").value })) {
      $("report-status").textContent = "Not connected; try again in a moment.";
      return;
    }
    reporting = true;
    $("report-build").disabled = true;
    $("report-status").textContent = "Building the report…";
  });

  function reportDone(status) {
    reporting = false;
    $("report-build").disabled = false;
    $("report-status").textContent = status;
  }

  function onReport(f) {
    // A fresh frame per report, made only when there is one to show. sandbox="" (set before
    // the content): no scripts, no forms, no same-origin access to this page or its token.
    var frame = el("iframe", "report-frame");
    frame.id = "report-frame";
    frame.title = "Insights report";
    frame.setAttribute("sandbox", "");
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.srcdoc = str(f.html);
    var box = $("report-box");
    clear(box);
    box.appendChild(frame);
    reportDone(str(f.conversations) + " conversations · built " + new Date().toLocaleTimeString());
  }

  // ---------------------------------------------------------------- ad copy

  $("copy-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (copying) return;
    var keywords = $("copy-keywords").value.split(",").map(function (w) { return w.trim(); })
      .filter(function (w) { return w; });
    var frame = { type: "copy", product_id: $("copy-product").value.trim(),
                  audience: $("copy-audience").value.trim(), keywords: keywords,
                  n: parseInt($("copy-n").value, 10) || 5, tone: $("copy-tone").value };
    if (!sendFrame(frame)) {
      $("copy-status").textContent = "Not connected; try again in a moment.";
      return;
    }
    copying = true;
    $("copy-generate").disabled = true;
    $("copy-status").textContent = "Writing ads…";
  });

  function copyDone(status) {
    copying = false;
    $("copy-generate").disabled = false;
    $("copy-status").textContent = status;
  }

  function onCopyResult(f) {
    var list = $("copy-list");
    clear(list);
    var variants = Array.isArray(f.variants) ? f.variants : [];
    variants.forEach(function (v) {
      var status = str(v.status);
      var li = el("li", "copy-ad " + status);
      li.appendChild(el("div", "c-text", str(v.text)));
      var score = typeof v.score === "number" ? v.score.toFixed(2) : "–";
      li.appendChild(el("div", "c-meta", (v.rank ? "#" + v.rank + " · " : "") + status + " · score " + score +
        " · " + str(v.chars) + " chars"));
      var reasons = Array.isArray(v.reasons) ? v.reasons : [];
      if (reasons.length) {
        var details = el("details");
        details.appendChild(el("summary", null, "why rejected"));
        var ul = el("ul");
        reasons.forEach(function (r) { ul.appendChild(el("li", null, str(r))); });
        details.appendChild(ul);
        li.appendChild(details);
      }
      list.appendChild(li);
    });
    var warnings = Array.isArray(f.warnings) ? f.warnings.map(str) : [];
    $("copy-summary").textContent = str(f.product) + ": " + str(f.passed) + " of " + str(f.generated) +
      " lines passed (" + str(f.model) + ", " + str(f.seconds) + " s)" +
      (warnings.length ? " · " + warnings.join(" · ") : "");
    copyDone(f.enough ? "" : "Fewer ads passed than asked for; try other keywords or generate again.");
  }

  // ---------------------------------------------------------------- actions

  function act(type) {
    if (!current) return;
    showError("");
    if (!sendFrame({ type: type, session_id: current })) showError("Not connected; try again in a moment.");
  }

  $("btn-takeover").addEventListener("click", function () { act("takeover"); });
  $("btn-handback").addEventListener("click", function () { stopTyping(); act("handback"); });
  $("btn-close").addEventListener("click", function () { stopTyping(); act("close"); });
  $("btn-assign").addEventListener("click", function () {
    var name = $("assign-name").value.trim();
    if (!current || !name) return;
    showError("");
    sendFrame({ type: "assign", session_id: current, agent: name });
  });

  function stopTyping() {
    clearTimeout(typingIdle);
    if (typingSent && current) sendFrame({ type: "typing", session_id: current, on: false });
    typingSent = false;
  }

  $("reply-text").addEventListener("input", function () {
    if (!current) return;
    if (!this.value.trim()) { stopTyping(); return; }
    if (!typingSent) typingSent = sendFrame({ type: "typing", session_id: current, on: true });
    clearTimeout(typingIdle);
    typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
  });

  function submitOnEnter(form) {
    return function (ev) {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        form.requestSubmit();
      }
    };
  }
  $("reply-text").addEventListener("keydown", submitOnEnter($("reply-form")));
  $("note-text").addEventListener("keydown", submitOnEnter($("note-form")));

  $("reply-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = $("reply-text").value.trim();
    if (!text || !current) return;
    stopTyping();
    var frame = { type: "send", session_id: current, client_id: newClientId(), text: text };
    outbox.push({ frame: frame });
    $("reply-text").value = "";
    if (!sendFrame(frame)) showError("Not connected; the message is sent when the connection is back.");
  });

  $("note-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = $("note-text").value.trim();
    if (!text || !current) return;
    if (sendFrame({ type: "note", session_id: current, text: text })) $("note-text").value = "";
    else showError("Not connected; try again in a moment.");
  });

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && current && flagged.delete(current)) {
      updateTitle();
      renderList();
    }
  });

  // ---------------------------------------------------------------- start

  updateActions();
  renderViewed();
  renderProposals();
  if (saved && saved.token) {
    $("app-view").hidden = false;
    $("tab-insights").hidden = myRole !== "admin";
    showView(view);
    if (typeof current === "string" && current) showConversation(current); // watched after auth_ok
    else current = null;
    connect();
  } else {
    showLogin("");
  }
})();
