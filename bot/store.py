"""Conversation state in Redis, shared by every server instance.

A conversation is an append-only Redis stream of events plus a small session
hash. Every write goes through one Lua script (see ``bot.lua``), so a write
is all-or-nothing, deduplicated by ``client_id`` and published to the
conversation's channel in stream order. Key layout: ``bot.keys``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from bot import lua
from bot.errors import DeskmateError, StoreError
from bot.keys import Keys

# The shape (ASCII digits only, and no newline after: "$" would let one through); is_event_id()
# checks the range too.
EVENT_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}\Z")
MAX_ID_PART = 2**64 - 1  # each part of a Redis stream id is an unsigned 64-bit number
# Event kinds a customer sees; the rest (turn analyses, notes, tracking) are for agents.
CUSTOMER_KINDS = frozenset({"message", "handoff"})
SESSION_STATUSES = ("bot", "waiting", "agent", "closed")


@dataclass(frozen=True)
class NewEvent:
    """An event to append; ``data`` must not use the keys type/event_id/ts/session_id."""

    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """A stored event."""

    event_id: str
    kind: str
    ts: float
    data: dict[str, Any]

    def frame(self, session_id: str) -> dict[str, Any]:
        return {"type": self.kind, "session_id": session_id, "event_id": self.event_id,
                "ts": self.ts, **self.data}


@dataclass(frozen=True)
class Appended:
    event_ids: list[str]
    duplicate: bool  # the client_id was seen before; event_ids holds the original id
    next: Claim | None = None  # with ``next_owner``: what is pending after the write


class Conflict(DeskmateError):
    """A guarded write was refused: the conversation's ``status``/``agent`` did not allow it."""

    def __init__(self, status: str, agent: str | None) -> None:
        super().__init__(f"conversation is {status}" + (f" with {agent}" if agent else ""))
        self.status = status
        self.agent = agent


CONFLICT = re.compile(r"conflict (\w+) ?(\S*)")
# Session fields of the turn marker (see Store.start_turn); None in `fields` deletes them.
TURN_MARK_CLEARED: Mapping[str, str | None] = {
    "turn_message": None, "turn_owner": None, "turn_started_at": None}


class LockLost(DeskmateError):
    """The caller no longer holds the conversation's turn lock; nothing was written."""


class StaleTurn(DeskmateError):
    """A turn result was refused: the turn was finished or taken over by another holder."""

    def __init__(self, owner: str | None) -> None:
        super().__init__("the turn is no longer this holder's" + (f" (now {owner})" if owner else ""))
        self.owner = owner


@dataclass(frozen=True)
class StartedTurn:
    """What an earlier, unfinished attempt at a turn left behind (see Store.start_turn)."""

    owner: str  # the lock owner token of that attempt
    started_at: float | None  # when it started (epoch seconds)


@dataclass(frozen=True)
class Claim:
    """A conversation's state as the turn runner finds it (see Store.claim_turns)."""

    record: dict[str, str] | None  # the session record; None when the session is gone
    pending: list[Event]  # customer messages after the turn cursor, oldest first
    owner: str | None  # the lock owner token while the caller holds the turn lock
    wait: float  # seconds left on another holder's lock (0 when free or ours)


@dataclass(frozen=True)
class TurnContext:
    """The conversation around a turn (see Store.start_turn)."""

    history: list[Event]  # messages before the turn's message, oldest first
    signals: list[Event]  # `track` events after the profile cursor, oldest first
    last_id: str | None  # the last event after the profile cursor, of any kind


def _row_event(row: Sequence[Any]) -> Event:
    """An Event from an XRANGE entry returned by a script: [id, [field, value, ...]]."""
    event_id, flat = row
    values = dict(zip(flat[::2], flat[1::2], strict=True))
    return Event(str(event_id), values["kind"], float(values["ts"]), json.loads(values["data"]))


def _claim(reply: Sequence[Any], token: str) -> Claim:
    """A Claim from the reply of the Lua claim() function (bot.lua)."""
    flat, rows, held, wait_ms = reply
    record = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None
    return Claim(record, [_row_event(row) for row in rows], token if int(held) else None,
                 int(wait_ms) / 1000)


def _context(reply: Sequence[Any]) -> TurnContext:
    """A TurnContext from the reply of the Lua context() function (bot.lua)."""
    history, signals, last_id = reply
    return TurnContext([_row_event(row) for row in reversed(history)],
                       [_row_event(row) for row in signals], str(last_id) or None)


def parse_event_id(value: str) -> tuple[int, int]:
    ms, seq = value.split("-")
    return int(ms), int(seq)


