"""The chat widget in a real browser against the real server (fixtures in conftest.py).

Each test is a new customer (a fresh browser context, so empty localStorage) on /demo.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from playwright.sync_api import expect

if TYPE_CHECKING:  # fixtures' types; conftest is not imported at run time
    from conftest import AgentClient, DeskmateServer, Widget

LAUNCHER_FOCUSED = """() => {
  const host = document.getElementById('deskmate-widget');
  const inner = host && host.shadowRoot.activeElement;
  return document.activeElement === host && !!inner && inner.classList.contains('launcher');
}"""


def test_chat_then_reload_shows_the_conversation_once(server: DeskmateServer, widget: Widget,
                                                      artifacts: Path) -> None:
    widget.goto(server.url)
    widget.open()
    widget.send("Hello there")
    expect(widget.rows(".user")).to_have_count(1)
    widget.wait_sent()
    widget.wait_bot_replies(1)
    widget.send("What are your delivery options?")
    widget.wait_sent()
    widget.wait_bot_replies(2)
    before = widget.transcript()
    assert [text for role, text in before if role == "user"] == [
        "Hello there", "What are your delivery options?"], before
    assert before[0] == ("user", "Hello there")
    widget.page.screenshot(path=artifacts / "widget-conversation.png")

    widget.page.reload()
    widget.page.wait_for_function("() => window.deskmate && window.deskmate.version")
    assert widget.is_open(), "the panel should stay open across a reload of the tab"
    expect(widget.rows()).to_have_count(len(before))
    widget.page.wait_for_timeout(1000)  # anything replayed twice would be on screen by now
    assert widget.transcript() == before

    starts = widget.frames("start")
    assert len(starts) == 2
    assert starts[0]["session_id"] is None
    # The reload resumes the same session and asks for the whole history again.
    assert starts[1]["session_id"] and starts[1]["token"] and starts[1]["after"] is None


def test_html_and_script_render_as_inert_text(server: DeskmateServer, widget: Widget) -> None:
    hostile = ('<img src=x onerror=alert(1)> <script>alert(2)</script> <b>bold</b> '
               '[click](javascript:alert(3)) "quotes" & ampersands')
    widget.goto(server.url)
    widget.open()
    widget.send(hostile)
    widget.wait_sent()
    widget.wait_bot_replies(1)

    def check() -> None:
        expect(widget.rows(".user .bubble")).to_have_text([hostile])
        found = widget.page.evaluate("""() => {
          const root = document.getElementById('deskmate-widget').shadowRoot;
          return {
            markup: root.querySelectorAll('.bubble img, .msgs script, .bubble b').length,
            jsLinks: root.querySelectorAll('a[href^="javascript"]').length,
            pageImgs: document.querySelectorAll('img').length,
            pageScripts: document.querySelectorAll('script:not([src])').length,
          };
        }""")
        assert found["markup"] == 0 and found["jsLinks"] == 0, found
        assert found["pageImgs"] == 0, found  # the demo page has no <img> of its own
        widget.page.wait_for_timeout(500)  # an onerror handler would have fired by now
        assert widget.dialogs == []

    check()
    widget.page.reload()  # and again when the message comes back from the server's replay
    widget.open()
    expect(widget.rows(".bot")).to_have_count(1)
    check()


def test_keyboard_only(server: DeskmateServer, widget: Widget, artifacts: Path) -> None:
    widget.goto(server.url)
    page = widget.page
    for _ in range(80):
        page.keyboard.press("Tab")
        if page.evaluate(LAUNCHER_FOCUSED):
            break
    else:
        raise AssertionError("Tab never reached the chat launcher")
    page.keyboard.press("Enter")
    expect(widget.input).to_be_focused()
    assert widget.is_open()
    expect(widget.launcher).to_have_attribute("aria-expanded", "true")

    page.keyboard.type("hello")
    page.keyboard.press("Enter")
    expect(widget.rows(".user .bubble")).to_have_text(["hello"])
    expect(widget.input).to_have_value("")
    widget.wait_sent()
    widget.wait_bot_replies(1)

    # The greeting's quick replies are the last stops before the composer: Shift+Tab reaches
    # one, Enter chooses it, and the keyboard is back in the composer.
    chips = widget.page.locator("#deskmate-widget .quick:not(.stale) button.chip")
    expect(chips.first).to_be_visible()
    titles = chips.all_inner_texts()
    page.keyboard.press("Shift+Tab")
    assert _focused_text(page) == titles[-1]
    page.keyboard.press("Enter")
    expect(widget.rows(".user .bubble").last).to_have_text(titles[-1])
    expect(widget.input).to_be_focused()
    widget.wait_sent()
    widget.wait_bot_replies(2)
    # The next reply's suggestions, chosen with Space this time.
    expect(chips.first).to_be_visible()
    title = chips.last.inner_text()
    page.keyboard.press("Shift+Tab")
    assert _focused_text(page) == title
    page.keyboard.press(" ")
    expect(widget.rows(".user .bubble").last).to_have_text(title)
    expect(widget.input).to_be_focused()
    assert [f["title"] for f in widget.frames("action")] == [titles[-1], title]
    widget.wait_sent()
    widget.wait_bot_replies(3)
    page.screenshot(path=artifacts / "widget-keyboard.png")

    page.keyboard.press("Escape")
    expect(widget.panel).to_be_hidden()
    assert not widget.is_open()
    assert page.evaluate(LAUNCHER_FOCUSED), "focus should return to the launcher"
    expect(widget.launcher).to_have_attribute("aria-expanded", "false")

    page.keyboard.press("Enter")  # the launcher still has focus: open again
    expect(widget.input).to_be_focused()
    # Shift+Enter is a new line, not a send.
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(widget.input).to_have_value("line one\nline two")
    expect(widget.rows(".user")).to_have_count(3)


def _focused_text(page: Any) -> str:
    """The text of the element focused inside the widget's shadow root."""
    return str(page.evaluate("""() => {
      const inner = document.getElementById('deskmate-widget').shadowRoot.activeElement;
      return inner ? inner.textContent : null;
    }"""))


