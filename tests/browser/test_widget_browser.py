"""The chat widget in a real browser against the real server (fixtures in conftest.py).

Each test is a new customer (a fresh browser context, so empty localStorage) on /demo.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from playwright.sync_api import expect

if TYPE_CHECKING:  # fixtures' types; conftest is not imported at run time
    from conftest import DeskmateServer, Widget

ROOT = Path(__file__).resolve().parents[2]

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
    shot = artifacts / "widget-conversation.png"
    widget.page.screenshot(path=shot)
    if os.environ.get("DESKMATE_UPDATE_DOCS_IMG") == "1":  # the README's picture
        target = ROOT / "docs" / "img" / "widget.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)

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

    page.keyboard.type("Where is my order?")
    page.keyboard.press("Enter")
    expect(widget.rows(".user .bubble")).to_have_text(["Where is my order?"])
    expect(widget.input).to_have_value("")
    widget.wait_sent()
    widget.wait_bot_replies(1)
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
    expect(widget.rows(".user")).to_have_count(1)


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


def _greeted(server: DeskmateServer, new_widget: Callable[..., Widget]) -> Widget:
    """Start ``server`` and return a widget whose customer said hello and got an answer."""
    server.start()
    widget = new_widget()
    widget.goto(server.url)
    widget.open()
    widget.send("hello")
    widget.wait_sent()
    widget.wait_bot_replies(1)
    return widget


def test_reconnects_and_delivers_what_was_typed_offline(
        own_server: DeskmateServer, new_widget: Callable[..., Widget], artifacts: Path) -> None:
    widget = _greeted(own_server, new_widget)

    own_server.stop()
    banner = widget.page.locator("#deskmate-widget .banner")
    expect(banner).to_be_visible()
    widget.send("Where is my order?")  # queued while the server is down
    expect(widget.rows(".user.pending")).to_have_count(1)
    widget.page.screenshot(path=artifacts / "widget-reconnecting.png")

    own_server.start()  # same port, same Redis data
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
    box = widget.panel.bounding_box()
    assert box is not None
    assert (box["x"], box["y"], box["width"], box["height"]) == (0, 0, 390, 844), box
    widget.page.screenshot(path=artifacts / "widget-mobile.png")
    widget.page.locator("#deskmate-widget .head .icon-btn").tap()
    expect(widget.panel).to_be_hidden()
    expect(widget.launcher).to_be_visible()


def test_readme_screenshot(server: DeskmateServer, widget: Widget, artifacts: Path) -> None:
    """A bot answer, a handoff and an agent's product card, in test-artifacts/widget-open.png.
    The agent's turn is injected (see DeskmateServer.inject) until the agent socket lands."""
    widget.goto(server.url)
    widget.page.locator('.tile[data-id="P2001"] .tile-main').click()
    widget.open()
    widget.send("Hello!")
    widget.wait_sent()
    widget.wait_bot_replies(1)
    widget.send("Is the Coastline Rain Jacket waterproof? I'd rather ask a person.")
    widget.wait_sent()
    widget.wait_bot_replies(2)
    server.inject(widget.session_id(), events=[
        ("handoff", {"state": "requested", "agent": None}),
        ("handoff", {"state": "agent_joined", "agent": "Anna"}),
        ("message", {"role": "agent", "agent": "Anna", "buttons": [], "cards": CARDS[:2],
                     "text": "Hi, I'm **Anna**! Yes: a waterproof shell with taped seams and "
                             "an adjustable hood. It runs *true to size*."}),
    ])
    expect(widget.rows(".agent")).to_have_count(1)
    widget.input.fill("Great, I'll take an M")
    widget.page.evaluate("window.scrollTo(0, 0)")
    widget.page.wait_for_timeout(400)  # let transitions settle
    widget.page.screenshot(path=artifacts / "widget-open.png")


def test_a_lost_conversation_starts_over_cleanly(
        own_server: DeskmateServer, new_widget: Callable[..., Widget]) -> None:
    """The server comes back without the session (Redis wiped): the widget drops the old
    transcript, keeps what is still unsent, and delivers it into the new conversation."""
    widget = _greeted(own_server, new_widget)
    old_sid = widget.session_id()

    own_server.stop()
    shutil.rmtree(own_server.data_dir / "redis")
    widget.send("Where is my order?")
    expect(widget.rows(".user.pending")).to_have_count(1)
    own_server.start()

    expect(widget.rows(".user")).to_have_count(1, timeout=30_000)
    widget.wait_sent()
    widget.wait_bot_replies(1)
    transcript = widget.transcript()
    assert [text for role, text in transcript if role == "user"] == ["Where is my order?"]
    assert transcript[0] == ("user", "Where is my order?"), transcript
    assert widget.session_id() != old_sid


JACKET_SVG = ("data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 120 80'%3E"
              "%3Crect width='120' height='80' fill='%23fbf0cf'/%3E%3Cpath d='M48 12h24l18 13-7 13-6-4v34"
              "H43V34l-6 4-7-13z' fill='%23e9b949' stroke='%238a6a1f' stroke-width='2'/%3E%3C/svg%3E")
BOOT_SVG = JACKET_SVG.replace("e9b949", "7a5236").replace("fbf0cf", "efe4d8")
AGENT_TEXT = ("Hi, I'm **Anna**. Our size guide: https://example.com/sizes\n"
              "- Jackets run *true to size*\n- Boots: half a size up for wide feet\n"
              "[bad](javascript:alert(1)) <img src=x onerror=alert(2)>")
