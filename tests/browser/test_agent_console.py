"""The agent console and the widget together, in a real browser against the real server.

A customer chats on /demo in one browser context while a support agent works in /agent in
another; agents are real accounts made with ``deskmate agent add`` (fixtures in conftest.py).
Where a second agent is needed but not its screen, it acts through the agent socket
(:class:`AgentClient`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from playwright.sync_api import expect
from websockets.sync.client import connect as ws_connect

if TYPE_CHECKING:  # fixtures' types; conftest is not imported at run time
    from conftest import AgentClient, Console, DeskmateServer, Widget

ROOT = Path(__file__).resolve().parents[2]

# Records each text a streaming bot bubble shows in the console, as it grows.
STREAM_PROBE = """() => {
  window.__partials = [];
  new MutationObserver(() => {
    for (const b of document.querySelectorAll('#transcript .msg.streaming .bubble'))
      window.__partials.push(b.textContent);
  }).observe(document.getElementById('transcript'),
             {childList: true, subtree: true, characterData: true});
}"""

HOSTILE = ('<img src=x onerror=alert(1)> <script>alert(2)</script> <b>bold</b> '
           '<a href="javascript:alert(3)">link</a> "quotes" & ampersands')


def signed_in(server: DeskmateServer, new_console: Callable[..., Console],
              agent_name: Callable[[str], str], name: str = "anna") -> tuple[Console, str]:
    """A console signed in as a new agent; (console, the agent's name)."""
    name = agent_name(name)
    console = new_console()
    console.goto(server.url)
    console.sign_in(name, server.add_agent(name))
    return console, name


def greeted(server: DeskmateServer, new_widget: Callable[..., Widget], text: str = "hello",
            ) -> Widget:
    """A customer on /demo who said ``text`` and got the bot's answer."""
    widget = new_widget()
    widget.goto(server.url)
    widget.open()
    widget.send(text)
    widget.wait_sent()
    widget.wait_bot_replies(1)
    return widget


def chat(server: DeskmateServer, texts: list[str]) -> None:
    """A customer without a browser: ``texts`` said on /ws/chat, each answered."""
    with ws_connect(server.url.replace("http", "ws", 1) + "/ws/chat", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "session_id": None, "token": None, "after": None,
                            "customer": None}))
        for text in texts:
            ws.send(json.dumps({"type": "message", "client_id": uuid.uuid4().hex, "text": text}))
            while True:  # the bot's typing goes off after its reply is stored
                frame = json.loads(ws.recv(timeout=15))
                if frame["type"] == "typing" and not frame["on"]:
                    break


