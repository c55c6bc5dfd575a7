"""``deskmate report``: conversation insights as one HTML page (and JSON).

Reads the conversations stored in Redis (the Redis ``deskmate run`` uses, or
``--redis-url``), counts them (``bot.insights``), clusters the questions the bot
did not understand with the shared encoder (``model.insights``) and writes a
self-contained HTML page (``bot.report_html``). See docs/insights.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import time
from pathlib import Path
from typing import Any

from bot import config
from bot.errors import ConfigError, ProjectError
from bot.files import check_out, replaced

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "report", help="conversation insights: volume, resolution, handoffs, sentiment, unanswered questions",
        description="Read the stored conversations and write an HTML report (charts inline, no external "
                    "assets): volume per day, resolved by the bot or an agent, handoff rate and reasons, "
                    "sentiment, top intents, policies, and the questions the bot did not understand, "
                    "grouped by meaning.")
    p.add_argument("--since", default="7d",
                   help="start of the window: 30m, 12h, 7d, 2w ago, an ISO date or time "
                        "(2025-06-02, 2025-06-02T08:00+02:00), or 'all' (default: 7d)")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file (default: report.html)")
    p.add_argument("--json", type=Path, help="also write the numbers as JSON to this file")
    p.add_argument("--redis-url", help="Redis URL (DESKMATE_REDIS_URL or REDIS_URL); "
                                       "unset: the embedded Redis under --data-dir")
    p.add_argument("--data-dir", type=Path, help="local state directory (DESKMATE_DATA_DIR)")
    p.add_argument("--prefix", help="Redis key prefix (DESKMATE_KEY_PREFIX, default dm:)")
    p.add_argument("--project", type=Path,
                   help="bot project, for its thresholds.intent (DESKMATE_PROJECT)")
    p.add_argument("--clusters", type=int, default=10,
                   help="unanswered-question clusters shown (default: 10)")
    p.add_argument("--cluster-distance", type=float, default=None,
                   help="cosine distance at which question clusters stop merging (default: 0.65)")
    p.set_defaults(handler=_run)


def parse_since(value: str, *, now: float | None = None) -> float | None:
    """Epoch seconds for a ``--since`` value; None for ``all``. Raises :class:`ConfigError`
    for anything else, and for a moment before 1970: events are read by stream id, which
    is the write's Unix time in milliseconds and cannot be negative."""
    now = time.time() if now is None else now
    text = value.strip().lower()
    if text == "all":
        return None
    relative = _RELATIVE.match(text)
    if relative:
        since = now - float(relative.group(1)) * _UNITS[relative.group(2)]
    else:
        try:
            moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError("--since", f"expected 30m, 12h, 7d, 2w, an ISO date or time, or "
                                         f"'all'; got {value!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)  # the report's days are UTC days
        since = moment.timestamp()
    if since < 0:
        raise ConfigError("--since", f"{value!r} is before 1970, when no conversation can have "
                                     f"been stored; use 'all' for everything")
    return since


def _intent_threshold(project: Path) -> float:
    from dialogue.project import load_project

    raw = load_project(project).setting("thresholds", "intent", 0.5)
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ProjectError(str(project / "config.yml"), f"thresholds.intent must be a number, "
                                                        f"not {raw!r}") from None


def _run(args: argparse.Namespace) -> int:
    from bot.cli_agents import _redis_url
    from bot.report_html import render

    settings = config.from_env().replace(redis_url=args.redis_url, data_dir=args.data_dir,
                                         key_prefix=args.prefix, project=args.project)
    since = parse_since(args.since)
    if args.clusters < 0:
        raise ConfigError("--clusters", "must be 0 or more")
    if args.cluster_distance is not None and not 0 < args.cluster_distance <= 2:
        raise ConfigError("--cluster-distance", "must be a cosine distance in (0, 2]")
    # Before the work (reading every conversation, clustering), not after it.
    check_out(args.out, "--out")
    if args.json:
        check_out(args.json, "--json")
    threshold = _intent_threshold(settings.project)
    with _redis_url(settings) as url:
        report = asyncio.run(_report(url, settings.key_prefix, since, threshold, args))
    with replaced(args.out) as html:
        html.write(render(report))
    if args.json:
        with replaced(args.json) as out:
            out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    t, res = report["totals"], report["resolution"]
    print(f"{t['conversations']} conversations, {t['customer_messages']} customer messages "
          f"since {report['since'] or 'the start'}; resolved by the bot {res['bot']}, by an agent "
          f"{res['agent']}, unresolved {res['unresolved']}; handoff rate {t['handoff_rate']:.1%}; "
          f"{t['unanswered_turns']} turns not understood in {len(report['unanswered']['clusters'])} "
          f"top clusters")
    print(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
    return 0


async def _report(url: str, prefix: str, since: float | None, threshold: float,
                  args: argparse.Namespace) -> dict[str, Any]:
    from bot.insights import build_report
    from bot.store import Store
    from model.insights import DISTANCE

    store = Store.from_url(url, prefix=prefix)
    try:
        distance = DISTANCE if args.cluster_distance is None else args.cluster_distance
        return await build_report(store, since=since, intent_threshold=threshold,
                                  clusters=args.clusters, distance=distance)
    finally:
        await store.close()