def test_quick_reply_sends_an_action(server: DeskmateServer, widget: Widget) -> None:
    widget.goto(server.url)
    widget.open()
    widget.send("hello")
    widget.wait_bot_replies(1)
    chips = widget.page.locator("#deskmate-widget .quick:not(.stale) button.chip")
    expect(chips.first).to_be_visible()
    title = chips.first.inner_text()
    chips.first.click()

    expect(widget.rows(".user .bubble").last).to_have_text(title)
    widget.wait_sent()
    widget.wait_bot_replies(2)
    actions = widget.frames("action")
    assert len(actions) == 1, widget.sent
    assert actions[0]["title"] == title
    assert actions[0]["payload"].startswith("/")
    assert actions[0]["client_id"]
    # The buttons of an answered message are gone; a reload shows the click once, as text.
    expect(widget.page.locator("#deskmate-widget .quick.stale")).to_have_count(1)
    before = widget.transcript()
    widget.page.reload()
    widget.open()
    expect(widget.rows()).to_have_count(len(before))
    assert widget.transcript() == before


def test_product_click_sends_track(server: DeskmateServer, widget: Widget) -> None:
    widget.goto(server.url)
    widget.page.locator('.tile[data-id="P1201"] .tile-main').click()
    for _ in range(100):  # the widget connects first, then sends the queued frame
        if widget.frames("track"):
            break
        widget.page.wait_for_timeout(100)
    widget.page.wait_for_timeout(300)  # room for an error frame, if the server had one
    tracks = widget.frames("track")
    assert tracks == [{"type": "track", "name": "view_product", "data": {
        "id": "P1201", "name": "Hollow Chelsea Boot", "category": "boots", "price": 139.95,
        "currency": "EUR"}}]
    # track() opened a session without opening the panel, and the server took the frame.
    assert not widget.is_open()
    expect(widget.page.locator("#deskmate-widget .toast")).to_have_count(0)