def test_takeover_reply_handback_and_reload(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_console: Callable[..., Console], agent_name: Callable[[str], str],
        artifacts: Path) -> None:
    console, name = signed_in(server, new_console, agent_name)
    customer = greeted(server, new_widget, "Hello there")
    sid = customer.session_id()

    # The conversation appears in the list while the console is open, with its last message.
    item = console.item(sid)
    expect(item).to_be_visible()
    expect(item.locator(".line2")).to_contain_text("Bot:")
    console.open(sid)
    expect(console.rows(".user .bubble")).to_have_text(["Hello there"])
    expect(console.rows(".bot")).to_have_count(1)
    expect(console.page.locator("#conv-status")).to_have_text("bot")

    # The bot's next reply streams into the open conversation.
    console.page.evaluate(STREAM_PROBE)
    customer.send("Can I return sale items?")
    customer.wait_bot_replies(2)
    expect(console.rows(".bot:not(.streaming)")).to_have_count(2)
    final = console.rows(".bot .bubble").last.inner_text()
    kinds = [f["type"] for f in console.received if f.get("session_id") == sid]
    assert {"stream_start", "stream_delta", "stream_end"} <= set(kinds), kinds
    partials = console.page.evaluate("window.__partials")
    assert any(p and p != final and final.startswith(p.strip()) for p in partials), partials
    expect(console.page.locator("#transcript .analysis")).to_have_count(2)  # the bot's reading

    # Take over: the customer is told once, and the bot stops answering.
    console.button("takeover").click()
    expect(console.page.locator("#conv-status")).to_have_text("agent")
    expect(console.rows(".system .sys")).to_have_text([f"{name} took over"])
    expect(customer.rows(".system .sys")).to_have_text([f"{name} joined the chat."])
    expect(customer.status).to_contain_text(name)
    customer.send("Are you a real person?")
    customer.wait_sent()
    expect(console.rows(".user")).to_have_count(3)

    # Typing shows on the customer's side; the reply is an agent's message, not the bot's.
    box = console.page.locator("#reply-text")
    expect(box).to_be_enabled()
    box.press_sequentially("Yes")
    expect(customer.typing).to_contain_text(f"{name} is typing")
    box.fill(f"Yes! I'm **{name}** from the support team.")
    box.press("Enter")
    expect(box).to_have_value("")
    agent_row = customer.rows(".agent")
    expect(agent_row).to_have_count(1)
    expect(customer.typing).to_be_hidden()
    expect(agent_row.locator(".who")).to_have_text(f"{name} · Support agent")
    expect(agent_row.locator(".bubble strong")).to_have_text(name)
    # The console renders the reply as the customer sees it.
    expect(console.rows(".agent .bubble")).to_have_text([f"Yes! I'm {name} from the support team."])
    expect(console.rows(".agent .bubble strong")).to_have_text([name])
    styles = customer.page.evaluate("""() => {
      const r = document.getElementById('deskmate-widget').shadowRoot;
      const look = s => { const c = getComputedStyle(r.querySelector(s));
                          return [c.backgroundColor, c.boxShadow]; };
      return [look('.row.bot .bubble'), look('.row.agent .bubble')];
    }""")
    assert styles[0] != styles[1], styles
    assert [role for role, _ in customer.transcript()] == [
        "user", "bot", "user", "bot", "system", "user", "agent"], customer.transcript()
    customer.page.screenshot(path=artifacts / "e2e-widget-agent.png")
    console.page.screenshot(path=artifacts / "e2e-console-agent.png")

    # Hand back: the customer is told, and the bot answers the next message.
    console.button("handback").click()
    expect(console.page.locator("#conv-status")).to_have_text("bot")
    expect(customer.rows(".system .sys").last).to_have_text(f"{name} left the chat.")
    customer.send("What are your delivery options?")
    customer.wait_bot_replies(3)
    expect(console.rows(".bot:not(.streaming)")).to_have_count(3)
    assert [role for role, _ in customer.transcript()][-3:] == ["system", "user", "bot"]

    # A reload keeps the whole history on both screens, each line once; the console is
    # still signed in (sessionStorage) and reopens the conversation it had open.
    widget_before, console_before = customer.transcript(), console.transcript()
    customer.page.reload()
    customer.page.wait_for_function("() => window.deskmate && window.deskmate.version")
    console.page.reload()
    expect(console.page.locator("#me")).to_have_text(name)
    expect(console.page.locator("#login-view")).to_be_hidden()
    expect(customer.rows()).to_have_count(len(widget_before))
    expect(console.rows()).to_have_count(len(console_before))
    customer.page.wait_for_timeout(500)  # anything replayed twice would be on screen by now
    assert customer.transcript() == widget_before
    assert console.transcript() == console_before
    expect(console.item(sid)).to_have_class(re.compile(r"\bactive\b"))
    assert customer.dialogs == [] and console.dialogs == []


def test_html_and_script_stay_text_in_both(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_console: Callable[..., Console], agent_name: Callable[[str], str]) -> None:
    console, name = signed_in(server, new_console, agent_name)
    customer = greeted(server, new_widget, HOSTILE)
    sid = customer.session_id()
    expect(console.item(sid).locator(".line2")).to_be_visible()
    console.open(sid)
    console.button("takeover").click()
    expect(console.page.locator("#reply-text")).to_be_enabled()
    console.reply(HOSTILE)
    expect(customer.rows(".agent")).to_have_count(1)
    console.page.locator("#note-text").fill(HOSTILE)
    console.page.locator("#note-send").click()
    expect(console.rows(".note")).to_have_count(1)

    def inert(console_markup: str, widget_markup: str) -> None:
        expect(console.rows(".user .bubble")).to_have_text([HOSTILE])
        expect(console.rows(".agent .bubble")).to_have_text([HOSTILE])
        expect(console.rows(".note .bubble")).to_have_text([HOSTILE])
        expect(customer.rows(".user .bubble")).to_have_text([HOSTILE])
        expect(customer.rows(".agent .bubble")).to_have_text([HOSTILE])
        assert console.page.evaluate(console_markup) == 0
        assert customer.page.evaluate(widget_markup) == 0
        console.page.wait_for_timeout(300)  # an onerror handler would have fired by now
        assert console.dialogs == [] and customer.dialogs == []

    # The console page has no images, links or inline scripts of its own; the list's last
    # line holds only its "Customer:" label.
    console_markup = """() => document.querySelectorAll(
        'img, script:not([src]), a, iframe, #transcript b:not(.msg-head b), ' +
        '#session-list .line2 :not(.last-role)').length"""
    widget_markup = """() => document.getElementById('deskmate-widget').shadowRoot
        .querySelectorAll('.bubble img, .msgs script, .bubble b, .bubble a, a[href^="javascript"]')
        .length"""
    inert(console_markup, widget_markup)
    # The list shows the last message as text too.
    expect(console.item(sid).locator(".line2")).to_contain_text("<img src=x")
    console.page.reload()  # and again when it comes back from the replay
    customer.page.reload()
    customer.open()
    inert(console_markup, widget_markup)


