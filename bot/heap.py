"""Garbage-collector settings for the long-running asyncio processes (server, load generator).

Once a process has loaded what it keeps for good (models, the bot project, imports),
:func:`settle` freezes those objects out of the collector: a full collection would
otherwise walk all of them (221 k objects for the demo shop, a 100 ms pause for every
customer waiting at that moment). Serving allocates many short-lived objects, so the
young generation is collected every 50,000 net allocations instead of 700. Measured
with ``deskmate bench load`` (docs/benchmarks.md, "Load").
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

YOUNG_THRESHOLD = 50_000


def settle() -> None:
    """Freeze what is loaded now and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 100)


@contextlib.contextmanager
def settled() -> Iterator[None]:
    """:func:`settle` for a while (a run inside a longer-lived process): on exit the frozen
    objects go back to the collector and its thresholds are restored."""
    before = gc.get_threshold()
    try:
        settle()
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
