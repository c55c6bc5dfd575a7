"""The engine's memory, measured in a process of its own.

``deskmate bench lm`` runs every configuration in one process, so its RSS figures carry
what earlier configurations left behind. This module loads one engine the way
``deskmate model serve`` does (prompt-prefix cache on) in a fresh interpreter, runs one
stream and then ``--streams`` concurrent customers (the support prompt, the same system
message for all, a conversation of their own), and prints one JSON object: resident
memory after loading, the peak while loading, the peak while serving (the kernel's
high-water mark is reset after loading), the KV cache and prefix cache sizes, and the
throughput of the same runs.

    python -m model.lm.bench_memory --dtype int8 --kv-dtype float16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _reset_peak() -> bool:
    """Restart the kernel's RSS high-water mark (VmHWM) from the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(dtype: str, kv_dtype: str | None, streams: int, max_tokens: int,
            model: str | None = None, cache: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Load one engine here and measure it (call in a fresh process)."""
    from model.lm.api import Message, Usage
    from model.lm.bench import fresh_customer_prompt, rss_mb, run_streams, single_stream
    from model.lm.engine import Engine, EngineConfig, leave_cores_to_engine

    leave_cores_to_engine()
    start = rss_mb()[0]
    engine = Engine.load(model, cache=cache, dtype=dtype, threads=threads,
                         config=EngineConfig(kv_dtype=kv_dtype))
    loaded, load_peak = rss_mb()
    peak_reset = _reset_peak()

    def local(messages: list[Message], usage: Usage) -> AsyncIterator[str]:
        return engine.stream(messages, max_tokens=max_tokens, usage=usage, ignore_eos=True)

    async def runs() -> tuple[dict[str, float], dict[str, float]]:
        one = await single_stream(local, 2, fresh_customer_prompt)
        many = await run_streams(local, streams, lambda i: fresh_customer_prompt(100 + i))
        return one, many

    try:
        single, many = asyncio.run(runs())
        end, peak = rss_mb()
        return {"dtype": dtype, "kv_dtype": kv_dtype or str(engine.kv.dtype).removeprefix("torch."),
                "streams": streams, "rss_start_mb": start, "rss_after_load_mb": loaded,
                "load_peak_mb": load_peak, "serving_peak_mb": peak if peak_reset else None,
                "rss_end_mb": end, "kv_cache_mb": engine.kv.nbytes() / 2**20,
                "prefix_cache_mb": engine.prefixes.nbytes / 2**20 if engine.prefixes else 0.0,
                "load_seconds": engine.loaded.load_seconds,
                "single_tok_s": single["tok_s"], "single_ttft_s": single["ttft_s"],
                "streams_tok_s": many["tok_s"], "streams_ttft_p95_s": many["ttft_p95_s"]}
    finally:
        engine.close()


def in_fresh_process(dtype: str, kv_dtype: str | None, streams: int, max_tokens: int,
                     model: str | None = None, cache: str | None = None,
                     threads: int | None = None) -> dict[str, Any]:
    """:func:`measure` in a new interpreter; its JSON result."""
    cmd = [sys.executable, "-m", "model.lm.bench_memory", "--dtype", dtype, "--streams", str(streams),
           "--max-tokens", str(max_tokens)]
    for flag, value in (("--kv-dtype", kv_dtype), ("--model", model), ("--cache", cache),
                        ("--threads", threads)):
        if value is not None:
            cmd += [flag, str(value)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.lm.bench_memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="int8", choices=["int8", "float32", "bfloat16"])
    parser.add_argument("--kv-dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default=None)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = measure(args.dtype, args.kv_dtype, args.streams, args.max_tokens, args.model, args.cache,
                     args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