def test_a_wrong_password_is_refused(server: DeskmateServer, new_console: Callable[..., Console],
                                     agent_name: Callable[[str], str]) -> None:
    name = agent_name("carol")
    server.add_agent(name)
    console = new_console()
    console.goto(server.url)
    console.page.fill("#login-name", name)
    console.page.fill("#login-password", "not-the-password")
    console.page.click("#login-submit")
    error = console.page.locator("#login-error")
    expect(error).to_be_visible()
    expect(error).to_have_text("wrong name or password")
    expect(console.page.locator("#app-view")).to_be_hidden()
    expect(console.page.locator("#login-password")).to_be_focused()
    assert console.page.evaluate("sessionStorage.getItem('deskmate:agent:v1')") is None


def test_a_sign_in_the_server_cannot_take_now_returns_to_the_form(
        server: DeskmateServer, new_console: Callable[..., Console]) -> None:
    console = new_console()

    def busy(ws: Any) -> None:  # the server's answer while Redis is away: an error, then 1013
        def refuse(_: str | bytes) -> None:
            ws.send(json.dumps({"type": "error", "code": "unavailable",
                                "message": "briefly unavailable; please retry"}))
            ws.close(code=1013, reason="try again later")
        ws.on_message(refuse)

    console.page.route_web_socket("**/ws/agent", busy)
    console.goto(server.url)
    console.page.fill("#login-name", "dora")
    console.page.fill("#login-password", "whatever-it-is")
    console.page.click("#login-submit")
    error = console.page.locator("#login-error")
    expect(error).to_have_text("briefly unavailable; please retry")
    expect(console.page.locator("#login-submit")).to_be_enabled()
    expect(console.page.locator("#app-view")).to_be_hidden()


def test_a_second_agent_cannot_take_an_owned_conversation(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_console: Callable[..., Console], agent_name: Callable[[str], str],
        new_agent: Callable[..., AgentClient]) -> None:
    customer = greeted(server, new_widget)
    sid = customer.session_id()
    owner = new_agent("dora")
    owner.do("takeover", sid)
    console, name = signed_in(server, new_console, agent_name, "emil")
    expect(console.item(sid).locator(".owner")).to_have_text(owner.name)
    console.open(sid)
    expect(console.page.locator("#conv-agent")).to_have_text(f"with {owner.name}")
    expect(console.page.locator("#reply-text")).to_be_disabled()
    console.button("takeover").click()
    expect(console.error).to_have_text(f"{owner.name} is handling this conversation")
    expect(console.page.locator("#conv-status")).to_have_text("agent")
    expect(customer.rows(".system .sys")).to_have_text([f"{owner.name} joined the chat."])


def test_an_internal_note_never_reaches_the_customer(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_console: Callable[..., Console], agent_name: Callable[[str], str]) -> None:
    secret = "internal: customer is on the fraud watch list"
    console, name = signed_in(server, new_console, agent_name, "fay")
    customer = greeted(server, new_widget)
    sid = customer.session_id()
    console.open(sid)
    console.page.locator("#note-text").fill(secret)
    console.page.locator("#note-text").press("Enter")
    expect(console.rows(".note .bubble")).to_have_text([secret])
    expect(console.rows(".note .msg-head")).to_contain_text(f"Internal note · {name}")
    # Something the customer does see, stored after the note: when it is on screen, the note
    # would have been too.
    customer.send("Can I return sale items?")
    customer.wait_bot_replies(2)
    customer.page.reload()
    customer.open()
    expect(customer.rows()).to_have_count(4)
    for page_text in (customer.page.locator("#deskmate-widget").inner_text(),
                      str(customer.received)):
        assert "fraud" not in page_text
    assert not [f for f in customer.received if f.get("type") == "note"]


