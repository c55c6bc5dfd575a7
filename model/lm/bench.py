"""``deskmate bench lm``: throughput, time to first token and memory of the language model.

For each weight type (float32, int8): single-stream TTFT and tokens/s for a ~300-token
support prompt, then 1 / 8 / 32 concurrent streams through the async API and through
``deskmate model serve`` (real HTTP on a free port, client in the same process), and
llama-cpp-python on the same GGUF when it is installed. Writes the section
``## Language model (deskmate bench lm)`` of docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from model.lm.api import Message, Usage
from model.lm.bench_memory import in_fresh_process
from model.lm.bench_report import SECTION
from model.lm.loader import load_model
from model.threads import on_own_thread

PERSONA = ("You are Mia, the support assistant of Teapot & Co, an online shop for tea and teaware. "
           "Be warm, brief and precise. If you do not know an answer, offer to connect a human agent.")
FACTS = [
    "Orders over 40 EUR ship free within the EU; others pay 4.90 EUR.",
    "Parcels leave the warehouse in Leipzig within two working days.",
    "Returns are accepted for 30 days if the item is unused and in its box.",
    "Glass teapots carry a two-year warranty against manufacturing defects.",
    "Gift cards never expire and can be combined with discount codes.",
    "Customer service is open Monday to Friday, 9:00 to 18:00 CET.",
    "Loose-leaf tea is packed in resealable bags of 100 g and 250 g.",
    "Express delivery costs 9.90 EUR and arrives the next working day.",
]
HISTORY: list[Message] = [
    {"role": "user", "content": "Hi, I ordered a glass teapot last week and it has not arrived yet."},
    {"role": "assistant", "content": "I am sorry to hear that! Could you tell me your order number?"},
    {"role": "user", "content": "It is 58213. I also wanted to ask whether I can still add a gift card."},
    {"role": "assistant", "content": "Thank you. Order 58213 left Leipzig on Tuesday with DHL."},
]


def short_prompt(variant: int = 0) -> list[Message]:
    """A ~40-token chat turn: shows steady-state batching when prefill is not the bottleneck."""
    return [{"role": "user", "content": f"Customer {variant}: hi! Tell me about your teapots."}]


def fresh_customer_prompt(variant: int = 0) -> list[Message]:
    """:func:`support_prompt`'s system message (persona and facts, ~170 tokens) with a
    conversation of this customer's own: what a prefix cache can share between customers."""
    system, *_ = support_prompt(variant)
    order = str(58213 + variant)
    history: list[Message] = [{"role": m["role"], "content": m["content"].replace("58213", order)}
                              for m in HISTORY]
    history[0] = {"role": "user", "content": f"Hi, this is customer {variant}. " + history[0]["content"][4:]}
    question = "Can express delivery still get it to me by Saturday?"
    return [system, *history, {"role": "user", "content": question}]


def support_prompt(variant: int = 0) -> list[Message]:
    """A realistic ~300-token conversation (persona, knowledge, history, question)."""
    system = PERSONA + "\n\nUse these facts when they help:\n" + "\n".join(f"- {f}" for f in FACTS)
    question = (f"Customer {variant}: the tracking page shows no update since Wednesday and I need the "
                "teapot for a birthday on Saturday. What are my options, and can express still help?")
    return [{"role": "system", "content": system}, *HISTORY, {"role": "user", "content": question}]


@dataclass(frozen=True)
class BenchOptions:
    """What to run (defaults written out)."""

    model: str | None = None            # see model.lm.loader.resolve_source
    cache: str | None = None
    dtype: str | None = None            # one weight type; None = float32 and int8
    threads: int | None = None          # torch threads; None = all cores
    concurrency: tuple[int, ...] = (1, 8, 32)
    max_tokens: int = 64                # generated per stream (EOS ignored, so all are equal)
    quick: bool = False                 # smoke run: fewer, shorter runs


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 2**20, 1),
            "torch_threads": len(os.sched_getaffinity(0)), "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process, MB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


StreamFn = Callable[[list[Message], Usage], AsyncIterator[str]]


