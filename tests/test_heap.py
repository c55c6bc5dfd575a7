"""The collector settings of the long-running processes."""

from __future__ import annotations

import gc

from bot import heap


def test_settle_freezes_what_is_loaded_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        kept = [{"loaded": i} for i in range(1000)]
        heap.settle()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 20, 100)
        assert gc.collect() < len(kept)  # the frozen objects are not walked (nor freed)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_settled_gives_everything_back_on_exit() -> None:
    before = gc.get_threshold()
    with heap.settled():
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD and gc.get_freeze_count() > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
