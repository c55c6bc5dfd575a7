"""The machine description and the markdown of ``deskmate bench nlu``.

Only this tool's section of docs/benchmarks.md is rewritten; other sections
(added by other benchmarks) are kept as they are.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Any

import torch

HEADING = "## Intent and sentiment (deskmate bench nlu)"


def rss_mb() -> float:
    """Resident set size of this process, in MB (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def machine() -> dict[str, Any]:
    """nproc, CPU model, RAM, torch threads and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = ""
    try:
        kb = int(re.findall(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[0])
        ram = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "ram": ram,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1m_at_start": round(load, 2),
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def render(results: dict[str, Any]) -> str:
    """The markdown section for ``results``."""
    m = results["machine"]
    lines = [
        HEADING,
        "",
        f"Run: `deskmate bench nlu` on {m['date']} — {m['nproc']} CPU cores ({m['cpu']}), "
        f"{m['ram']} RAM, torch {m['torch']} with {m['torch_threads']} threads, Python "
        f"{m['python']}; 1-minute load average at start {m['load_avg_1m_at_start']} "
        "(the machine is shared, so timings are noisy).",
        "",
    ]
    intent_rows = [k for k in ("banking77", "hwu64", "sofmattress", "curekart") if k in results]
    if intent_rows:
        lines += [
            "### Intents",
            "",
            "| data set | model | accuracy | closed-set acc. | macro-F1 | in-scope acc. "
            "| OOS recall | train time |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name in intent_rows:
            r = results[name]
            for key, title in (("ours", "deskmate (MiniLM + head)"), ("tfidf_lr", "TF-IDF + LR")):
                s = r[key]
                lines.append(
                    f"| {name} ({r['train_examples']} train, {s['n']} test) | {title} | "
                    f"{_pct(s['accuracy'])} | {_pct(s.get('closed_set_accuracy'))} | "
                    f"{_pct(s['macro_f1'])} | "
                    f"{_pct(s.get('in_scope_accuracy'))} | {_pct(s.get('oos_recall'))} | "
                    f"{s['train_s']} s |"
                )
            if "ours_int8" in r:
                q = r["ours_int8"]
                lines.append(f"| {name} | the same model, int8 weights | {_pct(q['accuracy'])} | "
                             f"{_pct(q['closed_set_accuracy'])} | | | | |")
        lines += [
            "",
            "*accuracy* is with the out-of-scope rule on (what the bot does: a turn below the "
            "calibrated threshold, or on the gibberish class, is `out_of_scope`, which is wrong "
            "on a test set without out-of-scope turns); *closed-set acc.* always answers the "
            "best real intent, the usual way Banking77 and HWU64 are reported. Training time "
            "includes the calibration run (training twice).",
            "",
        ]
    if "bot40x15" in results:
        b = results["bot40x15"]
        lines += [f"Bot-sized project (40 HWU64 intents × 15 examples, {b['examples']} examples, "
                  f"OOS calibration included): training {b['train_s']} s.", ""]
    sent_rows = [k for k in ("sst2", "tweet_eval") if k in results]
    if sent_rows:
        lines += [
            "### Sentiment",
            "",
            "| data set | model | accuracy | macro-F1 |",
            "|---|---|---|---|",
        ]
        for sname in sent_rows:
            r = results[sname]
            for key, title in (("ours", "deskmate default model"),
                               ("ours_int8", "the same, int8 weights"), ("vader", "VADER")):
                if key not in r:
                    continue
                s = r[key]
                lines.append(f"| {r['set']} (n={s['n']}) | {title} | {_pct(s['accuracy'])} | "
                             f"{_pct(s['macro_f1'])} |")
        lines.append("")
    if "latency" in results:
        lat = results["latency"]
        lines += [
            "### Speed and memory",
            "",
            "| what | p50 | p95 | batched |",
            "|---|---|---|---|",
            f"| deskmate intent + sentiment, one utterance (Banking77 test, n={lat['n_single']}), "
            f"{lat.get('runtime', 'torch')} runtime | "
            f"{lat['p50_ms']} ms | {lat['p95_ms']} ms | {lat['batched_per_s']} utt/s |",
        ]
        if "int8" in lat:
            t = lat["int8"]
            lines.append(f"| the same model with int8 weights (`DESKMATE_NLU_PRECISION=int8`) | "
                         f"{t['p50_ms']} ms | {t['p95_ms']} ms | {t['batched_per_s']} utt/s |")
        if "torch" in lat:
            t = lat["torch"]
            lines.append(f"| the same model on the torch path (`DESKMATE_NLU_RUNTIME=torch`) | "
                         f"{t['p50_ms']} ms | {t['p95_ms']} ms | {t['batched_per_s']} utt/s |")
        if "tfidf_lr" in lat:
            t = lat["tfidf_lr"]
            lines.append(f"| TF-IDF + LR, intent only | {t['p50_ms']} ms | {t['p95_ms']} ms | "
                         f"{t['batched_per_s']} utt/s |")
        lines.append("")
    mem = results.get("memory", {})
    if mem:
        parts = [f"RSS before loading the encoder (Python, torch, transformers imported): "
                 f"{mem['rss_before_load_mb']} MB",
                 f"after loading encoder + sentiment head: {mem['rss_encoder_sentiment_mb']} MB"]
        if "rss_serving_mb" in mem:
            parts.append(f"a fresh process serving the Banking77 model + sentiment as the server "
                         f"loads it: {mem['rss_after_imports_mb']} MB after imports, "
                         f"{mem['rss_serving_mb']} MB loaded and warm (encoder + heads: "
                         f"{mem['rss_serving_mb'] - mem['rss_after_imports_mb']:.1f} MB)")
        if "torch_rss_serving_mb" in mem:
            parts.append(f"the same on the torch path: {mem['torch_rss_serving_mb']} MB")
        lines += ["Memory: " + "; ".join(parts) + ".", ""]
    return "\n".join(lines)


def write_section(path: Path, results: dict[str, Any]) -> None:
    """Replace (or append) this tool's section of ``path``, keeping the others."""
    section = render(results).rstrip() + "\n"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    start = old.find(HEADING)
    if start < 0:
        new = old.rstrip() + "\n\n" + section
    else:
        nxt = old.find("\n## ", start + len(HEADING))
        tail = old[nxt + 1 :] if nxt >= 0 else ""
        new = old[:start] + section + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")
