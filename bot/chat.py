"""The customer socket, ``/ws/chat``: one :class:`ChatConnection` per websocket.

Lifecycle: wait for ``start``; open or create the session; subscribe to the
conversation's channel *before* replaying the stored events (so nothing
published in between is missed, and duplicates are dropped by event id);
then store each message, ``ack`` it once Redis has it, and hand the turn to
the :class:`~bot.turns.TurnRunner`.

Every frame, good or bad, ``start`` included, spends one token of the client
address's budget (shared by all its connections to this instance) and one of the
connection's own; a spent budget is answered ``rate_limited``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from bot import frames
from bot.catchup import CatchUp
from bot.errors import FrameError, StoreError
from bot.logs import bind_session
from bot.security import RateLimiter
from bot.store import CUSTOMER_KINDS, Event, NewEvent

if TYPE_CHECKING:
    from bot.server import App

log = logging.getLogger("deskmate.chat")

MAX_QUEUED = 2000  # frames waiting for a slow client before it is dropped (it can resume)
# What a customer sees of a stored message: "name" tells the widget what kind of message it
# is (e.g. "interrupted"), "sources" the knowledge an answer came from.
MESSAGE_FIELDS = ("type", "session_id", "event_id", "ts", "role", "text", "buttons", "cards",
                  "agent", "client_id", "payload", "name", "sources")


__all__ = ["MAX_QUEUED", "ChatConnection", "RateLimiter"]  # RateLimiter: bot.agent_socket uses it


class ChatConnection(CatchUp):
    """One customer's socket; what it is shown of the conversation is :class:`CatchUp`'s
    feed, limited to the customer's kinds (messages and handoffs)."""

    kinds = CUSTOMER_KINDS

    def __init__(self, ws: ServerConnection, app: App) -> None:
        super().__init__()
        self.ws = ws
        self.app = app
        self.settings = app.settings
        self.store = app.store
        self.status = "bot"
        self.out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Future[None]] = set()
        self._dropping = False  # a close for a too-slow client is under way
        self.limiter = RateLimiter(self.settings.rate_messages, self.settings.rate_window)
        self.address = app.client_key(ws)  # the budget this connection shares with its address
        self.awaiting_reply: float | None = None  # when the oldest unanswered message was acked

    async def serve(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            async for raw in self.ws:
                await self._on_frame(raw)
        except ConnectionClosed:
            pass
        finally:
            if self.sid:
                self.app.metrics.active_sessions.dec()
                await self.app.hub.unsubscribe(self.store.keys.channel(self.sid), self.on_live)
            for task in [writer, *self._tasks]:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    # -- outgoing -------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        self.out.put_nowait(frame)

    def error(self, code: str, message: str, client_id: str | None = None) -> None:
        self.app.metrics.errors.labels(code).inc()
        if self.out.qsize() > MAX_QUEUED:
            # Flooding without reading: its answers would pile up here. Drop it (it can resume).
            self._drop()
            return
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if client_id is not None:
            frame["client_id"] = client_id  # lets the client mark the message that failed
        self.send(frame)

    def _drop(self) -> None:
        if not self._dropping:
            log.warning("session %s: client too slow, dropping it", self.sid,
                        extra={"session_id": self.sid})
            self._dropping = True
            self.spawn(self.ws.close(1013, "too slow; reconnect to resume"))

    async def _write(self) -> None:
        # One writer per connection: a slow client delays only its own queue.
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await self.out.get()
                await self.ws.send(self.app.encode(frame))

    def room(self) -> bool:
        if self.out.qsize() > MAX_QUEUED:
            self._drop()  # not reading: its frames would pile up here (it can resume)
            return False
        return True

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, owned by this connection (cancelled with it)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stored(self, after: str | None) -> list[Event]:
        assert self.sid is not None
        return await self.store.events(self.sid, after, kinds=CUSTOMER_KINDS)

    def deliver(self, frame: dict[str, Any]) -> None:
        if frame["type"] != "message":
            self.send(frame)
            if frame["type"] == "handoff":
                self.awaiting_reply = None  # a person answers from here: not a bot latency
                self.status = {"requested": "waiting", "agent_joined": "agent",
                               "agent_left": "bot"}.get(frame.get("state", ""), self.status)
            return
        if frame.get("role") == "bot":
            self._replied()
        elif frame.get("role") == "system" and frame.get("name") == "interrupted":
            # That message gets no answer: a wait measured from its ack would end at the
            # answer to a later message, and count the time the customer took to write it.
            self.awaiting_reply = None
        message = {k: frame[k] for k in MESSAGE_FIELDS if k in frame}
        message.setdefault("buttons", [])
        message.setdefault("cards", [])
        message.setdefault("agent", None)
        self.send(message)

    def end_stream(self, frame: dict[str, Any]) -> None:
        if frame.get("role") == "bot":
            self._replied()
        self.send({"type": "stream_end", "session_id": self.sid, "stream_id": frame["stream_id"],
                   "event_id": frame["event_id"], "text": frame.get("text", ""),
                   "buttons": frame.get("buttons", []), "cards": frame.get("cards", []),
                   "sources": frame.get("sources", [])})

    def on_delta(self, frame: dict[str, Any]) -> None:
        self._replied()
        self.send(frame)

    def _replied(self) -> None:
        """The first text of an answer reached this customer: observe the wait."""
        if self.awaiting_reply is not None:
            self.app.metrics.first_reply_seconds.observe(time.perf_counter() - self.awaiting_reply)
            self.awaiting_reply = None

    # -- incoming -------------------------------------------------------------

    async def _on_frame(self, raw: str | bytes) -> None:
        try:
            # Bad frames count too: answering garbage costs as much as answering messages.
            if not self.app.limits.allow(self.address):
                raise FrameError("rate_limited", "too many messages from your network; slow down")
            if not self.limiter.allow():
                raise FrameError("rate_limited", "too many messages; slow down")
            frame = frames.parse(raw, max_bytes=self.settings.max_frame_bytes,
                                 max_text=self.settings.max_text_chars)
            if isinstance(frame, frames.Start):
                await self._start(frame)
                return
            if self.sid is None:
                raise FrameError("start_required", "send a 'start' frame first")
            if isinstance(frame, frames.Message):
                await self._store_message(frame.client_id, {"text": frame.text})
            elif isinstance(frame, frames.Action):
                await self._store_message(frame.client_id, {
                    "text": frame.title or frame.payload, "payload": frame.payload})
            elif isinstance(frame, frames.Track):
                await self.store.append(self.sid, [NewEvent("track", {"name": frame.name,
                                                                      "data": frame.data})])
        except FrameError as exc:
            self.error(exc.code, exc.message, frames.client_id_of(raw))
        except StoreError as exc:
            log.warning("session %s: %s", self.sid, exc)
            if "expired" in str(exc):
                self.error("session_expired", "this conversation has expired; start a new one",
                           frames.client_id_of(raw))
            else:
                self.error("unavailable", "the chat is briefly unavailable; please retry",
                           frames.client_id_of(raw))

    async def _start(self, frame: frames.Start) -> None:
        if self.sid is not None:
            raise FrameError("already_started", "this connection already has a session")
        record = None
        sid, token, after = frame.session_id, frame.token, frame.after
        if sid and token:
            record = await self.store.authenticate(sid, token)
        if record is None:
            sid, token = await self.store.create_session(frame.customer)
            record = await self.store.session(sid) or {}
            after = None
            self.app.metrics.sessions_started.labels("new").inc()
        else:
            self.app.metrics.sessions_started.labels("resumed").inc()
        assert sid is not None and token is not None
        self.hold()
        self.sid = sid
        bind_session(sid)  # this task's log lines, and the turns it starts, name the session
        self.app.metrics.active_sessions.inc()
        self.status = record.get("status", "bot")
        try:
            await self.app.hub.subscribe(self.store.keys.channel(sid), self.on_live)
            replay = await self.store.events(sid, after, kinds=CUSTOMER_KINDS)
            # history_to: the last event the replay below sends; what comes after it is live
            # (a client need not compare clocks, or wait for a pause, to tell them apart).
            self.send({"type": "session", "session_id": sid, "token": token, "status": self.status,
                       "history_to": replay[-1].event_id if replay else None})
        except (StoreError, RedisError, OSError, TimeoutError) as exc:
            # Without its history (or live frames) the client would carry on with a gap, and
            # later frames would move it past the missing events. Closed, it resumes from
            # what it has once Redis answers.
            log.warning("session %s: could not subscribe or replay (%s); closing so the client resumes",
                        sid, exc)
            self.held = None  # nothing to release: the socket closes
            self.spawn(self.ws.close(1013, "try again: the conversation is briefly unavailable"))
            return
        self.replay(after, replay)
        log.info("session %s %s", sid, "resumed" if frame.session_id == sid else "started")
        self.app.runner.kick(sid)  # answers anything left pending by a crashed instance

    async def _store_message(self, client_id: str, data: dict[str, Any]) -> None:
        assert self.sid is not None
        started = time.perf_counter()
        fields: dict[str, str | None] = {"last_message": str(data["text"])[:200], "last_role": "user"}
        # Writing again reopens a closed conversation. The append script decides from the
        # stored status: an agent may have closed it on another instance since `start`.
        result = await self.store.append(
            self.sid,
            [NewEvent("message", {"role": "user", "buttons": [], "cards": [], "agent": None,
                                  "client_id": client_id, **data})],
            client_id=client_id, fields=fields, reopen=True,
        )
        self.send({"type": "ack", "client_id": client_id, "event_id": result.event_ids[0]})
        acked = time.perf_counter()
        self.app.metrics.messages.labels(str(result.duplicate).lower()).inc()
        self.app.metrics.ack_seconds.observe(acked - started)
        if self.status != "bot":
            # Handoff frames tell this socket when an agent takes the conversation or hands
            # it back, but not when one closes it (and this write reopened it for the bot):
            # read it. Only while an agent has (or had) it, so a bot conversation pays nothing.
            with contextlib.suppress(StoreError):
                record = await self.store.session(self.sid)
                if record is not None:
                    self.status = record.get("status", "bot")
        if not result.duplicate and self.awaiting_reply is None and self.status == "bot":
            self.awaiting_reply = acked
        # A duplicate too: its first write may have landed with the reply lost (redis-py's
        # retry after a dropped connection, or a resend after `unavailable`), so nothing
        # kicked its turn. A kick with nothing pending costs one claim that finds nothing.
        self.app.runner.kick(self.sid)
