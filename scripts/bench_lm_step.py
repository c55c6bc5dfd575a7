"""Where one decode step of the engine's forward spends its time: a measurement.

Loads the default model as the engine does (``--dtype``, default int8), fills a slot
cache with 400 tokens a stream and times, on a worker thread with the engine's torch
threads, side by side in one process:

* a whole decode step (:meth:`model.lm.llama.LeanLlama.decode`) at 1 and 32 streams;
* the same step's matrix products alone (qkv, o, gate/up and down of all layers, with
  inputs of the step's shape), the vocabulary head alone, and the 30 attention calls
  over the cache alone;
* ``rest`` = the step minus those: norms, rotary embeddings, cache writes, residual
  adds, activation, and the per-operation cost of running ~800 small torch operations;
* the step again with every matrix product answered from a memo, so ``step - that`` is
  what the products cost inside a real step (alone, one kind's 30 matrices stay in the
  CPU caches between repetitions; inside a step they do not).

Prints one line per stream count (and KV-cache type); nothing is written.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_lm_step.py
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_lm_step.py --kv-dtypes float32 float16 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _ms(fn: Callable[[], object], reps: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1000


def _one(lean: Any, cfg: Any, n: int, reps: int, kv_dtype: str = "float32") -> str:
    """One line of figures for ``n`` streams."""
    import torch
    import torch.nn.functional as F

    from model.lm.kvcache import SlotKVCache

    kv = SlotKVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                     getattr(torch, kv_dtype), rows=n, columns=400 + 8 * reps)
    kv.n, kv.length, kv.start = n, 400, [0] * n
    ids = torch.full((n, 1), 100)

    def step() -> None:
        lean.decode(ids, kv.step_positions(), kv, None)
        kv.advance(1)

    def products(index: int, x: torch.Tensor) -> None:
        for layer in lean.layers:
            lean._linear(x, layer[index])

    def attention() -> None:     # as the step runs it: a float16 cache is widened first
        for i in range(len(lean.layers)):
            F.scaled_dot_product_attention(q, *kv.layer(i, 401, q.dtype), enable_gqa=True)

    whole = _ms(step, reps)
    hidden = torch.randn(n, 1, cfg.hidden_size)
    inner = torch.randn(n, 1, cfg.intermediate_size)
    parts = {name: _ms(lambda i=index, x=x: products(i, x), reps)
             for name, index, x in (("qkv", 2, hidden), ("o", 3, hidden), ("gate/up", 4, hidden),
                                    ("down", 5, inner))}
    head = _ms(lambda: lean._linear(hidden[:, -1], lean.head), reps)
    q = torch.randn(n, lean.heads, 1, lean.head_dim)
    attn = _ms(attention, reps)
    # The same step with every product answered from a memo of its first output: what the
    # products cost inside a step, where the other layers' weights have left the caches.
    real, memo = lean._linear, {}

    def remembered(x: torch.Tensor, weight: Any) -> torch.Tensor:
        key = (tuple(x.shape), id(weight))
        if key not in memo:
            memo[key] = real(x, weight)
        return memo[key]

    lean._linear = remembered
    try:
        without = _ms(step, reps)
    finally:
        del lean._linear
    total = sum(parts.values())
    listed = " ".join(f"{name} {ms:.2f}" for name, ms in parts.items())
    return (f"{n} stream(s), {kv_dtype} KV, 400 cached tokens: step {whole:.2f} ms = products {listed}"
            f" (sum {total:.2f})"
            f" + head {head:.2f} + attention {attn:.2f} + rest {whole - total - head - attn:.2f};"
            f" the step without its products {without:.2f} ms (products + head in the step:"
            f" {whole - without:.2f})")


def measure(dtype: str, streams: list[int], reps: int, kv_dtypes: tuple[str, ...] = ("float32",),
            rounds: int = 1) -> list[str]:
    from model.lm.engine import leave_cores_to_engine
    from model.lm.loader import load_model
    from model.threads import pin_torch_threads

    threads = len(os.sched_getaffinity(0))
    leave_cores_to_engine()
    loaded = load_model(dtype=dtype, threads=threads)
    lines: list[str] = []

    def work() -> None:
        import torch

        pin_torch_threads(threads)
        with torch.inference_mode():
            # Several cache types: interleaved, round after round, so drift hits each alike.
            lines.extend(f"{dtype}, {_one(loaded.lean, loaded.model.config, n, reps, kv)}"
                         for _ in range(rounds) for n in streams for kv in kv_dtypes)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="int8", choices=["int8", "float32"])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--kv-dtypes", nargs="+", default=["float32"], choices=["float32", "float16"],
                        help="the KV cache's types to time side by side")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    for line in measure(args.dtype, args.streams, args.reps, tuple(args.kv_dtypes), args.rounds):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
