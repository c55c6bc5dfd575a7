"""Client frames, parsed and checked at the edge.

Every frame from a customer becomes one of the typed values below, or a
:class:`FrameError` whose ``code`` goes back in an ``error`` frame. Nothing
malformed gets past this module: besides types and sizes, a frame nested deeper
than ``MAX_DEPTH`` (it would overflow the recursion of every JSON encoder on its
way to an agent console), holding a lone surrogate (``"\\ud800"``: valid JSON, but
no UTF-8 encoding exists, so Redis could not store it), or a number JSON cannot
carry back out (``NaN``, ``1e999``, an integer beyond a double's range: a browser's
``JSON.parse`` reads it as ``Infinity``) is refused here, whole.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from bot.errors import FrameError
from bot.store import is_event_id

MAX_ID_CHARS = 128
MAX_PAYLOAD_CHARS = 1024
MAX_NAME_CHARS = 64
MAX_DEPTH = 16  # nesting of objects and lists in one frame (track data, customer info)
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_INT = int(sys.float_info.max)  # the largest integer a double (JavaScript's number) holds


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
        if "\x00" in value:
            raise FrameError("bad_field", f"'{name}' must not contain NUL characters")
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


def _check_values(value: Any, depth: int = 1) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` and strings with lone surrogates."""
    if depth > MAX_DEPTH:
        raise FrameError("bad_frame", f"frame is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if not value.isascii() and _SURROGATE.search(value):
            raise FrameError("bad_field", "text must be valid Unicode (no lone surrogates)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, depth)
            _check_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth + 1)


def _finite(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _bounded_int(text: str) -> int:
    value = int(text)  # over 4,300 digits: ValueError (CPython's int-from-text limit)
    if abs(value) > _MAX_INT:
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: browsers cannot parse them back


def _decode(raw: str) -> Any:
    """``json.loads`` for untrusted text: only what ``JSON.parse`` in a browser reads back."""
    return json.loads(raw, parse_float=_finite, parse_int=_bounded_int, parse_constant=_no_constant)


def load(raw: str | bytes, *, max_bytes: int) -> dict[str, Any]:
    """One frame as a JSON object with a string ``type``, checked for size, depth and
    Unicode (both sockets use it)."""
    if isinstance(raw, bytes):
        raise FrameError("binary_frame", "binary frames are not supported; send JSON text")
    # A frame of ASCII is as long in bytes as in characters: skip the encode.
    if len(raw) > max_bytes or (not raw.isascii()
                                and len(raw.encode("utf-8", "surrogatepass")) > max_bytes):
        raise FrameError("frame_too_large", f"frame is larger than {max_bytes} bytes")
    try:
        frame = _decode(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, and numbers refused above
        raise FrameError("bad_json", "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("bad_frame", "frame must be a JSON object")
    if not isinstance(frame.get("type"), str):
        raise FrameError("bad_frame", "frame needs a string 'type'")
    _check_values(frame)
    return frame


def parse(raw: str | bytes, *, max_bytes: int, max_text: int) -> ClientFrame:
    """Parse one websocket frame from a customer."""
    frame = load(raw, max_bytes=max_bytes)
    kind: str = frame["type"]
    if kind == "start":
        after = _short(frame, "after", MAX_ID_CHARS, required=False)
        if after is not None and not is_event_id(after):
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
        client_id = _client_id(frame)
        text = _field(frame, "text", str)
        return Message(client_id, _text(text, max_text))
    if kind == "action":
        client_id = _client_id(frame)
        payload = _short(frame, "payload", MAX_PAYLOAD_CHARS)
        title = _short(frame, "title", MAX_PAYLOAD_CHARS, required=False)
        assert payload is not None
        return Action(client_id, payload, title)
    if kind == "track":
        name = _short(frame, "name", MAX_NAME_CHARS)
        data = _field(frame, "data", dict, required=False) or {}
        assert name is not None
        return Track(name, data)
    raise FrameError("unknown_type", f"unknown frame type {kind[:40]!r}")


def _client_id(frame: dict[str, Any]) -> str:
    """A customer message's ``client_id``. Agents' messages are deduplicated in the same
    conversation under ``agent:<name>:<their id>``: a customer id of that shape could
    take the place of an agent's message, so it is refused."""
    client_id = _short(frame, "client_id", MAX_ID_CHARS)
    assert client_id is not None
    if client_id.startswith("agent:"):
        raise FrameError("bad_field", "'client_id' must not start with 'agent:'")
    return client_id


def client_id_of(raw: str | bytes) -> str | None:
    """The ``client_id`` of a frame, if it has a usable one, for naming it in an error."""
    if isinstance(raw, bytes) or len(raw) > 1 << 20:
        return None
    try:
        frame = _decode(raw)
    except (ValueError, RecursionError):
        return None
    value = frame.get("client_id") if isinstance(frame, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        return None
    return None if "\x00" in value or _SURROGATE.search(value) else value  # echoed back: keep it sendable
