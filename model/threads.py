"""Which thread runs torch's parallel work, and with how many threads.

torch's CPU parallelism is OpenMP, and each thread that runs parallel work keeps its own
team of worker threads for as long as it lives. When a process holds more OpenMP worker
threads than it has cores, libgomp cuts the workers' spin-wait short, and every one of
the hundreds of small parallel regions of a language-model decode step then pays a sleep
and a wake-up: on 2 cores one stream decoded 1.6-1.9x slower (scripts/bench_lm_threads.py).
So the engine's thread should hold the process's only team: heavy loading work runs on
short-lived threads (:func:`on_own_thread`), whose teams go with them, and long-lived
threads that only coordinate keep to one torch thread (:func:`pin_torch_threads`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def pin_torch_threads(threads: int) -> None:
    """Set the calling thread's torch intra-op threads, for this thread only from now on.

    torch keeps one process-wide default that each thread adopts at its first parallel
    op; reading the count right away makes this thread adopt ``threads`` before another
    thread changes the default."""
    import torch

    torch.set_num_threads(threads)
    torch.get_num_threads()


def on_own_thread(fn: Callable[..., T], *args: Any, threads: int | None = None) -> T:
    """Run ``fn(*args)`` on a new thread and return its result (or raise its error).

    The thread's OpenMP team, if its torch work made one, ends with the thread instead of
    staying with the caller's (see module docstring). ``threads``: pin its torch threads."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        if threads is not None:
            pin_torch_threads(threads)
        try:
            result.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=target, name=f"deskmate-{getattr(fn, '__name__', 'work')}")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]
