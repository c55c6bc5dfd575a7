"""One simulated customer on ``/ws/chat``, and the tallies all customers share.

A :class:`Customer` opens a websocket, sends ``start``, then sends turns and
reads every frame the server sends, timing each turn: ``ack`` (matched by
``client_id``), the first reply frame (``stream_start``, or a bot ``message``),
the first ``stream_delta``, and the end of the answer. Frames of a reply carry
no ``client_id``, so they are matched to turns by order: a conversation's turns
are answered one at a time, in the order they were stored, and each answer is
bracketed by the bot's ``typing`` on/off. A turn the bot does not answer (the
conversation went to a person) gets no ``typing``; the Redis check afterwards
tells those apart from lost ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

OPEN_TIMEOUT = 30.0  # seconds for the handshake plus the `session` answer


def fake_address(n: int) -> str:
    """The ``n``-th simulated customer's address, in 10.0.0.0/8."""
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


@dataclass
class Turn:
    """Times (``time.perf_counter()``) of one customer turn; ``sent`` is when it was due."""

    client_id: str
    sent: float
    ack: float | None = None
    event_id: str | None = None
    first_reply: float | None = None  # stream_start or a bot message
    first_delta: float | None = None
    stream_end: float | None = None  # the last stream_end (or bot message) of the answer
    done: float | None = None  # typing off: the whole answer is stored and sent
    replies: int = 0
    error: str | None = None  # the error frame's code, when the server refused it

    @property
    def settled(self) -> bool:
        """Nothing more is expected for this turn."""
        return self.done is not None or self.error is not None


@dataclass
class Tally:
    """Counts shared by every customer of a run."""

    errors: Counter[str] = field(default_factory=Counter)  # error frames by code
    connect_failures: Counter[str] = field(default_factory=Counter)  # by exception / HTTP status
    closes: Counter[str] = field(default_factory=Counter)  # unexpected closes by close code
    redelivered: int = 0  # stored events a connection received twice
    frames: int = 0