async def run_streams(stream: StreamFn, concurrency: int,
                      prompt: Callable[[int], list[Message]] = support_prompt) -> dict[str, float]:
    """``concurrency`` streams started at once: aggregate tokens/s (whole run, and the
    decode phase after the last stream got its first token) and TTFT percentiles."""
    usages = [Usage() for _ in range(concurrency)]
    ttfts: list[float] = [0.0] * concurrency

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        async for _ in stream(prompt(i), usages[i]):
            if not ttfts[i]:
                ttfts[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(concurrency)])
    wall = time.perf_counter() - t0
    tokens = sum(u.completion_tokens for u in usages)
    ttfts.sort()
    decode = (tokens - concurrency) / max(wall - ttfts[-1], 1e-9)
    return {"streams": concurrency, "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
            "decode_tok_s": decode,
            "ttft_p50_s": statistics.median(ttfts),
            "ttft_p95_s": ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))],
            "prompt_tokens": usages[0].prompt_tokens,
            "cached_tokens": statistics.median(u.cached_tokens for u in usages)}


async def single_stream(stream: StreamFn, repeats: int,
                        prompt_of: Callable[[int], list[Message]] = lambda _: support_prompt(0)
                        ) -> dict[str, float]:
    """One stream at a time: TTFT and decode tokens/s after the first token (medians)."""
    ttft, rate, prompt = [], [], 0
    for i in range(repeats):
        usage, t0, first = Usage(), time.perf_counter(), 0.0
        async for _ in stream(prompt_of(i + 1), usage):
            first = first or time.perf_counter() - t0
        total = time.perf_counter() - t0
        ttft.append(first)
        rate.append((usage.completion_tokens - 1) / max(total - first, 1e-9))
        prompt = usage.prompt_tokens
    return {"ttft_s": statistics.median(ttft), "tok_s": statistics.median(rate), "prompt_tokens": prompt}


async def bench_engine(opts: BenchOptions, dtype: str, bar: tqdm) -> dict[str, Any]:
    from model.lm.engine import Engine, EngineConfig
    from model.lm.remote import RemoteChatModel, RemoteConfig
    from model.lm.serve import running

    # Every stream pays its whole prefill here; the prefix cache has rows of its own below.
    engine = Engine.load(opts.model, cache=opts.cache, dtype=dtype, threads=opts.threads,
                         config=EngineConfig(prefix_cache_mb=0))
    out: dict[str, Any] = {"dtype": dtype, "rss_after_load_mb": rss_mb()[0]}
    n = opts.max_tokens

    def local(messages: list[Message], usage: Usage) -> AsyncIterator[str]:
        return engine.stream(messages, max_tokens=n, usage=usage, ignore_eos=True)

    try:
        await single_stream(local, 1)                                   # warm-up
        out["single"] = await single_stream(local, 2 if opts.quick else 3)
        bar.update(1)
        out["engine"] = []
        for c in opts.concurrency:
            bar.set_postfix_str(f"{dtype} api x{c}")
            out["engine"].append(await run_streams(local, c))
            bar.update(1)
        bar.set_postfix_str(f"{dtype} api x{max(opts.concurrency)} short prompt")
        out["engine_short"] = await run_streams(local, max(opts.concurrency), short_prompt)
        bar.update(1)
        out["rss_engine_mb"] = rss_mb()[0]
        out["kv_cache_mb"] = engine.kv.nbytes() / 2**20
        async with running(engine, port=0) as port:
            remote = RemoteChatModel(RemoteConfig(base_url=f"http://127.0.0.1:{port}/v1",
                                                  model=engine.name, read_timeout=600))

            def http(messages: list[Message], usage: Usage) -> AsyncIterator[str]:
                return remote.stream(messages, max_tokens=n, usage=usage, ignore_eos=True)

            out["serve"] = []
            for c in opts.concurrency:
                bar.set_postfix_str(f"{dtype} serve x{c}")
                out["serve"].append(await run_streams(http, c))
                bar.update(1)
    finally:
        engine.close()
        gc.collect()
    if engine.lean is not None:
        bar.set_postfix_str(f"{dtype} prefix cache")
        out["prefix"] = await bench_prefix_cache(engine.loaded, n, max(opts.concurrency), opts.quick)
    out["peak_rss_mb"] = rss_mb()[1]
    if not opts.quick and engine.lean is not None:
        # After close: the engine thread's OpenMP team is gone, so this one runs alone.
        bar.set_postfix_str(f"{dtype} forward comparison")
        model = engine.model
        if dtype == "int8":   # the engine's int8 keeps no transformers weights: load them quantised
            model = load_model(opts.model, cache=opts.cache, dtype=dtype, threads=opts.threads,
                               forward="transformers").model
        out["forward_compare"] = on_own_thread(compare_forwards, model, engine.lean,
                                               threads=engine.loaded.threads)
    return out