def test_reconnects_then_starts_over_when_the_conversation_is_lost(
        server: DeskmateServer, new_widget: Callable[..., Widget], artifacts: Path) -> None:
    """Two restarts of the shared server (a start takes seconds, so they share a test). It is
    left running on an empty Redis: every test makes its own customers and agents."""
    widget = new_widget()
    widget.goto(server.url)
    widget.open()
    widget.send("hello")
    widget.wait_sent()
    widget.wait_bot_replies(1)

    # 1. The server goes away and comes back with its data: what was typed meanwhile is
    # delivered once, and the conversation resumes where it was.
    server.stop()
    banner = widget.page.locator("#deskmate-widget .banner")
    expect(banner).to_be_visible()
    widget.send("Where is my order?")  # queued while the server is down
    expect(widget.rows(".user.pending")).to_have_count(1)
    widget.page.screenshot(path=artifacts / "widget-reconnecting.png")

    server.start()  # same port, same Redis data
    expect(banner).to_be_hidden(timeout=30_000)
    widget.wait_sent()
    widget.wait_bot_replies(2)
    expect(widget.rows(".user")).to_have_count(2)
    transcript = widget.transcript()
    assert [text for role, text in transcript if role == "user"] == ["hello", "Where is my order?"]
    assert transcript[0] == ("user", "hello") and transcript[1][0] == "bot", transcript
    # Resumed with `after`, so the first exchange was not sent (or rendered) twice.
    starts = widget.frames("start")
    assert starts[-1]["after"], starts

    # 2. It comes back without the conversation (Redis wiped): the widget drops the old
    # transcript, keeps what is still unsent, and delivers it into a new conversation.
    old_sid = widget.session_id()
    server.stop()
    shutil.rmtree(server.data_dir / "redis")
    widget.send("Can I return sale items?")
    expect(widget.rows(".user.pending")).to_have_count(1)
    server.start()

    expect(widget.rows(".user")).to_have_count(1, timeout=30_000)
    widget.wait_sent()
    widget.wait_bot_replies(1)
    transcript = widget.transcript()
    assert [text for role, text in transcript if role == "user"] == ["Can I return sale items?"]
    assert transcript[0] == ("user", "Can I return sale items?"), transcript
    assert widget.session_id() != old_sid


def test_chinese_strings_from_html_lang(server: DeskmateServer, widget: Widget) -> None:
    widget.goto(server.url, "/demo?lang=zh")
    expect(widget.launcher).to_have_attribute("aria-label", "打开聊天")
    widget.open()
    expect(widget.input).to_have_attribute("placeholder", "输入消息…")


def test_mobile_layout_fills_the_screen(server: DeskmateServer,
                                        new_widget: Callable[..., Widget], artifacts: Path) -> None:
    widget = new_widget(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                        is_mobile=True, has_touch=True)
    widget.goto(server.url)
    widget.launcher.tap()
    widget.send("hello")
    widget.wait_bot_replies(1)
    # The panel slides in (a 0.18 s transition); a fast reply can come before it ends.
    widget.panel.evaluate("el => Promise.all(el.getAnimations().map(a => a.finished))")
    box = widget.panel.bounding_box()
    assert box is not None
    # Full screen, to within a device pixel (sub-pixel layout rounding differs between runs).
    assert all(abs(got - want) <= 0.5 for got, want in
               zip((box["x"], box["y"], box["width"], box["height"]), (0, 0, 390, 844), strict=True)), box
    widget.page.screenshot(path=artifacts / "widget-mobile.png")
    widget.page.locator("#deskmate-widget .head .icon-btn").tap()
    expect(widget.panel).to_be_hidden()
    expect(widget.launcher).to_be_visible()


AGENT_TEXT = ("Hi, I'm **{name}**. Our size guide: https://example.com/sizes\n"
              "- Jackets run *true to size*\n- Boots: half a size up for wide feet\n"
              "More in [our help pages](/help/sizes). "
              "[bad](javascript:alert(1)) <img src=x onerror=alert(2)>")