class Customer:
    """A customer's websocket: ``open``, ``say``, ``ping``, ``close``."""

    def __init__(self, url: str, tally: Tally, address: str | None = None) -> None:
        self.url = url
        self.tally = tally
        # Sent as X-Forwarded-For: behind a trusting proxy setup, each simulated customer
        # counts as its own address for the server's per-address limits, as real ones do.
        self.address = address
        self.ws: ClientConnection | None = None
        self.session_id: str | None = None
        self.turns: list[Turn] = []
        self.handed_off = False
        self.closed = False  # the connection ended (by us or by the server)
        self._by_cid: dict[str, Turn] = {}
        self._unanswered: deque[Turn] = deque()  # sent, not yet begun by the bot, in order
        self._current: Turn | None = None  # the turn whose answer is streaming
        self._seen: set[str] = set()  # event ids of stored events received
        self._session = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._refused = ""

    # -- lifecycle --------------------------------------------------------------

    async def open(self, timeout: float = OPEN_TIMEOUT) -> bool:
        """Connect and start a new conversation; False (and a tallied reason) on failure."""
        try:
            async with asyncio.timeout(timeout):
                # Like a browser: permessage-deflate on; keepalive pings come from the server.
                headers = {"X-Forwarded-For": self.address} if self.address else None
                self.ws = await connect(self.url, open_timeout=None, ping_interval=None,
                                        max_size=None, max_queue=None, additional_headers=headers)
                self._reader = asyncio.create_task(self._read())
                await self.ws.send(json.dumps({"type": "start", "session_id": None, "token": None,
                                               "after": None, "customer": {"name": "load"}}))
                await self._session.wait()
            if self.session_id is not None:
                return True
            self.tally.connect_failures[f"start refused: {self._refused}"] += 1
        except InvalidStatus as exc:
            self.tally.connect_failures[f"HTTP {exc.response.status_code}"] += 1
        except TimeoutError:
            self.tally.connect_failures["timeout"] += 1
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else "abnormal"
            self.tally.connect_failures[f"closed {code}"] += 1
        except OSError as exc:
            self.tally.connect_failures[type(exc).__name__] += 1
        await self.close()
        return False

    async def close(self) -> None:
        self._closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self.closed = True

    @property
    def connected(self) -> bool:
        return self.ws is not None and self.session_id is not None and not self.closed

    @property
    def busy(self) -> int:
        """Turns sent whose answer has not finished."""
        return sum(1 for t in self.turns if not t.settled)

    # -- sending ----------------------------------------------------------------

    async def say(self, text: str, payload: str | None = None, due: float | None = None) -> Turn:
        """Send a message (or a button click); ``due`` is when it was scheduled, so a late
        send counts against the latency (no coordinated omission)."""
        assert self.ws is not None
        turn = Turn(uuid.uuid4().hex, due if due is not None else time.perf_counter())
        self.turns.append(turn)
        self._by_cid[turn.client_id] = turn
        self._unanswered.append(turn)
        frame: dict[str, Any] = {"type": "message", "client_id": turn.client_id, "text": text}
        if payload:
            frame = {"type": "action", "client_id": turn.client_id, "payload": payload, "title": text}
        try:
            await self.ws.send(json.dumps(frame))
        except ConnectionClosed:
            turn.error = "closed"
        return turn

    async def ping(self, timeout: float = 10.0) -> float | None:
        """Round trip of a websocket ping in seconds; None when it got no pong in time."""
        if not self.connected:
            return None
        assert self.ws is not None
        try:
            waiter = await self.ws.ping()
            return float(await asyncio.wait_for(waiter, timeout))
        except (TimeoutError, ConnectionClosed):
            return None

    # -- receiving --------------------------------------------------------------

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                self.tally.frames += 1
                self._on_frame(json.loads(raw), time.perf_counter())
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            if not self._closing:
                rcvd = self.ws.close_code
                self.tally.closes[str(rcvd) if rcvd is not None else "abnormal"] += 1
            for turn in self.turns:
                if not turn.settled and turn.ack is None:
                    turn.error = turn.error or "closed"

    def _on_frame(self, frame: dict[str, Any], now: float) -> None:
        kind = frame.get("type")
        if kind == "session":
            self.session_id = frame["session_id"]
            self._session.set()
        elif kind == "ack":
            turn = self._by_cid.get(frame.get("client_id", ""))
            if turn is not None and turn.ack is None:
                turn.ack, turn.event_id = now, frame.get("event_id")
        elif kind == "error":
            self.tally.errors[str(frame.get("code"))] += 1
            if self.session_id is None:  # `start` was refused (e.g. Redis unavailable)
                self._refused = str(frame.get("code"))
                self._session.set()
            turn = self._by_cid.get(frame.get("client_id") or "")
            if turn is not None and not turn.settled:
                turn.error = str(frame.get("code"))
                with contextlib.suppress(ValueError):
                    self._unanswered.remove(turn)
        elif kind == "typing" and frame.get("role") == "bot":
            if frame.get("on"):
                while self._unanswered and self._unanswered[0].settled:
                    self._unanswered.popleft()
                self._current = self._unanswered.popleft() if self._unanswered else None
            elif self._current is not None:
                self._current.done = now
                self._current = None
        elif kind == "stream_start":
            if self._current is not None and self._current.first_reply is None:
                self._current.first_reply = now
        elif kind == "stream_delta":
            if self._current is not None and self._current.first_delta is None:
                self._current.first_delta = now
        elif kind in ("stream_end", "message"):
            self._stored(frame, now)
        elif kind == "handoff":
            self._redelivery(frame)
            if frame.get("state") == "requested":
                self.handed_off = True

    def _stored(self, frame: dict[str, Any], now: float) -> None:
        self._redelivery(frame)
        if frame.get("type") == "message" and frame.get("role") != "bot":
            return  # the customer's own message, echoed to its other tabs
        turn = self._current
        if turn is not None:
            turn.first_reply = turn.first_reply or now
            turn.stream_end = now
            turn.replies += 1

    def _redelivery(self, frame: dict[str, Any]) -> None:
        event_id = frame.get("event_id")
        if isinstance(event_id, str):
            if event_id in self._seen:
                self.tally.redelivered += 1
            self._seen.add(event_id)