async def bench_prefix_cache(loaded: Any, n: int, concurrency: int, quick: bool) -> dict[str, Any]:
    """New customers whose prompts share the system message, with the prefix cache on
    (primed by one earlier customer): one at a time, then ``concurrency`` at once."""
    from model.lm.engine import Engine

    engine = Engine(loaded)

    def local(messages: list[Message], usage: Usage) -> AsyncIterator[str]:
        return engine.stream(messages, max_tokens=n, usage=usage, ignore_eos=True)

    try:
        async for _ in local(fresh_customer_prompt(0), Usage()):         # primes the cache
            pass
        single = await single_stream(local, 2 if quick else 3, fresh_customer_prompt)
        usage = Usage()
        async for _ in local(fresh_customer_prompt(99), usage):
            pass
        single["cached_tokens"] = usage.cached_tokens
        many = await run_streams(local, concurrency, lambda i: fresh_customer_prompt(100 + i))
        return {"single": single, "streams": many}
    finally:
        engine.close()


def compare_forwards(model: Any, lean: Any, cached: int = 400, steps: int = 5) -> list[dict[str, float]]:
    """One decode step at 1 and 32 streams with ``cached`` tokens each, same weights, same
    random KV: transformers' forward of ``model`` with one batch-wide ``DynamicCache``
    (``torch.cat`` every step), the same with :class:`SlotKVCache`, and the engine's lean
    forward ``lean`` (:mod:`model.lm.llama`) with :class:`SlotKVCache`."""
    return [_decode_step_times(model, lean, batch, cached, steps) for batch in (1, 32)]


def _decode_step_times(model: Any, lean: Any, batch: int, cached: int, steps: int) -> dict[str, float]:
    import torch
    from transformers import DynamicCache

    from model.lm.kvcache import SlotKVCache

    cfg = model.config
    layers, heads, dim = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    dtype = model.dtype        # the cache holds what the attention computes in (int8: float32)
    ids = torch.randint(0, 1000, (batch, 1))
    shape = (batch, heads, cached, dim)
    kv = [(torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)) for _ in range(layers)]

    def slot_cache() -> SlotKVCache:
        slot = SlotKVCache(layers, heads, dim, dtype, rows=batch, columns=cached + steps + 2)
        for i, (k, v) in enumerate(kv):
            slot.keys[i][:, :, :cached] = k
            slot.values[i][:, :, :cached] = v
        slot.n, slot.length, slot.start = batch, cached, [0] * batch
        return slot

    def timed(step: Callable[[int], Any]) -> float:
        step(0)                                   # warm-up, not counted
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            step(s)
        return (time.perf_counter() - t0) / steps * 1000

    dynamic = DynamicCache(config=cfg)
    for i, (k, v) in enumerate(kv):
        dynamic.update(k.clone(), v.clone(), i)
    mask = torch.ones(batch, cached + steps + 1, dtype=torch.long)
    slot, own = slot_cache(), slot_cache()

    def hf_dynamic(s: int) -> None:
        model(input_ids=ids, attention_mask=mask[:, :cached + s + 1], cache=dynamic, use_cache=True,
              position_ids=torch.full((batch, 1), cached + s))

    def hf_slot(_: int) -> None:
        step_mask, positions = slot.step_inputs()
        model(input_ids=ids, attention_mask=step_mask, position_ids=positions, cache=slot.as_cache(),
              use_cache=True)
        slot.advance(1)

    def lean_slot(_: int) -> None:
        positions = own.step_positions()
        lean.decode(ids, positions, own, None)
        own.advance(1)

    with torch.inference_mode():
        times = {name: timed(step) for name, step in
                 (("dynamic_ms", hf_dynamic), ("slot_ms", hf_slot), ("lean_ms", lean_slot))}
    return {"batch": batch, "cached": cached, **times}