def test_a_customer_who_asks_for_a_person_goes_to_the_top_with_an_alert(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_console: Callable[..., Console], agent_name: Callable[[str], str],
        artifacts: Path) -> None:
    console, _ = signed_in(server, new_console, agent_name, "gus")
    asking = greeted(server, new_widget)
    other = greeted(server, new_widget)
    waiting_sid, other_sid = asking.session_id(), other.session_id()
    expect(console.item(other_sid)).to_be_visible()
    order = console.page.evaluate("""() => Array.from(document.querySelectorAll(
        '#session-list li.session')).map(li => li.dataset.sid)""")
    assert order.index(other_sid) < order.index(waiting_sid)  # the most recent first

    asking.send("I want to talk to a human")
    asking.wait_bot_replies(2)
    item = console.item(waiting_sid)
    expect(item).to_have_class(re.compile(r"\bstatus-waiting\b"))
    expect(item).to_have_class(re.compile(r"\balert\b"))
    expect(item.locator(".time")).to_contain_text("waiting")
    expect(console.page).to_have_title(re.compile(r"^\(\d+\) deskmate"))
    other.send("What are your delivery options?")  # newer activity does not outrank waiting
    other.wait_bot_replies(2)
    expect(console.item(other_sid).locator(".line2")).to_contain_text("Bot:")

    def position(sid: str) -> int:
        return int(console.page.evaluate("""sid => Array.from(document.querySelectorAll(
            '#session-list li.session')).findIndex(li => li.dataset.sid === sid)""", sid))

    above = console.page.evaluate("""n => Array.from(document.querySelectorAll(
        '#session-list li.session')).slice(0, n).map(li => li.classList.contains('status-waiting'))""",
                                  position(waiting_sid))
    # Waiting conversations come first (the longest wait first, so earlier tests' may be
    # above it), then everything else.
    assert all(above), above
    assert position(waiting_sid) < position(other_sid)
    console.page.screenshot(path=artifacts / "console-waiting.png")
    console.open(waiting_sid)
    expect(item).not_to_have_class(re.compile(r"\balert\b"))


def test_a_live_close_shows_in_the_widget(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_agent: Callable[..., AgentClient]) -> None:
    customer = greeted(server, new_widget)
    sid = customer.session_id()
    agent = new_agent("hana")
    agent.do("takeover", sid)
    expect(customer.rows(".system .sys")).to_have_text([f"{agent.name} joined the chat."])
    status = customer.page.locator("#deskmate-widget .head .status")
    expect(status).to_contain_text(agent.name)
    agent.do("close", sid)
    closed = customer.page.locator("#deskmate-widget .closed-note")
    expect(closed).to_be_visible()
    expect(status).not_to_contain_text(agent.name)  # the agent is gone from the header
    expect(closed.locator(".sys")).to_have_text("This conversation has ended.")
    expect(customer.rows(".system .sys")).to_have_text([
        f"{agent.name} joined the chat.",
        f"{agent.name} closed this conversation. Write again any time if you need more help.",
        "This conversation has ended."])
    # Writing again reopens it: the note goes, and the bot answers.
    customer.send("One more question: do you ship to Norway?")
    expect(closed).to_have_count(0)
    customer.wait_sent()
    customer.wait_bot_replies(2)


def test_a_knowledge_answer_names_its_source(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_console: Callable[..., Console], agent_name: Callable[[str], str]) -> None:
    console, _ = signed_in(server, new_console, agent_name, "ines")
    customer = greeted(server, new_widget)
    console.open(customer.session_id())
    customer.send("Can I return sale items?")
    customer.wait_bot_replies(2)
    expect(console.rows(".bot .sources")).to_have_count(1)
    source = console.rows(".bot .sources").inner_text()
    assert re.fullmatch(r"Source: \S.*", source), source
    expect(customer.rows(".bot .sources")).to_have_text([source], timeout=3000)