CARDS = [
    {"title": "Coastline Rain Jacket", "subtitle": "€119.95 · yellow, navy, olive", "image": JACKET_SVG,
     "url": "https://shop.example/p/P2001",
     "buttons": [{"title": "Sizes", "payload": '/size_help{"product": "P2001"}'}]},
    {"title": "Hollow Chelsea Boot", "subtitle": "€139.95 · black, brown suede", "image": BOOT_SVG,
     "url": "javascript:alert(4)", "buttons": []},
    {"title": "No picture", "subtitle": "bad image url", "image": "javascript:alert(5)", "url": "/p/x"},
]


def test_agent_handoff_messages_and_cards(server: DeskmateServer, widget: Widget,
                                          artifacts: Path) -> None:
    widget.goto(server.url)
    widget.open()
    widget.send("I'd like to talk to a person about sizes")
    widget.wait_sent()
    widget.wait_bot_replies(1)
    sid = widget.session_id()

    server.inject(sid, events=[("handoff", {"state": "requested", "agent": None}),
                               ("handoff", {"state": "agent_joined", "agent": "Anna"})],
                  frames=[{"type": "typing", "role": "agent", "on": True, "agent": "Anna"}])
    expect(widget.rows(".system .sys")).to_have_text(["An agent will join shortly.",
                                                      "Anna joined the chat."])
    typing = widget.page.locator("#deskmate-widget .typing")
    expect(typing).to_contain_text("Anna is typing")
    expect(widget.page.locator("#deskmate-widget .status")).to_contain_text("Anna")

    server.inject(sid, events=[("message", {"role": "agent", "agent": "Anna", "text": AGENT_TEXT,
                                            "buttons": [], "cards": CARDS})])
    agent = widget.rows(".agent")
    expect(agent).to_have_count(1)
    expect(typing).to_be_hidden()
    expect(agent.locator(".who")).to_have_text("Anna · Support agent")
    colours = widget.page.evaluate("""() => {
      const r = document.getElementById('deskmate-widget').shadowRoot;
      const bg = s => getComputedStyle(r.querySelector(s)).backgroundColor;
      return [bg('.row.bot .bubble'), bg('.row.agent .bubble')];
    }""")
    assert colours[0] != colours[1], colours

    # The safe Markdown subset: bold, italics, lists, http(s) links only; the rest is text.
    bubble = agent.locator(".bubble")
    expect(bubble.locator("strong")).to_have_text("Anna")
    expect(bubble.locator("em")).to_have_text("true to size")
    expect(bubble.locator("li")).to_have_count(2)
    links = bubble.locator("a")
    expect(links).to_have_count(1)
    expect(links).to_have_attribute("href", "https://example.com/sizes")
    expect(links).to_have_attribute("rel", "noopener noreferrer")
    expect(links).to_have_attribute("target", "_blank")
    expect(bubble).to_contain_text("[bad](javascript:alert(1)) <img src=x onerror=alert(2)>")
    expect(bubble.locator("img")).to_have_count(0)

    cards = agent.locator(".card")
    expect(cards).to_have_count(3)
    expect(cards.nth(0).locator(".card-title")).to_have_text("Coastline Rain Jacket")
    expect(cards.nth(0).locator(".card-sub")).to_have_text("€119.95 · yellow, navy, olive")
    expect(cards.nth(0).locator("img")).to_have_attribute("src", JACKET_SVG)
    expect(cards.nth(0).locator("a")).to_have_attribute("href", "https://shop.example/p/P2001")
    expect(cards.nth(1).locator("a")).to_have_count(0)  # javascript: url dropped
    expect(cards.nth(2).locator("img")).to_have_count(0)  # javascript: image dropped
    expect(cards.nth(2).locator("a")).to_have_attribute("href", server.url + "/p/x")
    widget.page.wait_for_timeout(300)
    widget.page.screenshot(path=artifacts / "widget-agent.png")

    cards.nth(0).locator("button.chip").click()
    expect(widget.rows(".user .bubble").last).to_have_text("Sizes")
    widget.wait_sent()
    assert widget.frames("action")[-1]["payload"] == '/size_help{"product": "P2001"}'

    server.inject(sid, events=[("handoff", {"state": "agent_left", "agent": "Anna"})])
    expect(widget.rows(".system .sys").last).to_have_text("Anna left the chat.")
    widget.page.wait_for_timeout(500)
    before = widget.transcript()
    widget.page.reload()
    widget.open()
    expect(widget.rows()).to_have_count(len(before))
    widget.page.wait_for_timeout(500)
    assert widget.transcript() == before
    assert widget.dialogs == []


def test_unread_badge_while_closed(server: DeskmateServer, widget: Widget) -> None:
    widget.goto(server.url)
    widget.open()
    widget.send("hello")
    widget.wait_sent()
    widget.wait_bot_replies(1)
    widget.page.keyboard.press("Escape")
    badge = widget.page.locator("#deskmate-widget .badge")
    expect(badge).to_be_hidden()
    server.inject(widget.session_id(), events=[
        ("message", {"role": "agent", "agent": "Anna", "text": "Still there?", "buttons": [],
                     "cards": []})])
    expect(badge).to_have_text("1")
    expect(widget.launcher).to_have_attribute("aria-label", "Open chat (1 unread)")
    widget.launcher.click()
    expect(badge).to_be_hidden()


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
