"""Structured logs: one line per record, the conversation it is about, nothing secret.

``DESKMATE_LOG_FORMAT=text`` writes ``time LEVEL logger message session_id=…``;
``json`` writes one JSON object per line (``ts``, ``level``, ``logger``, ``message``,
``session_id``, ``exc``) for a log shipper. A customer connection binds its
conversation's id (:func:`bind_session`) in its task's context once ``start`` is
answered; every line of that task, and of the turn tasks it starts (they inherit the
context), carries it as ``session_id``. A task that serves every conversation (the
classifier's batch workers) is started in a clean ``contextvars.Context()``, or it would
name the session that happened to start it. A call may also pass ``extra={"session_id": …}``.
Every line goes through :class:`bot.security.LogScrubber` first. (Named ``logs``, not
``logging``, so that it never shadows the standard module.)
"""

from __future__ import annotations

import contextvars
import json
import logging
from typing import IO, Any

from bot.security import LogScrubber

SESSION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("deskmate_session_id",
                                                                        default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s%(context)s"
# Libraries whose DEBUG output holds whole frames (tokens, customers' words): never below WARNING.
QUIET = ("websockets",)


def bind_session(session_id: str | None) -> None:
    """Attach ``session_id`` to every log line of the current task and the tasks it starts."""
    SESSION_ID.set(session_id)


class ContextFilter(logging.Filter):
    """Adds ``session_id`` (from ``extra=`` or the task's context) and the text-format tail."""

    def filter(self, record: logging.LogRecord) -> bool:
        sid = getattr(record, "session_id", None) or SESSION_ID.get()
        record.session_id = sid
        record.context = f" session_id={sid}" if sid else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        sid = getattr(record, "session_id", None)
        if sid:
            out["session_id"] = sid
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def handler(*, fmt: str = "text", redact: bool = True, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler with deskmate's filters and format (tests attach one to capture)."""
    out = logging.StreamHandler(stream)
    out.addFilter(ContextFilter())
    out.addFilter(LogScrubber(redact=redact))
    out.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    out.set_name("deskmate")
    return out


def configure(level: str, *, fmt: str = "text", redact: bool = True, stream: IO[str] | None = None) -> None:
    """Send every log record to stderr (or ``stream``) through :func:`handler`."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "deskmate"]:
        root.removeHandler(old)  # configured twice (a CLI command, then the server): replace
    root.addHandler(handler(fmt=fmt, redact=redact, stream=stream))
    root.setLevel(getattr(logging, level))
    for name in QUIET:
        # websockets also logs every failed handshake at ERROR with a traceback; ours are enough.
        logging.getLogger(name).setLevel(logging.WARNING)
