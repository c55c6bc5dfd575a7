"""Client frames, parsed and checked at the edge.

Every frame from a customer becomes one of the typed values below, or a
:class:`FrameError` whose ``code`` goes back in an ``error`` frame. Nothing
malformed gets past this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bot.errors import FrameError
from bot.store import EVENT_ID

MAX_ID_CHARS = 128
MAX_PAYLOAD_CHARS = 1024
MAX_NAME_CHARS = 64


@dataclass(frozen=True)
class Start:
    session_id: str | None
    token: str | None
    after: str | None
    customer: dict[str, Any] | None


@dataclass(frozen=True)
class Message:
    client_id: str
    text: str


@dataclass(frozen=True)
class Action:
    client_id: str
    payload: str
    title: str | None


@dataclass(frozen=True)
class Track:
    name: str
    data: dict[str, Any]


ClientFrame = Start | Message | Action | Track


def _field(frame: dict[str, Any], name: str, kind: type | tuple[type, ...], *,
           required: bool = True) -> Any:
    if name not in frame or frame[name] is None:
        if required:
            raise FrameError("missing_field", f"'{name}' is required")
        return None
    value = frame[name]
    # bool is an int subclass; no field here accepts a bool where a string is due.
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise FrameError("bad_field", f"'{name}' must be {names}")
    return value


def _short(frame: dict[str, Any], name: str, limit: int, *, required: bool = True) -> str | None:
    value: str | None = _field(frame, name, str, required=required)
    if value is not None:
        if required and not value.strip():
            raise FrameError("bad_field", f"'{name}' must not be empty")
        if len(value) > limit:
            raise FrameError("bad_field", f"'{name}' is longer than {limit} characters")
    return value


def _text(value: str, limit: int) -> str:
    if "\x00" in value:
        raise FrameError("bad_field", "text must not contain NUL characters")
    if not value.strip():
        raise FrameError("bad_field", "text must not be empty")
    if len(value) > limit:
        raise FrameError("text_too_long", f"text is longer than {limit} characters")
    return value


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False))


def parse(raw: str | bytes, *, max_bytes: int, max_text: int) -> ClientFrame:
    """Parse one websocket frame from a customer."""
    if isinstance(raw, bytes):
        raise FrameError("binary_frame", "binary frames are not supported; send JSON text")
    if len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise FrameError("frame_too_large", f"frame is larger than {max_bytes} bytes")
    try:
        frame = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise FrameError("bad_json", "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("bad_frame", "frame must be a JSON object")
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise FrameError("bad_frame", "frame needs a string 'type'")
    if kind == "start":
        after = _short(frame, "after", MAX_ID_CHARS, required=False)
        if after is not None and not EVENT_ID.match(after):
            raise FrameError("bad_field", "'after' must be an event id like '1700000000000-0'")
        customer = _field(frame, "customer", dict, required=False)
        if customer is not None and _json_size(customer) > 4096:
            raise FrameError("bad_field", "'customer' is larger than 4096 bytes")
        return Start(
            session_id=_short(frame, "session_id", MAX_ID_CHARS, required=False) or None,
            token=_short(frame, "token", MAX_ID_CHARS, required=False) or None,
            after=after, customer=customer,
        )
    if kind == "message":
        client_id = _short(frame, "client_id", MAX_ID_CHARS)
        text = _field(frame, "text", str)
        assert client_id is not None
        return Message(client_id, _text(text, max_text))
    if kind == "action":
        client_id = _short(frame, "client_id", MAX_ID_CHARS)
        payload = _short(frame, "payload", MAX_PAYLOAD_CHARS)
        title = _short(frame, "title", MAX_PAYLOAD_CHARS, required=False)
        assert client_id is not None and payload is not None
        return Action(client_id, payload, title)
    if kind == "track":
        name = _short(frame, "name", MAX_NAME_CHARS)
        data = _field(frame, "data", dict, required=False) or {}
        assert name is not None
        return Track(name, data)
    raise FrameError("unknown_type", f"unknown frame type {kind[:40]!r}")


def client_id_of(raw: str | bytes) -> str | None:
    """The ``client_id`` of a frame, if it has a usable one, for naming it in an error."""
    if isinstance(raw, bytes) or len(raw) > 1 << 20:
        return None
    try:
        frame = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return None
    value = frame.get("client_id") if isinstance(frame, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS else None
