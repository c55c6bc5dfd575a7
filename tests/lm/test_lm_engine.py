"""The embedded engine with the real model: streaming, batching, cancellation, limits."""

from __future__ import annotations

import asyncio

import pytest

from model.lm.api import ContextOverflowError, EngineClosedError, InvalidRequestError, Usage, complete
from model.lm.engine import Engine, EngineConfig


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]

PROMPTS = [
    "What is your refund policy?", "Say hello in French.", "Write a haiku about tea.",
    "List three colors.", "Hi", "How do I reset my password?", "Recommend a book.",
    "What is 2 + 2?", "Where is my order?", "Tell me a joke.", "Describe the sea.",
    "Can I pay by card?", "What time do you open?", "Translate 'thank you' to German.",
    "Give me a tip for sleeping well.", "Who are you?",
]


async def wait_for(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``cond``: the engine thread updates plain counters, there is no event to await."""
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_stream_is_ordered_and_complete(engine, reference) -> None:  # type: ignore[no-untyped-def]
    usage = Usage()
    deltas = [d async for d in engine.stream(user("Write a haiku about tea."), max_tokens=24,
                                             usage=usage)]
    assert len(deltas) > 5 and all(deltas)
    assert "".join(deltas) == reference(user("Write a haiku about tea."), 24)
    assert usage.finish_reason == "length" and usage.completion_tokens == 24
    assert usage.prompt_tokens > 10 and usage.ttft_s is not None


async def test_sixteen_concurrent_equal_unbatched(engine, reference) -> None:  # type: ignore[no-untyped-def]
    steps_before = engine.stats.steps
    usages = [Usage() for _ in PROMPTS]
    outs = await asyncio.gather(*[complete(engine, user(p), max_tokens=12, usage=u)
                                  for p, u in zip(PROMPTS, usages, strict=True)])
    assert all(u.finish_reason in ("stop", "length") for u in usages)
    # They shared forward passes: far fewer steps than 16 separate runs would take.
    assert engine.stats.steps - steps_before < 2 * 12
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out == reference(user(prompt), 12), prompt


async def test_late_joiner_does_not_wait(engine, reference) -> None:  # type: ignore[no-untyped-def]
    story = user("Tell me a long story.")
    long_usage = Usage()
    long_task = asyncio.create_task(complete(engine, story, max_tokens=40, usage=long_usage))
    await wait_for(lambda: long_usage.steps >= 5)
    # A longer prompt than the running batch's history forces the KV cache to shift right.
    joiner = user("Please describe, in a friendly tone, " + "our opening hours and shipping rules " * 6)
    short = await complete(engine, joiner, max_tokens=6)
    assert not long_task.done()        # it joined and left while the long one kept running
    assert await long_task == reference(story, 40)
    assert short == reference(joiner, 6)


async def test_cancel_frees_capacity(engine) -> None:  # type: ignore[no-untyped-def]
    victim, other = Usage(), Usage()

    async def consume(usage: Usage) -> None:
        async for _ in engine.stream(user("Tell me a long story about a dragon."), max_tokens=200,
                                     usage=usage):
            pass

    victim_task = asyncio.create_task(consume(victim))
    other_task = asyncio.create_task(consume(other))
    await wait_for(lambda: victim.steps >= 3 and other.steps >= 3)
    victim_task.cancel()
    await wait_for(lambda: victim.finish_reason == "cancelled")
    frozen = victim.steps
    step = engine.stats.steps
    await wait_for(lambda: engine.stats.steps >= step + 5)
    assert victim.steps == frozen                   # it no longer takes part in steps
    assert engine.active_count == 1                 # only the other request is left
    other_task.cancel()
    await wait_for(lambda: engine.active_count == 0)


async def test_closing_the_generator_cancels(engine) -> None:  # type: ignore[no-untyped-def]
    usage = Usage()
    gen = engine.stream(user("Count to one hundred."), max_tokens=200, usage=usage)
    async for _ in gen:
        break
    await gen.aclose()
    await wait_for(lambda: usage.finish_reason == "cancelled")
    await wait_for(lambda: engine.active_count == 0)


async def test_stop_sequence(engine, reference) -> None:  # type: ignore[no-untyped-def]
    full = reference(user("List three colors."), 30)
    stop = full[10:14]
    assert stop and full.find(stop) == 10
    usage = Usage()
    out = await complete(engine, user("List three colors."), max_tokens=30, stop=[stop], usage=usage)
    assert out == full[:10]
    assert usage.finish_reason == "stop"


async def test_seeded_sampling_is_reproducible_in_a_batch(engine) -> None:  # type: ignore[no-untyped-def]
    kw = {"max_tokens": 16, "temperature": 0.9, "seed": 1234}
    alone = await complete(engine, user("Describe the sea."), **kw)
    batch = await asyncio.gather(
        complete(engine, user("Describe the sea."), **kw),
        complete(engine, user("Who are you?"), max_tokens=16, temperature=0.9, seed=5),
    )
    assert batch[0] == alone


async def test_context_overflow(loaded) -> None:  # type: ignore[no-untyped-def]
    small = Engine(loaded, EngineConfig(context=64))
    try:
        with pytest.raises(ContextOverflowError) as err:
            await complete(small, user("word " * 80), max_tokens=8)
        assert err.value.context == 64 and err.value.prompt_tokens > 64
        # A prompt that fits but leaves less room than max_tokens: clamped, ends with "length".
        usage = Usage()
        await complete(small, user("Tell me a story."), max_tokens=500, usage=usage)
        assert usage.finish_reason in ("length", "stop")
        assert usage.prompt_tokens + usage.completion_tokens <= 64
    finally:
        small.close()


async def test_queue_beyond_max_batch(loaded) -> None:  # type: ignore[no-untyped-def]
    tiny = Engine(loaded, EngineConfig(max_batch=2))
    try:
        outs = await asyncio.gather(*[complete(tiny, user(p), max_tokens=4) for p in PROMPTS[:5]])
        assert all(outs)
    finally:
        tiny.close()


async def test_a_crash_in_prefill_ends_the_requests_being_admitted(loaded, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A prefill that raises (an allocation failure, a torch error) kills the engine; the
    requests it had taken off the queue must hear so, not wait forever."""
    doomed = Engine(loaded)

    def fail(reqs: object) -> int:
        raise RuntimeError("cannot allocate memory")

    monkeypatch.setattr(doomed, "_prefill", fail)
    try:
        async with asyncio.timeout(30):        # the bug was a hang
            results = await asyncio.gather(*[complete(doomed, user(p), max_tokens=4) for p in PROMPTS[:3]],
                                           return_exceptions=True)
        assert all(isinstance(r, EngineClosedError) and "cannot allocate memory" in str(r)
                   for r in results), results
    finally:
        doomed.close()


async def test_bad_parameters(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequestError):
        await complete(engine, user("hi"), max_tokens=0)
    with pytest.raises(InvalidRequestError):
        await complete(engine, [], max_tokens=4)


async def test_float16_kv_cache_halves_the_cache_and_batches_like_one_at_a_time(loaded) -> None:  # type: ignore[no-untyped-def]
    """Keys and values kept in float16 (prefix cache on, so prefixes are reused in float16
    too): the cache takes half the bytes, and eight concurrent customers get exactly what
    each gets alone from the same engine."""
    import torch

    half = Engine(loaded, EngineConfig(kv_dtype="float16", prefill_tokens=256))
    try:
        system = {"role": "system", "content": "You are the assistant of a tea shop. " * 6}
        chats = [[system, *user(p)] for p in PROMPTS[:8]]
        alone = [await complete(half, chat, max_tokens=10) for chat in chats]
        together = await asyncio.gather(*[complete(half, chat, max_tokens=10) for chat in chats])
        assert together == alone and all(alone)
        assert half.prefixes is not None and half.prefixes.stats.hits > 0
        assert all(k.dtype == torch.float16 for k in half.kv.keys)
        assert half.kv.nbytes() * 2 == sum(t.numel() * 4 for t in half.kv.keys + half.kv.values)
    finally:
        half.close()


def test_kv_dtype_is_checked(loaded) -> None:  # type: ignore[no-untyped-def]
    from model.lm.loader import LoadedModel

    with pytest.raises(ValueError, match="kv_dtype must be one of"):
        EngineConfig(kv_dtype="int4")
    plain = LoadedModel(**{**loaded.__dict__, "lean": None})     # transformers' own forward
    with pytest.raises(ValueError, match="needs the engine's own forward"):
        Engine(plain, EngineConfig(kv_dtype="float16"))
