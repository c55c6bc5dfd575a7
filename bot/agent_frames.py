"""Agent-console frames, parsed and checked at the edge (``/ws/agent``).

Every frame from a console becomes one of the typed values below, or a
:class:`~bot.errors.FrameError` whose ``code`` goes back in an ``error`` frame;
the customer socket's rules (``bot.frames``) apply to the shared fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bot.errors import FrameError
from bot.frames import MAX_ID_CHARS, _field, _short, _text
from bot.store import EVENT_ID

MAX_SECRET_CHARS = 256


@dataclass(frozen=True)
class Auth:
    token: str


@dataclass(frozen=True)
class Login:
    name: str
    password: str


@dataclass(frozen=True)
class ListSessions:
    """Ask for a fresh ``sessions`` snapshot."""


@dataclass(frozen=True)
class Logout:
    """Revoke this console's token and close the socket."""


@dataclass(frozen=True)
class Watch:
    session_id: str
    after: str | None  # replay only events after this id (a console resuming)


@dataclass(frozen=True)
class Unwatch:
    session_id: str


@dataclass(frozen=True)
class Takeover:
    session_id: str


@dataclass(frozen=True)
class Assign:
    session_id: str
    agent: str


@dataclass(frozen=True)
class Send:
    session_id: str
    client_id: str
    text: str


@dataclass(frozen=True)
class Typing:
    session_id: str
    on: bool


@dataclass(frozen=True)
class Handback:
    session_id: str


@dataclass(frozen=True)
class Note:
    session_id: str
    text: str


@dataclass(frozen=True)
class Close:
    session_id: str


First = Auth | Login
AgentFrame = (ListSessions | Logout | Watch | Unwatch | Takeover | Assign | Send | Typing
              | Handback | Note | Close)
# Frames that name one session and nothing else.
_SESSION_ONLY: dict[str, type[Unwatch | Takeover | Handback | Close]] = {
    "unwatch": Unwatch, "takeover": Takeover, "handback": Handback, "close": Close,
}


def _load(raw: str | bytes, max_bytes: int) -> dict[str, Any]:
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
    if not isinstance(frame.get("type"), str):
        raise FrameError("bad_frame", "frame needs a string 'type'")
    return frame


def _str(frame: dict[str, Any], name: str, limit: int) -> str:
    value = _short(frame, name, limit)
    assert value is not None  # required fields are never None
    return value


def parse_first(raw: str | bytes, *, max_bytes: int) -> First:
    """The first frame on an agent socket: ``auth`` (a token) or ``login`` (name, password)."""
    frame = _load(raw, max_bytes)
    if frame["type"] == "auth":
        return Auth(_str(frame, "token", MAX_SECRET_CHARS))
    if frame["type"] == "login":
        return Login(_str(frame, "name", 64), _str(frame, "password", MAX_SECRET_CHARS))
    raise FrameError("unauthorized", "send 'auth' or 'login' first")


def parse(raw: str | bytes, *, max_bytes: int, max_text: int) -> AgentFrame:
    """Parse one frame from an authenticated console."""
    frame = _load(raw, max_bytes)
    kind: str = frame["type"]
    if kind == "sessions":
        return ListSessions()
    if kind == "logout":
        return Logout()
    if kind in ("auth", "login"):
        raise FrameError("already_authenticated", "this connection is already signed in")
    sid = _str(frame, "session_id", MAX_ID_CHARS) if kind in (
        "watch", "assign", "send", "typing", "note", *_SESSION_ONLY) else ""
    if kind in _SESSION_ONLY:
        return _SESSION_ONLY[kind](sid)
    if kind == "watch":
        after = _short(frame, "after", MAX_ID_CHARS, required=False)
        if after is not None and not EVENT_ID.match(after):
            raise FrameError("bad_field", "'after' must be an event id like '1700000000000-0'")
        return Watch(sid, after)
    if kind == "assign":
        return Assign(sid, _str(frame, "agent", 64))
    if kind == "send":
        client_id = _str(frame, "client_id", MAX_ID_CHARS)
        return Send(sid, client_id, _text(_field(frame, "text", str), max_text))
    if kind == "typing":
        on = frame.get("on")
        if not isinstance(on, bool):
            raise FrameError("bad_field", "'on' must be true or false")
        return Typing(sid, on)
    if kind == "note":
        return Note(sid, _text(_field(frame, "text", str), max_text))
    raise FrameError("unknown_type", f"unknown frame type {kind[:40]!r}")
