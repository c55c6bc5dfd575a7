"""How the widget shows what it is sent and counts what it sends: image responses, text
written right to left, and characters outside the Basic Multilingual Plane.

The frames come from a scripted socket (Playwright's websocket routing) on the real server's
/demo page: the shop bot sends neither images nor Arabic, and these tests are about how the
widget lays such frames out, not about the bot.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from playwright.sync_api import expect

if TYPE_CHECKING:  # fixtures' types; conftest is not imported at run time
    from conftest import DeskmateServer, Widget

# 800 x 1000: taller than wide, as a size chart is; a 120px-high thumbnail would crop it.
CHART_SVG = ("<svg xmlns='http://www.w3.org/2000/svg' width='800' height='1000'>"
             "<rect width='800' height='1000' fill='#fbf0cf'/></svg>")
IMAGE_CARD = {"title": "", "subtitle": "", "image": "/img/size-chart.svg", "url": "", "buttons": []}


def message(n: int, role: str, text: str, **fields: Any) -> dict[str, Any]:
    return {"type": "message", "session_id": "s-scripted", "event_id": f"1732890000000-{n}",
            "ts": 1732890000.0 + n, "role": role, "text": text, "buttons": [], "cards": [],
            "agent": None, **fields}


def scripted(widget: Widget, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A socket that answers `start` with a session and ``frames``, and acks every message.
    The frames the widget sent."""
    def on_start(ws: Any, n: int) -> None:
        ws.send(json.dumps({"type": "session", "session_id": "s-scripted", "token": "t",
                            "status": "bot"}))
        for f in frames:
            ws.send(json.dumps(f))

    return widget.script_chat(on_start)[1]


def test_an_image_response_shows_the_whole_image(server: DeskmateServer, widget: Widget) -> None:
    """An `image:` response reaches the widget as a card with nothing but an image. It is
    shown whole, described, and opens full size; it is not a product."""
    widget.page.route(re.compile(r".*/img/size-chart\.svg$"),
                      lambda route: route.fulfill(body=CHART_SVG, content_type="image/svg+xml"))
    scripted(widget, [message(1, "bot", "Here is our size chart:", cards=[IMAGE_CARD]),
                      message(2, "bot", "", cards=[IMAGE_CARD])])
    widget.goto(server.url)
    widget.open()
    cards = widget.page.locator("#deskmate-widget .cards")
    expect(cards).to_have_count(2)
    image = cards.first.locator("img")
    expect(image).to_have_attribute("alt", "Image")
    expect(image).to_have_css("object-fit", "contain")
    widget.page.wait_for_function("""() => Array.from(document.getElementById('deskmate-widget')
      .shadowRoot.querySelectorAll('.cards img')).every(i => i.complete && i.naturalWidth)""")
    box = image.bounding_box()
    assert box is not None and 100 <= box["height"] <= 260, box
    assert abs(box["width"] / box["height"] - 0.8) < 0.02, box  # its own proportions: not cropped
    link = cards.first.locator("a")
    expect(link).to_have_attribute("href", server.url + "/img/size-chart.svg")
    expect(link).to_have_attribute("target", "_blank")
    for i in range(2):
        expect(cards.nth(i).locator(".card-title")).to_have_count(0)
        assert cards.nth(i).get_attribute("aria-label") is None  # not "Products"


def test_right_to_left_text_is_laid_out_right_to_left(server: DeskmateServer,
                                                      widget: Widget) -> None:
    scripted(widget, [
        message(1, "user", "مرحبا، أين طلبي رقم 10234؟", client_id="c-1"),
        message(2, "bot", "طلبك رقم NW-10234 في الطريق!",
                buttons=[{"title": "نعم، شكرا!", "payload": "/affirm"}],
                cards=[{"title": "سترة المطر", "subtitle": "١١٩ يورو", "image": "", "url": "",
                        "buttons": []}]),
        message(3, "bot", "Your order is on its way."),
    ])
    widget.goto(server.url)
    widget.open()
    expect(widget.rows()).to_have_count(3)

    def direction(selector: str) -> list[str]:
        return [str(d) for d in widget.page.locator(f"#deskmate-widget {selector}").evaluate_all(
            "els => els.map(e => getComputedStyle(e).direction)")]

    assert direction(".bubble p") == ["rtl", "rtl", "ltr"]
    assert direction(".chip") == ["rtl"]
    assert direction(".card-title") == ["rtl"]
    assert direction(".card-sub") == ["rtl"]
    expect(widget.input).to_have_attribute("dir", "auto")
    widget.input.fill("شكرا")
    assert direction("textarea") == ["rtl"]
    expect(widget.rows(".bot .bubble p").first).to_have_css("text-align", "start")


def test_the_length_limit_counts_characters_as_the_server_does(server: DeskmateServer,
                                                                widget: Widget) -> None:
    """The server counts code points: 1200 emoji are 1200 characters (2400 UTF-16 units)."""
    sent = scripted(widget, [])
    widget.goto(server.url)
    widget.open()
    widget.input.fill("😀" * 1900)
    expect(widget.page.locator("#deskmate-widget .counter")).to_have_text("1900 / 2000")
    widget.input.press("Enter")
    widget.wait_sent()
    assert [f["text"] for f in sent if f["type"] == "message"] == ["😀" * 1900]
    widget.input.fill("😀" * 2001)
    widget.input.press("Enter")
    expect(widget.page.locator("#deskmate-widget .toast").first).to_contain_text("too long")
    assert len([f for f in sent if f["type"] == "message"]) == 1
