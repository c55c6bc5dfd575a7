"""Every kind of bad frame gets an error frame; the session goes on; Redis stays clean."""

from __future__ import annotations

import json

import pytest
import redis

from bot.keys import Keys
from tests.conftest import Running, Servers

CASES = [
    ("not json", "bad_json"),
    ("[1, 2, 3]", "bad_frame"),
    ('"just a string"', "bad_frame"),
    ("{}", "bad_frame"),
    ('{"type": 7}', "bad_frame"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": "message", "text": "hi"}', "missing_field"),
    ('{"type": "message", "client_id": "c", "text": 42}', "bad_field"),
    ('{"type": "message", "client_id": 5, "text": "hi"}', "bad_field"),
    ('{"type": "message", "client_id": "c", "text": true}', "bad_field"),
    ('{"type": "message", "client_id": "c", "text": "   "}', "bad_field"),
    ('{"type": "message", "client_id": "c", "text": "a\\u0000b"}', "bad_field"),
    ('{"type": "message", "client_id": "", "text": "hi"}', "bad_field"),
    ('{"type": "action", "client_id": "c"}', "missing_field"),
    ('{"type": "track", "name": "view", "data": [1]}', "bad_field"),
    ('{"type": "start", "after": "yesterday"}', "bad_field"),
    ('{"type": "start"}', "already_started"),
    ('{"type": "message", "client_id": "c", "text": "' + "x" * 2001 + '"}', "text_too_long"),
    ('{"type": "message", "client_id": "c", "text": "' + "x" * 17000 + '"}', "frame_too_large"),
    (b"\x00\x01binary", "binary_frame"),
    ("[" * 5000 + "]" * 5000, "bad_json"),
]


@pytest.mark.parametrize(("raw", "code"), CASES, ids=[c[1] + str(i) for i, c in enumerate(CASES)])
async def test_bad_frame_gets_error_and_session_goes_on(
        raw: str | bytes, code: str, server: Running, sync_redis: redis.Redis,
        key_prefix: str) -> None:
    client = await server.client()
    await client.start()
    await client.send(raw)
    frame = await client.recv()
    assert frame["type"] == "error" and frame["code"] == code, frame
    assert frame["message"]
    if isinstance(raw, str) and '"client_id": "c"' in raw:
        assert frame["client_id"] == "c"  # the error names the message it is about
    assert sync_redis.xlen(Keys(key_prefix).events(client.session_id or "")) == 0
    # The same connection still works.
    ack, frames = await client.say("hello")
    assert frames[-1]["type"] == "stream_end"


async def test_message_before_start(server: Running) -> None:
    client = await server.client()
    await client.send({"type": "message", "client_id": "c", "text": "hi"})
    frame = await client.recv()
    assert frame["code"] == "start_required"
    await client.start()


async def test_bad_start_fields(server: Running) -> None:
    client = await server.client()
    await client.send({"type": "start", "session_id": None, "token": None, "after": "yesterday"})
    assert (await client.recv())["code"] == "bad_field"
    await client.send({"type": "start", "session_id": 12})
    assert (await client.recv())["code"] == "bad_field"
    await client.start()  # a good start afterwards opens the session


async def test_rate_limit_answers_with_error_frames(servers: Servers, sync_redis: redis.Redis,
                                                    key_prefix: str) -> None:
    server = await servers.start(rate_messages=3, rate_window=60.0)
    client = await server.client()
    await client.start()
    for i in range(5):
        await client.send({"type": "track", "name": "view_product", "data": {"i": i}})
    frames = await client.quiet(0.5)
    assert [f["code"] for f in frames] == ["rate_limited", "rate_limited"]
    assert sync_redis.xlen(Keys(key_prefix).events(client.session_id or "")) == 3


async def test_frame_above_hard_cap_closes_with_1009(server: Running) -> None:
    client = await server.client()
    await client.start()
    await client.send(json.dumps({"type": "message", "client_id": "c", "text": "x" * (2 << 20)}))
    with pytest.raises(Exception) as info:
        await client.recv()
    assert "1009" in str(info.value)


async def test_unicode_survives_the_round_trip(server: Running, sync_redis: redis.Redis,
                                               key_prefix: str) -> None:
    client = await server.client()
    await client.start()
    text = "مرحبا 👋🏽 e\u0301 \u202eabc 中文"
    ack, _ = await client.say(text)
    data = json.loads(sync_redis.xrange(Keys(key_prefix).events(client.session_id or ""))[0][1]["data"])
    assert data["text"] == text
