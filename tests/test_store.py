"""The Redis model on its own: atomic appends, dedupe, locks, key prefix hygiene."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis

from bot.errors import StoreError
from bot.store import TURN_MARK_CLEARED, LockLost, NewEvent, StaleTurn, StartedTurn, Store, TurnContext


@pytest.fixture
async def store(redis_url: str, key_prefix: str) -> AsyncIterator[Store]:
    s = Store.from_url(redis_url, prefix=key_prefix, ttl=60)
    yield s
    await s.close()


async def test_append_is_atomic_and_deduplicated(store: Store, sync_redis: redis.Redis) -> None:
    sid, token = await store.create_session({"name": "Ada"})
    assert await store.authenticate(sid, token)
    assert await store.authenticate(sid, token + "x") is None
    record = sync_redis.hgetall(store.keys.session(sid))
    assert token not in record.values() and record["status"] == "bot"
    first = await store.append(sid, [NewEvent("message", {"role": "user", "text": "hi"})],
                               client_id="c1", fields={"last_message": "hi"})
    again = await store.append(sid, [NewEvent("message", {"role": "user", "text": "hi"})],
                               client_id="c1")
    assert again.duplicate and again.event_ids == first.event_ids
    assert sync_redis.xlen(store.keys.events(sid)) == 1
    batch = await store.append(sid, [NewEvent("turn", {"intent": "greet"}),
                                     NewEvent("message", {"role": "bot", "text": "hello"})],
                               cursor=first.event_ids[0])
    events = await store.events(sid)
    assert [e.event_id for e in events] == first.event_ids + batch.event_ids
    assert sync_redis.hget(store.keys.session(sid), "cursor") == first.event_ids[0]
    peek = await store.claim_turns(sid, 5, mode="peek")
    assert peek.record is not None and peek.record["cursor"] == first.event_ids[0] and peek.pending == []
    later = await store.append(sid, [NewEvent("message", {"role": "user", "text": "and?"}),
                                     NewEvent("message", {"role": "agent", "text": "here"})])
    peek = await store.claim_turns(sid, 5, mode="peek")
    assert [(e.event_id, e.data["text"]) for e in peek.pending] == [(later.event_ids[0], "and?")]
    assert peek.owner is None and await store.lock_ttl_left(sid) == 0  # a peek takes nothing
    gone = await store.claim_turns("no-such-session", 5, mode="peek")
    assert (gone.record, gone.pending) == (None, [])
    assert [e.kind for e in await store.events(sid, first.event_ids[0])] == [
        "turn", "message", "message", "message"]
    for key in (store.keys.session(sid), store.keys.events(sid), store.keys.client_ids(sid)):
        assert 0 < sync_redis.ttl(key) <= 60


async def test_append_to_unknown_session_writes_nothing(store: Store, sync_redis: redis.Redis) -> None:
    with pytest.raises(StoreError, match="expired or unknown"):
        await store.append("nope", [NewEvent("message", {"text": "x"})], client_id="c")
    assert not sync_redis.exists(store.keys.events("nope"), store.keys.client_ids("nope"))


async def test_turn_lock_has_one_owner(store: Store) -> None:
    sid, _ = await store.create_session()
    owner = await store.acquire_lock(sid, 5)
    assert owner and await store.acquire_lock(sid, 5) is None
    assert await store.acquire_lock(sid, 5, owner) == owner  # the holder may re-take it
    assert await store.extend_lock(sid, owner, 5)
    assert not await store.extend_lock(sid, "someone-else", 5)
    await store.release_lock(sid, "someone-else")
    assert await store.lock_ttl_left(sid) > 0
    await store.release_lock(sid, owner)
    assert await store.lock_ttl_left(sid) == 0


async def test_every_key_carries_the_prefix(store: Store, sync_redis: redis.Redis,
                                            key_prefix: str) -> None:
    sid, _ = await store.create_session()
    await store.append(sid, [NewEvent("message", {"text": "x"})], client_id="c")
    await store.acquire_lock(sid, 5)
    keys = set(sync_redis.scan_iter(match=f"*{sid}*"))
    assert len(keys) == 4 and all(k.startswith(key_prefix) for k in keys)
    assert sync_redis.zscore(store.keys.live(), sid) is not None


async def test_turn_start_reads_history_backwards_and_signals_since_the_cursor(store: Store) -> None:
    sid, _ = await store.create_session()
    ids = []
    for i in range(150):
        out = await store.append(sid, [NewEvent("message", {"role": "user", "text": f"m{i}"}),
                                       NewEvent("turn", {"intent": "x"})])
        ids.append(out.event_ids[0])
    tracked = await store.append(sid, [NewEvent("track", {"name": "product_viewed",
                                                          "data": {"product_id": "p1"}}),
                                       NewEvent("turn", {"intent": "y"})])
    owner = await store.acquire_lock(sid, 5) or ""

    async def start(message: str, cursor: str | None) -> TurnContext:
        context = await store.start_turn(sid, owner, message, 50, cursor)
        assert isinstance(context, TurnContext)
        return context

    context = await start(ids[120], None)
    assert [e.data["text"] for e in context.history] == [f"m{i}" for i in range(70, 120)]
    assert [e.event_id for e in context.signals] == tracked.event_ids[:1]
    assert context.last_id == tracked.event_ids[1]  # the cursor moves past every kind
    assert [e.data["text"] for e in (await start(ids[3], None)).history] == ["m0", "m1", "m2"]
    later = await start(ids[0], tracked.event_ids[0])
    assert later.history == [] and later.signals == [] and later.last_id == tracked.event_ids[1]
    done = await start(ids[1], tracked.event_ids[1])
    assert done.signals == [] and done.last_id is None


async def test_claim_takes_the_lock_only_when_a_message_is_pending(store: Store) -> None:
    sid, _ = await store.create_session()
    idle = await store.claim_turns(sid, 5)
    assert idle.record is not None and idle.pending == [] and idle.owner is None
    assert await store.lock_ttl_left(sid) == 0
    stored = await store.append(sid, [NewEvent("message", {"role": "user", "text": "hi"}),
                                      NewEvent("message", {"role": "bot", "text": "not a turn"})])
    claim = await store.claim_turns(sid, 5)
    assert claim.owner and [e.event_id for e in claim.pending] == stored.event_ids[:1]
    other = await store.claim_turns(sid, 5)  # another instance: told how long to wait
    assert other.owner is None and 0 < other.wait <= 5 and len(other.pending) == 1
    assert (await store.claim_turns(sid, 5, mode="peek")).owner is None
    # The holder keeps the lock while a message is pending ...
    kept = await store.next_turns(sid, claim.owner)
    assert kept.owner == claim.owner and await store.lock_ttl_left(sid) > 0
    # ... and lets go of it in the same step as seeing that nothing is.
    await store.append(sid, [], cursor=stored.event_ids[0])
    assert not await store.next_turns(sid, "someone-else") == kept  # not the holder: no change
    assert await store.lock_ttl_left(sid) > 0
    done = await store.next_turns(sid, claim.owner)
    assert done.owner is None and done.pending == [] and await store.lock_ttl_left(sid) == 0
    # A lock whose release failed is let go of by its owner's next look at an idle session.
    again = await store.acquire_lock(sid, 5)
    assert again and (await store.claim_turns(sid, 5, again)).owner is None
    assert await store.lock_ttl_left(sid) == 0
    gone = await store.claim_turns("no-such-session", 5)
    assert gone.record is None and gone.pending == [] and gone.owner is None
    with pytest.raises(ValueError, match="bad claim mode"):
        await store.claim_turns(sid, 5, mode="grab")


async def test_the_turn_cursor_never_moves_back(store: Store) -> None:
    """A holder that stalled past its lock while a successor answered later messages used
    to write its older cursor over the newer one, and those turns were answered again."""
    sid, _ = await store.create_session()
    first, second = (await store.append(sid, [NewEvent("message", {"role": "user", "text": t})
                                              for t in ("one", "two")])).event_ids
    await store.append(sid, [], cursor=second)  # the successor answered both
    await store.append(sid, [], cursor=first)   # the stalled holder, late
    record = await store.session(sid)
    assert record is not None and record["cursor"] == second
    assert (await store.claim_turns(sid, 5, mode="peek")).pending == []
    third = (await store.append(sid, [NewEvent("message", {"role": "user", "text": "three"})])).event_ids[0]
    await store.append(sid, [], cursor=third)
    assert (await store.session(sid) or {})["cursor"] == third


async def test_turn_frames_ride_on_the_writes(store: Store) -> None:
    """The typing indicator goes out with the turn marker and ends with the result's write;
    frames published together (a turn's stored events and the typing end, or a written
    reply's stream frames) arrive as one message, in order."""
    sid, _ = await store.create_session()
    stored = await store.append(sid, [NewEvent("message", {"role": "user", "text": "hi"})])
    owner = await store.acquire_lock(sid, 5) or ""
    pubsub = store.redis.pubsub()
    await pubsub.subscribe(store.keys.channel(sid))
    try:
        context = await store.start_turn(sid, owner, stored.event_ids[0], 10, None,
                                         {"type": "typing", "on": True})
        assert isinstance(context, TurnContext) and context.history == []
        assert context.last_id == stored.event_ids[0]
        await store.publish_many(sid, [{"type": "stream_start", "stream_id": "s"},
                                       {"type": "stream_delta", "stream_id": "s", "text": "Hello."}])
        done = await store.append(sid, [NewEvent("message", {"role": "bot", "text": "Hello."}),
                                        NewEvent("turn", {"intent": "greet"})],
                                  cursor=stored.event_ids[0], turn=(stored.event_ids[0], owner),
                                  fields=TURN_MARK_CLEARED, then_publish={"type": "typing", "on": False},
                                  next_owner=owner)
        # The write also said what is pending now (nothing), and let go of the lock.
        assert done.next is not None and done.next.pending == [] and done.next.owner is None
        assert await store.lock_ttl_left(sid) == 0
        # A refused write publishes nothing.
        with pytest.raises(StaleTurn):
            await store.append(sid, [], turn=(stored.event_ids[0], owner),
                               then_publish={"type": "typing", "on": False})
        seen = []
        for _ in range(50):  # a call that reads the subscribe confirmation returns None
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                seen.append(json.loads(message["data"]))
            elif len(seen) >= 3:
                break
    finally:
        await pubsub.aclose()
    assert len(seen) == 3, seen
    assert seen[0] == {"session_id": sid, "type": "typing", "on": True}
    assert [f["type"] for f in seen[1]] == ["stream_start", "stream_delta"]
    assert [f["type"] for f in seen[2]] == ["message", "turn", "typing"]
    assert seen[2][0]["text"] == "Hello." and seen[2][0]["event_id"] == done.event_ids[0]
    assert seen[2][2] == {"session_id": sid, "type": "typing", "on": False}


async def test_a_turn_started_twice_is_reported_not_restarted(store: Store) -> None:
    sid, _ = await store.create_session()
    stored = await store.append(sid, [NewEvent("message", {"role": "user", "text": "hi"})])
    first = await store.acquire_lock(sid, 0.1) or ""
    assert isinstance(await store.start_turn(sid, first, stored.event_ids[0], 10, None), TurnContext)
    with pytest.raises(LockLost):
        await store.start_turn(sid, "not-the-holder", stored.event_ids[0], 10, None)
    await asyncio.sleep(0.15)  # the first holder's lock expires mid-turn
    second = await store.acquire_lock(sid, 5) or ""
    earlier = await store.start_turn(sid, second, stored.event_ids[0], 10, None)
    assert isinstance(earlier, StartedTurn) and earlier.owner == first and earlier.started_at
    # The holder that finds the message pending again after its turn keeps the lock.
    again = await store.append(sid, [NewEvent("message", {"role": "user", "text": "more"})])
    kept = await store.append(sid, [], cursor=stored.event_ids[0], fields=TURN_MARK_CLEARED,
                              turn=(stored.event_ids[0], second), next_owner=second)
    assert kept.next is not None and kept.next.owner == second
    assert [e.event_id for e in kept.next.pending] == again.event_ids