def test_readme_screenshots(server: DeskmateServer, new_widget: Callable[..., Widget],
                            new_console: Callable[..., Console], artifacts: Path) -> None:
    """The README's pictures: a customer helped by the bot, then by Anna, on both screens.
    DESKMATE_UPDATE_DOCS_IMG=1 copies them to docs/img/."""
    name = "Anna"  # only this test uses the plain name on the shared server
    for texts in (["Where is my order NW-10234?"], ["Do you ship to Norway?"],
                  ["My parcel is late again and nobody answers my emails. This is awful."]):
        chat(server, texts)  # other customers, so the list is not empty
    console = new_console()
    console.goto(server.url)
    console.sign_in(name, server.add_agent(name))
    customer = new_widget()
    customer.goto(server.url)
    customer.page.locator('.tile[data-id="P2001"] .tile-main').click()
    customer.open()
    customer.send("Hi! Which rain jacket do you recommend?")
    customer.wait_sent()
    customer.wait_bot_replies(1)
    customer.send("Can I talk to a person about sizing?")
    customer.wait_sent()
    customer.wait_bot_replies(2)
    sid = customer.session_id()
    console.open(sid)
    console.button("takeover").click()
    console.reply(f"Hi, I'm **{name}**! The Coastline runs *true to size*:\n"
                  "- M fits a 96–104 cm chest\n- Returns are free within 30 days")
    expect(customer.rows(".agent")).to_have_count(1)
    console.page.locator("#note-text").fill("Asked about sizes; offered M. Check stock tomorrow.")
    console.page.locator("#note-send").click()
    expect(console.rows(".note")).to_have_count(1)
    customer.send("Great, I'll take an M")
    customer.wait_sent()
    console.page.locator("#reply-text").fill("Lovely! I'll put one aside for you.")
    expect(customer.typing).to_be_visible()
    customer.page.evaluate("window.scrollTo(0, 0)")
    customer.page.wait_for_timeout(400)  # let transitions settle
    shots = {"widget": artifacts / "readme-widget.png", "console": artifacts / "readme-console.png"}
    customer.page.screenshot(path=shots["widget"])
    console.page.screenshot(path=shots["console"])
    if os.environ.get("DESKMATE_UPDATE_DOCS_IMG") == "1":
        for what, shot in shots.items():
            shutil.copyfile(shot, ROOT / "docs" / "img" / f"{what}.png")



def test_the_knowledge_review_teaches_the_bot(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_console: Callable[..., Console], new_agent: Callable[..., AgentClient],
        agent_name: Callable[[str], str], artifacts: Path) -> None:
    from bot.learning import proposal_id

    console, _ = signed_in(server, new_console, agent_name, "rita")
    console.page.click('.view-tab[data-view="review"]')
    expect(console.page.locator("#review-view")).to_be_visible()
    expect(console.page.locator("#session-list")).to_be_hidden()

    # A question the shop's knowledge does not cover; another agent answers it in two messages.
    question, answer = "Do you sell gift cards?", "Yes: digital gift cards from €20 to €200, sent by e-mail."
    customer = greeted(server, new_widget, question)
    sid = customer.session_id()
    bert = new_agent("bert")
    bert.do("takeover", sid)
    bert.say(sid, "Hi, I'm Bert.")
    bert.say(sid, answer)

    # The proposal shows up live; the reviewer tidies the answer and approves it.
    card = console.page.locator(f'#proposal-list li.proposal[data-pid="{proposal_id(sid, question)}"]')
    expect(card.locator(".p-answer")).to_have_value(f"Hi, I'm Bert.\n\n{answer}")
    expect(card.locator(".p-question")).to_have_value(question)
    expect(card.locator(".p-meta")).to_contain_text(f"Answered by {bert.name}")
    expect(console.page.locator("#review-count")).to_be_visible()
    card.locator(".p-answer").fill(answer)
    console.page.screenshot(path=artifacts / "console-review.png")
    card.locator(".p-approve").click()
    expect(card).to_have_count(0)
    expect(console.page.locator("#review-log")).to_contain_text(f"Approved by you: \u201c{question}\u201d")

    # The next customer who asks (in other words) gets the approved answer, with its source.
    asker = greeted(server, new_widget, "can I buy a gift card?")
    expect(asker.rows(".bot .bubble").last).to_have_text(answer)
    expect(asker.rows(".bot .sources").last).to_contain_text(question)

    # Rejected: gone from the list, and the bot has not learned it.
    other = greeted(server, new_widget, "Is there a loyalty programme?")
    other_sid = other.session_id()
    bert.do("takeover", other_sid)
    bert.say(other_sid, "Not yet, but we are working on one.")
    rejected = console.page.locator(
        f'#proposal-list li.proposal[data-pid="{proposal_id(other_sid, "Is there a loyalty programme?")}"]')
    expect(rejected.locator(".p-answer")).to_have_value("Not yet, but we are working on one.")
    rejected.locator(".p-reject").click()
    expect(rejected).to_have_count(0)
    expect(console.page.locator("#review-log")).to_contain_text("Rejected by you")
    # A reload keeps the view, and the list comes back without the reviewed proposals.
    console.page.reload()
    expect(console.page.locator("#review-view")).to_be_visible()
    expect(card).to_have_count(0)
    expect(rejected).to_have_count(0)