def int8_agreement(opts: BenchOptions) -> list[float]:
    """Greedy next-token agreement of int8 with float32 on three support prompts."""
    from model.lm.llama import greedy_agreement

    f32 = load_model(opts.model, cache=opts.cache, dtype="float32", threads=opts.threads)
    int8 = load_model(opts.model, cache=opts.cache, dtype="int8", threads=opts.threads)
    if f32.lean is None or int8.lean is None:
        return []
    tok = f32.tokenizer
    prompts = [tok(tok.apply_chat_template(support_prompt(i), tokenize=False), add_special_tokens=False)
               ["input_ids"] for i in range(3)]
    return on_own_thread(lambda: [greedy_agreement(f32.lean, int8.lean, p) for p in prompts],
                         threads=f32.threads)


def bench_llamacpp(opts: BenchOptions, bar: tqdm) -> dict[str, Any] | None:
    """llama-cpp-python on the same GGUF (one sequence at a time), when installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from model.lm.loader import resolve_source

    path = resolve_source(opts.model)
    if path.suffix != ".gguf":
        return None
    threads = opts.threads or os.cpu_count() or 1
    # Any: llama-cpp-python's TypedDicts do not cover our plain message dicts
    llm: Any = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, verbose=False)
    runs = []
    for i in range(1 if opts.quick else 3):
        # Forget the previous prompt: llama-cpp-python reuses a cached common prefix, which
        # would make the later runs' TTFT a measure of the cache, not of prefill.
        llm.reset()
        t0, first, count = time.perf_counter(), 0.0, 0
        for chunk in llm.create_chat_completion(support_prompt(i), max_tokens=opts.max_tokens,
                                                temperature=0.0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter() - t0
                count += 1
        total = time.perf_counter() - t0
        runs.append((first, (count - 1) / max(total - first, 1e-9)))
    bar.update(1)
    return {"threads": threads, "ttft_s": statistics.median(r[0] for r in runs),
            "tok_s": statistics.median(r[1] for r in runs)}


def run_bench(opts: BenchOptions, *, out: Path | None, json_out: Path | None = None) -> dict[str, Any]:
    """Run everything; write the markdown section to ``out`` (and raw figures to ``json_out``)."""
    from model.lm.engine import leave_cores_to_engine

    leave_cores_to_engine()   # the engines' threads are the ones that run torch in parallel
    if opts.quick:
        opts = BenchOptions(**{**opts.__dict__, "concurrency": opts.concurrency[:2],
                               "max_tokens": min(opts.max_tokens, 16), "dtype": opts.dtype or "float32"})
    machine = machine_info()
    machine["torch_threads"] = opts.threads or machine["torch_threads"]
    # int8 first: the process is fresh then, so its RSS is the engine's own.
    dtypes = [opts.dtype] if opts.dtype else ["int8", "float32"]
    memory = [] if opts.quick else [(d, kv) for d in dtypes
                                    for kv in ((None, "float16") if d == "int8" else (None,))]
    steps = len(dtypes) * (2 + 2 * len(opts.concurrency)) + 1 + len(memory)
    results: dict[str, Any] = {"machine": machine, "options": opts.__dict__, "runs": []}
    with tqdm(total=steps, desc="bench lm", unit="run") as bar:
        for dtype in dtypes:
            results["runs"].append(asyncio.run(bench_engine(opts, dtype, bar)))
        if not opts.dtype and not opts.quick:
            bar.set_postfix_str("int8 agreement")
            results["int8_agreement"] = int8_agreement(opts)
        bar.set_postfix_str("llama.cpp")
        results["llamacpp"] = bench_llamacpp(opts, bar)
        if results["llamacpp"] is None:
            bar.update(1)
        results["memory"] = []
        for dtype, kv_dtype in memory:
            bar.set_postfix_str(f"memory {dtype} kv {kv_dtype or 'default'}")
            results["memory"].append(in_fresh_process(
                dtype, kv_dtype, max(opts.concurrency), opts.max_tokens, opts.model,
                None if opts.cache is None else str(opts.cache), opts.threads))
            bar.update(1)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2, default=str))
    from model.lm.bench_report import render, write_section

    text = render(results)
    print(text)
    if out is not None:
        write_section(out, SECTION, text)
    return results
