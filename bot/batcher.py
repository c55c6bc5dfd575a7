"""Micro-batching of classifier calls across conversations.

Turns arriving together are read in one ``parse_batch`` call on a worker
thread: one batched forward pass costs far less than many single ones. Up to
``workers`` batches run at once (two by default): while one runs, the next
collects what arrives and starts as soon as it is ready, so under load both
cores serve the model instead of the second waiting for the first batch's
slowest, most parallel-unfriendly steps (docs/benchmarks.md, "Load").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("deskmate.batcher")

BatchFn = Callable[[list[str]], list[dict[str, Any]]]


class MicroBatcher:
    """``await batcher(text)`` -> ``fn([text, ...])[i]``, batching concurrent callers.

    A batch is sent as soon as a worker is free: whatever queued while the others
    ran goes together (up to ``max_batch``), so a lone caller waits for no timer.
    """

    def __init__(self, fn: BatchFn, *, max_batch: int = 32, workers: int = 1) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.workers = workers
        self.batches = 0  # batches run so far (for metrics and tests)
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[dict[str, Any]]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def __call__(self, text: str) -> dict[str, Any]:
        # Replace only workers that died: one that is running a batch holds its callers'
        # futures, and cancelling it would leave them waiting forever.
        self._tasks = [t for t in self._tasks if not t.done()]
        while len(self._tasks) < self.workers:
            # A clean context: the workers serve every conversation, and would otherwise
            # keep the first caller's (its session id would name all their log lines).
            self._tasks.append(asyncio.create_task(self._run(), name=f"nlu-batcher-{len(self._tasks)}",
                                                   context=contextvars.Context()))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [(t, f) for t, f in batch if not f.cancelled()]
            if not live:
                continue
            try:
                results = await asyncio.to_thread(self.fn, [t for t, _ in live])
                if len(results) != len(live):
                    raise ValueError(f"the classifier answered {len(results)} results "
                                     f"for a batch of {len(live)}")
            except Exception as exc:  # every caller of this batch sees the failure
                log.exception("classifier batch of %d failed", len(live))
                _fail(live, exc)
                continue
            except BaseException:  # cancelled (close): its callers must not wait forever
                _fail(live, RuntimeError("the classifier batcher was closed"))
                raise
            self.batches += 1
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        while not self._queue.empty():  # queued, never to be run
            _fail([self._queue.get_nowait()], RuntimeError("the classifier batcher was closed"))


def _fail(batch: list[tuple[str, asyncio.Future[dict[str, Any]]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
