"""Why the language model runs on the only OpenMP team of the process: a measurement.

Runs the engine's forward (``--dtype``, default int8) on a worker thread, as the engine
does, in two fresh processes side by side:

* ``engine team only``: the main thread keeps to one torch thread
  (``leave_cores_to_engine``), so the worker's OpenMP team is the only one;
* ``main thread has a team too``: the main thread first runs one parallel torch op, so
  it keeps a team of its own, as it did when the model was loaded on the event loop's
  thread.

Each prints decode-step times at 1, 8 and 32 streams (400 cached tokens) and one
358-token prefill. Prints a Markdown table; nothing is written.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_lm_threads.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

CASES = {"engine team only": "alone", "main thread has a team too": "shared"}


def measure(dtype: str, case: str) -> dict[str, float]:
    import torch

    from model.lm.engine import leave_cores_to_engine
    from model.lm.kvcache import SlotKVCache
    from model.lm.loader import load_model
    from model.threads import pin_torch_threads

    threads = len(os.sched_getaffinity(0))
    if case == "alone":
        leave_cores_to_engine()
    else:
        torch.set_num_threads(threads)
        torch.ones(1 << 22).add_(1)          # a parallel op: the main thread keeps a team
    loaded = load_model(dtype=dtype, threads=threads)
    cfg = loaded.model.config
    out: dict[str, float] = {}

    def work() -> None:
        pin_torch_threads(threads)
        with torch.inference_mode():
            for n in (1, 8, 32):
                kv = SlotKVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, torch.float32,
                                 rows=n, columns=448)
                kv.n, kv.length, kv.start = n, 400, [0] * n
                ids = torch.full((n, 1), 100)
                for step in range(13):
                    if step == 3:                                   # three warm-up steps
                        t0 = time.perf_counter()
                    loaded.lean.decode(ids, kv.step_positions(), kv, None)
                    kv.advance(1)
                out[f"decode_{n}_ms"] = (time.perf_counter() - t0) / 10 * 1000
            prompt = torch.randint(0, 1000, (1, 358))
            loaded.lean.prefill(prompt, torch.arange(358)[None], None)
            t0 = time.perf_counter()
            for _ in range(3):
                loaded.lean.prefill(prompt, torch.arange(358)[None], None)
            out["prefill_ms"] = (time.perf_counter() - t0) / 3 * 1000

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="int8", choices=["int8", "float32"])
    parser.add_argument("--case", choices=sorted(CASES.values()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.dtype, args.case)))
        return 0
    rows = {}
    for label, case in CASES.items():
        done = subprocess.run([sys.executable, __file__, "--dtype", args.dtype, "--case", case],
                              capture_output=True, text=True, check=True)
        rows[label] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"| {args.dtype}, torch on a worker thread | decode 1 stream | 8 streams | 32 streams | "
          "prefill 358 tokens |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['decode_1_ms']:.1f} ms | {r['decode_8_ms']:.1f} ms | "
              f"{r['decode_32_ms']:.1f} ms | {r['prefill_ms']:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
