"""Concurrent classifier calls share batches and each caller gets its own result; no
caller is left waiting by a bad batch or a close, and the workers name no caller's session."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
import time

import pytest

from bot import logs
from bot.batcher import MicroBatcher


async def test_concurrent_calls_are_batched_in_order() -> None:
    sizes: list[int] = []
    threads: set[int] = set()
    gate = threading.Event()

    def fn(texts: list[str]) -> list[dict[str, object]]:
        threads.add(threading.get_ident())
        sizes.append(len(texts))
        gate.wait(5)  # hold each batch until every caller has queued
        return [{"text": t, "length": len(t)} for t in texts]

    batcher = MicroBatcher(fn, max_batch=8)
    calls = [asyncio.create_task(batcher(f"t{i:02d}")) for i in range(20)]
    await asyncio.sleep(0.2)
    gate.set()
    results = await asyncio.gather(*calls)
    assert [r["text"] for r in results] == [f"t{i:02d}" for i in range(20)]
    assert sizes == [8, 8, 4]  # all twenty queued before the worker first ran
    assert batcher.batches == len(sizes) < 20
    await batcher.close()


async def test_a_failing_batch_fails_its_callers_only() -> None:
    def fn(texts: list[str]) -> list[dict[str, object]]:
        if "boom" in texts:
            raise RuntimeError("model failed")
        return [{"ok": t} for t in texts]

    batcher = MicroBatcher(fn)
    with pytest.raises(RuntimeError, match="model failed"):
        await batcher("boom")
    assert await batcher("fine") == {"ok": "fine"}  # the worker lives on
    await batcher.close()


async def test_a_cancelled_caller_is_skipped() -> None:
    seen: list[str] = []
    gate = threading.Event()

    def fn(texts: list[str]) -> list[dict[str, object]]:
        seen.extend(texts)
        gate.wait(5)
        return [{} for _ in texts]

    batcher = MicroBatcher(fn)
    first = asyncio.create_task(batcher("first"))
    await asyncio.sleep(0.1)
    gone = asyncio.create_task(batcher("gone"))
    await asyncio.sleep(0.05)
    gone.cancel()
    gate.set()
    await first
    await batcher("after")
    assert seen == ["first", "after"]
    await batcher.close()


async def test_two_workers_run_two_batches_at_once() -> None:
    running = 0
    most = 0
    sizes: list[int] = []
    lock = threading.Lock()
    both = threading.Barrier(2, timeout=5)

    def fn(texts: list[str]) -> list[dict[str, object]]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            sizes.append(len(texts))
            first_two = len(sizes) <= 2
        if first_two:
            both.wait()  # only returns once the other worker runs a batch too
        with lock:
            running -= 1
        return [{"text": t} for t in texts]

    batcher = MicroBatcher(fn, workers=2)
    first = [asyncio.create_task(batcher(f"a{i}")) for i in range(2)]
    await asyncio.sleep(0.1)  # one worker runs both (queued together) and waits for the other
    rest = [asyncio.create_task(batcher(f"b{i}")) for i in range(6)]
    results = await asyncio.gather(*first, *rest)
    assert [r["text"] for r in results] == ["a0", "a1"] + [f"b{i}" for i in range(6)]
    assert most == 2 and sizes == [2, 6]
    await batcher.close()


async def test_a_batch_answered_with_the_wrong_number_of_results_fails_its_callers() -> None:
    def fn(texts: list[str]) -> list[dict[str, object]]:
        time.sleep(0.05)  # the three calls queue together
        return [{"text": t} for t in texts][:1]

    batcher = MicroBatcher(fn)
    calls = [asyncio.create_task(batcher(f"t{i}")) for i in range(3)]
    done, pending = await asyncio.wait(calls, timeout=5)
    assert not pending, "callers of a bad batch must not wait forever"
    for call in done:
        with pytest.raises(ValueError, match="1 results for a batch of 3"):
            call.result()
    assert await asyncio.wait_for(batcher("after"), 5) == {"text": "after"}  # the worker lives on
    await batcher.close()


async def test_a_bad_batch_does_not_abandon_another_workers_batch() -> None:
    release = threading.Event()

    def fn(texts: list[str]) -> list[dict[str, object]]:
        if texts == ["bad1", "bad2"]:
            return [{}]  # a bad answer, on one worker
        release.wait(5)  # the other worker is busy meanwhile
        return [{"text": t} for t in texts]

    batcher = MicroBatcher(fn, workers=2)
    slow = asyncio.create_task(batcher("slow"))
    await asyncio.sleep(0.1)
    bad = [asyncio.create_task(batcher("bad1")), asyncio.create_task(batcher("bad2"))]
    await asyncio.wait(bad, timeout=5)
    after = asyncio.create_task(batcher("next"))
    await asyncio.sleep(0.1)
    release.set()
    assert await asyncio.wait_for(slow, 5) == {"text": "slow"}
    assert await asyncio.wait_for(after, 5) == {"text": "next"}
    assert all(isinstance(b.exception(), ValueError) for b in bad)
    await batcher.close()


async def test_closing_fails_the_callers_it_leaves() -> None:
    release = threading.Event()

    def fn(texts: list[str]) -> list[dict[str, object]]:
        release.wait(5)
        return [{} for _ in texts]

    batcher = MicroBatcher(fn)
    running = asyncio.create_task(batcher("running"))
    await asyncio.sleep(0.1)
    queued = asyncio.create_task(batcher("queued"))
    await asyncio.sleep(0.05)
    await batcher.close()
    release.set()
    for call in (running, queued):
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(call, 5)


async def test_batch_log_lines_name_no_caller_session() -> None:
    out = io.StringIO()
    handler = logs.handler(fmt="json", stream=out)
    root = logging.getLogger()
    root.addHandler(handler)
    failing = False

    def fn(texts: list[str]) -> list[dict[str, object]]:
        if failing:
            raise RuntimeError("model crashed")
        return [{} for _ in texts]

    batcher = MicroBatcher(fn)

    async def turn(sid: str) -> None:
        logs.bind_session(sid)  # as a customer connection does
        with contextlib.suppress(RuntimeError):
            await batcher("hello")

    try:
        await asyncio.create_task(turn("SESSION-ONE"))  # starts the worker
        failing = True
        await asyncio.create_task(turn("SESSION-TWO"))  # its batch fails and is logged
        await batcher.close()
    finally:
        root.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    failed = [line for line in lines if "classifier batch" in line["message"]]
    assert len(failed) == 1 and "session_id" not in failed[0], failed