def test_admins_read_the_insights_report_in_the_console(
        server: DeskmateServer, new_console: Callable[..., Console],
        agent_name: Callable[[str], str], artifacts: Path) -> None:
    agent, _ = signed_in(server, new_console, agent_name, "ines")
    expect(agent.page.locator("#tab-insights")).to_be_hidden()  # admins only

    chat(server, ["Do you deliver on Sundays to the moon?"])
    name = agent_name("root")
    admin = new_console()
    admin.goto(server.url)
    admin.page.fill("#login-name", name)
    admin.page.fill("#login-password", server.add_agent(name, "admin"))
    admin.page.click("#login-submit")
    expect(admin.page.locator("#me")).to_have_text(f"{name} (admin)")
    admin.page.click("#tab-insights")
    admin.page.select_option("#report-since", "24h")
    admin.page.click("#report-build")
    expect(admin.page.locator("#report-status")).to_contain_text("conversations", timeout=60_000)
    report = admin.page.frame_locator("#report-frame")
    expect(report.locator("h1")).to_contain_text("insights", ignore_case=True)
    assert admin.page.locator("#report-frame").get_attribute("sandbox") == ""
    admin.page.screenshot(path=artifacts / "console-insights.png")


FOCUSED_SID = "() => document.activeElement && document.activeElement.dataset.sid || null"


def test_keyboard_focus_stays_on_its_conversation_while_the_list_updates(
        server: DeskmateServer, new_console: Callable[..., Console],
        agent_name: Callable[[str], str]) -> None:
    console, _ = signed_in(server, new_console, agent_name, "kim")
    chat(server, ["hello"])
    chat(server, ["do you ship to Germany?"])
    expect(console.items.nth(1)).to_be_visible()
    focused = console.items.nth(1)
    sid = focused.get_attribute("data-sid")
    focused.focus()
    assert console.page.evaluate(FOCUSED_SID) == sid
    updates = len([f for f in console.received if f["type"] == "session_update"])
    chat(server, ["what sizes do you have?"])  # a new conversation: the list is rebuilt
    console.page.wait_for_function(
        "n => document.querySelectorAll('#session-list li.session').length > n",
        arg=console.items.count() - 1)
    assert len([f for f in console.received if f["type"] == "session_update"]) > updates
    assert console.page.evaluate(FOCUSED_SID) == sid
    console.page.keyboard.press("Enter")  # and the keyboard carries on from there
    expect(console.item(str(sid))).to_have_class(re.compile(r"\bactive\b"))


def test_an_image_card_and_a_streaming_agent_show_in_the_console(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_console: Callable[..., Console], agent_name: Callable[[str], str]) -> None:
    """The agent socket is relayed through Playwright's websocket routing so that the bot's
    reply carries an image-only card (what an `image:` response becomes; the shop bot has
    none) and an agent's reply streams (the server streams only the bot's today)."""
    console = new_console()
    sockets: list[Any] = []

    def relay(page_side: Any) -> None:
        server_side = page_side.connect_to_server()
        sockets.append(page_side)

        def down(raw: str | bytes) -> None:
            if isinstance(raw, str):
                frame = json.loads(raw)
                if frame.get("type") == "message" and frame.get("role") == "bot":
                    frame["cards"] = [{"title": "", "subtitle": "", "image": "/img/size-chart.png",
                                       "url": "", "buttons": []}]
                    raw = json.dumps(frame)
            page_side.send(raw)
        server_side.on_message(down)
        page_side.on_message(server_side.send)

    console.page.route_web_socket(re.compile(r".*/ws/agent$"), relay)
    name = agent_name("lea")
    console.goto(server.url)
    console.sign_in(name, server.add_agent(name))
    customer = greeted(server, new_widget)
    sid = customer.session_id()
    console.open(sid)
    chip = console.rows(".bot").first.locator(".cards .chip")
    expect(chip).to_have_text("[image]")
    expect(chip).to_have_attribute("href", server.url + "/img/size-chart.png")

    sockets[-1].send(json.dumps({"type": "stream_start", "session_id": sid, "stream_id": "s-1",
                                 "role": "agent", "agent": "zoe"}))
    expect(console.rows(".agent.streaming .msg-head b")).to_have_text("zoe")
