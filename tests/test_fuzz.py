"""Bad input, fuzzed: barrages of generated bad frames on both sockets of a real server.

Each example is one barrage on a fresh connection: every bad frame is answered by
exactly one ``error`` frame, nothing is stored (Redis is read afterwards), the socket
stays open and the conversation (or console) still works. Examples and sizes are
bounded, and the examples fixed (``derandomize``), so that the file runs in well under a
minute and the same way every time. To search harder, with fresh random examples::

    DESKMATE_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from bot.brain import Brain
from bot.frames import MAX_DEPTH
from bot.keys import Keys
from dialogue.engine import DialogueEngine
from dialogue.entities import EntityExtractor
from dialogue.project import load_project
from tests.conftest import TINYBOT, Running, Servers
from tests.test_agent_socket import Console, add_agent, console

Barrage = list[tuple[str | bytes, frozenset[str]]]  # (frame, the error codes that may answer it)

MAX_FRAME = 6000  # the fuzzed servers' DESKMATE_MAX_FRAME_BYTES: oversized frames stay cheap
MAX_TEXT = 300  # and DESKMATE_MAX_TEXT_CHARS
EXAMPLES = int(os.environ.get("DESKMATE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 60, deadline=None, derandomize=not EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

# -- strategies -----------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False,
                                                                              allow_infinity=False)
texts = st.text(max_size=40)
json_values = st.recursive(scalars | texts,
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(texts, inner, max_size=4), max_leaves=12)
# A value of the wrong type for a string field (bool is not a string either).
not_strings = st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False),
                        st.lists(st.integers(), max_size=3),
                        st.dictionaries(texts, st.integers(), max_size=2))


def one(raw: str | bytes, *codes: str) -> tuple[str | bytes, frozenset[str]]:
    return raw, frozenset(codes)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@st.composite
def not_json(draw: st.DrawFn) -> tuple[str | bytes, frozenset[str]]:
    text = draw(st.text(min_size=1, max_size=60))
    try:
        json.loads(text)
    except ValueError:
        return one(text, "bad_json")
    return one(text + "{", "bad_json")  # valid JSON made invalid


@st.composite
def not_objects(draw: st.DrawFn) -> tuple[str | bytes, frozenset[str]]:
    value = draw(scalars | texts | st.lists(json_values, max_size=4))
    return one(dumps(value), "bad_frame")


@st.composite
def no_type(draw: st.DrawFn) -> tuple[str | bytes, frozenset[str]]:
    frame = draw(st.dictionaries(texts.filter(lambda k: k != "type"), json_values, max_size=4))
    if draw(st.booleans()):
        frame["type"] = draw(scalars | st.lists(scalars, max_size=2))
    return one(dumps(frame), "bad_frame")


@st.composite
def unknown_types(draw: st.DrawFn, known: frozenset[str]) -> tuple[str | bytes, frozenset[str]]:
    kind = draw(st.text(max_size=60).filter(lambda k: k not in known))
    frame = {"type": kind, **draw(st.dictionaries(texts.filter(lambda k: k != "type"), json_values,
                                                  max_size=3))}
    # bad_field: a NUL inside; bad_frame: the extra fields nest too deep
    return one(dumps(frame), "unknown_type", "bad_field", "bad_frame")


@st.composite
def binary(draw: st.DrawFn) -> tuple[str | bytes, frozenset[str]]:
    # Invalid UTF-8 too: a binary frame is answered, whatever its bytes.
    data = draw(st.binary(min_size=1, max_size=64) | st.just(b"\xff\xfe\xfd") | st.just(b"\xc3\x28"))
    return one(data, "binary_frame")


@st.composite
def oversized(draw: st.DrawFn) -> tuple[str | bytes, frozenset[str]]:
    size = draw(st.integers(MAX_FRAME + 1, MAX_FRAME * 8))
    filler = draw(st.sampled_from(["x", "é", "👍", " "]))
    text = filler * (size // len(filler.encode()) + 1)
    return one(dumps({"type": "message", "client_id": "c", "text": text}), "frame_too_large")


@st.composite
def too_deep(draw: st.DrawFn) -> tuple[str | bytes, frozenset[str]]:
    depth = draw(st.integers(MAX_DEPTH + 1, 400) | st.just(5000))
    inner = "[" * depth + "]" * depth
    raw = '{"type": "track", "name": "view_product", "data": {"x": ' + inner + "}}"
    return one(raw, "bad_frame", "bad_json", "frame_too_large")


@st.composite
def odd_numbers(draw: st.DrawFn) -> tuple[str | bytes, frozenset[str]]:
    # Python reads these; a browser's JSON.parse would not read them back.
    number = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" * 4400,
                                   "1" + "0" * 400, "-" + "9" * 309]))  # integers past a double
    return one('{"type": "track", "name": "view_product", "data": {"v": ' + number + "}}", "bad_json")


@st.composite
def lone_surrogates(draw: st.DrawFn, kinds: list[dict[str, Any]]) -> tuple[str | bytes, frozenset[str]]:
    frame = dict(draw(st.sampled_from(kinds)))
    field = draw(st.sampled_from(sorted(k for k in frame if k != "type")))
    surrogate = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "a\\ude00b"]))
    raw = dumps({**frame, field: "@@"}).replace('"@@"', f'"{surrogate}"')
    return one(raw, "bad_field")


def _corrupt(draw: st.DrawFn, frame: dict[str, Any], limits: dict[str, int]) -> str:
    """One required string field of ``frame`` missing, of the wrong type, empty, too long,
    or with a NUL in it."""
    field = draw(st.sampled_from(sorted(limits)))
    how = draw(st.sampled_from(["missing", "type", "empty", "long", "nul"]))
    frame = dict(frame)
    if how == "missing":
        del frame[field]
    elif how == "type":
        frame[field] = draw(not_strings)
    elif how == "empty":
        frame[field] = draw(st.sampled_from(["", " ", "\t\n", "\u3000"]))
    elif how == "long":
        frame[field] = "y" * (limits[field] + draw(st.integers(1, 200)))
    else:
        frame[field] = "a\x00b"
    return dumps(frame)


CUSTOMER_KINDS: list[dict[str, Any]] = [
    {"type": "message", "client_id": "c-1", "text": "hello"},
    {"type": "action", "client_id": "c-2", "payload": "/greet", "title": "Hi"},
    {"type": "track", "name": "view_product", "data": {"id": "P1"}},
]
CUSTOMER_LIMITS = {"message": {"client_id": 128, "text": MAX_TEXT},
                   "action": {"client_id": 128, "payload": 1024}, "track": {"name": 64}}


@st.composite
def bad_customer_fields(draw: st.DrawFn) -> tuple[str | bytes, frozenset[str]]:
    frame = draw(st.sampled_from(CUSTOMER_KINDS))
    if frame["type"] == "track" and draw(st.booleans()):  # data must be an object
        value = draw(not_strings.filter(lambda v: not isinstance(v, dict)) | texts)
        return one(dumps({**frame, "data": value}), "bad_field")
    raw = _corrupt(draw, frame, CUSTOMER_LIMITS[frame["type"]])
    return one(raw, "missing_field", "bad_field", "text_too_long", "frame_too_large")


@st.composite
def second_start(draw: st.DrawFn) -> tuple[str | bytes, frozenset[str]]:
    frame = {"type": "start", "session_id": draw(st.none() | texts), "token": draw(st.none() | texts),
             "after": draw(st.none() | st.sampled_from(["1-0", "yesterday", "", "9" * 30 + "-1",
                                                        "9" * 20 + "-0"]))}
    return one(dumps(frame), "already_started", "bad_field")


def customer_frames() -> st.SearchStrategy[tuple[str | bytes, frozenset[str]]]:
    return st.one_of(not_json(), not_objects(), no_type(),
                     unknown_types(frozenset({"start", "message", "action", "track"})), binary(),
                     oversized(), too_deep(), odd_numbers(), lone_surrogates(CUSTOMER_KINDS),
                     bad_customer_fields(), second_start())


# -- the customer socket ----------------------------------------------------------------

@pytest.fixture
async def fuzzed(servers: Servers) -> Running:
    # Rate limits off: this file is about bad frames; test_security.py floods. Handoffs off
    # too: a run of messages the tiny bot does not understand would hand it to a person.
    project = load_project(TINYBOT)
    project.config = {"handoff": {"low_confidence_turns": 0, "negative_turns": 0}}
    brain = Brain(DialogueEngine(project, entities=EntityExtractor.for_project(project)))
    return await servers.start(brain, max_frame_bytes=MAX_FRAME, max_text_chars=MAX_TEXT,
                               rate_messages=100_000, rate_ip_messages=0)


async def expect_errors(conn: Any, barrage: Barrage) -> None:
    for raw, _codes in barrage:
        await conn.send(raw)
    for raw, codes in barrage:
        frame = await conn.recv()
        assert frame["type"] == "error" and frame["code"] in codes, (raw[:300], frame)
        assert isinstance(frame["message"], str) and frame["message"]


@FUZZ
@given(barrage=st.lists(customer_frames(), min_size=1, max_size=12))
async def test_customer_socket_answers_every_bad_frame(
        barrage: Barrage, fuzzed: Running, sync_redis: redis.Redis, key_prefix: str) -> None:
    client = await fuzzed.client()
    await client.start()
    sid = client.session_id or ""
    keys = Keys(key_prefix)
    before = sync_redis.hgetall(keys.session(sid))
    await expect_errors(client, barrage)
    assert await client.quiet(0.05) == []  # one answer per frame, nothing else
    # Nothing half-written: no event, no dedupe entry, the session record as it was.
    assert sync_redis.xlen(keys.events(sid)) == 0
    assert not sync_redis.exists(keys.client_ids(sid))
    assert sync_redis.hgetall(keys.session(sid)) == before
    # The same socket goes on.
    _, frames = await client.say("hello")
    assert frames[-1]["type"] == "stream_end" and frames[-1]["text"].startswith("Hello")
    await client.ws.close()


async def test_invalid_utf8_in_a_text_frame_closes_1007_and_the_session_resumes(
        fuzzed: Running, sync_redis: redis.Redis, key_prefix: str) -> None:
    """RFC 6455 §8.1: invalid UTF-8 in a *text* frame fails the websocket (1007) below the
    application. Nothing is stored; the conversation resumes on a new socket."""
    client = await fuzzed.client()
    await client.start()
    await client.ws.send(b'{"type": "message", "client_id": "c", "text": "\xff\xfe"}', text=True)
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1007
    assert sync_redis.xlen(Keys(key_prefix).events(client.session_id or "")) == 0
    again = await fuzzed.client()
    frame = await again.start(client.session_id, client.token)
    assert frame["session_id"] == client.session_id
    await again.say("hello")


# -- the agent socket ---------------------------------------------------------------------

AGENT_KINDS: list[dict[str, Any]] = [
    {"type": "watch", "session_id": "SID"},
    {"type": "takeover", "session_id": "SID"},
    {"type": "assign", "session_id": "SID", "agent": "bert"},
    {"type": "send", "session_id": "SID", "client_id": "a-1", "text": "hi"},
    {"type": "typing", "session_id": "SID", "on": True},
    {"type": "note", "session_id": "SID", "text": "a note"},
    {"type": "handback", "session_id": "SID"},
    {"type": "close", "session_id": "SID"},
]
AGENT_LIMITS = {"watch": {"session_id": 128}, "takeover": {"session_id": 128}, "close": {"session_id": 128},
                "handback": {"session_id": 128}, "assign": {"session_id": 128, "agent": 64},
                "send": {"session_id": 128, "client_id": 128, "text": MAX_TEXT},
                "typing": {"session_id": 128}, "note": {"session_id": 128, "text": MAX_TEXT}}
AGENT_TYPES = frozenset({"sessions", "logout", "auth", "login", *(k["type"] for k in AGENT_KINDS),
                         "unwatch"})


@st.composite
def bad_agent_fields(draw: st.DrawFn) -> tuple[str | bytes, frozenset[str]]:
    frame = draw(st.sampled_from(AGENT_KINDS))
    if frame["type"] == "typing" and draw(st.booleans()):
        return one(dumps({**frame, "on": draw(not_strings.filter(lambda v: not isinstance(v, bool))
                                                | texts)}), "bad_field")
    if frame["type"] == "watch" and draw(st.booleans()):
        return one(dumps({**frame, "after": draw(st.sampled_from(["yesterday", "1", "1-2-3", "-1",
                                                                  "9" * 20 + "-0", "0-" + "9" * 20]))}),
                   "bad_field")
    raw = _corrupt(draw, frame, AGENT_LIMITS[frame["type"]])
    return one(raw, "missing_field", "bad_field", "text_too_long", "frame_too_large")


def agent_frames() -> st.SearchStrategy[tuple[str | bytes, frozenset[str]]]:
    return st.one_of(not_json(), not_objects(), no_type(), unknown_types(AGENT_TYPES), binary(),
                     oversized(), too_deep(), odd_numbers(), lone_surrogates(AGENT_KINDS),
                     bad_agent_fields(),
                     st.just(one('{"type": "auth", "token": "x"}', "already_authenticated")))


@pytest.fixture
async def agent_setup(fuzzed: Running) -> tuple[Running, str, str]:
    """A customer conversation, and a console token (login once: logins are throttled)."""
    customer = await fuzzed.client()
    await customer.start()
    await customer.say("hello")
    password = await add_agent(fuzzed, "anna")
    first = await console(fuzzed)
    await first.send({"type": "login", "name": "anna", "password": password})
    token = (await first.recv())["token"]
    return fuzzed, customer.session_id or "", token


@FUZZ
@given(barrage=st.lists(agent_frames(), min_size=1, max_size=12))
async def test_agent_socket_answers_every_bad_frame(
        barrage: Barrage, agent_setup: tuple[Running, str, str], sync_redis: redis.Redis,
        key_prefix: str) -> None:
    server, sid, token = agent_setup
    agent = await console(server)
    await agent.send({"type": "auth", "token": token})
    assert (await agent.recv())["type"] == "auth_ok"
    assert (await agent.recv())["type"] == "sessions"
    keys = Keys(key_prefix)
    stored = sync_redis.xlen(keys.events(sid))
    record = sync_redis.hgetall(keys.session(sid))
    barrage = [(raw.replace("SID", sid) if isinstance(raw, str) else raw, codes) for raw, codes in barrage]
    await expect_console_errors(agent, barrage)
    assert sync_redis.xlen(keys.events(sid)) == stored
    assert sync_redis.hgetall(keys.session(sid)) == record
    # The console is still signed in and answers.
    await agent.send({"type": "sessions"})
    snapshot = await agent.until(lambda f: f["type"] == "sessions")
    assert sid in {s["session_id"] for s in snapshot[-1]["sessions"]}
    await agent.ws.close()


async def expect_console_errors(agent: Console, barrage: Barrage) -> None:
    for raw, _codes in barrage:
        await agent.ws.send(raw)  # bytes go out as a binary frame
    for raw, codes in barrage:
        # session_update frames may come in between (another example's customer); skip them
        frames = await agent.until(lambda f: f["type"] == "error")
        frame = frames[-1]
        assert frame["code"] in codes, (raw[:300], frame)


# -- Unicode ----------------------------------------------------------------------------

unicode_texts = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    min_size=1, max_size=120).filter(lambda t: t.strip() != "")


@pytest.fixture
async def unicode_client(fuzzed: Running) -> Any:
    client = await fuzzed.client()
    await client.start()
    return client


@settings(FUZZ, max_examples=EXAMPLES or 40)
@given(text=unicode_texts)
@example(text="مرحبا بالعالم")  # right to left
@example(text="\u202eevil.exe\u202c and \u200fRTL mark")  # bidi overrides
@example(text="👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽")  # ZWJ sequences, skin tone
@example(text="e\u0301 a\u0308\u0323 Z̷̢̛͚a̴l̵g̸o")  # combining marks
@example(text="\ufeffBOM and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd")  # BOM, astral planes
@example(text="tab\tnew\nline\r\u2028\u2029\x01\x7f")  # controls and separators
async def test_unicode_round_trips_exactly(text: str, unicode_client: Any, sync_redis: redis.Redis,
                                           key_prefix: str) -> None:
    client = unicode_client
    ack, frames = await client.say(text)
    echoed = [f for f in frames if f["type"] == "message" and f["role"] == "user"]
    assert echoed and echoed[-1]["text"] == text
    stored = sync_redis.xrange(Keys(key_prefix).events(client.session_id or ""), ack["event_id"],
                               ack["event_id"])
    assert json.loads(stored[0][1]["data"])["text"] == text


@pytest.mark.parametrize(("raw", "code"), [
    ('{"type": "message", "client_id": "c", "text": "a\\ud800"}', "bad_field"),  # lone high
    ('{"type": "message", "client_id": "c", "text": "\\udc00b"}', "bad_field"),  # lone low
    ('{"type": "message", "client_id": "\\ud800", "text": "hi"}', "bad_field"),  # in an id
    ('{"type": "track", "name": "v", "data": {"\\ud800": 1}}', "bad_field"),  # in a key
    ('{"type": "message", "client_id": "c", "text": "a\\u0000b"}', "bad_field"),  # NUL
])
async def test_lone_surrogates_and_nul_are_refused_cleanly(
        raw: str, code: str, unicode_client: Any, sync_redis: redis.Redis, key_prefix: str) -> None:
    client = unicode_client
    await client.send(raw)
    frame = await client.recv()
    assert frame["type"] == "error" and frame["code"] == code
    assert "client_id" not in frame or frame["client_id"] == "c"
    assert sync_redis.xlen(Keys(key_prefix).events(client.session_id or "")) == 0
    # A surrogate *pair* escape is one character, and fine.
    ack, frames = await client.say("ok \ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16"))
    assert [f["text"] for f in frames if f.get("role") == "user"] == ["ok 😀"]


def test_the_strategies_make_only_bad_frames() -> None:
    """The oracle check: everything the strategies draw is refused by the parsers (so a
    passing socket test means the server answered bad frames, not that none were drawn)."""
    from bot import agent_frames as agent_parser
    from bot import frames
    from bot.errors import FrameError

    checks = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

    @checks
    @given(case=customer_frames())
    def customer(case: tuple[str | bytes, frozenset[str]]) -> None:
        raw, codes = case
        if "already_started" in codes:
            return  # a well-formed start is refused by the connection, not the parser
        with pytest.raises(FrameError) as info:
            frames.parse(raw, max_bytes=MAX_FRAME, max_text=MAX_TEXT)
        assert info.value.code in codes, (raw[:200], info.value.code)

    @checks
    @given(case=agent_frames())
    def agent(case: tuple[str | bytes, frozenset[str]]) -> None:
        raw, codes = case
        with pytest.raises(FrameError) as info:
            agent_parser.parse(raw.replace("SID", "s1") if isinstance(raw, str) else raw,
                               max_bytes=MAX_FRAME, max_text=MAX_TEXT)
        assert info.value.code in codes, (raw[:200], info.value.code)

    customer()
    agent()