def is_event_id(value: str) -> bool:
    """True when ``value`` is a stream id that events can follow, so that XRANGE accepts it
    as an exclusive start: both parts at most 2^64-1 (twenty digits reach past that), and
    not the very last id, ``MAX-MAX``."""
    if not EVENT_ID.match(value):
        return False
    ms, seq = parse_event_id(value)
    return ms <= MAX_ID_PART and seq <= MAX_ID_PART and (ms, seq) != (MAX_ID_PART, MAX_ID_PART)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """Async access to conversations; one instance per server process."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "dm:", ttl: int = 7 * 86400) -> None:
        # Typed as Any: redis-py's annotations cover bytes|str replies, and every client
        # here is created with decode_responses=True.
        self.redis: Any = client
        self.keys = Keys(prefix)
        self.ttl = ttl
        self._append = client.register_script(lua.APPEND)
        self._release = client.register_script(lua.RELEASE)
        self._acquire = client.register_script(lua.ACQUIRE)
        self._extend = client.register_script(lua.EXTEND)
        self._claim = client.register_script(lua.CLAIM)
        self._start_turn = client.register_script(lua.START_TURN)
        self._show_turn = client.register_script(lua.SHOW_TURN)

    @classmethod
    def from_url(cls, url: str, *, pool_size: int = 200, pool_timeout: float = 5.0, **kwargs: Any) -> Store:
        """A store on ``url``. Connections come from a blocking pool: under a burst, a command
        waits up to ``pool_timeout`` seconds for a free connection instead of failing at once
        (redis-py's default pool raises "Too many connections"). A ``max_connections`` query
        parameter on the URL overrides ``pool_size``."""
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=pool_timeout, decode_responses=True,
            socket_timeout=5, socket_connect_timeout=5, health_check_interval=15, retry_on_timeout=True,
        )
        return cls(aioredis.Redis.from_pool(pool), **kwargs)  # the client owns (and closes) the pool

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    # -- sessions -------------------------------------------------------------

    async def create_session(self, customer: Mapping[str, Any] | None = None) -> tuple[str, str]:
        """A new conversation; returns (session_id, token). Only the token's hash is kept."""
        sid = secrets.token_urlsafe(16)
        token = secrets.token_urlsafe(24)
        now = time.time()
        record = {
            "status": "bot", "token_hash": hash_token(token), "created_at": repr(now),
            "updated_at": repr(now), "customer": json.dumps(dict(customer or {})),
        }
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.session(sid), mapping=record)
                pipe.expire(self.keys.session(sid), self.ttl)
                pipe.zadd(self.keys.live(), {sid: now})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not create session: {exc}") from exc
        return sid, token

    async def session(self, sid: str) -> dict[str, str] | None:
        try:
            record: dict[str, str] = await self.redis.hgetall(self.keys.session(sid))
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read session: {exc}") from exc
        return record or None

    async def authenticate(self, sid: str, token: str) -> dict[str, str] | None:
        """The session record if ``token`` opens ``sid``; None for unknown or wrong."""
        record = await self.session(sid)
        if record is None or not hmac.compare_digest(record.get("token_hash", ""), hash_token(token)):
            return None
        return record

    async def live_sessions(self, limit: int = 500) -> list[str]:
        """Session ids by most recent activity, from the live index (no KEYS scan)."""
        try:
            return list(await self.redis.zrevrange(self.keys.live(), 0, limit - 1))
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read the live-session index: {exc}") from exc

    async def sweep_expired(self) -> int:
        """Drop index entries of sessions whose keys Redis has expired."""
        cutoff = time.time() - self.ttl
        stale = await self.redis.zrangebyscore(self.keys.live(), "-inf", cutoff)
        removed = 0
        for sid in stale:
            if not await self.redis.exists(self.keys.session(sid)):
                removed += await self.redis.zrem(self.keys.live(), sid)
        return removed

    # -- events ---------------------------------------------------------------

    async def append(
        self, sid: str, events: Sequence[NewEvent], *, client_id: str | None = None,
        fields: Mapping[str, str | None] | None = None, cursor: str | None = None,
        allow: Mapping[str, str] | None = None, reopen: bool = False,
        turn: tuple[str, str] | None = None, then_publish: Mapping[str, Any] | None = None,
        next_owner: str | None = None,
    ) -> Appended:
        """Append ``events`` atomically, update session ``fields`` and the turn ``cursor``.

        With ``client_id``, a second call with the same id stores nothing and
        returns the first call's event id (``duplicate=True``). With ``allow``
        (status -> agent name, or ``"*"`` for any), nothing is written unless the
        session's status and agent match, checked in the same script: raises
        :class:`Conflict`. ``reopen`` turns a closed conversation back to ``bot``.
        With ``turn`` (message event id, lock owner), nothing is written unless the
        session's turn marker still names that message and owner (see
        :meth:`start_turn`): raises :class:`StaleTurn`. ``then_publish`` is an ephemeral
        frame published after the events, by the same write (never when it is refused).
        With ``next_owner`` (a turn's lock holder), the same call then does what
        :meth:`next_turns` does, and ``Appended.next`` holds its answer.
        """
        guard: dict[str, Any] = {"reopen": reopen}
        if allow is not None:
            guard["allow"] = dict(allow)
        if turn is not None:
            guard["turn"] = {"message": turn[0], "owner": turn[1]}
        if next_owner is not None:
            guard["next"] = next_owner
        args: list[Any] = [
            sid, repr(time.time()), self.ttl, self.keys.channel(sid), self.keys.updates_channel(),
            client_id or "", cursor or "", json.dumps(dict(fields or {})), json.dumps(guard),
            len(events),
        ]
        for ev in events:
            if not ev.kind.isidentifier():
                raise ValueError(f"bad event kind {ev.kind!r}")
            args += [ev.kind, json.dumps(dict(ev.data), separators=(",", ":"), ensure_ascii=False)]
        args.append(self._frame(sid, then_publish))
        keys = [self.keys.session(sid), self.keys.events(sid), self.keys.client_ids(sid),
                self.keys.live()]
        if next_owner is not None:
            keys.append(self.keys.lock(sid))
        try:
            out = await self._append(keys=keys, args=args)
        except ResponseError as exc:
            if "no_session" in str(exc):
                raise StoreError("session expired or unknown") from exc
            stale = re.search(r"stale_turn ?(\S*)", str(exc))
            if stale:
                raise StaleTurn(stale.group(1) or None) from None
            conflict = CONFLICT.search(str(exc))
            if conflict:
                raise Conflict(conflict.group(1), conflict.group(2) or None) from None
            raise StoreError(f"append failed: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"append failed: {exc}") from exc
        claim = None
        if next_owner is not None:
            out, claim = out[0], _claim(out[1], next_owner)
        return Appended(event_ids=[str(x) for x in out[1:]], duplicate=bool(int(out[0])), next=claim)

    async def events(
        self, sid: str, after: str | None = None, *, kinds: frozenset[str] | None = None,
        count: int | None = None,
    ) -> list[Event]:
        """Stored events with ids greater than ``after`` (all when None), oldest first."""
        start = f"({after}" if after else "-"
        try:
            rows = await self.redis.xrange(self.keys.events(sid), min=start, max="+", count=count)
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read events: {exc}") from exc
        out = []
        for event_id, values in rows:
            if kinds is None or values["kind"] in kinds:
                out.append(Event(event_id, values["kind"], float(values["ts"]), json.loads(values["data"])))
        return out

    async def claim_turns(self, sid: str, ttl: float, owner: str | None = None, *,
                          mode: str = "take") -> Claim:
        """The session record and the customer messages after its turn cursor, with the
        turn lock changed in the same round trip (``bot.lua.CLAIM``).

        ``take``: when a message is pending, take the lock (``owner`` re-takes one it still
        holds); when none is, let go of ``owner``'s lock. ``next``: the holder ``owner``
        after a turn keeps the lock while messages are pending and releases it otherwise,
        atomically with seeing nothing pending. ``peek``: read only."""
        if mode not in ("take", "next", "peek"):
            raise ValueError(f"bad claim mode {mode!r}")
        token = owner or (secrets.token_hex(8) if mode == "take" else "")
        try:
            reply = await self._claim(
                keys=[self.keys.session(sid), self.keys.events(sid), self.keys.lock(sid)],
                args=[token, int(ttl * 1000), mode])
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read pending turns: {exc}") from exc
        return _claim(reply, token)

    async def next_turns(self, sid: str, owner: str) -> Claim:
        """After a turn: what is pending now; the lock is released when nothing is."""
        return await self.claim_turns(sid, 0, owner, mode="next")

    async def publish_many(self, sid: str, frames: Sequence[Mapping[str, Any]]) -> None:
        """Fan out several ephemeral frames, in order, in one message (one round trip)."""
        payload = [{"session_id": sid, **frame} for frame in frames]
        try:
            await self.redis.publish(self.keys.channel(sid), json.dumps(payload, ensure_ascii=False))
        except (RedisError, OSError) as exc:
            raise StoreError(f"publish failed: {exc}") from exc

    @staticmethod
    def _frame(sid: str, frame: Mapping[str, Any] | None) -> str:
        return json.dumps({"session_id": sid, **frame}, ensure_ascii=False) if frame else ""

    async def publish(self, sid: str, frame: Mapping[str, Any]) -> None:
        """Fan out an ephemeral frame (typing, stream deltas) to every instance."""
        try:
            await self.redis.publish(self.keys.channel(sid), self._frame(sid, frame))
        except (RedisError, OSError) as exc:
            raise StoreError(f"publish failed: {exc}") from exc

    # -- turn lock ------------------------------------------------------------

    async def acquire_lock(self, sid: str, ttl: float, owner: str | None = None) -> str | None:
        """The owner token if this caller now holds the conversation's turn lock.

        Pass the ``owner`` of a lock whose release failed to take it back at once."""
        owner = owner or secrets.token_hex(8)
        try:
            ok = await self._acquire(keys=[self.keys.lock(sid)], args=[owner, int(ttl * 1000)])
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not take lock: {exc}") from exc
        return owner if ok else None

    async def extend_lock(self, sid: str, owner: str, ttl: float) -> bool:
        return bool(await self._extend(keys=[self.keys.lock(sid)], args=[owner, int(ttl * 1000)]))

    async def release_lock(self, sid: str, owner: str) -> None:
        try:
            await self._release(keys=[self.keys.lock(sid)], args=[owner])
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not release lock: {exc}") from exc

    async def show_turn(self, sid: str, message_id: str, owner: str, frames_json: str) -> str:
        """Publish a turn's live frames (a JSON array) on the conversation's channel only
        while the bot has the conversation and the turn marker is ``(message_id, owner)``
        (``bot.lua.SHOW_TURN``): "" when published, else why not ("stale", or the status)."""
        try:
            return str(await self._show_turn(keys=[self.keys.session(sid)],
                                             args=[message_id, owner, self.keys.channel(sid), frames_json]))
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not publish: {exc}") from exc

    async def start_turn(self, sid: str, owner: str, message_id: str, history_limit: int,
                         profile_cursor: str | None, frame: Mapping[str, Any] | None = None,
                         ) -> StartedTurn | TurnContext:
        """Record that the lock holder ``owner`` starts the turn for ``message_id`` and, on a
        fresh start, read what the turn needs to know; one round trip (``bot.lua.START_TURN``).

        Called before the turn is classified or its pipeline runs, so a turn whose holder
        dies mid-way is known to have started: returns what the earlier attempt left (then
        the turn must not run again; the customer is told instead). A fresh start returns
        the :class:`TurnContext`: the last ``history_limit`` messages before the turn's
        message (read backwards in pages, so a long conversation costs what a short one
        does) and the `track` events after ``profile_cursor`` (the whole stream when None),
        and publishes ``frame`` (the typing indicator). Raises :class:`LockLost` when
        ``owner`` does not hold the lock (nothing is written)."""
        try:
            started, context = await self._start_turn(
                keys=[self.keys.session(sid), self.keys.lock(sid), self.keys.events(sid)],
                args=[owner, message_id, repr(time.time()), self.keys.channel(sid),
                      self._frame(sid, frame), history_limit, profile_cursor or ""])
        except ResponseError as exc:
            if "lock_lost" in str(exc):
                raise LockLost(f"session {sid}: turn lock lost") from None
            if "no_session" in str(exc):
                raise StoreError("session expired or unknown") from exc
            raise StoreError(f"could not start the turn: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not start the turn: {exc}") from exc
        if not int(started[0]):  # a fresh start
            return _context(context)
        try:
            started_at: float | None = float(started[2])
        except (TypeError, ValueError):
            started_at = None
        return StartedTurn(str(started[1]), started_at)

    async def lock_ttl_left(self, sid: str) -> float:
        """Seconds until the turn lock expires (0 when it is free)."""
        ms = await self.redis.pttl(self.keys.lock(sid))
        return max(int(ms), 0) / 1000

    # -- agent console ----------------------------------------------------------

    async def records(self, sids: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
        """(session id, session record) for each of ``sids`` that still exists, in order."""
        if not sids:
            return []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    pipe.hgetall(self.keys.session(sid))
                rows = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read sessions: {exc}") from exc
        return [(sid, row) for sid, row in zip(sids, rows, strict=True) if row]


    # -- customers across conversations -------------------------------------------

    async def customer_profile(self, customer_id: str) -> dict[str, list[str]]:
        """What this customer browsed in earlier conversations (empty when unknown)."""
        try:
            raw = await self.redis.get(self.keys.customer_profile(customer_id))
        except (RedisError, OSError) as exc:
            raise StoreError(f"profile read failed: {exc}") from exc
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return {k: [str(x) for x in v] for k, v in data.items() if isinstance(v, list)}

    async def save_customer_profile(self, customer_id: str, profile: Mapping[str, list[str]]) -> None:
        """Keep the merged profile for the customer's next conversation (expires like a session,
        four times over)."""
        try:
            await self.redis.set(self.keys.customer_profile(customer_id), json.dumps(dict(profile)),
                                 ex=self.ttl * 4)
        except (RedisError, OSError) as exc:
            raise StoreError(f"profile write failed: {exc}") from exc
