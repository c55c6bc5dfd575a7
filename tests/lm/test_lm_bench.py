"""The forward comparison of ``deskmate bench lm``, for every weight type it offers."""

from __future__ import annotations

from typing import Any

import pytest

from model.lm.bench import compare_forwards
from model.lm.loader import load_model


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forward_comparison_runs_in_the_models_own_type(loaded: Any, dtype: str) -> None:
    """transformers' forward with a DynamicCache and a slot cache, and the lean forward, one
    decode step at 1 and 32 streams: the random cache is made in the model's type (a
    bfloat16 model refused float32 keys and values)."""
    model = loaded if dtype == "float32" else load_model(cache=loaded.path.parent, dtype=dtype, threads=1)
    rows = compare_forwards(model.model, model.lean, cached=8, steps=1)
    assert [r["batch"] for r in rows] == [1, 32]
    for row in rows:
        assert row["cached"] == 8
        assert all(row[k] > 0 for k in ("dynamic_ms", "slot_ms", "lean_ms"))
