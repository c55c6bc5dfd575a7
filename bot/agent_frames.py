"""Agent-console frames, parsed and checked at the edge (``/ws/agent``).

Every frame from a console becomes one of the typed values below, or a
:class:`~bot.errors.FrameError` whose ``code`` goes back in an ``error`` frame;
the customer socket's rules (``bot.frames``) apply to the shared fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.errors import FrameError
from bot.frames import MAX_ID_CHARS, _field, _short, _text, load
from bot.store import is_event_id
from dialogue.copywriting import TONES

MAX_SECRET_CHARS = 256
MAX_QUESTION_CHARS = 2000  # a customer message at most (DESKMATE_MAX_TEXT_CHARS' default)
MAX_ANSWER_CHARS = 8000  # bot.learning joins the agent messages that answered a question
COPY_N = (1, 10)  # ads one ``copy`` frame may ask for
COPY_MAX_CHARS = (30, 200)  # the longest ad it may allow
MAX_KEYWORDS, MAX_KEYWORD_CHARS, MAX_AUDIENCE_CHARS = 8, 40, 200
PROPOSAL_ID = re.compile(r"^[0-9a-f]{1,64}$")  # bot.learning.proposal_id: part of a Redis key


@dataclass(frozen=True)
class Auth:
    token: str


@dataclass(frozen=True)
class Login:
    name: str
    password: str


@dataclass(frozen=True)
class Sessions:
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


@dataclass(frozen=True)
class Proposals:
    """Ask for the knowledge proposals waiting for review, and their changes from then on."""


@dataclass(frozen=True)
class Approve:
    proposal_id: str
    question: str  # as the reviewer left it (edited or not)
    answer: str


@dataclass(frozen=True)
class Reject:
    proposal_id: str


@dataclass(frozen=True)
class Report:
    """Ask for the insights report (``deskmate report``) of the window since ``since``."""

    since: str  # "7d", "24h", an ISO date, "all": as ``deskmate report --since``


@dataclass(frozen=True)
class Copy:
    """Ask for ad lines for a catalog product (``deskmate copy --product ... --json``)."""

    product_id: str
    audience: str
    keywords: tuple[str, ...]
    n: int = 5
    max_chars: int = 90
    tone: str = "friendly"


First = Auth | Login
AgentFrame = (Sessions | Logout | Watch | Unwatch | Takeover | Assign | Send | Typing
              | Handback | Note | Close | Proposals | Approve | Reject | Report | Copy)
# Frames that name one session and nothing else.
_SESSION_ONLY: dict[str, type[Unwatch | Takeover | Handback | Close]] = {
    "unwatch": Unwatch, "takeover": Takeover, "handback": Handback, "close": Close,
}


def _load(raw: str | bytes, max_bytes: int) -> dict[str, Any]:
    return load(raw, max_bytes=max_bytes)  # the customer socket's checks: size, JSON, depth, Unicode


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
        return Sessions()
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
        if after is not None and not is_event_id(after):
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
    if kind == "proposals":
        return Proposals()
    if kind in ("approve", "reject"):
        pid = _str(frame, "proposal_id", 64)
        if not PROPOSAL_ID.match(pid):
            raise FrameError("bad_field", "'proposal_id' is not a proposal id")
        if kind == "reject":
            return Reject(pid)
        return Approve(pid, _text(_field(frame, "question", str), MAX_QUESTION_CHARS).strip(),
                       _text(_field(frame, "answer", str), MAX_ANSWER_CHARS).strip())
    if kind == "report":
        return Report(_short(frame, "since", 40, required=False) or "7d")
    if kind == "copy":
        return _copy(frame)
    raise FrameError("unknown_type", f"unknown frame type {kind[:40]!r}")


def _bounded(frame: dict[str, Any], name: str, bounds: tuple[int, int], default: int) -> int:
    value = _field(frame, name, int, required=False)
    if value is None:
        return default
    if not bounds[0] <= value <= bounds[1]:
        raise FrameError("bad_field", f"'{name}' must be from {bounds[0]} to {bounds[1]}")
    return int(value)


def _copy(frame: dict[str, Any]) -> Copy:
    words = _field(frame, "keywords", list)
    if not 1 <= len(words) <= MAX_KEYWORDS:
        raise FrameError("bad_field", f"'keywords' must list 1 to {MAX_KEYWORDS} words")
    keywords: list[str] = []
    for word in words:
        if not isinstance(word, str) or not word.strip() or len(word) > MAX_KEYWORD_CHARS \
                or "\x00" in word or "," in word:
            raise FrameError("bad_field", f"'keywords' must be words of 1 to {MAX_KEYWORD_CHARS} "
                                          "characters, without commas")
        if not any(ch.isalnum() for ch in word):  # "!!" would match nothing: the check would pass unseen
            raise FrameError("bad_field", f"'keywords': {word.strip()!r} has no letters or digits")
        keywords.append(word.strip())
    tone = _short(frame, "tone", 20, required=False) or "friendly"
    if tone not in TONES:
        raise FrameError("bad_field", f"'tone' must be one of {', '.join(sorted(TONES))}")
    return Copy(_str(frame, "product_id", MAX_ID_CHARS).strip(),
                _str(frame, "audience", MAX_AUDIENCE_CHARS).strip(), tuple(keywords),
                _bounded(frame, "n", COPY_N, 5), _bounded(frame, "max_chars", COPY_MAX_CHARS, 90), tone)
