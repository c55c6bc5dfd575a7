"""The engine-memory measurement of ``deskmate bench lm`` (a fresh process per configuration)."""

from __future__ import annotations

from typing import Any

from model.lm.bench_memory import in_fresh_process
from model.lm.bench_report import _memory_table, _rss_target


def test_memory_is_measured_in_a_fresh_process(loaded: Any) -> None:
    m = in_fresh_process("int8", "float16", streams=3, max_tokens=4, cache=str(loaded.path.parent),
                         threads=1)
    assert (m["dtype"], m["kv_dtype"], m["streams"]) == ("int8", "float16", 3)
    # A fresh interpreter: it starts small, and the weights arrive with the load.
    assert 100 < m["rss_start_mb"] < m["rss_after_load_mb"] <= m["load_peak_mb"]
    assert m["serving_peak_mb"] >= m["rss_end_mb"] > 0 and m["kv_cache_mb"] > 0
    assert m["single_tok_s"] > 0 and m["streams_tok_s"] > 0


def test_the_rss_target_is_judged_on_the_engines_own_peak() -> None:
    row = {"dtype": "int8", "streams": 32, "rss_after_load_mb": 700.0, "load_peak_mb": 780.0,
           "kv_cache_mb": 630.0, "single_tok_s": 60.0, "streams_tok_s": 200.0, "streams_ttft_p95_s": 4.0}
    memory = [dict(row, kv_dtype="float32", serving_peak_mb=1600.0),
              dict(row, kv_dtype="float16", serving_peak_mb=1300.0)]
    results = {"memory": memory, "runs": [{"rss_engine_mb": 1800.0}]}
    assert _rss_target(results) == ("| engine RSS ≤ 1.5 GB | peak 1300 MB (int8, float16 KV cache, "
                                    "32 streams) | met |")
    memory[1]["serving_peak_mb"] = 1700.0
    assert _rss_target(results).endswith("| **missed** |") and "peak 1600 MB" in _rss_target(results)
    table = "\n".join(_memory_table(memory))
    assert "| int8 | float16 | 700 MB | 780 MB | 1700 MB | 630 MB | 60.0 | 200.0, 4.0 s |" in table
    assert _rss_target({"memory": [], "runs": [{"rss_engine_mb": 1400.0}]}).endswith("| met |")