def test_agent_joins_types_and_writes_markdown(server: DeskmateServer, widget: Widget,
                                               new_agent: Callable[..., AgentClient],
                                               artifacts: Path) -> None:
    widget.goto(server.url)
    widget.open()
    widget.send("I want to talk to a human")
    widget.wait_sent()
    widget.wait_bot_replies(1)
    expect(widget.rows(".system .sys")).to_have_text(["An agent will join shortly."])
    sid = widget.session_id()

    agent = new_agent("Anna")
    agent.do("takeover", sid)
    # The server stores the takeover twice (a handoff frame and a system message for clients
    # that know no handoffs); the customer reads it once.
    expect(widget.rows(".system .sys")).to_have_text(["An agent will join shortly.",
                                                      f"{agent.name} joined the chat."])
    expect(widget.status).to_contain_text(agent.name)
    agent.send({"type": "typing", "session_id": sid, "on": True})
    expect(widget.typing).to_contain_text(f"{agent.name} is typing")

    agent.say(sid, AGENT_TEXT.format(name=agent.name))
    row = widget.rows(".agent")
    expect(row).to_have_count(1)
    expect(widget.typing).to_be_hidden()
    expect(row.locator(".who")).to_have_text(f"{agent.name} · Support agent")
    colours = widget.page.evaluate("""() => {
      const r = document.getElementById('deskmate-widget').shadowRoot;
      const bg = s => getComputedStyle(r.querySelector(s)).backgroundColor;
      return [bg('.row.bot .bubble'), bg('.row.agent .bubble')];
    }""")
    assert colours[0] != colours[1], colours

    # The safe Markdown subset: bold, italics, lists, http(s) and relative links; the rest is text.
    bubble = row.locator(".bubble")
    expect(bubble.locator("strong")).to_have_text(agent.name)
    expect(bubble.locator("em")).to_have_text("true to size")
    expect(bubble.locator("li")).to_have_count(2)
    links = bubble.locator("a")
    expect(links).to_have_count(2)
    expect(links.nth(0)).to_have_attribute("href", "https://example.com/sizes")
    expect(links.nth(1)).to_have_attribute("href", server.url + "/help/sizes")
    expect(links.nth(1)).to_have_text("our help pages")
    for i in range(2):
        expect(links.nth(i)).to_have_attribute("rel", "noopener noreferrer")
        expect(links.nth(i)).to_have_attribute("target", "_blank")
    expect(bubble).to_contain_text("[bad](javascript:alert(1)) <img src=x onerror=alert(2)>")
    expect(bubble.locator("img")).to_have_count(0)
    widget.page.wait_for_timeout(300)  # card images and transitions
    widget.page.screenshot(path=artifacts / "widget-agent.png")

    agent.do("handback", sid)
    expect(widget.rows(".system .sys").last).to_have_text(f"{agent.name} left the chat.")
    before = widget.transcript()
    widget.page.reload()
    widget.open()
    expect(widget.rows()).to_have_count(len(before))
    widget.page.wait_for_timeout(500)  # anything replayed twice would be on screen by now
    assert widget.transcript() == before
    assert widget.dialogs == []


JACKET_SVG = ("data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 120 80'%3E"
              "%3Crect width='120' height='80' fill='%23fbf0cf'/%3E%3Cpath d='M48 12h24l18 13-7 13-6-4v34"
              "H43V34l-6 4-7-13z' fill='%23e9b949' stroke='%238a6a1f' stroke-width='2'/%3E%3C/svg%3E")
HOSTILE_CARDS = [
    {"title": "Coastline Rain Jacket", "subtitle": "€119.95 · yellow, navy, olive", "image": JACKET_SVG,
     "url": "https://shop.example/p/P2001",
     "buttons": [{"title": "Sizes", "payload": '/size_help{"product": "P2001"}'}]},
    {"title": "<b>Boot</b>", "subtitle": "<img src=x onerror=alert(6)>", "image": "https://x/y.png",
     "url": "javascript:alert(4)", "buttons": [{"title": "Link", "url": "javascript:alert(7)"}]},
    {"title": "No picture", "subtitle": "bad image url", "image": "javascript:alert(5)", "url": "/p/x"},
]


