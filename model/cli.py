"""The model sub-commands of ``deskmate``: train, nlu parse, eval, bench nlu.

Heavy imports (torch, transformers) happen inside the handlers, so building the
parser stays cheap for every other command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bot.cli_bench import add_bench_load
from bot.errors import DeskmateError, ProjectError
from model.lm.cli import add_bench_lm, add_model_commands

DEFAULT_DATA = Path("../shared/data")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train``, ``nlu``, ``eval`` and ``bench`` to the ``deskmate`` parser."""
    train = subparsers.add_parser("train", help="train the bot's intent model (or sentiment)")
    # None, not ".": `train sentiment` must tell "--project ." from no --project at all.
    train.add_argument("--project", type=Path, default=None, help="bot project (default .)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=cmd_train)
    train_sub = train.add_subparsers(dest="train_target", metavar="TARGET")
    sent = train_sub.add_parser("sentiment", help="retrain the sentiment model")
    sent.add_argument("--data", type=Path, nargs="+", required=True, metavar="CSV",
                      help="text,label CSVs (labels 0/1 or negative/neutral/positive); a file "
                           "with no neutral rows teaches negative-vs-positive only")
    # SUPPRESS: given before or after `sentiment`, the option keeps its value (a default
    # here would overwrite the one `train` parsed).
    sent.add_argument("--project", type=Path, default=argparse.SUPPRESS,
                      help="bot project: the model goes to DIR/models/sentiment, which that bot "
                           "loads instead of the shipped default")
    sent.add_argument("--out", type=Path, default=None,
                      help="artifact folder (default: DIR/models/sentiment of --project; one of "
                           "the two is required)")
    sent.add_argument("--top-layers", type=int, default=None,
                      help="encoder layers with LoRA adapters (default 3, as shipped; "
                           "0 = a head over the frozen encoder: fastest, least accurate)")
    sent.add_argument("--rank", type=int, default=None, help="LoRA rank (default 16, as shipped)")
    sent.add_argument("--epochs", type=int, default=0,
                      help="passes over the data (default: from its size, 2 for SST-2's 67 k rows)")
    sent.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                      help="no progress bars")
    sent.set_defaults(handler=cmd_train_sentiment)

    nlu = subparsers.add_parser("nlu", help="natural-language understanding")
    nlu_sub = nlu.add_subparsers(dest="nlu_command", metavar="COMMAND", required=True)
    parse = nlu_sub.add_parser("parse", help="intent and sentiment of a text, as JSON")
    parse.add_argument("text")
    parse.add_argument("--project", type=Path, default=None,
                       help="bot project whose intent model to use (default: sentiment only)")
    parse.set_defaults(handler=cmd_parse)

    ev = subparsers.add_parser("eval", help="evaluate the intent or sentiment model")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    ei = ev_sub.add_parser("intents", help="accuracy, macro-F1, per-intent scores, OOS")
    ei.add_argument("--test", type=Path, required=True, metavar="CSV")
    source = ei.add_mutually_exclusive_group(required=True)
    source.add_argument("--train", type=Path, metavar="CSV", help="train on this file first")
    source.add_argument("--project", type=Path, metavar="DIR", help="the bot's trained model")
    ei.add_argument("--json", type=Path, metavar="FILE", dest="json_out")
    ei.add_argument("--plot", type=Path, metavar="FILE.png")
    ei.add_argument("--quiet", action="store_true", help="no progress bars")
    ei.set_defaults(handler=cmd_eval_intents)
    es = ev_sub.add_parser("sentiment", help="accuracy and macro-F1 of the sentiment model")
    es.add_argument("--test", type=Path, required=True, metavar="CSV")
    es.add_argument("--train", type=Path, nargs="+", metavar="CSV",
                    help="train a fresh model on these first (default: the shipped one)")
    es.add_argument("--json", type=Path, metavar="FILE", dest="json_out")
    es.add_argument("--quiet", action="store_true", help="no progress bars")
    es.set_defaults(handler=cmd_eval_sentiment)

    bench = subparsers.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    bn = bench_sub.add_parser("nlu", help="intent and sentiment benchmark vs baselines")
    bn.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help=f"shared data folder (default {DEFAULT_DATA})")
    bn.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    bn.add_argument("--json", type=Path, metavar="FILE", dest="json_out",
                    help="also write the raw figures as JSON")
    bn.add_argument("--only", nargs="+", metavar="NAME",
                    help="subset: banking77 hwu64 sofmattress curekart sst2 tweet_eval latency")
    bn.set_defaults(handler=cmd_bench_nlu)
    add_bench_lm(bench_sub)  # deskmate bench lm
    add_bench_load(bench_sub)  # deskmate bench load (bot/cli_bench.py)
    add_model_commands(subparsers)  # deskmate model serve


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def cmd_train(args: argparse.Namespace) -> int:
    """``deskmate train [--project DIR]``: train and write ``<project>/models/intent``."""
    from model.training import train_project

    project = args.project or Path(".")
    meta = train_project(project, progress=not args.quiet)
    print(
        f"trained {len(meta.labels)} intents on {meta.num_examples} examples in "
        f"{meta.train_seconds:.1f}s (OOS threshold {meta.oos_threshold}) -> "
        f"{project / 'models' / 'intent'}"
    )
    from model.classifier import load_project_classifier
    from model.runtime import cache_dir, runtime_name

    if runtime_name() == "onnx":
        # Build the serving graph now, so that `deskmate run` starts without exporting it.
        started = time.perf_counter()
        load_project_classifier(project)
        print(f"serving graph ready in {time.perf_counter() - started:.1f}s -> {cache_dir()}")
    return 0


