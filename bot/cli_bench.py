"""``deskmate bench load``: registered under the ``bench`` command that model/cli.py owns."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.files import check_out

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m|min)?\s*$")
QUICK = {"connections": 100, "hold": 5.0, "turns_per_second": 10.0, "duration": 5.0, "lm_streams": 0}


def duration(text: str) -> float:
    """``20s``, ``1.5m``, ``500ms`` or a plain number of seconds."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 20s, 2m or 500ms)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0}[unit]


def add_bench_load(bench_subparsers: SubParsers) -> None:
    """Add ``load`` under the existing ``bench`` parser."""
    p = bench_subparsers.add_parser(
        "load", help="many websocket customers against deskmate (connections, turns/s, LM streams)",
        description="Drive deskmate with websocket customers: --connections N held for --hold; "
                    "--turns-per-second R for --duration (language model off); --lm-streams N "
                    "answered by the language model. With none of the three, all three run at the "
                    "issue's targets. Checks every acknowledged message in Redis afterwards, compares "
                    "with a bare websockets echo server, and writes the 'Load' section of --out.")
    p.add_argument("--url", action="append", default=[], metavar="WS_URL",
                   help="a running deskmate (ws://host:port); repeat for several. Each customer sends "
                        "its own X-Forwarded-For, so run it with DESKMATE_TRUST_PROXY=true (or raise "
                        "DESKMATE_MAX_CONNECTIONS_PER_IP). Default: start --servers fresh `deskmate run` "
                        "processes for each scenario")
    p.add_argument("--servers", type=int, default=1, help="deskmate processes to start (default 1)")
    p.add_argument("--project", type=Path, default=Path("examples/shop"),
                   help="bot project the started servers run, and whose tests and generative "
                        "intents are replayed (default examples/shop; run `make prepare` first)")
    p.add_argument("--redis-url", help="Redis (default $DESKMATE_REDIS_URL or $REDIS_URL, else an "
                                       "embedded Redis for the run)")
    p.add_argument("--key-prefix", help="with --url: the servers' DESKMATE_KEY_PREFIX, for the check")
    p.add_argument("--server-pid", type=int, action="append", default=[], metavar="PID",
                   help="with --url: a server process whose CPU and memory to report")
    p.add_argument("--connections", type=int, default=0, help="customers connected and held (target 2000)")
    p.add_argument("--hold", type=duration, default=20.0, help="how long they are held (default 20s)")
    p.add_argument("--turns-per-second", type=float, default=0.0,
                   help="open-loop rate of customer turns, language model off (target 200)")
    p.add_argument("--duration", type=duration, default=30.0, help="how long turns are sent (default 30s)")
    p.add_argument("--lm-streams", type=int, default=0,
                   help="conversations answered by the language model at once (target 32)")
    p.add_argument("--lm-turns", type=int, default=2, help="turns each LM conversation sends (default 2)")
    p.add_argument("--drain", type=duration, default=30.0,
                   help="longest wait for answers after the last turn (default 30s)")
    p.add_argument("--no-echo", dest="echo", action="store_false",
                   help="skip the echo-server comparison")
    p.add_argument("--data", type=Path, default=Path("../shared/data"),
                   help="shared data folder with dialogues/star (default ../shared/data)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="run the started servers under pyinstrument; text reports go to DIR")
    p.add_argument("--logs", type=Path, metavar="DIR", help="keep the started servers' logs in DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"),
                   help="markdown file whose 'Load' section is replaced (default docs/benchmarks.md)")
    p.add_argument("--json", type=Path, dest="json_out", metavar="FILE", help="also write the raw figures")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke run (100 connections 5s, 10 turns/s 5s); writes nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_bench_load)


def cmd_bench_load(args: argparse.Namespace) -> int:
    from bot.loadgen import LoadOptions, run_load
    from bot.loadgen_report import (
        SECTION,
        TARGET_CONNECTIONS,
        TARGET_LM_STREAMS,
        TARGET_RATE,
        render,
    )

    # Before a run of minutes, not after it: the default --out is relative to the working
    # directory, and outside the repository it has no docs/ folder.
    if not args.quick:
        check_out(args.out, "--out")
    if args.json_out is not None:
        check_out(args.json_out, "--json")
    counts: dict[str, Any] = {"connections": args.connections, "turns_per_second": args.turns_per_second,
                              "lm_streams": args.lm_streams}
    if args.quick:
        counts = counts if any(counts.values()) else {k: QUICK[k] for k in counts}
        args.hold, args.duration = min(args.hold, QUICK["hold"]), min(args.duration, QUICK["duration"])
    elif not any(counts.values()):
        counts = {"connections": TARGET_CONNECTIONS, "turns_per_second": TARGET_RATE,
                  "lm_streams": TARGET_LM_STREAMS}
    opts = LoadOptions(
        urls=tuple(args.url), servers=args.servers, project=args.project, redis_url=args.redis_url,
        key_prefix=args.key_prefix, hold=args.hold, duration=args.duration, lm_turns=args.lm_turns,
        echo=args.echo, data=args.data, drain=args.drain, seed=args.seed,
        server_pids=tuple(args.server_pid), profile=args.profile, logs=args.logs,
        progress=not args.quiet, **counts)
    results = run_load(opts)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=2, default=str))
    text = render(results)
    print(text)
    if not args.quick:
        from model.lm.bench_report import write_section

        write_section(args.out, SECTION, text)
        print(f"wrote the '{SECTION.removeprefix('## ')}' section of {args.out}")
    return 0
