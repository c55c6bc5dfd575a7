"""Learning from agents: questions the bot could not answer become knowledge once a person
has answered them and an agent has approved the pair.

When an agent's message answers a customer question the bot did not (its turn fell back,
was out of scope or handed over, or it came while a person had the conversation), the
pair is stored as a *proposal*, one per conversation and question (:func:`pick_question`
decides which message was the question, without I/O). Agents review proposals in the
console: edit, approve or reject. An approved entry is kept in Redis for good and
announced on the knowledge channel; every instance embeds it with the shared encoder (on
a worker thread) and adds it to its knowledge index, so the bot answers with it at once,
on every instance, with the source ``agents/<proposal id>``. At start each instance loads
every approved entry, so a restart or a new instance has them too.

Every change to a proposal is one Lua script that also publishes it, so consoles see
changes in the order Redis made them (each carries a ``rev``). Keys: ``bot.keys``; frames:
docs/protocol.md; the rules: docs/dialogue.md, "Learning from agents".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.exceptions import RedisError, ResponseError

from bot.errors import DeskmateError, StoreError
from bot.hub import Hub
from bot.store import Event, Store
from dialogue.knowledge import KnowledgeEntry, KnowledgeIndex
from dialogue.types import UserMessage

log = logging.getLogger("deskmate.learning")

Embed = Callable[[list[str]], Any]  # texts -> (N, D) vectors, callable from a worker thread
Classify = Callable[[str], Awaitable[dict[str, Any]]]  # text -> the classifier's reading

SOURCE = "agents"  # approved entries' ids and sources: "agents/<proposal id>"
NOT_ANSWERED = frozenset({"fallback", "generative+fallback"})  # turn policies
OUT_OF_SCOPE = "out_of_scope"
LOOK_BACK = 100  # events read back from an agent's message to find the question it answers
MAX_ANSWER_CHARS = 8000  # several agent messages may answer one question
PENDING_LIMIT = 200  # proposals in one `proposals` list, oldest first
RETRY_MAX = 5.0  # seconds between start-up attempts while Redis is away

_TEXT = ("id", "session_id", "message_id", "question", "answer", "agent", "status", "reviewed_by")
_NUMBERS = ("created_at", "updated_at", "reviewed_at")

# A proposal as consoles see it, built inside the scripts that publish it: every field
# present (null when unset), times and rev as numbers. proposal_view() is the same in Python.
_VIEW = """
local function view(key)
  local flat = redis.call('HGETALL', key)
  local p, out = {}, {}
  for i = 1, #flat, 2 do p[flat[i]] = flat[i + 1] end
  for _, k in ipairs({TEXT}) do out[k] = p[k] or cjson.null end
  for _, k in ipairs({NUMBERS}) do out[k] = (p[k] and tonumber(p[k])) or cjson.null end
  out['rev'] = tonumber(p['rev'] or '0')
  return out, p
end
""".replace("TEXT", ", ".join(f"'{k}'" for k in _TEXT)).replace(
    "NUMBERS", ", ".join(f"'{k}'" for k in _NUMBERS))

# KEYS: proposal, pending; ARGV: id, now, ttl, channel, fields_json
# {session_id, message_id, question, answer, agent}. A reviewed proposal is never
# proposed again; a pending one takes the newest answer. Returns 1 if anything changed.
PROPOSE = _VIEW + r"""
local status = redis.call('HGET', KEYS[1], 'status')
if status and status ~= 'pending' then return 0 end
local f = cjson.decode(ARGV[5])
if not status then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'session_id', f.session_id, 'message_id', f.message_id,
             'question', f.question, 'status', 'pending', 'created_at', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
elseif redis.call('HGET', KEYS[1], 'answer') == f.answer then
  return 0