def cmd_train_sentiment(args: argparse.Namespace) -> int:
    """``deskmate train sentiment --data CSV [CSV...] (--project DIR | --out DIR)``.

    The model goes to ``--out``, else to ``DIR/models/sentiment`` of ``--project``, where
    that bot's classifier looks first. Neither given is an error rather than a rewrite of
    the shipped default: that model is every other bot's on this install, and a package
    upgrade would quietly bring the old one back. ``--out model/artifacts/sentiment`` (or
    ``scripts/train_sentiment.py``) replaces it on purpose."""
    from model.sentiment import DEFAULT_DIR, load_sentiment_files, recipe, train_sentiment

    if args.out is not None:
        out = args.out
    elif args.project is not None:
        if not args.project.is_dir():
            raise ProjectError(str(args.project), "no such project directory")
        out = args.project / "models" / "sentiment"
    else:
        raise DeskmateError(
            "train sentiment: say where the model goes: --project DIR (DIR/models/sentiment, "
            f"which that bot loads) or --out DIR (--out {DEFAULT_DIR} replaces the shipped "
            "default of every bot without its own)"
        )
    examples, polarity_only = load_sentiment_files(args.data)
    chosen = {"top_layers": args.top_layers, "rank": args.rank}
    config = recipe(len(examples), epochs=args.epochs, **{k: v for k, v in chosen.items() if v is not None})
    meta = train_sentiment(examples, out, config=config, polarity_only=polarity_only,
                           sources=[str(p) for p in args.data], progress=not args.quiet)
    print(f"trained sentiment {meta.labels} on {meta.num_examples} examples "
          f"in {meta.train_seconds:.1f}s -> {out}")
    return 0


def cmd_parse(args: argparse.Namespace) -> int:
    """``deskmate nlu parse TEXT [--project DIR]``: one JSON object on stdout."""
    from model.classifier import load_project_classifier, load_sentiment_only

    if args.project is not None:
        if not args.project.is_dir():
            raise ProjectError(str(args.project), "no such project directory")
        classifier = load_project_classifier(args.project)
    else:
        classifier = load_sentiment_only()
    print(json.dumps(classifier.parse(args.text), ensure_ascii=False))
    return 0


def cmd_eval_intents(args: argparse.Namespace) -> int:
    """``deskmate eval intents``: metrics JSON on stdout (and --json / --plot files)."""
    from model.evaluate import eval_intents
    from model.metrics import summary_line

    report = eval_intents(
        args.test, train=args.train, project=args.project, json_out=args.json_out,
        plot=args.plot, progress=not args.quiet,
    )
    _print_json({k: v for k, v in report.items() if k not in ("confusion_matrix", "labels")})
    print(summary_line(report), file=sys.stderr)
    return 0


def cmd_eval_sentiment(args: argparse.Namespace) -> int:
    """``deskmate eval sentiment``: metrics JSON on stdout (and --json)."""
    from model.evaluate import eval_sentiment
    from model.metrics import summary_line

    report = eval_sentiment(
        args.test, train=args.train, json_out=args.json_out, progress=not args.quiet
    )
    _print_json({k: v for k, v in report.items() if k not in ("confusion_matrix", "labels")})
    print(summary_line(report), file=sys.stderr)
    return 0


def cmd_bench_nlu(args: argparse.Namespace) -> int:
    """``deskmate bench nlu``: run the benchmark, write docs/benchmarks.md."""
    from model.bench import run_bench

    if not args.data.is_dir():
        raise DeskmateError(f"{args.data}: no such data folder (see --data)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_bench(args.data, args.out, json_out=args.json_out, only=args.only)
    print(f"wrote {args.out}")
    return 0
