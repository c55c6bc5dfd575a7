"""The Redis model on its own: atomic appends, dedupe, locks, key prefix hygiene."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis

from bot.errors import StoreError
from bot.store import NewEvent, Store


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
    record, pending = await store.pending_turns(sid)
    assert record is not None and record["cursor"] == first.event_ids[0] and pending == []
    later = await store.append(sid, [NewEvent("message", {"role": "user", "text": "and?"}),
                                     NewEvent("message", {"role": "agent", "text": "here"})])
    record, pending = await store.pending_turns(sid)
    assert [(e.event_id, e.data["text"]) for e in pending] == [(later.event_ids[0], "and?")]
    assert await store.pending_turns("no-such-session") == (None, [])
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


async def test_messages_before_pages_backwards(store: Store) -> None:
    sid, _ = await store.create_session()
    ids = []
    for i in range(150):
        out = await store.append(sid, [NewEvent("message", {"role": "user", "text": f"m{i}"}),
                                       NewEvent("turn", {"intent": "x"})])
        ids.append(out.event_ids[0])
    recent = await store.messages_before(sid, ids[120], 50)
    assert [e.data["text"] for e in recent] == [f"m{i}" for i in range(70, 120)]
    assert [e.data["text"] for e in await store.messages_before(sid, ids[3], 50)] == ["m0", "m1", "m2"]
    assert await store.messages_before(sid, ids[0], 50) == []
