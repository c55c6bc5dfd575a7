/*! deskmate chat widget — vanilla JavaScript, no build step, no dependencies.
 *
 * Embed with one tag:   <script src="https://HOST/widget.js" defer></script>
 *
 * Options, as data-* attributes on that tag (all optional):
 *   data-server     base URL of the deskmate server (default: where this script came from)
 *   data-color      accent colour, any CSS colour ("#0f766e", "rebeccapurple")
 *   data-agent-color colour that marks a support agent's messages (default amber)
 *   data-bot-color  background of the bot's message bubbles (default light grey)
 *   data-title      header title (default: a localised "Customer support")
 *   data-greeting   text shown above an empty conversation
 *   data-position   "right" (default) or "left"
 *   data-lang       "en" or "zh" (default: from <html lang>)
 *   data-max-length longest message the composer accepts (default 2000)
 *
 * Page API:  window.deskmate.open(), .close(), .toggle(), .track(name, data)
 *
 * Wire contract: docs/protocol.md, customer socket /ws/chat. Everything the server or
 * the customer wrote is put in the DOM through textContent or element construction,
 * never through innerHTML.
 */
(function () {
  "use strict";

  if (window.deskmate && window.deskmate.version) return; // the tag was included twice
  var preloadQueue = window.deskmate && Array.isArray(window.deskmate.q) ? window.deskmate.q : [];

  // ---------------------------------------------------------------- configuration

  var script = document.currentScript || findOwnScript();
  var ds = (script && script.dataset) || {};

  function findOwnScript() {
    var list = document.querySelectorAll("script[src]");
    for (var i = list.length - 1; i >= 0; i--) {
      if (/\/widget\.js(?:[?#]|$)/.test(list[i].src)) return list[i];
    }
    return null;
  }

  // The server base keeps a path prefix, so a deskmate behind /support/ on a proxy works.
  var BASE = ds.server
    ? new URL(ds.server.replace(/\/?$/, "/"), location.href)
    : new URL("./", (script && script.src) || location.href);
  var WS_URL = new URL("ws/chat", BASE);
  WS_URL.protocol = BASE.protocol === "https:" ? "wss:" : "ws:";
  WS_URL = WS_URL.href;

  var KEY = "deskmate:v1:" + BASE.origin + BASE.pathname;
  var MAX_LEN = Math.max(1, parseInt(ds.maxLength, 10) || 2000);
  var MAX_FRAME_BYTES = 16 * 1024; // the server's default DESKMATE_MAX_FRAME_BYTES
  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 10000;
  var CONNECT_TIMEOUT_MS = 10000;
  var STABLE_AFTER_MS = 8000; // a socket up this long after `session` resets the backoff
  // The replay of a conversation's history has no end marker: it follows `session` at once,
  // in one burst, so it has ended when the socket has been quiet this long.
  var REPLAY_QUIET_MS = 300;
  var TYPING_TIMEOUT_MS = 20000; // a lost "typing off" must not leave dots forever

  var STRINGS = {
    en: {
      title: "Customer support",
      greeting: "Hi there! Ask us anything about orders, sizes or returns.",
      openChat: "Open chat",
      closeChat: "Close chat",
      unread: "{n} unread",
      conversation: "Conversation",
      placeholder: "Type a message…",
      inputLabel: "Message",
      send: "Send",
      you: "You",
      assistant: "Assistant",
      agentRole: "Support agent",
      anAgent: "An agent",
      online: "Online",
      connecting: "Connecting…",
      reconnecting: "Reconnecting…",
      offline: "You're offline. Messages will be sent when you're back.",
      sending: "Sending…",
      notSent: "Not sent.",
      retry: "Retry",
      typing: "{name} is typing",
      handoffRequested: "An agent will join shortly.",
      agentJoined: "{name} joined the chat.",
      agentLeft: "{name} left the chat.",
      closedLine: "This conversation has ended.",
      newConversation: "Start a new conversation",
      quickReplies: "Suggested replies",
      products: "Products",
      image: "Image",
      openImage: "Open the image full size",
      view: "View",
      source: "Source: {titles}",
      sources: "Sources: {titles}",
      tooLong: "That message is too long ({n} characters at most).",
      rateLimited: "You're sending messages a little fast. Please wait a moment.",
      errorGeneric: "Something went wrong: {message}",
      poweredBy: "Powered by deskmate",
    },
    zh: {
      title: "在线客服",
      greeting: "您好！订单、尺码、退换货，有问题随时问我们。",
      openChat: "打开聊天",
      closeChat: "关闭聊天",
      unread: "{n} 条未读",
      conversation: "对话",
      placeholder: "输入消息…",
      inputLabel: "消息",
      send: "发送",
      you: "我",
      assistant: "智能助手",
      agentRole: "人工客服",
      anAgent: "客服",
      online: "在线",
      connecting: "正在连接…",
      reconnecting: "正在重新连接…",
      offline: "网络已断开，恢复后消息会自动发送。",
      sending: "发送中…",
      notSent: "未发送。",
      retry: "重试",
      typing: "{name} 正在输入",
      handoffRequested: "人工客服即将接入。",
      agentJoined: "{name} 已加入对话。",
      agentLeft: "{name} 已离开对话。",
      closedLine: "本次对话已结束。",
      newConversation: "开始新的对话",
      quickReplies: "快捷回复",
      products: "商品",
      image: "图片",
      openImage: "查看大图",
      view: "查看",
      source: "来源：{titles}",
      sources: "来源：{titles}",
      tooLong: "消息太长了（最多 {n} 个字符）。",
      rateLimited: "发送太快了，请稍等片刻。",
      errorGeneric: "出错了：{message}",
      poweredBy: "由 deskmate 提供支持",
    },
  };
  var LANG = /^zh\b/i.test(ds.lang || document.documentElement.lang || "") ? "zh" : "en";
  var S = STRINGS[LANG];

  function t(key, vars) {
    return S[key].replace(/\{(\w+)\}/g, function (m, name) {
      return vars && vars[name] != null ? String(vars[name]) : m;
    });
  }

  // ---------------------------------------------------------------- small helpers

  function str(v) {
    return typeof v === "string" ? v : v == null ? "" : String(v);
  }

  /** Order two Redis stream ids ("1732890000000-3"): by milliseconds, then sequence. */
  function compareIds(a, b) {
    var x = /^(\d+)(?:-(\d+))?$/.exec(a);
    var y = /^(\d+)(?:-(\d+))?$/.exec(b);
    if (!x || !y) return a < b ? -1 : a > b ? 1 : 0;
    return Number(x[1]) - Number(y[1]) || Number(x[2] || 0) - Number(y[2] || 0);
  }

  /** Characters as the server counts them (code points): an emoji is one, not two. */
  function charCount(text) {
    return Array.from(text).length;
  }

  function newClientId() {
    var c = window.crypto;
    if (c && typeof c.randomUUID === "function") {
      try { return c.randomUUID(); } catch (e) { /* insecure context: fall through */ }
    }
    var b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = (Math.random() * 256) | 0;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  /**
   * An absolute http(s) URL for `raw`, or null. Relative URLs come from the bot project, so
   * they resolve against the deskmate server, which may not be the page's host.
   */
  function safeUrl(raw) {
    if (typeof raw !== "string" || !raw.trim()) return null;
    try {
      var u = new URL(raw.trim(), BASE);
      return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  /** A card image source: what safeUrl allows, plus inline raster/SVG data (inert in <img>). */
  function safeImage(raw) {
    if (typeof raw === "string" && /^data:image\/(?:png|jpeg|gif|webp|svg\+xml)[;,]/i.test(raw.trim())) return raw.trim();
    return safeUrl(raw);
  }

  // Storage can be missing or throw (privacy modes, sandboxed frames): the widget then
  // still works, it just forgets the conversation on reload.
  function load(area, key) {
    try { var v = window[area].getItem(key); return v ? JSON.parse(v) : null; } catch (e) { return null; }
  }
  function save(area, key, value) {
    try {
      if (value == null) window[area].removeItem(key);
      else window[area].setItem(key, JSON.stringify(value));
    } catch (e) { /* ignore */ }
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

  var ICONS = {
    chat: "M21 11.5a8.4 8.4 0 0 1-.9 3.8 8.5 8.5 0 0 1-7.6 4.7 8.4 8.4 0 0 1-3.8-.9L3 21l1.9-5.7a8.4 8.4 0 0 1-.9-3.8 8.5 8.5 0 0 1 4.7-7.6 8.4 8.4 0 0 1 3.8-.9h.5a8.5 8.5 0 0 1 8 8v.5z",
    down: "M6 9l6 6 6-6",
    close: "M18 6L6 18M6 6l12 12",
    send: "M22 2L11 13M22 2l-7 20-4-9-9-4 20-7z",
    spark: "M12 3v3M12 18v3M3 12h3M18 12h3M5.6 5.6l2.1 2.1M16.3 16.3l2.1 2.1M5.6 18.4l2.1-2.1M16.3 7.7l2.1-2.1",
    external: "M18 13v6a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V8a2 2 0 0 1 2-2h6M15 3h6v6M10 14L21 3",
  };
  function icon(name) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.setAttribute("class", "icon icon-" + name);
    var p = document.createElementNS(ns, "path");
    p.setAttribute("d", ICONS[name]);
    svg.appendChild(p);
    return svg;
  }

  // ---------------------------------------------------------------- safe Markdown subset
  // Bold, italics, inline code, links and bullet/numbered lists, built as DOM nodes.
  // Anything that does not match stays literal text.

  var INLINE = "\\*\\*([^*\\n]+?)\\*\\*|`([^`\\n]+)`|\\[([^\\]\\n]+)\\]\\(([^)\\s]+)\\)" +
    "|(^|[\\s(])([*_])([^*_\\n]+?)\\6(?=$|[\\s.,!?;:)])" +
    "|(https?:\\/\\/[^\\s<>()]*[^\\s<>().,!?;:'\"])";

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
    container.textContent = "";
    var list = null;
    var para = [];
    function flush() {
      if (!para.length) return;
      var p = bidi(el("p"));
      appendInline(p, para.join("\n"));
      container.appendChild(p);
      para = [];
    }
    text.split("\n").forEach(function (line) {
      var ul = /^\s*[-*•]\s+(.*)$/.exec(line);
      var ol = ul ? null : /^\s*\d{1,3}[.)]\s+(.*)$/.exec(line);
      if (ul || ol) {
        flush();
        var type = ul ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== type) container.appendChild((list = bidi(el(type))));
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

  // ---------------------------------------------------------------- styles

  var CSS = [
    ":host{all:initial}",
    "*,*::before,*::after{box-sizing:border-box}",
    "[hidden]{display:none!important}",
    ".dm{--accent:#4f46e5;--accent-text:#fff;--accent-soft:#eef2ff;--fg:#1f2937;--muted:#6b7280;",
    "--line:#e5e7eb;--bot:#f1f3f6;--agent:#fff7ed;--agent-edge:#f59e0b;--danger:#dc2626;",
    "color-scheme:light;color:var(--fg);font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,",
    "'Helvetica Neue',Arial,'Noto Sans','PingFang SC','Hiragino Sans GB','Microsoft YaHei',sans-serif;",
    "-webkit-font-smoothing:antialiased;text-align:start}",
    "button,textarea{font:inherit;color:inherit}",
    "button{cursor:pointer}",
    ".icon{width:22px;height:22px;fill:none;stroke:currentColor;stroke-width:2;stroke-linecap:round;stroke-linejoin:round}",
    ".sr{position:absolute;width:1px;height:1px;margin:-1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap;border:0}",

    // launcher
    ".launcher{position:fixed;z-index:2147483000;right:20px;bottom:20px;width:60px;height:60px;border:0;",
    "border-radius:50%;background:var(--accent);color:var(--accent-text);display:grid;place-items:center;",
    "box-shadow:0 6px 20px rgba(0,0,0,.22),0 2px 4px rgba(0,0,0,.12);transition:transform .18s ease,box-shadow .18s ease}",
    ".launcher:hover{transform:translateY(-2px) scale(1.04);box-shadow:0 10px 26px rgba(0,0,0,.26)}",
    ".launcher .icon{width:28px;height:28px}",
    ".launcher .icon-down{display:none}",
    ".open .launcher .icon-chat{display:none}.open .launcher .icon-down{display:block}",
    ".badge{position:absolute;top:-3px;right:-3px;min-width:22px;height:22px;padding:0 6px;border-radius:11px;",
    "background:var(--danger);color:#fff;font-size:12px;font-weight:700;line-height:22px;text-align:center;",
    "box-shadow:0 0 0 2px #fff}",
    ":focus-visible{outline:3px solid var(--accent);outline-offset:2px}",
    ".launcher:focus-visible{outline-offset:4px}",

    // panel
    ".panel{position:fixed;z-index:2147483000;right:20px;bottom:92px;width:380px;",
    "height:min(640px,calc(100vh - 116px));display:flex;flex-direction:column;background:#fff;",
    "border-radius:18px;overflow:hidden;box-shadow:0 18px 50px rgba(15,23,42,.22),0 3px 8px rgba(15,23,42,.08);",
    "opacity:0;transform:translateY(14px) scale(.98);transform-origin:bottom right;visibility:hidden;",
    "transition:opacity .18s ease,transform .18s ease,visibility 0s linear .18s}",
    ".open .panel{opacity:1;transform:none;visibility:visible;transition-delay:0s}",
    ".left .launcher,.left .panel{right:auto;left:20px}.left .panel{transform-origin:bottom left}",

    ".head{display:flex;align-items:center;gap:12px;padding:16px 14px 16px 18px;background:var(--accent);",
    "color:var(--accent-text);background-image:linear-gradient(135deg,rgba(255,255,255,.16),rgba(255,255,255,0) 60%)}",
    ".head .avatar{width:40px;height:40px;background:rgba(255,255,255,.2);color:inherit}",
    ".head-text{flex:1;min-width:0}",
    ".title{margin:0;font-size:16px;font-weight:650;letter-spacing:.01em;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}",
    ".status{margin:2px 0 0;font-size:12.5px;opacity:.92;display:flex;align-items:center;gap:6px}",
    ".dot{width:8px;height:8px;border-radius:50%;background:#fbbf24;box-shadow:0 0 0 2px rgba(255,255,255,.35)}",
    ".state-online .dot{background:#22c55e}",
    ".icon-btn{border:0;background:transparent;color:inherit;width:36px;height:36px;border-radius:10px;",
    "display:grid;place-items:center;opacity:.9}",
    ".icon-btn:hover{background:rgba(255,255,255,.18);opacity:1}",
    ".head :focus-visible{outline-color:currentColor}",

    ".banner{padding:7px 14px;font-size:12.5px;text-align:center;background:#fef3c7;color:#92400e;border-bottom:1px solid #fde68a}",

    // conversation
    ".log{flex:1;overflow-y:auto;overscroll-behavior:contain;padding:16px 14px 8px;background:#fafbfc}",
    ".empty{margin:18px auto 8px;max-width:270px;text-align:center;color:var(--muted)}",
    ".empty .avatar{margin:0 auto 10px;width:48px;height:48px}",
    ".empty p{margin:0}",
    ".row{display:flex;gap:8px;margin-top:12px;align-items:flex-start}",
    ".row.cont{margin-top:4px}",
    ".row.user{justify-content:flex-end}",
    ".avatar{flex:none;width:30px;height:30px;border-radius:50%;display:grid;place-items:center;",
    "background:var(--accent);color:var(--accent-text);font-weight:700;font-size:13px}",
    ".avatar .icon{width:60%;height:60%}",
    ".agent .avatar{background:var(--agent-edge);color:#fff}",
    ".row.cont > .avatar{visibility:hidden;height:0;margin-top:0}",
    ".body{display:flex;flex-direction:column;min-width:0;max-width:80%}",
    ".user .body{align-items:flex-end}.bot .body,.agent .body{align-items:flex-start}",
    ".body.wide{flex:1 1 auto;max-width:none}.body.wide>.bubble,.body.wide>.quick{max-width:92%}",
    ".cards{max-width:100%}",
    ".who{font-size:12px;line-height:16px;color:var(--muted);margin:0 0 4px 4px}",
    ".row > .avatar{margin-top:21px}", // level with the bubble under the 20px name line
    ".who b{color:var(--fg);font-weight:600}",
    ".row.cont .who{display:none}",
    ".bubble{padding:9px 13px;border-radius:16px;background:var(--bot);word-wrap:break-word;overflow-wrap:anywhere;",
    "border-bottom-left-radius:5px}",
    ".bubble:empty{display:none}",
    ".bubble p{margin:0;white-space:pre-wrap}.bubble p+p{margin-top:6px}",
    ".bubble ul,.bubble ol{margin:4px 0;padding-inline-start:20px}",
    ".bubble code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;background:rgba(0,0,0,.06);padding:1px 4px;border-radius:4px}",
    ".bubble a{color:inherit;text-decoration:underline;text-underline-offset:2px}",
    ".agent .bubble{background:var(--agent);box-shadow:inset 3px 0 0 var(--agent-edge)}",
    ".user .bubble{background:var(--accent);color:var(--accent-text);border-radius:16px;border-bottom-right-radius:5px}",
    ".pending .bubble{opacity:.65}",
    ".failed .bubble{background:#fee2e2;color:#7f1d1d}",
    ".meta{font-size:11.5px;color:var(--muted);margin:3px 4px 0}",
    ".sources{font-size:11.5px;color:var(--muted);margin:3px 4px 0}",
    ".failed .meta{color:var(--danger)}",
    ".link-btn{border:0;background:none;padding:0;margin-left:4px;color:inherit;font-weight:600;text-decoration:underline}",
    ".streaming .bubble::after{content:'';display:inline-block;width:7px;height:14px;margin-left:2px;",
    "vertical-align:-2px;background:currentColor;opacity:.55;animation:dm-blink 1s steps(2) infinite}",
    ".streaming .bubble:empty{display:block}",
    ".interrupted .bubble{opacity:.5}",
    ".row.system{justify-content:center;margin:14px 0 2px}",
    ".sys{font-size:12px;color:var(--muted);background:#eef0f3;padding:4px 12px;border-radius:999px;text-align:center;max-width:90%}",
    ".sys-action{display:block;margin:8px auto 0}",

    // quick replies and cards
    ".quick{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}",
    ".chip{border:1.5px solid var(--accent);background:#fff;color:var(--accent);border-radius:999px;padding:6px 13px;",
    "font-size:13px;font-weight:550;line-height:1.2;text-decoration:none;transition:background .12s,color .12s}",
    ".chip:hover:not(:disabled){background:var(--accent);color:var(--accent-text)}",
    ".chip:disabled{opacity:.45;cursor:default}",
    ".chip.chosen{background:var(--accent);color:var(--accent-text);opacity:1}",
    ".quick.stale{display:none}",
    ".cards{display:flex;gap:10px;overflow-x:auto;margin-top:8px;padding:2px 2px 6px;scroll-snap-type:x mandatory;max-width:100%}",
    ".card{flex:0 0 200px;scroll-snap-align:start;background:#fff;border:1px solid var(--line);border-radius:14px;",
    "overflow:hidden;display:flex;flex-direction:column;box-shadow:0 1px 3px rgba(0,0,0,.05)}",
    ".card img{width:100%;height:120px;object-fit:cover;display:block;background:var(--accent-soft)}",
    // an image on its own: whole, at its own proportions, no taller than a cap
    ".card.image-only{flex:0 1 auto;margin:0;max-width:100%;background:var(--accent-soft)}",
    ".card.image-only img{width:auto;height:auto;max-width:100%;max-height:260px;object-fit:contain;background:none}",
    ".image-link{display:block;cursor:zoom-in}",
    ".card-body{padding:10px 12px 12px;display:flex;flex-direction:column;gap:3px;flex:1}",
    ".card-title{font-weight:650;font-size:14px;margin:0}",
    ".card-sub{font-size:12.5px;color:var(--muted);margin:0}",
    ".card-actions{display:flex;flex-wrap:wrap;gap:6px;margin-top:auto;padding-top:8px}",
    ".card-actions .chip{padding:5px 11px;font-size:12.5px;display:inline-flex;align-items:center;gap:4px}",
    ".card-actions .icon{width:13px;height:13px}",

    // typing
    ".typing{display:flex;align-items:center;gap:8px;margin:10px 0 4px 38px;font-size:12px;color:var(--muted)}",
    ".dots{display:inline-flex;gap:4px;padding:10px 12px;border-radius:14px;background:var(--bot)}",
    ".dots i{width:6px;height:6px;border-radius:50%;background:#9ca3af;animation:dm-bounce 1.2s infinite ease-in-out}",
    ".dots i:nth-child(2){animation-delay:.15s}.dots i:nth-child(3){animation-delay:.3s}",

    // notices
    ".toasts{position:absolute;left:12px;right:12px;bottom:86px;display:flex;flex-direction:column;gap:6px;pointer-events:none}",
    ".toast{pointer-events:auto;background:#1f2937;color:#fff;font-size:12.5px;padding:8px 12px;border-radius:10px;",
    "box-shadow:0 6px 16px rgba(0,0,0,.2);animation:dm-in .18s ease}",

    // composer
    ".composer{display:flex;align-items:flex-end;gap:8px;padding:10px 12px;border-top:1px solid var(--line);background:#fff}",
    ".input{flex:1;resize:none;border:1.5px solid var(--line);border-radius:14px;padding:9px 12px;max-height:120px;",
    "min-height:40px;line-height:1.4;background:#fff;outline:none;transition:border-color .12s}",
    ".input:focus{border-color:var(--accent);box-shadow:0 0 0 3px var(--accent-soft)}",
    ".send{flex:none;width:40px;height:40px;border:0;border-radius:12px;background:var(--accent);color:var(--accent-text);",
    "display:grid;place-items:center;transition:opacity .12s,transform .12s}",
    ".send .icon{width:19px;height:19px}",
    ".send:disabled{opacity:.4;cursor:default}",
    ".send:not(:disabled):active{transform:scale(.94)}",
    ".counter{font-size:11.5px;color:var(--muted);text-align:right;padding:4px 14px 0;background:#fff;border-top:1px solid var(--line)}",
    ".counter+.composer{border-top:0}",
    ".counter.over{color:var(--danger);font-weight:600}",
    ".brand{font-size:11px;color:#9ca3af;text-align:center;padding:0 0 8px;background:#fff}",

    "@keyframes dm-bounce{0%,80%,100%{transform:translateY(0);opacity:.5}40%{transform:translateY(-4px);opacity:1}}",
    "@keyframes dm-blink{0%{opacity:.55}100%{opacity:0}}",
    "@keyframes dm-in{from{opacity:0;transform:translateY(6px)}to{opacity:1;transform:none}}",

    // phones: the panel takes the whole screen and the header's close button replaces the launcher
    "@media (max-width:480px){",
    ".panel{inset:0;width:100%;height:100%;height:100dvh;border-radius:0;right:0;bottom:0}",
    ".left .panel{left:0}",
    ".open .launcher{display:none}",
    ".input{font-size:16px}", // below 16px iOS zooms into the field
    ".body{max-width:86%}",
    "}",
    "@media (prefers-reduced-motion:reduce){.panel,.launcher,.chip{transition:none}",
    ".dots i,.streaming .bubble::after{animation:none}}",
  ].join("");

  // ---------------------------------------------------------------- the DOM

  var host = el("div");
  host.id = "deskmate-widget";
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;

  var styleEl = el("style", null, CSS);
  var shell = el("div", "dm" + (ds.position === "left" ? " left" : ""));
  shell.setAttribute("lang", LANG === "zh" ? "zh-CN" : "en");

  var panel = el("section", "panel");
  panel.id = "dm-panel";
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-labelledby", "dm-title");

  var head = el("header", "head state-connecting");
  var headAvatar = el("div", "avatar");
  headAvatar.appendChild(icon("chat"));
  var headText = el("div", "head-text");
  var titleEl = el("h2", "title", ds.title || t("title"));
  titleEl.id = "dm-title";
  var statusEl = el("p", "status");
  var statusText = el("span", null, t("connecting"));
  statusEl.appendChild(el("span", "dot"));
  statusEl.appendChild(statusText);
  headText.appendChild(titleEl);
  headText.appendChild(statusEl);
  var closeBtn = el("button", "icon-btn");
  closeBtn.type = "button";
  closeBtn.setAttribute("aria-label", t("closeChat"));
  closeBtn.appendChild(icon("close"));
  head.appendChild(headAvatar);
  head.appendChild(headText);
  head.appendChild(closeBtn);

  var banner = el("div", "banner");
  banner.setAttribute("role", "status");
  banner.hidden = true;

  var log = el("div", "log");
  // The transcript is a log for assistive tech, but it is not live itself: streamed text would
  // be read out piece by piece. Finished messages are announced through `live` instead.
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "off");
  log.setAttribute("aria-label", t("conversation"));
  log.tabIndex = 0;
  var empty = el("div", "empty");
  var emptyAvatar = el("div", "avatar");
  emptyAvatar.appendChild(icon("chat"));
  empty.appendChild(emptyAvatar);
  empty.appendChild(el("p", null, ds.greeting || t("greeting")));
  var msgs = el("div", "msgs");
  var typingEl = el("div", "typing");
  typingEl.hidden = true;
  var dots = el("span", "dots");
  dots.setAttribute("aria-hidden", "true");
  dots.appendChild(el("i"));
  dots.appendChild(el("i"));
  dots.appendChild(el("i"));
  var typingText = el("span");
  typingEl.appendChild(dots);
  typingEl.appendChild(typingText);
  log.appendChild(empty);
  log.appendChild(msgs);
  log.appendChild(typingEl);

  var toasts = el("div", "toasts");
  toasts.setAttribute("role", "status");
  toasts.setAttribute("aria-live", "assertive");

  var form = el("form", "composer");
  form.noValidate = true;
  var input = bidi(el("textarea", "input"));
  input.rows = 1;
  input.placeholder = t("placeholder");
  input.setAttribute("aria-label", t("inputLabel"));
  // No maxlength: it would silently cut a long paste. The counter and a notice say it instead.
  var counter = el("div", "counter");
  counter.hidden = true;
  counter.setAttribute("aria-live", "polite");
  input.setAttribute("enterkeyhint", "send");
  var sendBtn = el("button", "send");
  sendBtn.type = "submit";
  sendBtn.disabled = true;
  sendBtn.setAttribute("aria-label", t("send"));
  sendBtn.appendChild(icon("send"));
  form.appendChild(input);
  form.appendChild(sendBtn);

  panel.appendChild(head);
  panel.appendChild(banner);
  panel.appendChild(log);
  panel.appendChild(toasts);
  panel.appendChild(counter);
  panel.appendChild(form);
  panel.appendChild(el("div", "brand", t("poweredBy")));

  var launcher = el("button", "launcher");
  launcher.type = "button";
  launcher.setAttribute("aria-controls", "dm-panel");
  launcher.setAttribute("aria-expanded", "false");
  launcher.appendChild(icon("chat"));
  launcher.appendChild(icon("down"));
  var badge = el("span", "badge");
  badge.hidden = true;
  badge.setAttribute("aria-hidden", "true");
  launcher.appendChild(badge);

  var live = el("div", "sr");
  live.setAttribute("aria-live", "polite");

  shell.appendChild(panel);
  shell.appendChild(launcher);
  shell.appendChild(live);
  root.appendChild(styleEl);
  root.appendChild(shell);

  /**
   * Colours from the script tag: data-color (the accent, with readable text and a soft tint
   * derived from it), data-agent-color (marks agents' messages) and data-bot-color (the
   * bot's bubbles). A value the browser does not read as a colour is ignored.
   */
  function applyTheme() {
    var accent = rgbOf(ds.color);
    if (accent) {
      shell.style.setProperty("--accent", ds.color);
      // White text unless dark text has the better contrast ratio on this accent.
      var L = luminance(accent);
      shell.style.setProperty("--accent-text", 1.05 / (L + 0.05) >= (L + 0.05) / 0.05 ? "#fff" : "#111827");
      shell.style.setProperty("--accent-soft", tint(accent, 0.12));
    }
    var agent = rgbOf(ds.agentColor);
    if (agent) {
      shell.style.setProperty("--agent-edge", ds.agentColor);
      shell.style.setProperty("--agent", tint(agent, 0.1));
    }
    if (rgbOf(ds.botColor)) shell.style.setProperty("--bot", ds.botColor);
  }

  /** [r, g, b] of a CSS colour as the browser computes it, or null if it is not one. */
  function rgbOf(color) {
    if (!color || !(window.CSS && CSS_supports("color", color))) return null;
    var probe = el("span");
    probe.style.color = color;
    shell.appendChild(probe);
    var rgb = (getComputedStyle(probe).color.match(/[\d.]+/g) || []).slice(0, 3).map(Number);
    shell.removeChild(probe);
    return rgb.length === 3 ? rgb : null;
  }

  function luminance(rgb) {
    var lum = rgb.map(function (c) {
      c /= 255;
      return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * lum[0] + 0.7152 * lum[1] + 0.0722 * lum[2];
  }

  /** `rgb` mixed into white, `amount` of it (0..1): a pale background in the same hue. */
  function tint(rgb, amount) {
    return "rgb(" + rgb.map(function (c) { return Math.round(c * amount + 255 * (1 - amount)); }).join(",") + ")";
  }
  function CSS_supports(prop, value) {
    try { return window.CSS.supports(prop, value); } catch (e) { return false; }
  }

  // ---------------------------------------------------------------- UI state

  var isOpen = false;
  var unread = 0;
  var connState = "connecting";
  var currentAgent = null;
  var typingTimer = 0;

  function setConn(state) {
    connState = state;
    head.className = "head state-" + state;
    var text = state === "online" ? t("online") : state === "offline" ? t("offline") : t(state);
    if (state === "online" && currentAgent) text = currentAgent + " · " + t("online");
    statusText.textContent = state === "offline" ? t("reconnecting") : text;
    banner.hidden = !(state === "reconnecting" || state === "offline");
    banner.textContent = state === "offline" ? t("offline") : t("reconnecting");
  }

  function updateLauncher() {
    launcher.setAttribute("aria-expanded", String(isOpen));
    var label = isOpen ? t("closeChat") : t("openChat");
    if (!isOpen && unread) label += " (" + t("unread", { n: unread }) + ")";
    launcher.setAttribute("aria-label", label);
    badge.hidden = isOpen || !unread;
    badge.textContent = unread > 9 ? "9+" : String(unread);
  }

  function nearBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 90;
  }
  function scrollToEnd() {
    log.scrollTop = log.scrollHeight;
  }

  function announce(text) {
    if (!text) return;
    var line = el("div", null, text);
    live.appendChild(line);
    while (live.childNodes.length > 3) live.removeChild(live.firstChild);
  }

  function toast(text) {
    var n = el("div", "toast", text);
    toasts.appendChild(n);
    while (toasts.childNodes.length > 3) toasts.removeChild(toasts.firstChild);
    setTimeout(function () { if (n.parentNode) n.parentNode.removeChild(n); }, 6000);
  }

  function showTyping(role, name) {
    clearTimeout(typingTimer);
    typingText.textContent = t("typing", {
      name: role === "agent" ? name || currentAgent || t("anAgent") : t("assistant"),
    });
    var stick = nearBottom();
    typingEl.hidden = false;
    if (stick) scrollToEnd();
    typingTimer = setTimeout(hideTyping, TYPING_TIMEOUT_MS);
  }
  function hideTyping() {
    clearTimeout(typingTimer);
    typingEl.hidden = true;
  }

  // ---------------------------------------------------------------- transcript

  var rendered = new Map(); // event_id -> row element; the dedupe set for every stored event
  var lastEventId = null; // newest event id received in order; `after` on reconnect
  var streams = new Map(); // stream_id -> { row, bubble, text, frame }
  var saved = load("localStorage", KEY) || {}; // { session_id, token }
  // Unacked messages, per tab: they survive a reload and are resent with the same client_id.
  var outbox = load("sessionStorage", KEY + ":outbox") || [];
  var trackQueue = [];
  // A returning customer's history is on its way: no greeting flash before the replay.
  var awaitingHistory = !!saved.session_id;
  empty.hidden = awaitingHistory;

  function persistOutbox() {
    save("sessionStorage", KEY + ":outbox", outbox.length ? outbox : null);
  }

  function noteEventId(id) {
    if (!lastEventId || compareIds(id, lastEventId) > 0) lastEventId = id;
  }

  function senderKey(role, agent) {
    return role === "agent" ? "agent:" + (agent || "") : role;
  }

  /**
   * Put a stored (or streaming) row into the transcript. Pending user messages stay at the
   * bottom: anything the server stores before them belongs above them.
   */
  function insertRow(row) {
    var stick = nearBottom();
    var before = msgs.querySelector(".row.pending, .row.failed, .row.closed-note");
    var prev = before ? before.previousElementSibling : msgs.lastElementChild;
    if (prev && prev.dataset.sender && prev.dataset.sender === row.dataset.sender) row.classList.add("cont");
    msgs.insertBefore(row, before);
    afterChange(stick);
  }

  function appendPending(row) {
    var prev = msgs.lastElementChild;
    if (prev && prev.dataset.sender === "user") row.classList.add("cont");
    msgs.appendChild(row);
    afterChange(true);
  }

  function afterChange(stick) {
    empty.hidden = msgs.childElementCount > 0 || awaitingHistory;
    // Quick replies are offered until the customer says something after them.
    var userAfter = false;
    for (var r = msgs.lastElementChild; r; r = r.previousElementSibling) {
      var q = r.querySelector(".quick");
      if (q) q.classList.toggle("stale", userAfter);
      if (r.classList.contains("user")) userAfter = true;
    }
    if (stick) scrollToEnd();
  }

  /**
   * Whether a stored event is news to this page (count it, announce it) rather than the
   * history replayed when the page resumed its conversation. Decided by when it arrives, not
   * by its `ts`: the server's clock and the device's need not agree (a phone minutes fast
   * would otherwise hear nothing, a slow one would hear the whole history again).
   */
  function isLive() {
    return !replayingHistory;
  }

  var replayingHistory = false; // frames now arriving are the history this page resumed
  var historyShown = false; // this page has had its conversation's history (or had none)
  var replayTimer = 0;
  var historyTo; // the session's history_to: "" none, undefined not told (older server)

  /** Called for every frame while `replayingHistory`: the replay lasts while frames come. */
  function extendReplay() {
    clearTimeout(replayTimer);
    replayTimer = setTimeout(endReplay, REPLAY_QUIET_MS);
  }

  function endReplay(interrupted) {
    clearTimeout(replayTimer);
    if (!replayingHistory) return;
    replayingHistory = false;
    // Cut off by a closed socket, the rest of the history comes on the next one.
    if (!interrupted) historyShown = true;
  }

  function whoLabel(role, agent) {
    if (role === "agent") {
      var who = el("div", "who");
      who.appendChild(el("b", null, agent || t("anAgent")));
      who.appendChild(document.createTextNode(" · " + t("agentRole")));
      return who;
    }
    return el("div", "who", t("assistant"));
  }

  function avatarFor(role, agent) {
    var a = el("div", "avatar");
    a.setAttribute("aria-hidden", "true");
    if (role === "agent") a.textContent = (agent || "?").trim().charAt(0).toUpperCase() || "?";
    else a.appendChild(icon("chat"));
    return a;
  }

  function buildRow(frame) {
    var role = ["user", "bot", "agent", "system"].indexOf(frame.role) >= 0 ? frame.role : "bot";
    var agent = role === "agent" ? str(frame.agent) || currentAgent : null;
    var text = str(frame.text);
    var row = el("div", "row " + role);
    row.dataset.sender = senderKey(role, agent);
    if (typeof frame.ts === "number") row.title = new Date(frame.ts * 1000).toLocaleString(LANG === "zh" ? "zh-CN" : undefined);
    if (role === "system") {
      row.appendChild(bidi(el("div", "sys", text)));
      return row;
    }
    var body = el("div", "body");
    var bubble = bidi(el("div", "bubble"));
    if (role === "user") {
      bubble.appendChild(bidi(el("p", null, text)));
      body.appendChild(el("span", "sr", t("you") + ":"));
    } else {
      row.appendChild(avatarFor(role, agent));
      body.appendChild(whoLabel(role, agent));
      renderRich(bubble, text);
    }
    body.appendChild(bubble);
    row.appendChild(body);
    attachExtras(row, frame);
    return row;
  }

  function attachExtras(row, frame) {
    var body = row.querySelector(".body");
    if (!body) return;
    var titles = sourceTitles(frame.sources);
    if (titles.length && !body.querySelector(".sources")) {
      // What the answer was taken from, as plain text under the bubble.
      var line = el("p", "sources", t(titles.length > 1 ? "sources" : "source", { titles: titles.join(", ") }));
      var bubble = body.querySelector(".bubble");
      body.insertBefore(line, bubble ? bubble.nextSibling : null);
    }
    if (Array.isArray(frame.cards) && frame.cards.length && !body.querySelector(".cards")) {
      body.appendChild(buildCards(frame.cards));
      body.classList.add("wide"); // a carousel may use the whole row
    }
    if (Array.isArray(frame.buttons) && frame.buttons.length && !body.querySelector(".quick")) {
      var quick = el("div", "quick");
      quick.setAttribute("role", "group");
      quick.setAttribute("aria-label", t("quickReplies"));
      frame.buttons.forEach(function (b) {
        var btn = buildButton(b, quick);
        if (btn) quick.appendChild(btn);
      });
      if (quick.childElementCount) body.appendChild(quick);
    }
  }

  /** The titles of a message's `sources` ([{id, title, source}]), each once. */
  function sourceTitles(sources) {
    var titles = [];
    (Array.isArray(sources) ? sources : []).forEach(function (src) {
      var title = src && typeof src === "object" ? str(src.title) || str(src.id) : str(src);
      if (title && titles.indexOf(title) < 0) titles.push(title);
    });
    return titles.slice(0, 3);
  }

  /** A reply button ({title, payload}) or a link button ({title, url}); null when unusable. */
  function buildButton(b, group) {
    if (!b || typeof b !== "object") return null;
    var title = str(b.title) || str(b.payload);
    if (typeof b.payload === "string" && b.payload) {
      var btn = bidi(el("button", "chip", title));
      btn.type = "button";
      btn.addEventListener("click", function () {
        if (group) {
          Array.prototype.forEach.call(group.querySelectorAll("button"), function (x) { x.disabled = true; });
          btn.classList.add("chosen");
        }
        sendAction(b.payload, title);
        // The chosen button is disabled and its group hidden: keep the keyboard in the chat.
        input.focus({ preventScroll: true });
      });
      return btn;
    }
    var href = safeUrl(b.url);
    if (!href) return null;
    var a = bidi(link(href, title));
    a.className = "chip";
    a.appendChild(icon("external"));
    return a;
  }

  /** A card that is nothing but an image: what a response's `image:` becomes on the wire. */
  function imageOnly(c) {
    return !!safeImage(c.image) && !str(c.title) && !str(c.subtitle) && !safeUrl(c.url) &&
      !(Array.isArray(c.buttons) && c.buttons.length);
  }

  function cardImage(src, alt) {
    var im = el("img");
    im.alt = alt;
    im.loading = "lazy";
    im.decoding = "async";
    im.referrerPolicy = "no-referrer";
    im.addEventListener("error", function () { im.hidden = true; });
    im.addEventListener("load", function () { if (nearBottom()) scrollToEnd(); });
    im.src = src;
    return im;
  }

  function buildCards(cards) {
    cards = cards.filter(function (c) { return c && typeof c === "object"; });
    var wrap = el("div", "cards");
    // Images alone are pictures in the conversation, not a list of products.
    var products = !cards.every(imageOnly);
    if (products) {
      wrap.setAttribute("role", "list");
      wrap.setAttribute("aria-label", t("products"));
    }
    cards.forEach(function (c) {
      var card = el(products ? "article" : "figure", "card");
      if (products) card.setAttribute("role", "listitem");
      var img = safeImage(c.image);
      if (imageOnly(c)) {
        // Shown whole (not cropped to a thumbnail), and opened full size where it has an
        // address a new tab can show (browsers refuse to open data: URLs there).
        card.classList.add("image-only");
        var im = cardImage(img, t("image"));
        var full = safeUrl(c.image);
        if (full) {
          var a = link(full, null);
          a.className = "image-link";
          a.title = t("openImage");
          a.appendChild(im);
          card.appendChild(a);
        } else {
          card.appendChild(im);
        }
        wrap.appendChild(card);
        return;
      }
      if (img) card.appendChild(cardImage(img, str(c.title)));
      var bodyEl = el("div", "card-body");
      if (str(c.title)) bodyEl.appendChild(bidi(el("h3", "card-title", str(c.title))));
      if (c.subtitle) bodyEl.appendChild(bidi(el("p", "card-sub", str(c.subtitle))));
      var actions = el("div", "card-actions");
      var href = safeUrl(c.url);
      if (href) {
        var a = link(href, t("view"));
        a.className = "chip";
        a.appendChild(icon("external"));
        actions.appendChild(a);
      }
      (Array.isArray(c.buttons) ? c.buttons : []).forEach(function (b) {
        var btn = buildButton(b, null);
        if (btn) actions.appendChild(btn);
      });
      if (actions.childElementCount) bodyEl.appendChild(actions);
      card.appendChild(bodyEl);
      wrap.appendChild(card);
    });
    return wrap;
  }

  function clearTranscript() {
    Array.prototype.forEach.call(msgs.querySelectorAll(".row:not(.pending):not(.failed)"), function (r) {
      r.parentNode.removeChild(r);
    });
    rendered.clear();
    streams.clear();
    closedRow = null;
    joinedLine = null;
    lastEventId = null;
    currentAgent = null;
    hideTyping();
    afterChange(true);
  }

  function countUnread() {
    if (isOpen || !isLive()) return;
    unread++;
    updateLauncher();
  }

  function onMessage(f) {
    var id = typeof f.event_id === "string" ? f.event_id : null;
    if (id && rendered.has(id)) {
      // Already on screen (streamed, or replayed twice): only fill in what a stream lacks.
      var known = rendered.get(id);
      if (known.dataset.streamed && typeof f.text === "string") {
        renderRich(known.querySelector(".bubble"), f.text);
        attachExtras(known, f);
        afterChange(nearBottom());
      }
      return;
    }
    // A system line ends any answer still streaming: an agent took over or closed the
    // conversation, or the bot was interrupted, and that answer will never be stored.
    if (f.role === "system") endOpenStreams();
    if (f.role === "system" && joinedLine && str(f.agent) === joinedLine.agent) {
      // The words that go with the agent_joined handoff already shown (see onHandoff).
      if (id) {
        rendered.set(id, joinedLine.row);
        noteEventId(id);
      }
      joinedLine = null;
      return;
    }
    joinedLine = null;
    if (f.role === "system" && str(f.agent)) {
      // An agent's system line other than the joined one is their closing line: the header
      // stops naming them (a customer who writes again reopens it with the bot).
      currentAgent = null;
      if (connState === "online") setConn("online");
    }
    if (f.role === "user" && adoptPending(f, id)) return;
    var row = buildRow(f);
    insertRow(row);
    if (id) {
      rendered.set(id, row);
      noteEventId(id);
    }
    // An agent's other system line may come with a change of status that this socket is not
    // told about in a frame of its own (closing the conversation): read the status again.
    if (f.role === "system" && str(f.agent) && isLive() && !closedRow) refreshStatus();
    if (f.role !== "user") {
      hideTyping();
      var who = f.role === "agent" ? str(f.agent) || t("anAgent") : f.role === "bot" ? t("assistant") : "";
      if (isLive()) announce(who ? who + ": " + str(f.text) : str(f.text));
      if (f.role !== "system") countUnread();
    }
  }

  /** The stored copy of a message this tab sent: mark the pending bubble sent instead of adding one. */
  function adoptPending(f, id) {
    var entry = null;
    for (var i = 0; i < outbox.length && !entry; i++) {
      var o = outbox[i];
      if (f.client_id) {
        if (o.client_id === f.client_id) entry = o;
      } else if ((o.kind === "message" ? o.text : o.title) === f.text &&
                 (typeof f.ts !== "number" || f.ts * 1000 > o.at - 5000)) {
        // No client_id in the frame: same text, stored after we queued it (5 s for clock skew).
        entry = o;
      }
    }
    if (!entry) return false;
    var row = markSent(entry.client_id);
    if (id && row) {
      rendered.set(id, row);
      noteEventId(id);
    }
    return !!row;
  }

  function markSent(clientId) {
    outbox = outbox.filter(function (o) { return o.client_id !== clientId; });
    persistOutbox();
    var row = rowFor(clientId);
    if (!row) return null;
    row.classList.remove("pending", "failed");
    var meta = row.querySelector(".meta");
    if (meta) meta.parentNode.removeChild(meta);
    return row;
  }

  function cssEscape(s) {
    return window.CSS && CSS.escape ? CSS.escape(s) : s.replace(/["\\]/g, "\\$&");
  }

  function rowFor(clientId) {
    return msgs.querySelector('.row[data-client-id="' + cssEscape(clientId) + '"]');
  }

  function onAck(f) {
    var cid = str(f.client_id);
    var id = str(f.event_id);
    var row = rowFor(cid);
    inflight = inflight.filter(function (x) { return x !== cid; });
    if (row && id && rendered.has(id) && rendered.get(id) !== row) {
      // The stored copy was already replayed (an earlier ack was lost): keep that one.
      markSent(cid);
      row.parentNode.removeChild(row);
      afterChange(false);
      return;
    }
    markSent(cid);
    // Not noteEventId: an ack can overtake events still being fanned out to this socket, and
    // `after` must never skip past those. A replay of this event is caught by `rendered`.
    if (row && id) rendered.set(id, row);
  }

  function onStreamStart(f) {
    var sid = str(f.stream_id);
    if (!sid || streams.has(sid)) return;
    hideTyping();
    var row = buildRow({ role: f.role === "agent" ? "agent" : "bot", text: "", agent: f.agent });
    row.classList.add("streaming");
    insertRow(row);
    streams.set(sid, { row: row, bubble: row.querySelector(".bubble"), text: "", raf: 0 });
  }

  function onStreamDelta(f) {
    var s = streams.get(str(f.stream_id));
    if (!s || typeof f.text !== "string") return;
    s.text += f.text;
    if (s.raf) return;
    // Re-render at most once a frame: deltas can arrive far faster than paints.
    s.raf = requestAnimationFrame(function () {
      s.raf = 0;
      var stick = nearBottom();
      renderRich(s.bubble, s.text);
      if (stick) scrollToEnd();
    });
  }

  function onStreamEnd(f) {
    var sid = str(f.stream_id);
    var s = streams.get(sid);
    if (!s) return;
    streams.delete(sid);
    if (s.raf) cancelAnimationFrame(s.raf);
    var stick = nearBottom();
    // A stream_end sent in place of a stored message (after a resume) carries the full text,
    // and the stored reply may add buttons or cards the deltas could not.
    var text = typeof f.text === "string" && f.text ? f.text : s.text;
    renderRich(s.bubble, text);
    attachExtras(s.row, f);
    s.row.classList.remove("streaming");
    if (f.dropped === true) s.row.classList.add("interrupted"); // cut off, never stored
    var id = typeof f.event_id === "string" ? f.event_id : null;
    if (id && rendered.has(id)) {
      s.row.parentNode.removeChild(s.row); // the stored message got here first
    } else if (id) {
      joinedLine = null;
      s.row.dataset.streamed = "1";
      rendered.set(id, s.row);
      noteEventId(id);
      announce((s.row.classList.contains("agent") ? currentAgent || t("anAgent") : t("assistant")) + ": " + text);
      countUnread(); // streams are never replayed: always live
    }
    afterChange(stick);
  }

  function endOpenStreams() {
    streams.forEach(function (s) {
      if (s.raf) cancelAnimationFrame(s.raf);
      renderRich(s.bubble, s.text);
      s.row.classList.remove("streaming");
      s.row.classList.add("interrupted");
    });
    streams.clear();
  }

  /** After a reconnect the server replays the stored copy of any reply cut off mid-stream. */
  function dropInterruptedStreams() {
    streams.forEach(function (s) {
      if (s.raf) cancelAnimationFrame(s.raf);
      if (s.row.parentNode) s.row.parentNode.removeChild(s.row);
    });
    streams.clear();
    afterChange(false);
  }

  function onTyping(f) {
    if (f.on) showTyping(f.role, f.agent);
    else hideTyping();
  }

  /**
   * An agent's arrival is stored twice: this `handoff` (the change of state) and, right after
   * it, a system message in the server's words for clients that know no handoff frames. The
   * customer sees one line: this one, in their language; the system message maps onto it.
   */
  var joinedLine = null; // { agent, row } while the newest stored event is an agent_joined

  function onHandoff(f) {
    var id = typeof f.event_id === "string" ? f.event_id : null;
    if (id && rendered.has(id)) return;
    joinedLine = null;
    var name = str(f.agent) || currentAgent || t("anAgent");
    var text;
    if (f.state === "requested") text = t("handoffRequested");
    else if (f.state === "agent_joined") { currentAgent = str(f.agent) || null; text = t("agentJoined", { name: name }); }
    else if (f.state === "agent_left") { currentAgent = null; text = t("agentLeft", { name: name }); }
    else return;
    var row = buildRow({ role: "system", text: text, ts: f.ts });
    insertRow(row);
    if (id) {
      rendered.set(id, row);
      noteEventId(id);
    }
    if (f.state === "agent_joined") joinedLine = { agent: str(f.agent), row: row };
    if (isLive()) announce(text);
    if (connState === "online") setConn("online");
  }

  function onError(f) {
    var code = str(f.code);
    var text;
    if (code === "rate_limited") text = t("rateLimited");
    else if (code === "text_too_long" || code === "frame_too_large") text = t("tooLong", { n: MAX_LEN });
    else if (code === "session_expired" || code === "unavailable") text = null;
    else text = t("errorGeneric", { message: str(f.message) || code || "?" });
    if (text) toast(text);
    // The message this error names is answered on this socket: whatever happens to it next
    // (a resend, or failed), a later error that names none is not about it.
    if (f.client_id) inflight = inflight.filter(function (c) { return c !== str(f.client_id); });

    if (!started) {
      // Only `start` goes out before `session`, so this error answers it (Redis away, say)
      // and nothing more will come on this socket: close it, and onclose tries again with
      // backoff. Left open, the widget would wait for a `session` that never comes.
      if (ws) ws.close();
      return;
    }
    if (code === "session_expired") {
      // Reconnecting with the stale id makes the server start a new conversation; the
      // outbox is delivered into that one.
      if (ws) ws.close();
    } else if (code === "rate_limited" || code === "unavailable") {
      // Resend everything unacked (deduped server-side): a limit may have refused more
      // than the message this error names.
      retryOutboxLater();
    } else if (MESSAGE_ERRORS.indexOf(code) >= 0 && (f.client_id || inflight.length)) {
      // The error names the message it is about; failing that (a frame too large to read),
      // the server answers message frames in order, so it is the oldest one still waiting.
      // Either way it would fail again if resent.
      var cid = f.client_id ? str(f.client_id) : inflight[0];
      inflight = inflight.filter(function (c) { return c !== cid; });
      var entry = outbox.filter(function (o) { return o.client_id === cid; })[0];
      if (entry) markFailed(entry);
    }
  }

  var MESSAGE_ERRORS = ["text_too_long", "frame_too_large", "bad_field", "missing_field"];
  var inflight = []; // client_ids sent on this socket and not yet acked, oldest first
  var retryTimerOutbox = 0;

  function retryOutboxLater() {
    if (retryTimerOutbox) return;
    retryTimerOutbox = setTimeout(function () {
      retryTimerOutbox = 0;
      outbox.forEach(transmit);
    }, 3000 + Math.random() * 2000);
  }

  function markFailed(entry) {
    outbox = outbox.filter(function (o) { return o !== entry; });
    persistOutbox();
    var row = rowFor(entry.client_id);
    if (!row) return;
    row.classList.remove("pending");
    row.classList.add("failed");
    var meta = row.querySelector(".meta");
    meta.textContent = t("notSent");
    var retry = el("button", "link-btn", t("retry"));
    retry.type = "button";
    retry.addEventListener("click", function () {
      row.classList.remove("failed");
      row.classList.add("pending");
      meta.textContent = t("sending");
      outbox.push(entry);
      persistOutbox();
      transmit(entry);
    });
    meta.appendChild(retry);
  }

  function onSession(f) {
    var sid = str(f.session_id);
    // Resuming the conversation it asked for, a page that has not shown its history yet gets
    // it now: what arrives until the replay ends is not news. A new conversation has none,
    // and a reconnect replays only what this page has not seen, which is news.
    replayingHistory = !historyShown && !!saved.session_id && saved.session_id === sid;
    // The server names the last event its replay sends: the replay ends there. Without that
    // field (an older server) it ends after a pause in the frames.
    historyTo = typeof f.history_to === "string" ? f.history_to : f.history_to === null ? "" : undefined;
    if (replayingHistory && historyTo === "") endReplay();
    else if (replayingHistory && historyTo === undefined) extendReplay();
    else if (!replayingHistory) historyShown = true;
    if (saved.session_id !== sid && (saved.session_id || rendered.size)) {
      // The server started a new conversation (ours expired or was unknown).
      clearTranscript();
    }
    saved = { session_id: sid, token: str(f.token) };
    save("localStorage", KEY, saved);
    started = true;
    // The backoff starts over only once this socket has stayed up a while: a server that
    // answers `session` and then closes (1013 when history cannot be read) is retried slower
    // and slower, not every half second.
    clearTimeout(stableTimer);
    stableTimer = setTimeout(function () { attempt = 0; }, STABLE_AFTER_MS);
    setConn("online");
    if (awaitingHistory) {
      // The replay follows `session` at once; after a beat, an empty history is just empty.
      setTimeout(function () {
        awaitingHistory = false;
        afterChange(false);
      }, 400);
    }
    dropInterruptedStreams();
    showClosed(f.status === "closed");
    // The server deduplicates by client_id, so resending what may already be stored is safe.
    outbox.forEach(transmit);
    var queued = trackQueue;
    trackQueue = [];
    queued.forEach(sendFrame);
  }

  var closedRow = null;
  function showClosed(closed) {
    if (!closed) {
      if (closedRow && closedRow.parentNode) closedRow.parentNode.removeChild(closedRow);
      closedRow = null;
      return;
    }
    if (closedRow) return;
    closedRow = el("div", "row system closed-note");
    var col = el("div");
    col.appendChild(el("div", "sys", t("closedLine")));
    var again = el("button", "chip sys-action", t("newConversation"));
    again.type = "button";
    again.addEventListener("click", newConversation);
    col.appendChild(again);
    closedRow.appendChild(col);
    msgs.appendChild(closedRow);
    afterChange(true);
  }

  function newConversation() {
    saved = {};
    save("localStorage", KEY, null);
    clearTranscript();
    showClosed(false);
    if (ws) {
      refreshing = true; // onclose reconnects at once, with session_id null
      ws.close();
    } else {
      connect();
    }
    input.focus();
  }

  var FRAME_HANDLERS = {
    session: onSession,
    ack: onAck,
    message: onMessage,
    stream_start: onStreamStart,
    stream_delta: onStreamDelta,
    stream_end: onStreamEnd,
    typing: onTyping,
    handoff: onHandoff,
    error: onError,
  };

  // ---------------------------------------------------------------- connection

  var ws = null;
  var started = false; // the server answered our `start`; other frames may go out
  var refreshing = false; // the socket was closed on purpose, to read the status again
  var wanted = false; // connect lazily: on open, on track, or when a conversation exists
  var attempt = 0;
  var retryTimer = 0;
  var stableTimer = 0; // resets `attempt` once a started socket has stayed up STABLE_AFTER_MS

  function connect() {
    wanted = true;
    if (ws) return;
    clearTimeout(retryTimer);
    retryTimer = 0;
    setConn(attempt ? "reconnecting" : "connecting");
    var sock;
    try {
      sock = new WebSocket(WS_URL);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    var openTimer = setTimeout(function () {
      if (sock.readyState === WebSocket.CONNECTING) sock.close();
    }, CONNECT_TIMEOUT_MS);
    sock.onopen = function () {
      clearTimeout(openTimer);
      // On a fresh page lastEventId is null, so the whole history is replayed and rendered
      // once; on a reconnect only what this page has not seen yet.
      sock.send(JSON.stringify({
        type: "start",
        session_id: saved.session_id || null,
        token: saved.token || null,
        after: lastEventId,
        customer: null,
      }));
    };
    sock.onmessage = function (ev) {
      if (ws !== sock || typeof ev.data !== "string") return;
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      if (!f || typeof f !== "object" || typeof f.type !== "string") return;
      var handler = FRAME_HANDLERS[f.type];
      if (!handler) return; // newer server, newer frame types: ignore
      if (replayingHistory && historyTo === undefined && f.type !== "session") extendReplay();
      try {
        handler(f);
      } catch (err) {
        // One odd frame must not take the conversation down with it.
        if (window.console) console.error("[deskmate] could not handle frame", f.type, err);
      }
      if (replayingHistory && historyTo && f.event_id === historyTo) endReplay(); // the last of it
    };
    sock.onclose = function () {
      clearTimeout(openTimer);
      if (ws !== sock) return;
      ws = null;
      started = false;
      clearTimeout(stableTimer);
      endReplay(true);
      inflight = [];
      if (awaitingHistory) {
        awaitingHistory = false;
        afterChange(false);
      }
      hideTyping();
      streams.forEach(function (s) { s.row.classList.add("interrupted"); });
      if (refreshing) {
        refreshing = false;
        connect();
      } else {
        scheduleReconnect();
      }
    };
    sock.onerror = function () { /* a close event follows */ };
  }

  /**
   * Resume on a fresh socket to read the conversation's status from `session` (only that
   * frame states it). The resume asks for events after lastEventId: nothing shows twice.
   */
  function refreshStatus() {
    if (!ws || !started) return;
    refreshing = true;
    ws.close();
  }

  function scheduleReconnect() {
    if (!wanted || retryTimer) return;
    var cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, attempt));
    var delay = cap / 2 + Math.random() * (cap / 2); // jitter, so a restarted server is not stampeded
    attempt++;
    setConn(navigator.onLine === false ? "offline" : "reconnecting");
    retryTimer = setTimeout(function () {
      retryTimer = 0;
      connect();
    }, delay);
  }

  function reconnectNow() {
    if (!wanted || ws) return;
    clearTimeout(retryTimer);
    retryTimer = 0;
    connect();
  }

  function sendFrame(frame) {
    if (!ws || !started || ws.readyState !== WebSocket.OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch (e) {
      return false;
    }
  }

  function transmit(entry) {
    var frame = entry.kind === "action"
      ? { type: "action", client_id: entry.client_id, payload: entry.payload, title: entry.title }
      : { type: "message", client_id: entry.client_id, text: entry.text };
    if (!sendFrame(frame)) connect(); // stays in the outbox; sent again after `session`
    else if (inflight.indexOf(entry.client_id) < 0) inflight.push(entry.client_id);
  }

  function queueOutgoing(entry, text) {
    showClosed(false); // writing again reopens a closed conversation
    outbox.push(entry);
    persistOutbox();
    appendPending(pendingRow(entry, text));
    transmit(entry);
  }

  function pendingRow(entry, text) {
    var row = buildRow({ role: "user", text: text });
    row.classList.add("pending");
    row.dataset.clientId = entry.client_id;
    row.querySelector(".body").appendChild(el("div", "meta", t("sending")));
    return row;
  }

  function sendText(text) {
    text = str(text).replace(/^\s+|\s+$/g, "");
    if (!text) return false;
    if (charCount(text) > MAX_LEN) {
      toast(t("tooLong", { n: MAX_LEN }));
      return false;
    }
    queueOutgoing({ client_id: newClientId(), kind: "message", text: text, at: Date.now() }, text);
    return true;
  }

  function sendAction(payload, title) {
    queueOutgoing(
      { client_id: newClientId(), kind: "action", payload: str(payload), title: title || null, at: Date.now() },
      title || payload
    );
  }

  function track(name, data) {
    if (typeof name !== "string" || !name || name.length > 64) return;
    var frame = { type: "track", name: name, data: data && typeof data === "object" && !Array.isArray(data) ? data : {} };
    var json;
    try { json = JSON.stringify(frame); } catch (e) { return; } // not serialisable: drop it here, not on the wire
    if (new Blob([json]).size > MAX_FRAME_BYTES) {
      // The server would answer frame_too_large, naming no message: drop it here.
      if (window.console) console.warn("[deskmate] track(" + name + "): data too large, not sent");
      return;
    }
    if (!sendFrame(frame)) {
      trackQueue.push(frame);
      if (trackQueue.length > 50) trackQueue.shift();
      connect();
    }
  }

  // ---------------------------------------------------------------- open / close and input

  function open() {
    if (!isOpen) {
      isOpen = true;
      shell.classList.add("open");
      unread = 0;
      updateLauncher();
      save("sessionStorage", KEY + ":open", true);
      connect();
      scrollToEnd();
    }
    input.focus({ preventScroll: true });
  }

  function close() {
    if (!isOpen) return;
    var hadFocus = !!root.activeElement && root.activeElement !== launcher;
    isOpen = false;
    shell.classList.remove("open");
    updateLauncher();
    save("sessionStorage", KEY + ":open", null);
    // Move focus only when it was inside the panel, never away from the host page.
    if (hadFocus) launcher.focus();
  }

  function toggle() {
    if (isOpen) close();
    else open();
  }

  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight + 3, 120) + "px";
    sendBtn.disabled = !input.value.trim();
    var n = charCount(input.value);
    counter.hidden = n < MAX_LEN * 0.9;
    counter.textContent = n + " / " + MAX_LEN;
    counter.classList.toggle("over", n > MAX_LEN);
  }

  function submit() {
    if (sendText(input.value)) {
      input.value = "";
      autosize();
    }
    input.focus();
  }

  launcher.addEventListener("click", toggle);
  closeBtn.addEventListener("click", close);
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    submit();
  });
  input.addEventListener("input", autosize);
  input.addEventListener("keydown", function (e) {
    // isComposing: Enter that confirms an IME candidate (Chinese input) must not send.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submit();
    }
  });
  root.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && isOpen && !e.isComposing) {
      e.stopPropagation();
      close();
    }
  });

  window.addEventListener("online", reconnectNow);
  window.addEventListener("offline", function () { if (!ws) setConn("offline"); });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) reconnectNow();
  });

  // ---------------------------------------------------------------- start

  var api = {
    version: "1",
    open: open,
    close: close,
    toggle: toggle,
    track: track,
  };
  window.deskmate = api;

  function mount() {
    document.body.appendChild(host);
    applyTheme();
    updateLauncher();
    // Messages still unacked when the page was left: show them and send them again.
    outbox.forEach(function (entry) {
      appendPending(pendingRow(entry, entry.kind === "action" ? entry.title || entry.payload : entry.text));
    });
    // Connect at once only when there is a conversation to show or to deliver to; a visitor
    // who never opens the chat does not create a session.
    if (saved.session_id || outbox.length) connect();
    if (load("sessionStorage", KEY + ":open")) {
      isOpen = true;
      shell.classList.add("open");
      updateLauncher();
      connect();
    }
    preloadQueue.forEach(function (call) {
      if (Array.isArray(call) && typeof api[call[0]] === "function") api[call[0]].apply(null, call.slice(1));
    });
  }

  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);
})();