end
redis.call('HSET', KEYS[1], 'answer', f.answer, 'agent', f.agent, 'updated_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], cjson.encode({type = 'proposal', proposal = view(KEYS[1])}))
return 1
"""

# KEYS: proposal, pending, learned; ARGV: id, now, channel, verdict (approved|rejected),
# agent, ttl, question, answer, entry id. Errors: "unknown_proposal", "reviewed <status>".
# Returns the approved entry as JSON (also stored in `learned`), or "" for a rejection.
REVIEW = _VIEW + r"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return redis.error_reply('unknown_proposal') end
if status ~= 'pending' then return redis.error_reply('reviewed ' .. status) end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'reviewed_by', ARGV[5], 'reviewed_at', ARGV[2],
           'updated_at', ARGV[2])
if ARGV[4] == 'approved' then
  redis.call('HSET', KEYS[1], 'question', ARGV[7], 'answer', ARGV[8])
end
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
local proposal, p = view(KEYS[1])
local entry = ''
local frame = '{"type":"proposal_update","proposal":' .. cjson.encode(proposal)
if ARGV[4] == 'approved' then
  entry = cjson.encode({id = ARGV[9], question = ARGV[7], answer = ARGV[8], source = ARGV[9],
                        proposal_id = ARGV[1], session_id = p.session_id, answered_by = p.agent,
                        approved_by = ARGV[5], approved_at = tonumber(ARGV[2])})
  redis.call('HSET', KEYS[3], ARGV[9], entry)
  frame = frame .. ',"entry":' .. entry
end
redis.call('PUBLISH', ARGV[3], frame .. '}')
return entry
"""


class ReviewError(DeskmateError):
    """A review was refused; ``code`` goes out in the ``error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- which question an agent answered (no I/O) --------------------------------------

@dataclass(frozen=True)
class Answered:
    """A customer question the bot could not answer, and what agents said to it."""

    question: Event  # the customer's message
    answer: str  # the agents' messages after the customer's last one, oldest first
    agent: str  # who sent the newest of them


@dataclass(frozen=True)
class _Exchange:
    asked: list[Event]  # customer messages since the previous agent answer, oldest first
    turns: dict[str, Mapping[str, Any]]  # customer message id -> its turn analysis
    answers: list[str]  # agent messages since the customer last wrote, oldest first


def _exchange(events: Sequence[Event]) -> _Exchange | None:
    """Split ``events`` (oldest first, ending with an agent message) into the agent's answer
    and the customer messages it may answer."""
    if not events or events[-1].kind != "message" or events[-1].data.get("role") != "agent":
        return None
    answers: list[str] = []
    asked: list[Event] = []
    turns: dict[str, Mapping[str, Any]] = {}
    for event in reversed(events):  # a turn is stored after its message: seen first here
        if event.kind == "turn":
            turns[str(event.data.get("reply_to"))] = event.data
            continue
        role = event.data.get("role") if event.kind == "message" else None
        if role == "agent" and not asked:
            answers.append(str(event.data.get("text") or "").strip())
        elif role == "agent":
            break  # an earlier answer: what came before it was answered then
        elif role == "user":
            asked.append(event)
    return _Exchange(asked[::-1], turns, answers[::-1])


def _wordy(message: Event) -> bool:
    # A button, or "hello?", "thanks": never a question for the knowledge base.
    return not message.data.get("payload") and len(str(message.data.get("text") or "").split()) >= 2


def unread(events: Sequence[Event]) -> list[Event]:
    """The customer messages :func:`pick_question` would weigh that the bot never read (they
    came while a person had the conversation): read them, and pass what the classifier
    made of them as ``unclear``."""
    exchange = _exchange(events)
    if exchange is None:
        return []
    return [m for m in exchange.asked if m.event_id not in exchange.turns and _wordy(m)]


def _rank(message: Event, turn: Mapping[str, Any] | None, unclear: bool | None) -> int | None:
    """How surely ``message`` is a question the bot could not answer (lower is surer), or
    None when it is not one."""
    if not _wordy(message):
        return None
    if turn is None:  # came while a person had (or was taking) the conversation
        return {True: 0, None: 1}.get(unclear)  # understood (False): small talk, an order number
    policy, intent = turn.get("policy"), turn.get("intent")
    if policy in NOT_ANSWERED or intent == OUT_OF_SCOPE:
        return 0
    if policy == "handoff":
        return 2  # asked for a person (or complained): a question only now and then
    return None  # the bot answered it (or the turn was interrupted)


def pick_question(events: Sequence[Event], unclear: Mapping[str, bool] | None = None,
                  ) -> Answered | None:
    """The question the agent message ending ``events`` (oldest first) answered, if the bot
    could not; ``unclear`` says, for messages the bot never read (:func:`unread`), whether
    the classifier would have understood them (False) or not (True).

    The agent's answer is every agent message since the customer last wrote (a greeting
    and the answer in two messages are one answer). The question is among the customer's
    messages since the agent before that answered: first those the bot could not answer
    (its turn fell back or was out of scope) or would not have understood, then those it
    never read and could not be asked about, then requests for a person; the earliest of
    the best kind, since customers ask first and follow up after ("anyone there?")."""
    exchange = _exchange(events)
    if exchange is None:
        return None
    readings = unclear or {}
    ranked = [(rank, i, m) for i, m in enumerate(exchange.asked)
              if (rank := _rank(m, exchange.turns.get(m.event_id), readings.get(m.event_id)))
              is not None]
    if not ranked:
        return None
    _, _, question = min(ranked, key=lambda r: (r[0], r[1]))
    answer = "\n\n".join(a for a in exchange.answers if a)[:MAX_ANSWER_CHARS]
    return Answered(question, answer, str(events[-1].data.get("agent") or ""))


def proposal_id(session_id: str, question: str) -> str:
    """One id per conversation and question (case and spacing do not count)."""
    norm = " ".join(question.casefold().split())
    return hashlib.sha256(f"{session_id}\n{norm}".encode()).hexdigest()[:16]


def proposal_view(record: Mapping[str, str]) -> dict[str, Any]:
    """A stored proposal as consoles get it (the scripts above publish the same shape)."""
    out: dict[str, Any] = {k: record.get(k) for k in _TEXT}
    for k in _NUMBERS:
        out[k] = _number(record.get(k))
    out["rev"] = int(record.get("rev") or 0)
    return out


def _number(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _entry(raw: Any) -> KnowledgeEntry | None:
    """An approved entry (JSON text or its dict) as a knowledge entry; None if malformed."""
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
        return KnowledgeEntry(id=str(data["id"]), title=str(data["question"]),
                              text=str(data["answer"]), source=str(data["source"]), tags=(SOURCE,))
    except (ValueError, TypeError, KeyError):
        log.warning("skipping a malformed learned entry: %.200r", raw)
        return None


def _decode(rows: Iterable[tuple[str, dict[str, str]]]) -> list[Event]:
    out = []
    for event_id, values in rows:
        with contextlib.suppress(KeyError, ValueError):
            out.append(Event(event_id, values["kind"], float(values["ts"]), json.loads(values["data"])))
    return out


# -- proposals in Redis, entries in every instance's index ---------------------------

class Learning:
    """Proposals and approved entries of one server process; see the module docstring.

    Off (no proposals, nothing loaded) when the process has no encoder (``embed`` None)
    or its pipeline keeps no knowledge index at all (a pipeline other than the dialogue
    engine). A dialogue engine whose project has no ``knowledge/`` gets an index with its
    first approved entry. ``classify`` (the turn runner's batched classifier) reads the
    customer messages the bot never answered because a person had the conversation."""

    def __init__(self, store: Store, hub: Hub, pipeline: Any, embed: Embed | None, *,
                 classify: Classify | None = None) -> None:
        self.store = store
        self.keys = store.keys
        self.hub = hub
        self.pipeline = pipeline
        self.embed = embed
        self.classify = classify
        self.enabled = embed is not None and hasattr(pipeline, "knowledge")
        # Kept for as long as the conversation could be answered again (dedupe), pending
        # ones four times that: they hold customers' words, so they do not stay forever.
        self.reviewed_ttl = store.ttl
        self.pending_ttl = store.ttl * 4
        self._propose = store.redis.register_script(PROPOSE)
        self._review = store.redis.register_script(REVIEW)
        self._tasks: set[asyncio.Future[None]] = set()
        self._subscribed = False

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Follow the knowledge channel, then load every approved entry: an approval made
        in between is both loaded and announced (adding an entry twice is harmless)."""
        if not self.enabled:
            log.info("learning from agents is off: %s", "no encoder" if self.embed is None
                     else "the pipeline has no knowledge index")
            return
        try:
            await self._follow()
        except (StoreError, RedisError, OSError, TimeoutError) as exc:
            log.warning("cannot load learned knowledge yet (%s); retrying in the background", exc)
            self._spawn(self._follow_later())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._subscribed:
            await self.hub.unsubscribe(self.keys.knowledge_channel(), self._on_event)
            self._subscribed = False

    async def _follow(self) -> None:
        if not self._subscribed:
            await self.hub.subscribe(self.keys.knowledge_channel(), self._on_event)
            self._subscribed = True
        count = await self.load()
        if count:
            log.info("loaded %d knowledge entries learned from agents", count)

    async def _follow_later(self) -> None:
        delay = 0.2
        while True:
            await asyncio.sleep(delay)
            try:
                await self._follow()
                return
            except (StoreError, RedisError, OSError, TimeoutError):
                delay = min(delay * 2, RETRY_MAX)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:  # background work: nobody else would see it fail
            log.exception("learning from agents: background work failed")

    # -- the index ----------------------------------------------------------------

    async def load(self) -> int:
        """Add every approved entry in Redis to this process's index; how many there are."""
        try:
            raw = await self.store.redis.hgetall(self.keys.learned())
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read learned knowledge: {exc}") from exc
        records = []
        for value in raw.values():
            try:
                records.append(dict(json.loads(value)))
            except (ValueError, TypeError):
                log.warning("skipping a malformed learned entry: %.200r", value)
        records.sort(key=lambda r: float(r.get("approved_at") or 0))  # the order they were approved
        entries = [e for e in map(_entry, records) if e is not None]
        await self.learn(entries)
        return len(entries)

    async def learn(self, entries: Sequence[KnowledgeEntry]) -> None:
        """Embed ``entries`` (on a worker thread) and add them to the index, replacing
        entries with the same id; entries already there unchanged are skipped."""
        index: KnowledgeIndex | None = self.pipeline.knowledge
        known = set(index.entries) if index is not None else set()
        fresh = [e for e in entries if e not in known]
        if not fresh or self.embed is None:
            return
        vectors = np.asarray(await asyncio.to_thread(self.embed, [e.embedding_text() for e in fresh]),
                             dtype=np.float32)  # (N, D)
        for entry, vector in zip(fresh, vectors, strict=True):
            # Read again after the await: another learn() may have created the index.
            index = self.pipeline.knowledge
            if index is None:  # a project without knowledge/: its first entry starts the index
                self.pipeline.knowledge = KnowledgeIndex([entry], vector[None, :])
            else:
                index.add(entry, vector)
        log.info("learned %s", ", ".join(e.id for e in fresh))

    def _on_event(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "resync":  # pub/sub was down: an approval may have gone by unseen
            self._spawn(self._reload())
        elif kind == "proposal_update" and isinstance(frame.get("entry"), dict):
            entry = _entry(frame["entry"])
            if entry is not None:
                self._spawn(self.learn([entry]))

    async def _reload(self) -> None:
        await self.load()

    # -- proposals ------------------------------------------------------------------

    def note_answer(self, session_id: str, event_id: str) -> None:
        """An agent message was stored: propose what it answered, in the background (the
        agent's ``ack`` does not wait, and a failure costs a proposal, never the message)."""
        if self.enabled:
            self._spawn(self._note(session_id, event_id))

    async def _note(self, session_id: str, event_id: str) -> None:
        with contextlib.suppress(StoreError):  # Redis away: this proposal is skipped
            await self.propose(session_id, event_id)

    async def propose(self, session_id: str, event_id: str) -> str | None:
        """Store (or update) the proposal for the question agent message ``event_id``
        answered; its id, or None when the bot had answered everything itself."""
        try:
            rows = await self.store.redis.xrevrange(self.keys.events(session_id), max=event_id,
                                                    min="-", count=LOOK_BACK)
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read events: {exc}") from exc
        events = _decode(reversed(rows))
        found = pick_question(events, await self._unclear(unread(events)))
        if found is None:
            return None
        text = str(found.question.data.get("text") or "").strip()
        pid = proposal_id(session_id, text)
        fields = {"session_id": session_id, "message_id": found.question.event_id, "question": text,
                  "answer": found.answer, "agent": found.agent}
        try:
            await self._propose(keys=[self.keys.proposal(pid), self.keys.proposals()],
                                args=[pid, _now(), self.pending_ttl, self.keys.knowledge_channel(),
                                      json.dumps(fields, ensure_ascii=False)])
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not store a proposal: {exc}") from exc
        return pid

    async def _unclear(self, messages: Sequence[Event]) -> dict[str, bool]:
        """For each of ``messages``: would the engine have been unsure what it asks?"""
        understand = getattr(self.pipeline, "understand", None)
        if self.classify is None or understand is None:
            return {}
        out: dict[str, bool] = {}
        for message in messages:
            text = str(message.data.get("text") or "")
            try:
                nlu = dict(await self.classify(text))
            except Exception as exc:  # no reading: the message still counts, less surely
                log.warning("could not classify a message for learning: %s", exc)
                continue
            nlu.pop("vector", None)
            out[message.event_id] = bool(understand(UserMessage(message.event_id, text, None, nlu)).unclear)
        return out

    async def pending(self, limit: int = PENDING_LIMIT) -> list[dict[str, Any]]:
        """The proposals waiting for review, oldest first."""
        try:
            ids = await self.store.redis.zrange(self.keys.proposals(), 0, limit - 1)
            async with self.store.redis.pipeline(transaction=False) as pipe:
                for pid in ids:
                    pipe.hgetall(self.keys.proposal(pid))
                records = await pipe.execute() if ids else []
            gone = [pid for pid, r in zip(ids, records, strict=True) if r.get("status") != "pending"]
            if gone:  # expired unreviewed: drop them from the index too
                await self.store.redis.zrem(self.keys.proposals(), *gone)
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read proposals: {exc}") from exc
        return [proposal_view(r) for r in records if r.get("status") == "pending"]

    async def approve(self, pid: str, question: str, answer: str, agent: str) -> KnowledgeEntry:
        """Approve ``pid`` with the (possibly edited) ``question`` and ``answer``; the new
        entry is in this process's index when this returns, and announced to the others."""
        raw = await self._decide(pid, "approved", agent, question.strip(), answer.strip())
        entry = _entry(raw)
        assert entry is not None  # the script wrote it from checked fields
        await self.learn([entry])
        return entry

    async def reject(self, pid: str, agent: str) -> None:
        await self._decide(pid, "rejected", agent, "", "")

    async def _decide(self, pid: str, verdict: str, agent: str, question: str, answer: str) -> str:
        if not self.enabled:
            raise ReviewError("learning_off", "this server cannot learn from agents (no encoder)")
        try:
            out = await self._review(
                keys=[self.keys.proposal(pid), self.keys.proposals(), self.keys.learned()],
                args=[pid, _now(), self.keys.knowledge_channel(), verdict, agent, self.reviewed_ttl,
                      question, answer, f"{SOURCE}/{pid}"])
        except ResponseError as exc:
            if "unknown_proposal" in str(exc):
                raise ReviewError("unknown_proposal", "no such proposal (or it expired)") from None
            if "reviewed" in str(exc):
                status = str(exc).rsplit(" ", 1)[-1]
                raise ReviewError("already_reviewed", f"this proposal was {status} already") from None
            raise StoreError(f"review failed: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"review failed: {exc}") from exc
        return str(out)


def _now() -> str:
    # Milliseconds: the scripts publish times through Lua's cjson (14 significant digits).
    return repr(round(time.time(), 3))
