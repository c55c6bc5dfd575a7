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
        started = time.perf_counter()
        if record.get("status", "bot") != "bot":
            # An agent has the conversation (or it is closed): the bot stays quiet.
            return (await self.store.append(sid, [], cursor=message.event_id, fields=TURN_MARK_CLEARED,
                                            next_owner=owner)).next
        after = await self._answer(sid, record, message, owner)
        self.metrics.turn_seconds.observe(time.perf_counter() - started)
        self.metrics.turns.inc()
        return after

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

    async def _answer(self, sid: str, record: dict[str, str], message: Event, owner: str,
                      ) -> Claim | None:
        # Before anything else (and so before a custom action can act), mark the turn
        # started, so that it is never run a second time. The same round trip sends the
        # typing indicator and reads the conversation's recent messages and signals.
        start = await self.store.start_turn(sid, owner, message.event_id, HISTORY_EVENTS,
                                            record.get("profile_cursor") or None, TYPING_ON)
        if isinstance(start, StartedTurn):
            return await self._interrupted(sid, message, owner, start)
        text = str(message.data.get("text", ""))
        events: list[NewEvent] = []
        typing_ended = False
        after: Claim | None = None
        try:
            conversation, fields = await self._conversation(sid, record, start)
            slots = dict(conversation.slots)
            nlu = vector = None
            if self.understand is not None:
                # Batched with other conversations' turns, on a worker thread: the event
                # loop keeps serving sockets while the model runs.
                nlu = dict(await self.understand(text))
                vector = nlu.pop("vector", None)
            user = UserMessage(message.event_id, text, message.data.get("payload"), nlu, vector)
            async for out in self.pipeline.respond(conversation, user):
                if isinstance(out, TurnAnalysis):
                    events.append(NewEvent("turn", _analysis(out, message.event_id)))
                    fields["last_intent"] = out.intent
                    if out.sentiment:
                        fields["sentiment"] = out.sentiment
                elif isinstance(out, SlotSet):
                    slots[out.name] = out.value
                    events.append(NewEvent("slot", {"name": out.name, "value": out.value}))
                elif isinstance(out, Reply):
                    events.append(await self._stream_written(sid, out, message.event_id))
                elif isinstance(out, StreamedReply):
                    events.append(await self._stream(sid, out, message.event_id))
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
            # One atomic write: the replies and the cursor move together, and only while the
            # bot still has the conversation (an agent may have taken over mid-turn).
            # The write also ends the typing indicator.
            try:
                after = await self._finish(sid, message.event_id, owner, events, fields,
                                           allow={"bot": "*"}, then_publish=TYPING_OFF)
            except Conflict as exc:
                log.info("session %s: %s during the turn; the bot's reply is dropped", sid, exc)
                after = await self._finish(sid, message.event_id, owner, [], {}, then_publish=TYPING_OFF)
            typing_ended = True
        except (asyncio.CancelledError, StoreError):
            raise
        except Exception:
            log.exception("session %s: pipeline failed on %s", sid, message.event_id)
            self.metrics.errors.labels("pipeline").inc()
            after = await self._finish(sid, message.event_id, owner,
                                       [_bot_message(ERROR_TEXT, [], [], message.event_id)], {},
                                       then_publish=TYPING_OFF)
            typing_ended = True
        finally:
            if not typing_ended:  # the result was not stored by us (refused, or Redis away)
                await self._publish(sid, TYPING_OFF)
        return after

    async def _interrupted(self, sid: str, message: Event, owner: str, earlier: StartedTurn,
                           ) -> Claim | None:
        """Tell the customer that the turn for ``message`` was cut off, instead of running it
        again (it may have run a custom action already), and move on."""
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
        return await self._finish(sid, message.event_id, owner, [notice, analysis],
                           {"last_message": INTERRUPTED_TEXT[:200], "last_role": "system"})

    async def _finish(self, sid: str, message_id: str, owner: str, events: list[NewEvent],
                      fields: dict[str, str | None], *, allow: dict[str, str] | None = None,
                      then_publish: dict[str, Any] | None = None) -> Claim | None:
        """Store a turn's result, move the cursor past ``message_id`` and clear the turn marker,
        in one write that only the turn's own holder can make.

        A Redis restart should not cost a finished answer: the write is retried for up to
        ``RESULT_RETRY`` seconds. A retry after a write that did land is refused (the
        marker is gone), so the result is never stored twice.

        Returns what is pending after the write (read by the write itself), or None when
        the result was refused."""
        delay = RETRY_FIRST
        deadline = time.monotonic() + RESULT_RETRY
        while True:
            try:
                appended = await self.store.append(
                    sid, events, fields={**fields, **TURN_MARK_CLEARED}, cursor=message_id,
                    allow=allow, turn=(message_id, owner), then_publish=then_publish,
                    next_owner=owner)
                return appended.next
            except StaleTurn as exc:
                log.warning("session %s: the result of the turn for %s is dropped: %s",
                            sid, message_id, exc)
                return None
            except StoreError as exc:
                if "expired" in str(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("session %s: storing the turn's result failed (%s); retrying", sid, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _publish(self, sid: str, frame: dict[str, Any]) -> bool:
        """Fan out an ephemeral frame; best effort. When Redis is away, clients miss typing
        and deltas but get the stored reply once they catch up, so the turn goes on."""
        try:
            await self.store.publish(sid, frame)
        except StoreError:
            return False
        return True

    async def _stream_written(self, sid: str, reply: Reply, reply_to: str) -> NewEvent:
        """A reply whose whole text is known, streamed like generated text (a sentence a
        time, so clients show every reply one way), with its frames in one publish."""
        stream_id = uuid.uuid4().hex
        parts = sentences(reply.text)
        frames = [{"type": "stream_start", "stream_id": stream_id, "role": "bot"},
                  *({"type": "stream_delta", "stream_id": stream_id, "text": chunk} for chunk in parts)]
        with contextlib.suppress(StoreError):  # best effort, as for _publish
            await self.store.publish_many(sid, frames)
        return _streamed_message(parts, reply, reply_to, stream_id)

    async def _stream(self, sid: str, reply: StreamedReply, reply_to: str) -> NewEvent:
        stream_id = uuid.uuid4().hex
        # Once a publish fails (Redis away) the rest of this reply's deltas are not tried:
        # each try would wait out the client's reconnect attempts.
        live = await self._publish(sid, {"type": "stream_start", "stream_id": stream_id, "role": "bot"})
        parts: list[str] = []
        async for chunk in reply.chunks:
            if not chunk:
                continue
            parts.append(chunk)
            if live:
                live = await self._publish(sid, {"type": "stream_delta", "stream_id": stream_id,
                                                 "text": chunk})
        return _streamed_message(parts, reply, reply_to, stream_id)


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
