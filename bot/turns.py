"""Runs customer turns through the dialogue pipeline, one conversation at a time.

Ordering rule: a conversation's turns are processed only by the holder of its
Redis turn lock, strictly in stream order, starting after the session's
``cursor`` (the last customer message answered). The cursor moves in the same
atomic write that stores the turn's replies, so a turn is answered once even
if an instance dies, and the next lock holder carries on where it stopped.
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

from bot.batcher import MicroBatcher
from bot.errors import StoreError
from bot.metrics import Metrics
from bot.store import Conflict, Event, NewEvent, Store
from dialogue.simple import stream_words
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
# widget `track` names -> the profile list they feed
TRACK_KINDS = {"view_product": "viewed", "add_to_cart": "carted", "purchase": "bought", "bought": "bought"}
ERROR_TEXT = "Sorry, something went wrong on my side. Please try again in a moment."


class TurnRunner:
    def __init__(self, store: Store, pipeline: Pipeline, metrics: Metrics, *,
                 understand: Understand | None = None, lock_ttl: float = 30.0) -> None:
        self.store = store
        self.pipeline = pipeline
        self.understand = MicroBatcher(understand) if understand is not None else None
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
        try:
            while self.accepting:
                self._again.discard(sid)
                record = await self.store.session(sid)
                if record is None or not await self.store.pending_turns(sid, record.get("cursor") or None):
                    return
                owner = await self.store.acquire_lock(sid, self.lock_ttl,
                                                      self._unreleased.pop(sid, None))
                if owner is None:
                    # Another instance is answering (and looks again after releasing), or
                    # one died holding the lock: look again shortly; once nothing is pending
                    # we stop, and a dead holder's lock expires after lock_ttl.
                    await asyncio.sleep(min(await self.store.lock_ttl_left(sid), 1.0) + 0.05)
                    continue
                keeper = asyncio.create_task(self._keep_lock(sid, owner))
                try:
                    while self.accepting and await self._process_next(sid):
                        pass
                finally:
                    keeper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await keeper
                    try:
                        await self.store.release_lock(sid, owner)
                    except StoreError:
                        self._unreleased[sid] = owner
                # Loop: a message stored while we held the lock may have been kicked in
                # vain elsewhere; the check at the top picks it up.
        except StoreError as exc:
            log.warning("session %s: turn processing stopped: %s", sid, exc)
        except Exception:
            log.exception("session %s: turn processing crashed", sid)

    async def _keep_lock(self, sid: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self.lock_ttl / 3)
            if not await self.store.extend_lock(sid, owner, self.lock_ttl):
                log.error("session %s: lost the turn lock", sid)
                return

    async def _process_next(self, sid: str) -> bool:
        record = await self.store.session(sid)
        if record is None:
            return False
        pending = await self.store.pending_turns(sid, record.get("cursor") or None)
        if not pending:
            return False
        message = pending[0]
        started = time.perf_counter()
        if record.get("status", "bot") != "bot":
            # An agent has the conversation (or it is closed): the bot stays quiet.
            await self.store.append(sid, [], cursor=message.event_id)
            return True
        await self._answer(sid, record, message)
        self.metrics.turn_seconds.observe(time.perf_counter() - started)
        self.metrics.turns.inc()
        return True

    async def _conversation(self, sid: str, record: dict[str, str], upto: str) -> Conversation:
        history = [HistoryItem(str(ev.data.get("role", "")), str(ev.data.get("text", "")))
                   for ev in await self.store.messages_before(sid, upto, HISTORY_EVENTS)]
        return Conversation(
            session_id=sid, status=record.get("status", "bot"),
            slots=json.loads(record.get("slots") or "{}"),
            customer=json.loads(record.get("customer") or "{}"),
            history=history,
            state=json.loads(record.get("state") or "{}"),
            profile=await self._profile(sid),
        )

    async def _profile(self, sid: str) -> dict[str, list[str]]:
        """Product ids the customer viewed, put in the cart or bought, from `track` events."""
        profile: dict[str, list[str]] = {}
        for ev in await self.store.events(sid, kinds=frozenset({"track"})):
            kind = TRACK_KINDS.get(str(ev.data.get("name", "")))
            data = ev.data.get("data") or {}
            pid = data.get("product_id") or data.get("id") if isinstance(data, dict) else None
            if kind and isinstance(pid, str):
                items = profile.setdefault(kind, [])
                if pid in items:
                    items.remove(pid)
                items.append(pid)
                del items[:-PROFILE_ITEMS]
        return profile

    async def _answer(self, sid: str, record: dict[str, str], message: Event) -> None:
        conversation = await self._conversation(sid, record, message.event_id)
        text = str(message.data.get("text", ""))
        nlu = vector = None
        if self.understand is not None:
            # Batched with other conversations' turns, on a worker thread: the event
            # loop keeps serving sockets while torch runs.
            nlu = dict(await self.understand(text))
            vector = nlu.pop("vector", None)
        user = UserMessage(message.event_id, text, message.data.get("payload"), nlu, vector)
        events: list[NewEvent] = []
        fields: dict[str, str | None] = {}
        slots = dict(conversation.slots)
        await self.store.publish(sid, {"type": "typing", "role": "bot", "on": True})
        try:
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
                    # Said word by word, like generated text: one way for clients to show replies.
                    streamed = StreamedReply(stream_words(out.text), out.buttons, out.cards, out.name,
                                             out.sources)
                    events.append(await self._stream(sid, streamed, message.event_id))
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
            try:
                await self.store.append(sid, events, fields=fields, cursor=message.event_id,
                                        allow={"bot": "*"})
            except Conflict as exc:
                log.info("session %s: %s during the turn; the bot's reply is dropped", sid, exc)
                await self.store.append(sid, [], cursor=message.event_id)
        except (asyncio.CancelledError, StoreError):
            raise
        except Exception:
            log.exception("session %s: pipeline failed on %s", sid, message.event_id)
            self.metrics.errors.labels("pipeline").inc()
            await self.store.append(sid, [_bot_message(ERROR_TEXT, [], [], message.event_id)],
                                    cursor=message.event_id)
        finally:
            with contextlib.suppress(StoreError):
                await self.store.publish(sid, {"type": "typing", "role": "bot", "on": False})

    async def _stream(self, sid: str, reply: StreamedReply, reply_to: str) -> NewEvent:
        stream_id = uuid.uuid4().hex
        await self.store.publish(sid, {"type": "stream_start", "stream_id": stream_id, "role": "bot"})
        parts: list[str] = []
        async for chunk in reply.chunks:
            if not chunk:
                continue
            parts.append(chunk)
            await self.store.publish(sid, {"type": "stream_delta", "stream_id": stream_id, "text": chunk})
        event = _bot_message("".join(parts).strip(), reply.buttons, reply.cards, reply_to, reply.name,
                             reply.sources)
        return NewEvent("message", {**event.data, "stream_id": stream_id})


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
