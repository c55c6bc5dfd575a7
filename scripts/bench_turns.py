"""Server-side latency of turns that need no language model, through a real server.

Starts the demo shop in this process (trained classifier, knowledge base, rasa-sdk
actions; language model off) on a free port against ``REDIS_URL`` or an embedded Redis,
then replays every customer turn of the shop's conversation tests, one customer at a
time, ``--rounds`` times. For each turn it records the time from sending the message to
its ``ack``, to the first reply frame and to the reply's ``stream_end``, as the client sees
them on loopback, and the server's own turn time from ``/metrics``. Prints a Markdown
table; ``--write`` puts it in docs/benchmarks.md under "Turn latency (no language model)".

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_turns.py --rounds 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tqdm import tqdm
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.brain import load_brain  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.embedded_redis import EmbeddedRedis  # noqa: E402
from bot.server import bound_port, running  # noqa: E402
from dialogue.convtest import conversation_files, load_tests  # noqa: E402
from model.bench_report import machine  # noqa: E402

SHOP = ROOT / "examples" / "shop"
SECTION = "## Turn latency (no language model)"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] * 1000


async def replay(port: int, turns: list[list[tuple[str, str | None]]], rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"ack": [], "first": [], "end": []}
    bar = tqdm(total=rounds * sum(len(t) for t in turns), desc="turns", unit="turn")
    for _ in range(rounds):
        for conversation in turns:
            async with connect(f"ws://127.0.0.1:{port}/ws/chat") as ws:
                await ws.send(json.dumps({"type": "start", "session_id": None, "token": None,
                                          "after": None, "customer": None}))
                json.loads(await ws.recv())
                for text, payload in conversation:
                    cid = uuid.uuid4().hex
                    frame = {"type": "message", "client_id": cid, "text": text} if payload is None else {
                        "type": "action", "client_id": cid, "payload": payload, "title": text}
                    sent = time.perf_counter()
                    await ws.send(json.dumps(frame))
                    first = last_end = None
                    while True:
                        try:
                            got = json.loads(await asyncio.wait_for(ws.recv(), 30))
                        except TimeoutError:
                            raise SystemExit(f"no answer within 30 s to {text!r}") from None
                        now = time.perf_counter()
                        if got["type"] == "error":
                            raise SystemExit(f"error frame for {text!r}: {got}")
                        if got["type"] == "ack":
                            out["ack"].append(now - sent)
                        elif got["type"] in ("stream_start", "message") and got.get("role") != "user":
                            first = first or now
                        elif got["type"] == "typing" and not got["on"]:
                            break  # the turn is stored: the typing indicator goes off last
                        if got["type"] == "stream_end":
                            last_end = now
                    if first is not None:
                        out["first"].append(first - sent)
                    if last_end is not None:  # the turn's last reply complete
                        out["end"].append(last_end - sent)
                    bar.update(1)
    bar.close()
    return out


def server_turn_seconds(metrics: str) -> tuple[float, int]:
    total = re.search(r"^deskmate_turn_seconds_sum(?:\{[^}]*\})? ([0-9.e+-]+)", metrics, re.M)
    count = re.search(r"^deskmate_turn_seconds_count(?:\{[^}]*\})? ([0-9.e+-]+)", metrics, re.M)
    return (float(total.group(1)) if total else 0.0), int(float(count.group(1))) if count else 0


async def main(args: argparse.Namespace) -> str:
    tests = load_tests(conversation_files(SHOP))
    turns = [[(t.text, t.payload) for t in test.turns] for test in tests]
    prefix = f"dm:bench-{uuid.uuid4().hex[:6]}:"
    os.environ["DESKMATE_ACTIONS_PREFIX"] = f"{prefix}shop:"
    # One client address sends every turn: the per-address limits would throttle it.
    settings = Settings(port=0, project=SHOP, key_prefix=prefix, lm_backend="none", rate_ip_messages=0,
                        max_connections_per_ip=0)
    brain = load_brain(settings)
    with contextlib.ExitStack() as stack:
        url = os.environ.get("REDIS_URL")
        if not url:
            url = stack.enter_context(EmbeddedRedis(Path(stack.enter_context(
                tempfile.TemporaryDirectory())))).url
        try:
            async with running(settings, redis_url=url, brain=brain) as (app, server):
                port = bound_port(server)
                await replay(port, turns[:2], 1)  # warm-up: first torch calls, first imports
                before = server_turn_seconds(app.metrics.render().decode())
                measured = await replay(port, turns, args.rounds)
                after = server_turn_seconds(app.metrics.render().decode())
        finally:  # the run's keys go, whatever happened
            import redis

            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(f"{prefix}*"))
            if keys:
                client.delete(*keys)
    server_mean = (after[0] - before[0]) / max(after[1] - before[1], 1) * 1000
    m = machine()
    rows = [f"| {name} | {len(v)} | {pct(v, 50):.1f} | {pct(v, 95):.1f} | {pct(v, 99):.1f} | "
            f"{statistics.fmean(v) * 1000:.1f} |" for name, v in
            (("message → ack", measured["ack"]), ("message → first reply frame", measured["first"]),
             ("message → last reply complete (`stream_end`)", measured["end"]))]
    return "\n".join([
        SECTION, "",
        f"Run: `python scripts/bench_turns.py --rounds {args.rounds}` on {m['date']} — {m['nproc']} CPU "
        f"cores ({m['cpu']}), {m['ram']} RAM, load {m['load_avg_1m_at_start']} at start, Redis "
        f"{'at REDIS_URL' if os.environ.get('REDIS_URL') else 'embedded'}. "
        "The demo shop's conversation-test turns, one customer at a time over loopback, through "
        "the real server: classifier, knowledge base, rasa-sdk actions and Redis; the language "
        "model is off (the turns that need it are measured by `deskmate bench lm`).", "",
        "| latency | turns | p50 ms | p95 ms | p99 ms | mean ms |", "|---|---|---|---|---|---|", *rows, "",
        f"Server-side turn time (lock, classifier, engine, one Redis write; `deskmate_turn_seconds`): "
        f"mean {server_mean:.1f} ms over {after[1] - before[1]} turns. Target: a turn that needs no "
        "language model answered within 50 ms p95.", ""])


def write(section: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text()
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    options = parser.parse_args()
    report = asyncio.run(main(options))
    print(report)
    if options.write:
        write(report)
