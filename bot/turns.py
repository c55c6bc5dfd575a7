"""Runs customer turns through the dialogue pipeline, one conversation at a time.

Ordering rule: a conversation's turns are processed only by the holder of its
Redis turn lock, strictly in stream order, starting after the session's
``cursor`` (the last customer message answered). The cursor moves in the same
atomic write that stores the turn's replies.

At most once: before the pipeline runs (and so before a custom action can cancel
an order), the holder marks the turn as started, atomically with checking that
it holds the lock (:meth:`~bot.store.Store.start_turn`). The write that stores
the result removes the marker, and is refused unless the marker is still its
own. A holder that finds a marker for the message it is about to answer knows
an earlier holder died (or lost the lock) mid-turn: it does not run the turn
again, but stores a system message telling the customer to send it again, and
moves the cursor on.

Streams: a turn's frames go out only while the bot has the conversation and the turn
is its holder's (checked in the same step as each publish), so a takeover or a lost
turn stops the reply, and its generation, at the next frame. Every stream a turn
opens is closed: by the stored message that names it, or, when nothing of the turn is
stored, by a ``stream_end`` with no ``event_id`` and ``dropped`` true (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from bot.batcher import MicroBatcher
from bot.errors import StoreError
from bot.metrics import Metrics
from bot.store import (
    TURN_MARK_CLEARED,
    Claim,
    Conflict,
    Event,
    LockLost,
    NewEvent,
    StaleTurn,
    StartedTurn,
    Store,
    TurnContext,
)
from dialogue.recommend import TRACK_KINDS
from dialogue.simple import sentences
from dialogue.types import (
    Conversation,
    Handoff,
    HistoryItem,
    Pipeline,
    Reply,
    SlotSet,
    StateUpdate,
    StreamedReply,
    TurnAnalysis,
    UserMessage,
)

log = logging.getLogger("deskmate.turns")

# texts -> one `deskmate nlu parse` JSON per text (the classifier's parse_batch)
Understand = Callable[[list[str]], list[dict[str, Any]]]
HISTORY_EVENTS = 50  # recent messages handed to the pipeline as context
PROFILE_ITEMS = 20  # most recent product ids per kind of browsing signal
ERROR_TEXT = "Sorry, something went wrong on my side. Please try again in a moment."
INTERRUPTED_TEXT = ("Sorry, I was interrupted while answering your last message and could not "
                    "finish. Please send it again.")
RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # seconds between tries while Redis fails, doubling
TYPING_ON = {"type": "typing", "role": "bot", "on": True}
TYPING_OFF = {"type": "typing", "role": "bot", "on": False}
RESULT_RETRY = 15.0  # seconds a finished turn keeps trying to store its result (Redis restart)


class TurnRunner:
    def __init__(self, store: Store, pipeline: Pipeline, metrics: Metrics, *,
                 understand: Understand | None = None, lock_ttl: float = 30.0,
                 nlu_batches: int = 2) -> None:
        self.store = store
        self.pipeline = pipeline
        self.understand = (MicroBatcher(understand, workers=nlu_batches)
                           if understand is not None else None)
        self.metrics = metrics
        self.lock_ttl = lock_ttl
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._unreleased: dict[str, str] = {}  # sid -> owner of a lock we failed to release
        self.accepting = True

    def kick(self, sid: str) -> None:
        """Make sure pending turns of ``sid`` get processed (here or by the lock holder)."""
        if not self.accepting:
            return
        if sid in self._tasks:
            self._again.add(sid)  # the running drain re-checks before it stops
            return
        task = asyncio.create_task(self._drain(sid), name=f"turns-{sid}")
        self._tasks[sid] = task
        task.add_done_callback(lambda _t: self._done(sid))

    def _done(self, sid: str) -> None:
        self._tasks.pop(sid, None)
        if sid in self._again:  # kicked after the drain's last look: go again
            self._again.discard(sid)
            self.kick(sid)

    async def drain_all(self, timeout: float) -> None:
        """Stop taking work and give running turns ``timeout`` seconds to finish."""
        self.accepting = False
        tasks = list(self._tasks.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.understand is not None:
            await self.understand.close()

    async def _drain(self, sid: str) -> None:
        delay = RETRY_FIRST
        try:
            while self.accepting:
                self._again.discard(sid)
                try:
                    if not await self._take_turns(sid):
                        return
                    delay = RETRY_FIRST
                except (StoreError, RedisError, OSError) as exc:
                    # Redis is down or failing. Acked messages are safe in it: keep trying,
                    # so that they are answered once it is back without the customer
                    # having to write again.
                    log.warning("session %s: turn processing waits for Redis (%s); "
                                "retrying in %.1fs", sid, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
        except Exception:
            log.exception("session %s: turn processing crashed", sid)

    async def _take_turns(self, sid: str) -> bool:
        """Answer pending turns while holding the lock; False when nothing is pending
        (and the lock, if this runner held it, is released)."""
        previous = self._unreleased.pop(sid, None)
        try:
            # One round trip: what is pending, and the lock when something is.
            claim = await self.store.claim_turns(sid, self.lock_ttl, previous)
        except StoreError:
            if previous is not None:
                self._unreleased[sid] = previous
            raise
        if claim.record is None or not claim.pending:
            return False
        owner = claim.owner
        if owner is None:
            # Another instance is answering (and looks again after releasing), or one
            # died holding the lock: look again shortly; once nothing is pending we
            # stop, and a dead holder's lock expires after lock_ttl.
            await asyncio.sleep(min(claim.wait, 1.0) + 0.05)
            return True
        keeper = asyncio.create_task(self._keep_lock(sid, owner))
        released = False
        try:
            while self.accepting and claim.record is not None and claim.pending:
                # What is pending now, read by the turn's own write when it could (else here);
                # when nothing is, the lock is released in the same step, so a message
                # stored later is kicked and finds the lock free.
                after = await self._process(sid, owner, claim.record, claim.pending[0])
                claim = after if after is not None else await self.store.next_turns(sid, owner)
                if claim.owner is None:  # released, or lost to another holder
                    released = not claim.pending
                    break
        except LockLost:
            log.warning("session %s: the turn lock went to another holder; it carries on", sid)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if not released:
                try:
                    await self.store.release_lock(sid, owner)
                except StoreError:
                    self._unreleased[sid] = owner
        # Released with nothing pending: done. Otherwise the caller loops and looks again.
        return not released

    async def _keep_lock(self, sid: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self.lock_ttl / 3)
            try:
                # Extends the lock, or takes it back if it expired while Redis was away
                # and nobody else has taken it since.
                held = await self.store.acquire_lock(sid, self.lock_ttl, owner) == owner
            except StoreError as exc:
                log.warning("session %s: could not renew the turn lock: %s", sid, exc)
                continue
            if not held:
                # Another holder has the conversation now. Our turn's result will be
                # refused (the turn marker is no longer ours), so it is never stored twice.
                log.error("session %s: lost the turn lock", sid)
                return

    async def _process(self, sid: str, owner: str, record: dict[str, str], message: Event,
                       ) -> Claim | None:
        """Answer ``message``; returns what is pending after it when the write said so."""
        if record.get("status", "bot") != "bot":
            # An agent has the conversation (or it is closed): the bot stays quiet.
            return (await self.store.append(sid, [], cursor=message.event_id, fields=TURN_MARK_CLEARED,
                                            next_owner=owner)).next
        return await self._answer(_Turn(sid, message.event_id, owner), record, message)

    async def _conversation(self, sid: str, record: dict[str, str], context: TurnContext,
                            ) -> tuple[Conversation, dict[str, str | None]]:
        """The conversation as the pipeline sees it, and the session fields to store with
        the turn's result (the profile's new cursor and values: every event since the
        profile cursor was read, and the cursor moves past all of them, so a conversation
        without `track` events does not re-read its whole stream each turn)."""
        own: dict[str, list[str]] = json.loads(record.get("profile") or "{}")
        customer = json.loads(record.get("customer") or "{}")
        fields: dict[str, str | None] = {}
        if context.last_id:
            fields["profile_cursor"] = context.last_id
        if context.signals:
            fields["profile"] = json.dumps(_profile_from(own, context.signals))
        conversation = Conversation(
            session_id=sid, status=record.get("status", "bot"),
            slots=json.loads(record.get("slots") or "{}"),
            customer=customer,
            history=[HistoryItem(str(ev.data.get("role", "")), str(ev.data.get("text", "")))
                     for ev in context.history],
            state=json.loads(record.get("state") or "{}"),
            profile=await self._profile(own, customer, bool(context.signals)),
        )
        return conversation, fields

    async def _profile(self, own: dict[str, list[str]], customer: dict[str, Any], changed: bool,
                       ) -> dict[str, list[str]]:
        """Product ids the customer viewed, put in the cart or bought: from this conversation's
        `track` events (``own``, already updated), after those of earlier conversations when
        the host page names the customer (``customer.id`` in the start frame).

        The conversation's own profile is kept in its session record with the id of the last
        event read (of any kind), so a turn reads only the events since the previous turn; the
        new values are stored with the turn's replies (see ``_answer``)."""
        customer_id = customer.get("id") if isinstance(customer, dict) else None
        if not (isinstance(customer_id, str | int) and str(customer_id).strip()):
            return own
        merged = await self.store.customer_profile(str(customer_id))
        for kind, ids in own.items():
            for pid in ids:
                _remember(merged.setdefault(kind, []), pid)
        if changed:
            await self.store.save_customer_profile(str(customer_id), merged)
        return merged

    async def _answer(self, turn: _Turn, record: dict[str, str], message: Event) -> Claim | None:
        sid, owner = turn.sid, turn.owner
        # Before anything else (and so before a custom action can act), mark the turn
        # started, so that it is never run a second time. The same round trip sends the
        # typing indicator and reads the conversation's recent messages and signals.
        start = await self.store.start_turn(sid, owner, message.event_id, HISTORY_EVENTS,
                                            record.get("profile_cursor") or None, TYPING_ON)
        if isinstance(start, StartedTurn):
            return await self._interrupted(turn, message, start)
        # Set once a write stored a message for every stream the turn opened (viewers close
        # each with its stored id) and ended the typing indicator; until then the `finally`
        # below closes them itself: refused, dropped, failed or cancelled, nothing stays open.
        closed = False
        after: Claim | None = None
        try:
            try:
                events, fields = await self._respond(turn, record, message, start)
            except (asyncio.CancelledError, StoreError, _NotOurs):
                raise
            except Exception:
                log.exception("session %s: pipeline failed on %s", sid, message.event_id)
                self.metrics.errors.labels("pipeline").inc()
                events, fields = _failed(turn, message.event_id), {}
            # One atomic write: the replies and the cursor move together, and only while the
            # bot still has the conversation (an agent may have taken over mid-turn).
            # The write also ends the typing indicator.
            after = await self._finish(turn, events, fields, allow={"bot": "*"}, then_publish=TYPING_OFF)
            closed = True
            self._answered(turn, events)
        except (_NotOurs, Conflict) as exc:
            log.info("session %s: %s during the turn; the bot's reply is dropped", sid, exc)
            after = await self._skip(turn)
        except StaleTurn as exc:
            log.warning("session %s: the result of the turn for %s is dropped: %s",
                        sid, message.event_id, exc)
        finally:
            if not closed:
                # Nothing of ours was stored (dropped, refused, or Redis away): close what the
                # viewers were shown, then end the typing indicator.
                await self._publish(sid, *turn.dropped(), TYPING_OFF)
        return after

    async def _respond(self, turn: _Turn, record: dict[str, str], message: Event, start: TurnContext,
                       ) -> tuple[list[NewEvent], dict[str, str | None]]:
        """Run the pipeline on ``message``, streaming its replies; the events and session
        fields to store. The events so far are kept on ``turn`` (see :func:`_failed`)."""
        sid = turn.sid
        text = str(message.data.get("text", ""))
        events = turn.events
        conversation, fields = await self._conversation(sid, record, start)
        slots = dict(conversation.slots)
        nlu = vector = None
        if self.understand is not None:
            # Batched with other conversations' turns, on a worker thread: the event
            # loop keeps serving sockets while the model runs.
            nlu = dict(await self.understand(text))
            vector = nlu.pop("vector", None)
        user = UserMessage(message.event_id, text, message.data.get("payload"), nlu, vector)
        # Closed on the way out: a turn that stops early (the conversation is no longer the
        # bot's) stops the pipeline, and the generation it runs, there and then.
        async with contextlib.aclosing(self.pipeline.respond(conversation, user)) as outputs:  # type: ignore[type-var]
            async for out in outputs:
                if isinstance(out, TurnAnalysis):
                    events.append(NewEvent("turn", _analysis(out, message.event_id)))
                    fields["last_intent"] = out.intent
                    if out.sentiment:
                        fields["sentiment"] = out.sentiment
                elif isinstance(out, SlotSet):
                    slots[out.name] = out.value
                    events.append(NewEvent("slot", {"name": out.name, "value": out.value}))
                elif isinstance(out, Reply):
                    events.append(await self._stream_written(turn, out, message.event_id))
                elif isinstance(out, StreamedReply):
                    events.append(await self._stream(turn, out, message.event_id))
                elif isinstance(out, StateUpdate):
                    fields["state"] = json.dumps(out.state)
                elif isinstance(out, Handoff):
                    # The bot stops answering until an agent hands the conversation back.
                    fields["status"] = "waiting"  # waiting_since is set by the append script
                    fields["handoff_reason"] = out.reason
                    events.append(NewEvent("handoff", {"state": "requested", "agent": None,
                                                       "reason": out.reason}))
        if slots != conversation.slots:
            fields["slots"] = json.dumps(slots)
        last = next((e for e in reversed(events) if e.kind == "message"), None)
        if last is not None:
            fields["last_message"] = str(last.data["text"])[:200]
            fields["last_role"] = "bot"
        return events, fields

    def _answered(self, turn: _Turn, events: list[NewEvent]) -> None:
        """The turn's result is stored: count it, and the handoff it asked for. Not before:
        the write can be refused (an agent took over mid-turn), and then nothing was."""
        self.metrics.turn_stored(time.perf_counter() - turn.started,
                                 [str(e.data.get("reason", "")) for e in events if e.kind == "handoff"])

    async def _interrupted(self, turn: _Turn, message: Event, earlier: StartedTurn) -> Claim | None:
        """Tell the customer that the turn for ``message`` was cut off, instead of running it
        again (it may have run a custom action already), and move on."""
        sid = turn.sid
        ago = f", {time.time() - earlier.started_at:.1f}s ago" if earlier.started_at else ""
        reason = f"interrupted: started by {earlier.owner or 'an earlier holder'}{ago} and never finished"
        log.warning("session %s: the turn for %s was %s; telling the customer, not running it again",
                    sid, message.event_id, reason.removeprefix("interrupted: "))
        self.metrics.errors.labels("interrupted").inc()
        notice = NewEvent("message", {"role": "system", "text": INTERRUPTED_TEXT, "buttons": [],
                                      "cards": [], "agent": None, "reply_to": message.event_id,
                                      "name": "interrupted"})
        analysis = NewEvent("turn", {"intent": None, "confidence": None, "sentiment": None,
                                     "sentiment_score": None, "policy": "interrupted",
                                     "reason": reason, "sources": [], "actions": [], "entities": [],
                                     "reply_to": message.event_id})
        try:
            # The earlier holder's typing indicator may still be on: the notice ends it.
            after = await self._finish(turn, [notice, analysis],
                                       {"last_message": INTERRUPTED_TEXT[:200], "last_role": "system"},
                                       then_publish=TYPING_OFF)
        except StaleTurn as exc:  # yet another holder got there first (and told the customer)
            log.warning("session %s: the notice for %s is dropped: %s", sid, message.event_id, exc)
            return None
        self._answered(turn, [])
        return after

    async def _skip(self, turn: _Turn) -> Claim | None:
        """Move the cursor past a turn whose reply is dropped, storing nothing; None when the
        turn is no longer this holder's (its new holder moves it)."""
        try:
            return await self._finish(turn, [], {})
        except StaleTurn as exc:
            log.warning("session %s: the turn for %s is no longer ours: %s", turn.sid, turn.message_id, exc)
            return None

    async def _finish(self, turn: _Turn, events: list[NewEvent], fields: dict[str, str | None], *,
                      allow: dict[str, str] | None = None,
                      then_publish: dict[str, Any] | None = None) -> Claim | None:
        """Store a turn's result, move the cursor past its message and clear the turn marker,
        in one write that only the turn's own holder can make.

        A Redis restart should not cost a finished answer: the write is retried for up to
        ``RESULT_RETRY`` seconds. A retry after a write that did land is refused (the
        marker is gone), so the result is never stored twice.

        Returns what is pending after the write (read by the write itself). Raises
        :class:`StaleTurn` when the turn is no longer this holder's and :class:`Conflict`
        when ``allow`` refuses the write: nothing was stored."""
        sid, message_id = turn.sid, turn.message_id
        delay = RETRY_FIRST
        deadline = time.monotonic() + RESULT_RETRY
        while True:
            try:
                appended = await self.store.append(
                    sid, events, fields={**fields, **TURN_MARK_CLEARED}, cursor=message_id,
                    allow=allow, turn=(message_id, turn.owner), then_publish=then_publish,
                    next_owner=turn.owner)
                return appended.next
            except StoreError as exc:
                if "expired" in str(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("session %s: storing the turn's result failed (%s); retrying", sid, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _publish(self, sid: str, *frames: dict[str, Any]) -> bool:
        """Fan out ephemeral frames, in order, in one publish; best effort. When Redis is away,
        clients miss typing and deltas but get the stored reply once they catch up, so the
        turn goes on."""
        try:
            await self.store.publish_many(sid, frames)
        except StoreError:
            return False
        return True

    async def _show(self, turn: _Turn, *frames: dict[str, Any]) -> None:
        """Publish stream frames of ``turn`` (one script: :meth:`Store.show_turn`); raises
        :class:`_NotOurs`, publishing nothing, once the conversation is no longer the bot's
        or the turn no longer this holder's. Once a publish fails (Redis away), the rest of
        the turn's frames are not tried: each try would wait out the client's reconnect
        attempts."""
        if not turn.live:
            return
        payload = json.dumps([{"session_id": turn.sid, **frame} for frame in frames], ensure_ascii=False)
        try:
            refused = await self.store.show_turn(turn.sid, turn.message_id, turn.owner, payload)
        except StoreError:
            turn.live = False
            return
        if refused == "stale":
            raise _NotOurs("the turn went to another holder")
        if refused:
            raise _NotOurs(f"the conversation became {refused}")

    async def _stream_written(self, turn: _Turn, reply: Reply, reply_to: str) -> NewEvent:
        """A reply whose whole text is known, streamed like generated text (a sentence a
        time, so clients show every reply one way), with its frames in one publish."""
        stream_id = uuid.uuid4().hex
        parts = sentences(reply.text)
        deltas = ({"type": "stream_delta", "stream_id": stream_id, "text": chunk} for chunk in parts)
        await self._show(turn, {"type": "stream_start", "stream_id": stream_id, "role": "bot"}, *deltas)
        turn.shown[stream_id] = parts
        return _streamed_message(parts, reply, reply_to, stream_id)

    async def _stream(self, turn: _Turn, reply: StreamedReply, reply_to: str) -> NewEvent:
        stream_id = uuid.uuid4().hex
        parts: list[str] = []
        try:
            await self._show(turn, {"type": "stream_start", "stream_id": stream_id, "role": "bot"})
            turn.shown[stream_id] = parts
            async for chunk in reply.chunks:
                if not chunk:
                    continue
                await self._show(turn, {"type": "stream_delta", "stream_id": stream_id, "text": chunk})
                parts.append(chunk)
        finally:
            # Stopped early (dropped, failed, cancelled): stop the generation too.
            close = getattr(reply.chunks, "aclose", None)
            if close is not None:
                await close()
        return _streamed_message(parts, reply, reply_to, stream_id)


class _NotOurs(Exception):
    """While a turn ran, an agent took the conversation over (or closed it), or the turn went
    to another holder: its reply is not shown any further nor stored. Never leaves
    :meth:`TurnRunner._answer`."""


class _Turn:
    """One turn being answered: who answers it, and the streams it opened so far.

    A stream stays open until the turn's write stores its message (viewers then close it
    with the stored id); a turn whose reply is not stored closes them with :meth:`dropped`."""

    def __init__(self, sid: str, message_id: str, owner: str) -> None:
        self.sid = sid
        self.message_id = message_id  # the customer message it answers
        self.owner = owner  # the turn lock's owner token
        self.started = time.perf_counter()
        self.events: list[NewEvent] = []  # what the pipeline said so far
        self.shown: dict[str, list[str]] = {}  # stream id -> the text its viewers were sent
        self.live = True  # False once Redis failed: no more frames are tried

    def dropped(self) -> list[dict[str, Any]]:
        """``stream_end`` frames for the streams of a reply that will not be stored: no
        ``event_id``, ``dropped`` true, and the text that was shown (docs/protocol.md)."""
        return [{"type": "stream_end", "stream_id": stream_id, "event_id": None, "role": "bot",
                 "text": "".join(parts), "buttons": [], "cards": [], "sources": [], "dropped": True}
                for stream_id, parts in self.shown.items()]


def _failed(turn: _Turn, reply_to: str) -> list[NewEvent]:
    """What a turn whose pipeline failed stores: the replies the customer was shown whole
    (their streams close with them), then the error message, under the stream that was cut
    off when there is one (its viewers see the error text in its place)."""
    shown = [e for e in turn.events if e.kind == "message"]
    whole = {e.data.get("stream_id") for e in shown}
    cut = [stream_id for stream_id in turn.shown if stream_id not in whole]
    error = _bot_message(ERROR_TEXT, [], [], reply_to)
    if cut:
        error = NewEvent("message", {**error.data, "stream_id": cut[-1]})
    return [*shown, error]


def _streamed_message(parts: list[str], reply: Reply | StreamedReply, reply_to: str,
                      stream_id: str) -> NewEvent:
    """The stored bot message of a streamed reply: its pieces joined, tied to its stream."""
    event = _bot_message("".join(parts).strip(), reply.buttons, reply.cards, reply_to, reply.name,
                         reply.sources)
    return NewEvent("message", {**event.data, "stream_id": stream_id})


def _profile_from(own: dict[str, list[str]], signals: list[Event]) -> dict[str, list[str]]:
    """Add the product ids of `track` events to ``own`` (in place) and return it."""
    for ev in signals:
        kind = TRACK_KINDS.get(str(ev.data.get("name", "")))
        data = ev.data.get("data") or {}
        pid = data.get("product_id") or data.get("id") if isinstance(data, dict) else None
        if kind and isinstance(pid, str):
            _remember(own.setdefault(kind, []), pid)
    return own


def _remember(items: list[str], pid: str) -> None:
    """Move ``pid`` to the end (most recent) of ``items``, keeping the last PROFILE_ITEMS."""
    if pid in items:
        items.remove(pid)
    items.append(pid)
    del items[:-PROFILE_ITEMS]


def _bot_message(text: str, buttons: Any, cards: Any, reply_to: str, name: str | None = None,
                 sources: Any = ()) -> NewEvent:
    data = {"role": "bot", "text": text, "buttons": [b.to_dict() for b in buttons],
            "cards": list(cards), "agent": None, "reply_to": reply_to}
    if name:
        data["name"] = name
    if sources:
        data["sources"] = list(sources)
    return NewEvent("message", data)


def _analysis(a: TurnAnalysis, reply_to: str) -> dict[str, Any]:
    return {"intent": a.intent, "confidence": a.confidence, "sentiment": a.sentiment,
            "sentiment_score": a.sentiment_score, "policy": a.policy, "reason": a.reason,
            "sources": a.sources, "actions": a.actions, "entities": a.entities, "reply_to": reply_to}