class Relay:
    """The widget's socket, relayed through Playwright's websocket routing, so a test can add
    a frame the real server does not send (the one stand-in in these tests)."""

    def __init__(self, widget: Widget) -> None:
        self.sockets: list[Any] = []
        self.from_server: list[dict[str, Any]] = []
        widget.page.route_web_socket(re.compile(r"/ws/chat$"), self._relay)

    def _relay(self, page_side: Any) -> None:
        server_side = page_side.connect_to_server()
        self.sockets.append(page_side)

        def down(message: str | bytes) -> None:
            if isinstance(message, str):
                self.from_server.append(json.loads(message))
            page_side.send(message)
        server_side.on_message(down)
        page_side.on_message(server_side.send)

    def next_id(self) -> str:
        """An event id after every one the server sent (and before any it sends later)."""
        last = max((f["event_id"] for f in self.from_server if isinstance(f.get("event_id"), str)),
                   key=lambda i: tuple(map(int, i.split("-"))))
        ms, seq = last.split("-")
        return f"{ms}-{int(seq) + 50}"

    def send(self, frame: dict[str, Any]) -> None:
        self.sockets[-1].send(json.dumps(frame))


def test_product_cards_and_what_the_widget_refuses(server: DeskmateServer, widget: Widget) -> None:
    """The bot's own product cards, then a message no real bot project produces (hostile card
    URLs, markup in titles, sources), added to the live socket."""
    relay = Relay(widget)
    widget.goto(server.url)
    widget.open()
    widget.send("show me boots")
    widget.wait_sent()
    widget.wait_bot_replies(1)
    cards = widget.rows(".bot").last.locator(".card")
    expect(cards).not_to_have_count(0)
    for i in range(cards.count()):
        expect(cards.nth(i).locator(".card-title")).not_to_have_text("")
        # The catalog's relative product links point at the deskmate server, in a new tab.
        link = cards.nth(i).locator("a.chip")
        expect(link).to_have_attribute("href", re.compile("^" + re.escape(server.url) + "/"))
        expect(link).to_have_attribute("target", "_blank")
    similar = cards.nth(0).locator("button.chip").first
    title = similar.inner_text()
    similar.click()
    expect(widget.rows(".user .bubble").last).to_have_text(title)
    widget.wait_sent()
    widget.wait_bot_replies(2)
    assert widget.frames("action")[-1]["title"] == title

    event_id = relay.next_id()
    relay.send({
        "type": "message", "session_id": widget.session_id(), "event_id": event_id,
        "ts": int(event_id.split("-")[0]) / 1000, "role": "bot", "text": "Our **picks**",
        "buttons": [], "agent": None, "cards": HOSTILE_CARDS,
        "sources": [{"id": "kb-1", "title": "Returns <b>policy</b>", "source": "knowledge/returns.md"},
                    {"id": "kb-2", "title": "Sale items", "source": "knowledge/sale.md"}]})
    row = widget.rows(".bot").last
    expect(row.locator(".bubble strong")).to_have_text("picks")
    expect(row.locator(".sources")).to_have_text("Sources: Returns <b>policy</b>, Sale items")
    cards = row.locator(".card")
    expect(cards).to_have_count(3)
    expect(cards.nth(0).locator("img")).to_have_attribute("src", JACKET_SVG)
    expect(cards.nth(0).locator("a")).to_have_attribute("href", "https://shop.example/p/P2001")
    expect(cards.nth(1).locator(".card-title")).to_have_text("<b>Boot</b>")
    expect(cards.nth(1).locator(".card-sub")).to_have_text("<img src=x onerror=alert(6)>")
    expect(cards.nth(1).locator("a")).to_have_count(0)  # javascript: urls dropped
    expect(cards.nth(2).locator("img")).to_have_count(0)  # javascript: image dropped
    expect(cards.nth(2).locator("a")).to_have_attribute("href", server.url + "/p/x")
    found = widget.page.evaluate("""() => {
      const root = document.getElementById('deskmate-widget').shadowRoot;
      return root.querySelectorAll('.msgs b, .card-sub img, a[href^="javascript"]').length;
    }""")
    assert found == 0
    cards.nth(0).locator("button.chip").click()
    expect(widget.rows(".user .bubble").last).to_have_text("Sizes")
    widget.wait_sent()
    assert widget.frames("action")[-1]["payload"] == '/size_help{"product": "P2001"}'
    widget.page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert widget.dialogs == []


