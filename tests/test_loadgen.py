"""``deskmate bench load``: small, bounded runs checking the accounting, never the timings.

The generator drives a real server (in-process on a free port, from the fixtures; or
started by the generator as a subprocess), its customers are real websocket clients,
and its Redis check reads the real Redis. Tampering with the stored events afterwards
shows that the check notices a lost or doubled message.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.cli_bench import duration
from bot.config import Settings
from bot.keys import Keys
from bot.loadgen import LoadOptions, run_load, run_scenarios
from bot.loadgen_audit import audit
from bot.loadgen_customer import Customer
from bot.loadgen_procs import echo_server
from bot.loadgen_report import SECTION, render
from bot.loadgen_scenarios import hold_connections, turn_rate
from bot.loadgen_texts import ScriptMix, demo_scripts
from tests.conftest import ROOT, SHOP, Servers

DATA = ROOT.parent / "shared" / "data"  # STAR dialogues; without them only the demo's tests are replayed
CLEAN = ("lost", "duplicated", "ack_mismatch", "double_answered", "duplicate_replies", "orphan_replies")


def _behind_proxy() -> dict[str, Any]:
    """Each simulated customer sends its own X-Forwarded-For; trust it where the setting exists."""
    return {"trust_proxy": True} if "trust_proxy" in Settings.__dataclass_fields__ else {}


def _small(**changes: Any) -> LoadOptions:
    base = dict(project=SHOP, connections=20, hold=1.0, turns_per_second=20.0, duration=1.0, echo=False,
                data=DATA, drain=20.0, progress=False)
    return LoadOptions(**{**base, **changes})


def _assert_clean(audited: dict[str, Any], acked: int) -> None:
    assert audited["acked"] == acked
    assert {k: audited[k] for k in CLEAN} == dict.fromkeys(CLEAN, 0), audited["examples"]
    assert audited["unanswered"] == 0
    assert audited["answered"] + audited["silent"] + audited["error_replies"] == audited["stored_user"]


async def test_a_small_run_accounts_for_every_message(servers: Servers, redis_url: str, key_prefix: str,
                                                      sync_redis: redis.Redis, tmp_path: Path) -> None:
    server = await servers.start(**_behind_proxy())
    opts = _small(urls=(f"ws://127.0.0.1:{server.port}",), key_prefix=key_prefix)
    results = await run_scenarios(opts, redis_url, tmp_path)

    held = results["connections"]["deskmate"]
    assert held["opened"] == held["connections"] == 20
    assert held["connected_at_end"] == 20 and held["connect_failures"] == {}
    assert held["turns"]["sent"] == 2  # one customer in ten says something during the hold
    _assert_clean(held["audit"], acked=2)

    turns = results["turns"]["deskmate"]
    assert turns["turns"]["sent"] == 20
    assert turns["turns"]["acked"] == 20 and turns["errors"] == {}
    _assert_clean(turns["audit"], acked=20)
    for part in (held, turns):
        assert set(part["latency_ms"]) == {"ack", "first_reply", "first_delta", "end"}
        assert {"rss_peak_mb", "server_cpu_pct", "loadgen_cpu_pct", "redis_cpu_pct"} <= set(part["usage"])

    text = render(results)
    assert text.startswith(SECTION)
    assert "### Checked against Redis" in text and "### Against the targets" in text
    # A run against someone else's servers removes only the conversations it opened.
    assert not list(sync_redis.scan_iter(match=f"{key_prefix}s:*"))


async def test_the_check_finds_a_lost_and_a_doubled_message(servers: Servers, redis_url: str,
                                                            key_prefix: str, sync_redis: redis.Redis) -> None:
    server = await servers.start(**_behind_proxy())
    scripts = ScriptMix(demo_scripts(SHOP), [], random.Random(0))
    result, customers = await turn_rate([f"ws://127.0.0.1:{server.port}/ws/chat"], 10.0, 0.6, scripts,
                                        drain=20.0, progress=False)
    try:
        acked = [(c, t) for c in customers for t in c.turns if t.ack is not None]
        assert len(acked) == result["turns"]["sent"] == 6
        _assert_clean(await audit(redis_url, key_prefix, customers), acked=6)

        keys = Keys(key_prefix)
        (first, lost), (second, doubled) = acked[0], acked[1]
        assert first.session_id and second.session_id
        sync_redis.xdel(keys.events(first.session_id), lost.event_id)
        copy = {"role": "user", "text": "again", "client_id": doubled.client_id}
        sync_redis.xadd(keys.events(second.session_id),
                        {"kind": "message", "ts": "0", "data": json.dumps(copy)})
        tampered = await audit(redis_url, key_prefix, customers)
        assert tampered["lost"] == 1 and tampered["duplicated"] == 1
    finally:
        for customer in customers:
            await customer.close()


async def test_the_echo_server_is_driven_like_deskmate(tmp_path: Path) -> None:
    child = echo_server(tmp_path / "echo.log")
    port = await child.start(timeout=60)
    customers: list[Customer] = []
    try:
        url = [f"ws://127.0.0.1:{port}/ws/chat"]
        scripts = ScriptMix(demo_scripts(SHOP), [], random.Random(0))
        held, customers = await hold_connections(url, 10, 1.0, scripts, drain=10.0, rng=random.Random(0),
                                                 progress=False)
        assert held["connected_at_end"] == 10 and held["turns"]["answered"] == held["turns"]["sent"] == 1
        for customer in customers:
            await customer.close()
        turns, customers = await turn_rate(url, 20.0, 1.0, scripts, drain=10.0, progress=False)
        assert turns["turns"] == {"sent": 20, "acked": 20, "answered": 20, "refused": 0, "unsettled": 0}
        assert turns["latency_ms"]["end"]["n"] == 20
    finally:
        for customer in customers:
            await customer.close()
        await child.stop()


@pytest.mark.slow
def test_the_generator_starts_and_stops_its_own_server(trained_shop: Path, redis_url: str,
                                                       sync_redis: redis.Redis) -> None:
    """The default path: a fresh ``deskmate run`` subprocess (language model off) with its own
    key prefix, deleted afterwards."""
    before = set(sync_redis.scan_iter(match="dmload:*"))
    results = run_load(_small(project=trained_shop, connections=0, redis_url=redis_url))
    turns = results["turns"]["deskmate"]
    assert turns["servers"] == 1 and turns["turns"]["acked"] == 20
    _assert_clean(turns["audit"], acked=20)
    assert turns["usage"]["rss_peak_mb"] > 0
    assert set(sync_redis.scan_iter(match="dmload:*")) == before


def test_the_command_reads_the_issue_s_flags() -> None:
    from bot.cli import build_parser

    args = build_parser().parse_args(["bench", "load", "--connections", "2000", "--hold", "20s",
                                      "--turns-per-second", "200", "--duration", "30s",
                                      "--lm-streams", "32"])
    assert args.handler.__name__ == "cmd_bench_load"
    assert (args.connections, args.hold, args.turns_per_second, args.duration, args.lm_streams) == (
        2000, 20.0, 200.0, 30.0, 32)
    assert duration("1.5m") == 90.0 and duration("500ms") == 0.5 and duration("30") == 30.0
    with pytest.raises(Exception, match="not a duration"):
        duration("soon")


async def test_quiet_machine_waits_for_idle_cpus_and_gives_up() -> None:
    from bot.loadgen import quiet_machine

    # Any machine is at least 0 % idle: one sample is enough.
    assert await quiet_machine(idle=0.0, longest=5) == 1
    # Never 101 % idle: it samples until `longest` has passed, then gives up.
    assert await quiet_machine(idle=1.01, longest=2) == 2
