"""Every kind of bad frame gets an error frame; the session goes on; Redis stays clean."""

from __future__ import annotations

import json

import pytest
import redis

from bot.keys import Keys
from tests.conftest import Running, Servers
from tests.test_agent_socket import signed_in

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
    # agents' messages are deduplicated as agent:<name>:<id> in the same conversation
    ('{"type": "message", "client_id": "agent:anna:c1", "text": "hi"}', "bad_field"),
    ('{"type": "action", "client_id": "agent:anna:c1", "payload": "/greet"}', "bad_field"),
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
    # Integers past a double's range: a browser's JSON.parse would read Infinity back.
    ('{"type": "track", "name": "view", "data": {"n": 1' + "0" * 400 + "}}", "bad_json"),
    ('{"type": "track", "name": "view", "data": {"n": -' + "9" * 309 + "}}", "bad_json"),
    # Stream ids are two unsigned 64-bit numbers.
    ('{"type": "start", "after": "99999999999999999999-0"}', "bad_field"),
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


@pytest.mark.parametrize("after", ["99999999999999999999-0", "0-18446744073709551616",
                                   "18446744073709551615-18446744073709551615", "1-0\n",
                                   "\u0661-\u0660"])  # Arabic-Indic digits: int() reads them
async def test_resuming_after_an_id_past_the_last_one_is_a_bad_field(after: str, server: Running) -> None:
    """Redis cannot read after such an id: the parser refuses it, rather than the socket
    closing with 1013 and the client being told to resume with the same ``after``."""
    owner = await server.client()
    await owner.start()
    await owner.say("hello")
    client = await server.client()
    await client.send({"type": "start", "session_id": owner.session_id, "token": owner.token,
                       "after": after})
    frame = await client.recv()
    assert frame["type"] == "error" and frame["code"] == "bad_field", frame
    assert client.ws.close_code is None
    # The largest ids that still have a next one are fine.
    frame = await client.start(owner.session_id, owner.token, after="18446744073709551615-0")
    assert frame["session_id"] == owner.session_id
    assert await client.quiet(0.3) == []  # nothing stored after it


async def test_an_agent_watching_after_an_id_past_the_last_one_gets_a_bad_field(server: Running) -> None:
    owner = await server.client()
    await owner.start()
    agent = await signed_in(server, "anna")
    await agent.send({"type": "watch", "session_id": owner.session_id, "after": "99999999999999999999-0"})
    frame = (await agent.until(lambda f: f["type"] in ("error", "watching")))[-1]
    assert frame["type"] == "error" and frame["code"] == "bad_field", frame
    await agent.send({"type": "watch", "session_id": owner.session_id, "after": "18446744073709551615-0"})
    assert (await agent.until(lambda f: f["type"] in ("error", "watching")))[-1]["type"] == "watching"


async def test_rate_limit_answers_with_error_frames(servers: Servers, sync_redis: redis.Redis,
                                                    key_prefix: str) -> None:
    server = await servers.start(rate_messages=4, rate_window=60.0)
    client = await server.client()
    await client.start()  # spends one of the four
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