def test_a_system_line_ends_an_answer_that_will_never_come(server: DeskmateServer,
                                                          widget: Widget) -> None:
    """An answer cut off mid-stream (the instance died) is never stored; the server says so
    with a system message, and the widget stops showing that answer as being written."""
    relay = Relay(widget)
    widget.goto(server.url)
    widget.open()
    widget.send("hello")
    widget.wait_sent()
    widget.wait_bot_replies(1)
    sid = widget.session_id()
    relay.send({"type": "stream_start", "session_id": sid, "stream_id": "s-cut", "role": "bot"})
    relay.send({"type": "stream_delta", "session_id": sid, "stream_id": "s-cut", "text": "Your order "})
    expect(widget.rows(".streaming .bubble")).to_have_text("Your order")
    event_id = relay.next_id()
    relay.send({"type": "message", "session_id": sid, "event_id": event_id,
                "ts": int(event_id.split("-")[0]) / 1000, "role": "system", "agent": None,
                "buttons": [], "cards": [], "text": "Sorry, I was interrupted while answering your "
                "last message and could not finish. Please send it again."})
    expect(widget.rows(".system .sys").last).to_contain_text("interrupted")
    expect(widget.rows(".streaming")).to_have_count(0)
    expect(widget.rows(".bot.interrupted")).to_have_count(1)
    widget.send("Where is my order?")  # and the conversation goes on
    widget.wait_sent()
    expect(widget.rows(".bot:not(.interrupted)")).to_have_count(2)


def test_unread_badge_while_closed(server: DeskmateServer, widget: Widget,
                                   new_agent: Callable[..., AgentClient]) -> None:
    widget.goto(server.url)
    widget.open()
    widget.send("hello")
    widget.wait_sent()
    widget.wait_bot_replies(1)
    widget.page.keyboard.press("Escape")
    badge = widget.page.locator("#deskmate-widget .badge")
    expect(badge).to_be_hidden()
    agent = new_agent("bert")
    sid = widget.session_id()
    agent.do("takeover", sid)
    agent.say(sid, "Still there?")
    expect(badge).to_have_text("1")  # the agent's message; not the line about joining
    expect(widget.launcher).to_have_attribute("aria-label", "Open chat (1 unread)")
    widget.launcher.click()
    expect(badge).to_be_hidden()
    expect(widget.rows(".agent .bubble")).to_have_text(["Still there?"])


def test_theme_position_and_language_from_the_script_tag(server: DeskmateServer,
                                                         widget: Widget) -> None:
    """A page of the host's own sets every option on the tag. (It is written into a page of
    the server's origin: Chromium blocks a page that no server sent from opening a socket to
    127.0.0.1.)"""
    widget.page.goto(server.url + "/healthz")
    widget.page.set_content(
        '<!doctype html><html lang="en"><head><title>host</title></head><body><p>A shop.</p>'
        '<script src="/widget.js" data-color="#b91c1c" data-agent-color="#7c3aed" '
        'data-bot-color="#fef9c3" data-position="left" data-lang="zh" data-title="My shop" '
        'data-greeting="Welcome!" defer></script></body></html>')
    widget.page.wait_for_function("() => window.deskmate && window.deskmate.version")
    expect(widget.launcher).to_have_attribute("aria-label", "打开聊天")
    expect(widget.launcher).to_have_css("background-color", "rgb(185, 28, 28)")
    box = widget.launcher.bounding_box()
    assert box is not None and box["x"] < 100, box
    widget.open()
    expect(widget.page.locator("#deskmate-widget .title")).to_have_text("My shop")
    expect(widget.page.locator("#deskmate-widget .empty")).to_have_text("Welcome!")
    widget.send("hello")
    widget.wait_bot_replies(1)
    expect(widget.rows(".bot .bubble").first).to_have_css("background-color", "rgb(254, 249, 195)")
    edge = widget.page.evaluate("""() => getComputedStyle(document.getElementById('deskmate-widget')
      .shadowRoot.querySelector('.dm')).getPropertyValue('--agent-edge').trim()""")
    assert edge == "#7c3aed"


