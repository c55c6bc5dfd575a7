"""The widget's connection when the server cannot serve it yet, and what it counts as news.

Two of these tests answer the widget from a scripted socket (Playwright's websocket routing)
on the real server's /demo page: the answers they script are what the server sends while its
Redis is away, and stopping the shared server's embedded Redis would take every other test's
server down with it. The clock tests use the real server and skew only the page's clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from playwright.sync_api import expect

if TYPE_CHECKING:  # fixtures' types; conftest is not imported at run time
    from conftest import AgentClient, DeskmateServer, Widget

SESSION = {"type": "session", "session_id": "s-scripted", "token": "t", "status": "bot"}

# The device's clock runs `off` milliseconds fast (negative: slow). Date only: timers and
# the server's clock are untouched.
SKEWED_CLOCK = """(off => { const D = Date;
  class Skewed extends D {
    constructor(...a) { super(...(a.length ? a : [D.now() + off])); }
    static now() { return D.now() + off; }
  }
  window.Date = Skewed; })(%d);"""

ANNOUNCED = """() => Array.from(document.getElementById('deskmate-widget').shadowRoot
  .querySelectorAll('.dm > .sr > div')).map(d => d.textContent)"""


def scripted(widget: Widget, on_start: Callable[[Any, int], None]) -> list[float]:
    """The widget's sockets answered by ``on_start`` (see Widget.script_chat); the times
    the `start` frames came."""
    return widget.script_chat(on_start)[0]


def test_an_error_answering_start_is_retried(server: DeskmateServer, widget: Widget) -> None:
    """Redis away when the widget starts: the server answers `start` with `unavailable` and
    leaves the socket open. The widget starts again on a new socket until it gets a session."""
    def on_start(ws: Any, n: int) -> None:
        if n < 3:
            ws.send(json.dumps({"type": "error", "code": "unavailable",
                                "message": "the chat is briefly unavailable; please retry"}))
        else:
            ws.send(json.dumps(SESSION))

    starts = scripted(widget, on_start)
    widget.goto(server.url)
    widget.open()
    widget.send("hello")
    expect(widget.status).to_have_text("Online")
    widget.wait_sent()
    assert len(starts) == 3


def test_a_server_that_closes_after_session_is_retried_with_backoff(
        server: DeskmateServer, widget: Widget) -> None:
    """The server answers `session`, then closes with 1013 (it could not read the history).
    That socket never worked: the widget backs off as after any failed connection, instead
    of starting over every half second."""
    def on_start(ws: Any, n: int) -> None:
        ws.send(json.dumps(SESSION))
        ws.close(code=1013, reason="try again: the conversation is briefly unavailable")

    starts = scripted(widget, on_start)
    widget.goto(server.url)
    widget.open()
    for _ in range(300):  # a hang guard: four starts take under 8 s with the backoff
        if len(starts) >= 4:
            break
        widget.page.wait_for_timeout(100)
    # The retries wait 0.25-0.5 s, then twice that, then twice again: the fourth start comes
    # 1.75 s after the first at the soonest (a busy machine only delays it). Retrying every
    # 0.25-0.5 s, it came within 1.5 s.
    assert len(starts) >= 4, starts
    gaps = [round(b - a, 2) for a, b in zip(starts[:3], starts[1:4], strict=True)]
    assert sum(gaps) >= 1.7, gaps


def skewed(new_widget: Callable[..., Widget], skew_ms: int) -> Widget:
    widget = new_widget()
    widget.page.context.add_init_script(SKEWED_CLOCK % skew_ms)
    return widget


def test_news_counts_on_a_device_whose_clock_is_fast(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_agent: Callable[..., AgentClient]) -> None:
    """Three minutes fast: an agent's message still raises the badge and is announced, and
    the agent closing the conversation still shows."""
    widget = skewed(new_widget, 180_000)
    widget.goto(server.url)
    widget.open()
    widget.send("hello")
    widget.wait_sent()
    widget.wait_bot_replies(1)
    widget.page.keyboard.press("Escape")
    sid = widget.session_id()
    agent = new_agent("ines")
    agent.do("takeover", sid)
    agent.say(sid, "Hi, I'm here to help with your order.")
    badge = widget.page.locator("#deskmate-widget .badge")
    expect(badge).to_have_text("1")
    assert f"{agent.name}: Hi, I'm here to help with your order." in widget.page.evaluate(ANNOUNCED)
    widget.launcher.click()
    agent.do("close", sid)
    expect(widget.page.locator("#deskmate-widget .closed-note")).to_be_visible()


def test_history_is_not_news_on_a_device_whose_clock_is_slow(
        server: DeskmateServer, new_widget: Callable[..., Widget],
        new_agent: Callable[..., AgentClient]) -> None:
    """Three minutes slow: after a reload the history replayed is neither counted nor read
    out again; what comes after it is."""
    widget = skewed(new_widget, -180_000)
    widget.goto(server.url)
    widget.open()
    widget.send("hello")
    widget.wait_sent()
    widget.wait_bot_replies(1)
    widget.page.keyboard.press("Escape")  # stays closed across the reload
    rows = widget.rows().count()
    widget.page.reload()
    widget.page.wait_for_function("() => window.deskmate && window.deskmate.version")
    expect(widget.rows()).to_have_count(rows)
    widget.page.wait_for_timeout(1000)  # the replay is over
    badge = widget.page.locator("#deskmate-widget .badge")
    expect(badge).to_be_hidden()
    assert widget.page.evaluate(ANNOUNCED) == []
    sid = widget.session_id()
    agent = new_agent("jon")
    agent.do("takeover", sid)
    agent.say(sid, "Anything else?")
    expect(badge).to_have_text("1")
    assert f"{agent.name}: Anything else?" in widget.page.evaluate(ANNOUNCED)


def test_the_replay_ends_at_the_event_the_session_names(server: DeskmateServer, widget: Widget) -> None:
    """`session` names the last event of its replay (history_to). An agent's message right
    behind the replay is news (a pause-based guess took it for history), and the replay is
    never news however long it takes."""
    def message(event_id: str, role: str, text: str) -> str:
        return json.dumps({"type": "message", "session_id": "s-scripted", "event_id": event_id,
                           "ts": 1.0, "role": role, "text": text, "buttons": [], "cards": [],
                           "agent": "ines" if role == "agent" else None})

    def on_start(ws: Any, n: int) -> None:
        ws.send(json.dumps({**SESSION, "history_to": "2-0"}))
        ws.send(message("1-0", "user", "hello"))
        ws.send(message("2-0", "bot", "Hi! How can I help?"))
        ws.send(message("3-0", "agent", "Ines here: your parcel left today."))

    scripted(widget, on_start)
    # A page coming back to the conversation it had: its history is replayed.
    widget.page.context.add_init_script(
        "Object.keys(localStorage).filter(k => k.startsWith('deskmate:'))"
        ".forEach(k => localStorage.removeItem(k));"
        "localStorage.setItem('deskmate:v1:' + location.origin + '/',"
        " JSON.stringify({session_id: 's-scripted', token: 't'}));")
    widget.goto(server.url)
    expect(widget.rows()).to_have_count(3)
    badge = widget.page.locator("#deskmate-widget .badge")
    expect(badge).to_have_text("1")  # the agent's message, not the history
    announced = widget.page.evaluate(ANNOUNCED)
    assert any("your parcel left today" in line for line in announced), announced
    assert not any("How can I help" in line for line in announced), announced
