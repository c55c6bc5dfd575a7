"""Markdown for ``deskmate bench load``: the "Load" section of docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SECTION = "## Load (deskmate bench load)"

# The targets ("Holding up").
TARGET_CONNECTIONS = 2000
TARGET_RATE = 200.0
TARGET_FIRST_REPLY_P99_MS = 150.0
TARGET_LM_STREAMS = 32
TARGET_LM_TTFT_P95_MS = 1500.0
RATE_SLACK = 0.97  # "sustained" = answered at least this share of the offered rate

Row = tuple[str, Callable[[dict[str, Any]], str]]  # a table row: label, and the cell of one run


def _ms(v: float | None) -> str:
    return "–" if v is None else (f"{v:.0f}" if v >= 10 else f"{v:.1f}")


def _pct(lat: dict[str, Any], qs: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    return " / ".join(_ms(lat.get(q)) for q in qs) + " ms"


def _num(v: float | None, fmt: str = "{:.0f}", unit: str = "") -> str:
    return "–" if v is None else fmt.format(v) + unit


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items())) or "none"


def _ok(good: bool, full_size: bool = True) -> str:
    if not full_size:
        return "not run at the target's size"
    return "met" if good else "**missed**"


def _usage_rows(runs: dict[str, dict[str, Any]]) -> list[str]:
    names = list(runs)
    rows = []
    usage: list[Row] = [
        ("server RSS at start → peak", lambda r: f"{r['usage']['rss_start_mb']:.0f} → "
                                                 f"{r['usage']['rss_peak_mb']:.0f} MB"),
        ("server CPU (100 % = one core)", lambda r: _num(r["usage"]["server_cpu_pct"], unit=" %")),
        ("load generator CPU", lambda r: _num(r["usage"]["loadgen_cpu_pct"], unit=" %")),
        ("Redis CPU", lambda r: _num(r["usage"].get("redis_cpu_pct"), unit=" %")),
        ("machine's 1-minute load average at the end", lambda r: _num(r["usage"].get("load_avg_1m_end"),
                                                                      "{:.1f}")),
    ]
    for label, pick in usage:
        rows.append(f"| {label} | " + " | ".join(pick(runs[n]) for n in names) + " |")
    return rows


def _ratios(runs: dict[str, dict[str, Any]], picks: list[tuple[str, Callable[[dict[str, Any]], Any]]]
            ) -> list[str]:
    """One line: deskmate's figure over the echo server's, for each of ``picks``."""
    if "echo" not in runs:
        return []
    parts = []
    for label, pick in picks:
        ours, echo = pick(runs["deskmate"]), pick(runs["echo"])
        if ours is not None and echo:
            x = ours / echo
            parts.append(f"{label} ×" + (f"{x:.2f}" if x < 1 else f"{x:.1f}" if x < 100 else f"{x:.0f}"))
    return ["", "deskmate over the echo server: " + ", ".join(parts) + "."] if parts else []


def _header(runs: dict[str, dict[str, Any]]) -> list[str]:
    cols = {"deskmate": "deskmate", "echo": "echo server (transport only)"}
    names = list(runs)
    return ["| | " + " | ".join(cols.get(n, n) for n in names) + " |",
            "|---|" + "---|" * len(names)]


def _connections(res: dict[str, Any]) -> list[str]:
    runs = res
    d = runs["deskmate"]
    lines = [f"### {d['connections']} connections held {d['hold_s']:g} s", "",
             "Each customer connects (permessage-deflate on, like a browser), sends `start`, and stays; "
             "it sends a websocket ping every 5-10 s, and one in ten also sends one message during "
             "the hold. Up to 100 handshakes are in flight at once.", ""]
    lines += _header(runs)
    rows: list[Row] = [
        ("connected at the end of the hold", lambda r: f"{r['connected_at_end']} of {r['connections']}"),
        ("time to connect + `session` p50 / p95 / p99", lambda r: _pct(r["open_ms"])),
        ("opening all of them took", lambda r: f"{r['open_wall_s']:.1f} s"),
        ("connect failures", lambda r: _counts(r["connect_failures"])),
        ("closed by the server during the hold", lambda r: _counts(r["closes"])),
        ("ping round trip p50 / p95 / p99", lambda r: _pct(r["ping_ms"])),
        ("pings without a pong within 10 s", lambda r: f"{r['lost_pings']} of {r['pings']}"),
        ("messages during the hold: sent / answered", lambda r: f"{r['turns']['sent']} / "
                                                             f"{r['turns']['answered']}"),
        ("first reply frame p50 / p95 / p99", lambda r: _pct(r["latency_ms"]["first_reply"])),
        ("error frames", lambda r: _counts(r["errors"])),
    ]
    for label, pick in rows:
        lines.append(f"| {label} | " + " | ".join(pick(runs[n]) for n in runs) + " |")
    lines += _usage_rows(runs)
    lines += _ratios(runs, [("connect p50", lambda r: r["open_ms"]["p50"]),
                            ("ping p99", lambda r: r["ping_ms"]["p99"]),
                            ("first reply p50", lambda r: r["latency_ms"]["first_reply"]["p50"]),
                            ("server CPU", lambda r: r["usage"]["server_cpu_pct"])])
    grown = d["usage"]["rss_peak_mb"] - d["usage"]["rss_start_mb"]
    if d["connected_at_end"]:
        per = grown * 1024 / d["connected_at_end"]
        lines += ["", f"Server memory per held connection: about {per:.0f} KiB "
                      "(peak minus start, over the connections held)."]
    return lines


def _turns(res: dict[str, Any]) -> list[str]:
    runs = res
    d = runs["deskmate"]
    lines = [f"### {d['rate']:g} customer turns/s for {d['duration_s']:g} s (language model off)", "",
             f"Open-loop: turn k is due at k/{d['rate']:g} s whatever the answers do, and every latency "
             "counts from when the turn was due (a late send counts against the server). Turns replay "
             "the customer side of the demo shop's conversation tests and of STAR dialogues "
             f"(alternating), over a pool of {d['pool']} connected conversations; a conversation whose "
             "script ended or that was handed to a person is replaced by a new customer "
             f"({d['conversations']} conversations in all). Latencies: *ack* — the message is stored; "
             "*first reply* — `stream_start` (or a bot `message`); *end* — the last `stream_end` of "
             "the answer.", ""]
    lines += _header(runs)
    rows: list[Row] = [
        ("turns sent / acked / answered (as the customers saw it)",
         lambda r: f"{r['turns']['sent']} / {r['turns']['acked']} / {r['turns']['answered']}"),
        ("acked per second (send window)", lambda r: f"{r['acked_per_s']:.1f}"),
        ("answered per second", lambda r: f"{r['answered_per_s']:.1f}"),
        ("ack p50 / p95 / p99", lambda r: _pct(r["latency_ms"]["ack"])),
        ("first reply p50 / p95 / p99", lambda r: _pct(r["latency_ms"]["first_reply"])),
        ("end of answer p50 / p95 / p99", lambda r: _pct(r["latency_ms"]["end"])),
        ("latest send behind schedule", lambda r: f"{r['max_send_lag_ms']:.0f} ms"),
        ("error frames", lambda r: _counts(r["errors"])),
        ("connect failures / server closes", lambda r: f"{_counts(r['connect_failures'])} / "
                                                      f"{_counts(r['closes'])}"),
        ("no answer seen when the customers stopped waiting", lambda r: str(r["turns"]["unsettled"])),
    ]
    for label, pick in rows:
        lines.append(f"| {label} | " + " | ".join(pick(runs[n]) for n in runs) + " |")
    lines += _usage_rows(runs)
    lines += _ratios(runs, [("answered/s", lambda r: r["answered_per_s"]),
                            ("ack p50", lambda r: r["latency_ms"]["ack"]["p50"]),
                            ("first reply p50", lambda r: r["latency_ms"]["first_reply"]["p50"]),
                            ("first reply p99", lambda r: r["latency_ms"]["first_reply"]["p99"])])
    return lines


def _lm(res: dict[str, Any]) -> list[str]:
    d = res["deskmate"]
    policies = d.get("audit", {}).get("policies", {})
    lines = [f"### {d['streams']} conversations answered by the language model", "",
             f"{d['streams']} customers each send {d['turns_each']} small-talk messages (examples of the "
             "project's `generative.intents`), all at once, each the next after its previous answer "
             "ended; the server runs the project's embedded language model. TTFT = message due → "
             "first `stream_delta` (the grounding gate releases text a sentence at a time, so this is "
             "the first sentence, not the first token).", "",
             "| | deskmate |", "|---|---|",
             f"| turns sent / answered | {d['turns']['sent']} / {d['turns']['answered']} |",
             f"| TTFT p50 / p95 / p99 | {_pct(d['ttft_ms'])} |",
             f"| first reply frame p50 / p95 | {_pct(d['latency_ms']['first_reply'], ('p50', 'p95'))} |",
             f"| end of answer p50 / p95 | {_pct(d['latency_ms']['end'], ('p50', 'p95'))} |",
             f"| how the turns were answered (policy) | {_counts(policies)} |",
             f"| error frames | {_counts(d['errors'])} |",
             f"| wall time | {d['wall_s']:.1f} s |"]
    lines += _usage_rows({"deskmate": d})
    return lines


def _audit_table(results: dict[str, Any]) -> list[str]:
    names = {"connections": "connections held", "turns": "turns/s", "lm": "LM streams"}
    present = [k for k in names if k in results and "audit" in results[k]["deskmate"]]
    if not present:
        return []
    lines = ["### Checked against Redis", "",
             "After each deskmate run, every conversation's stored events were read back and compared "
             "with what the customers were told (`bot/loadgen_audit.py`). A turn's replies and its `turn` "
             "record are one atomic write, so *answered twice* means two `turn` records for one message; a "
             "turn may say two things (a rule with two responses, an answer and an offer), and a reply "
             "stored twice within a turn (the same stream, or the same text) counts as a duplicate.", "",
             "| | " + " | ".join(names[k] for k in present) + " |", "|---|" + "---|" * len(present)]
    rows = [
        ("acknowledged messages", "acked"), ("lost (acked, not stored)", "lost"),
        ("stored twice", "duplicated"), ("stored under another id than acked", "ack_mismatch"),
        ("answered by exactly one turn (by the time of the check)", "answered"),
        ("answered twice", "double_answered"),
        ("answered with the error apology", "error_replies"),
        ("passed without an answer (a person had the conversation)", "silent"),
        ("still unanswered at the end", "unanswered"),
        ("duplicate replies within a turn", "duplicate_replies"),
        ("bot messages not tied to a customer message", "orphan_replies"),
    ]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(str(results[k]["deskmate"]["audit"].get(key, 0))
                                                  for k in present) + " |")
    lines.append("| bot messages per answered turn | " + " | ".join(
        _counts(results[k]["deskmate"]["audit"]["replies_per_turn"]) for k in present) + " |")
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["### Against the targets", "", "| target | measured | |", "|---|---|---|"]
    if "connections" in results:
        d = results["connections"]["deskmate"]
        full = d["connections"] >= TARGET_CONNECTIONS
        lines.append(f"| {TARGET_CONNECTIONS:,} customers connected | {d['connected_at_end']:,} of "
                     f"{d['connections']:,} held {d['hold_s']:g} s | "
                     f"{_ok(d['connected_at_end'] >= TARGET_CONNECTIONS, full)} |")
    if "turns" in results:
        d = results["turns"]["deskmate"]
        p99 = d["latency_ms"]["first_reply"]["p99"]
        full = d["rate"] >= TARGET_RATE
        sustained = d["answered_per_s"] >= RATE_SLACK * TARGET_RATE and d["turns"]["unsettled"] == 0
        lines.append(f"| {TARGET_RATE:.0f} turns/s sustained | {d['answered_per_s']:.1f} answered/s at "
                     f"{d['rate']:g} offered | {_ok(sustained, full)} |")
        lines.append(f"| first reply p99 ≤ {TARGET_FIRST_REPLY_P99_MS:.0f} ms at that rate | {_ms(p99)} ms | "
                     f"{_ok(p99 is not None and p99 <= TARGET_FIRST_REPLY_P99_MS, full)} |")
    if "lm" in results:
        d = results["lm"]["deskmate"]
        p95 = d["ttft_ms"]["p95"]
        full = d["streams"] >= TARGET_LM_STREAMS
        lines.append(f"| {TARGET_LM_STREAMS} LM streams, TTFT p95 ≤ {TARGET_LM_TTFT_P95_MS / 1000:g} s | "
                     f"{_ms(p95)} ms with {d['streams']} | "
                     f"{_ok(p95 is not None and p95 <= TARGET_LM_TTFT_P95_MS, full)} |")
    audits = [results[k]["deskmate"]["audit"] for k in ("connections", "turns", "lm")
              if k in results and "audit" in results[k]["deskmate"]]
    if audits:
        bad = sum(a[k] for a in audits for k in ("lost", "duplicated", "ack_mismatch", "double_answered",
                                                 "duplicate_replies"))
        acked = sum(a["acked"] for a in audits)
        lines.append(f"| nothing lost or doubled | {bad} problems in {acked:,} acknowledged messages | "
                     f"{_ok(bad == 0)} |")
    return lines


def command(opts: dict[str, Any]) -> str:
    """The command line that repeats a run with these options."""
    parts = ["deskmate bench load"]
    if opts["connections"]:
        parts.append(f"--connections {opts['connections']} --hold {opts['hold']:g}s")
    if opts["turns_per_second"]:
        parts.append(f"--turns-per-second {opts['turns_per_second']:g} --duration {opts['duration']:g}s")
    if opts["lm_streams"]:
        parts.append(f"--lm-streams {opts['lm_streams']} --lm-turns {opts['lm_turns']}")
    parts += [f"--url {u}" for u in opts["urls"]]
    if opts["servers"] != 1 and not opts["urls"]:
        parts.append(f"--servers {opts['servers']}")
    if opts.get("redis_url"):
        parts.append(f"--redis-url {opts['redis_url']}")
    return " ".join(parts)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    opts = results["options"]
    servers = "the servers given with `--url`" if opts["urls"] else (
        f"{opts['servers']} `deskmate run` process{'es' if opts['servers'] > 1 else ''} (fresh for each "
        f"scenario) serving `{opts['project']}` with its trained classifier")
    lines = [
        SECTION, "",
        f"Run: `{command(opts)}` on {m['date']} — {m['nproc']} CPU cores ({m['cpu']}), "
        f"{m['ram_gib']} GiB RAM, Python {m['python']}, websockets {m['websockets']}, Redis "
        f"{m['redis_server']} ({results.get('redis', '?')}); 1-minute load average at start "
        f"{m['load_avg_1m']:.2f}. Against {servers}. The load generator (one asyncio process) runs on "
        "the same machine and competes with the server and Redis for the same cores; its own CPU is "
        "in the tables. Open-file limit raised to "
        f"{results.get('open_files', '?')}.", "",
    ]
    for key, part in (("connections", _connections), ("turns", _turns), ("lm", _lm)):
        if key in results:
            lines += part(results[key]) + [""]
    lines += _audit_table(results) + [""]
    lines += _targets(results)
    notes = results.get("notes")
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines).rstrip("\n") + "\n"