def test_limits_show_a_notice_and_never_lose_a_message(server: DeskmateServer,
                                                       widget: Widget) -> None:
    widget.goto(server.url)
    widget.open()
    # Longer than the server's limit: refused here, with a notice, nothing sent.
    widget.input.fill("x" * 2001)
    widget.input.press("Enter")
    toast = widget.page.locator("#deskmate-widget .toast")
    expect(toast.first).to_contain_text("too long")
    assert widget.frames("message") == []
    expect(widget.input).to_have_value("x" * 2001)  # kept whole, so it can be shortened
    expect(widget.page.locator("#deskmate-widget .counter")).to_have_text("2001 / 2000")

    # A burst past the server's rate limit (20 frames / 10 s): the rate_limited errors show a
    # notice, the refused messages stay pending and are resent until every one is stored once.
    burst = [f"message number {i}" for i in range(26)]
    widget.page.evaluate("""texts => {
      const input = document.getElementById('deskmate-widget').shadowRoot.querySelector('textarea');
      for (const text of texts) {
        input.value = text;
        input.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
      }
    }""", burst)
    expect(toast.filter(has_text="a little fast")).not_to_have_count(0)
    expect(widget.rows(".user")).to_have_count(len(burst))
    expect(widget.rows(".pending")).to_have_count(0, timeout=45_000)
    assert [t for r, t in widget.transcript() if r == "user"] == burst
    sent_ids = {f["client_id"] for f in widget.frames("message")}
    assert len(sent_ids) == len(burst)
    assert len(widget.frames("message")) > len(burst)  # some were resent


def test_an_error_about_another_frame_never_fails_a_refused_message(server: DeskmateServer,
                                                                      widget: Widget) -> None:
    """A rate-limited message waits for its resend; a later error that names no message (a
    host page's oversized `track`) must not mark it failed. Served by a scripted socket."""
    messages: list[str] = []

    def scripted(ws: Any) -> None:
        def on_message(raw: str | bytes) -> None:
            frame = json.loads(raw)
            if frame["type"] == "start":
                ws.send(json.dumps({"type": "session", "session_id": "s-scripted", "token": "t",
                                    "status": "bot"}))
            elif frame["type"] == "message":
                messages.append(frame["client_id"])
                if len(messages) == 1:
                    ws.send(json.dumps({"type": "error", "code": "rate_limited", "message": "slow down",
                                        "client_id": frame["client_id"]}))
                else:
                    ws.send(json.dumps({"type": "ack", "client_id": frame["client_id"], "event_id": "1-0"}))
            elif frame["type"] == "track":  # what the server answers a frame over its limit
                ws.send(json.dumps({"type": "error", "code": "frame_too_large",
                                    "message": "frame too large"}))
        ws.on_message(on_message)

    widget.page.route_web_socket(re.compile(r".*/ws/chat$"), scripted)
    widget.goto(server.url)
    widget.open()
    widget.send("hello there")
    expect(widget.page.locator("#deskmate-widget .toast").first).to_contain_text("a little fast")
    widget.page.evaluate("window.deskmate.track('add_to_cart', {cart: 'x'.repeat(20000)})")
    widget.wait_sent()  # resent after the limit, acked, never marked failed
    assert len(messages) == 2 and messages[0] == messages[1]
    assert not [f for f in widget.frames("track") if len(json.dumps(f)) > 16 * 1024]
