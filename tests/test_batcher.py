"""Concurrent classifier calls share batches and each caller gets its own result."""

from __future__ import annotations

import asyncio
import threading

import pytest

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
