"""Renders the ``deskmate report`` numbers as one self-contained HTML page.

The page carries everything inline (CSS in a ``<style>``, charts as base64 PNG
``data:`` URIs, no scripts, no fonts or images from elsewhere), so it can be mailed
or opened offline. Every piece of text that came from Redis — customer questions,
intent names, handoff reasons — is HTML-escaped, and the markup is well-formed XML
as well as HTML, which the tests check with an XML parser.

Charts are drawn with matplotlib's Agg canvas on ``Figure`` objects (no pyplot
state, no display needed). Blocking: call :func:`render` off any event loop.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLORS = {"negative": "#d0575b", "neutral": "#b7b7b7", "positive": "#4c9a6a"}
PRIMARY, SECONDARY = "#3b6ea8", "#9cc0e6"
TOP_INTENTS = 15  # bars in the intent charts
# Customer-controlled text never reaches a chart, but intent names and reasons do:
# no mathtext, so a "$" is drawn as a dollar sign.
RC: dict[str, Any] = {"text.parse_math": False, "font.size": 9, "axes.spines.top": False,
                      "axes.spines.right": False}

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 980px; margin: 2em auto; padding: 0 1em; }
h1 { margin-bottom: .1em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.muted { color: #666; font-size: 13px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 1.2em 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 10px 16px; min-width: 120px; }
.card .num { font-size: 26px; font-weight: 600; } .card .label { color: #555; font-size: 13px; }
table { border-collapse: collapse; margin: .6em 0; } td, th { padding: 3px 12px 3px 0; text-align: left; }
td.n, th.n { text-align: right; } tr + tr td { border-top: 1px solid #eee; }
img.chart { max-width: 100%; display: block; margin: .6em 0; }
ol.questions li { margin-bottom: .8em; } ol.questions ul { margin: .2em 0; color: #333; }
"""


def render(report: Mapping[str, Any]) -> str:
    """The report as one HTML document."""
    with matplotlib.rc_context(RC):  # type: ignore[arg-type]  # keys are checked as literals
        body = [_header(report), _volume(report), _resolution(report), _sentiment(report),
                _intents(report), _unanswered(report)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n"
            f"<title>Conversation insights {_e(_period(report))}</title>\n<style>{CSS}</style>\n"
            "</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


# Characters XML 1.0 does not allow (C0 controls but tab, newline and return; U+FFFE,
# U+FFFF; lone surrogates, which bot.frames already refuses at the edge) and those HTML
# calls parse errors (DEL, C1 controls). A customer can paste any of the controls.
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _e(value: Any) -> str:
    """``value`` as text for an element or attribute: escaped, and every character that
    cannot appear in a well-formed page replaced with U+FFFD."""
    return html.escape(_NOT_TEXT.sub("\ufffd", str(value)), quote=True)


def _period(report: Mapping[str, Any]) -> str:
    if not report.get("since"):
        return f"everything stored, until {report.get('until')}"
    return f"{report['since']} to {report.get('until')}"


def _pct(value: float) -> str:
    return f"{value * 100:.1f} %"


# -- sections ------------------------------------------------------------------

def _header(report: Mapping[str, Any]) -> str:
    t, res = report["totals"], report["resolution"]
    cards = [(t["conversations"], "conversations"), (t["customer_messages"], "customer messages"),
             (_pct(t["handoff_rate"]), "handed over"), (res["bot"], "resolved by the bot"),
             (res["agent"], "resolved by an agent"), (res["unresolved"], "unresolved (waiting)"),
             (t["unanswered_turns"], "turns not understood")]
    items = "".join(f"<div class=\"card\"><div class=\"num\">{_e(n)}</div>"
                    f"<div class=\"label\">{_e(label)}</div></div>" for n, label in cards)
    return (f"<h1>Conversation insights</h1>\n<p class=\"muted\">{_e(_period(report))} "
            f"({_e(report.get('timezone', 'UTC'))} days) · keys {_e(report.get('prefix', ''))} · "
            f"generated {_e(report.get('generated_at'))}</p>\n<div class=\"cards\">{items}</div>")


def _volume(report: Mapping[str, Any]) -> str:
    days = report["volume"]
    rows = [(d["day"], d["conversations"], d["customer_messages"]) for d in days]
    return ("<h2>Volume</h2>\n" + _chart(_volume_chart(days), "Conversations and customer messages per day")
            + _table(("day", "conversations", "customer messages"), rows))


def _resolution(report: Mapping[str, Any]) -> str:
    t, res = report["totals"], report["resolution"]
    total = max(t["conversations"], 1)
    rows = [("the bot (no agent joined)", res["bot"], _pct(res["bot"] / total)),
            ("an agent (took the conversation over)", res["agent"], _pct(res["agent"] / total)),
            ("unresolved (waiting for an agent)", res["unresolved"], _pct(res["unresolved"] / total))]
    reasons = report["handoff_reasons"]
    asked = report.get("handoff_requested_by_intent") or {}
    out = ["<h2>Resolution and handoffs</h2>",
           _table(("resolved by", "conversations", "share"), rows),
           f"<p>{_e(t['handoffs'])} of {_e(t['conversations'])} conversations "
           f"({_e(_pct(t['handoff_rate']))}) were handed to a human "
           f"({_e(t['handoff_requests'])} handoff requests).</p>"]
    if reasons:
        out.append(_chart(_bars(list(reasons), list(reasons.values()), "handoff requests"),
                          "Handoff reasons"))
    if asked:
        out.append("<p>Explicit requests, by the intent that asked:</p>"
                   + _table(("intent", "requests"), list(asked.items())))
    return "\n".join(out)


def _sentiment(report: Mapping[str, Any]) -> str:
    by_day, by_intent = report["sentiment_by_day"], report["sentiment_by_intent"][:TOP_INTENTS]
    rows = [(d["intent"], d["turns"], *(_pct(d["shares"][s]) for s in COLORS),
             "" if d["mean_score"] is None else f"{d['mean_score']:+.2f}") for d in by_intent]
    return ("<h2>Sentiment</h2>\n"
            + _chart(_sentiment_days_chart(by_day), "Share of negative, neutral and positive turns per day")
            + _chart(_sentiment_intents_chart(by_intent), "Sentiment per intent")
            + _table(("intent", "turns", "negative", "neutral", "positive", "mean score"), rows))


def _intents(report: Mapping[str, Any]) -> str:
    top = report["intents"][:TOP_INTENTS]
    policies = report["policies"]
    total = max(sum(policies.values()), 1)
    return ("<h2>Intents and policies</h2>\n"
            + _chart(_bars([i["intent"] for i in top], [i["turns"] for i in top], "customer turns"),
                     "Top intents")
            + "<p>Which part of the bot answered (turn policies):</p>"
            + _table(("policy", "turns", "share"), [(p, n, _pct(n / total)) for p, n in policies.items()]))


def _unanswered(report: Mapping[str, Any]) -> str:
    u = report["unanswered"]
    intro = (f"<p class=\"muted\">Customer turns the bot did not understand (policy fallback, intent "
             f"out_of_scope, or confidence below {_e(u['intent_threshold'])}): {_e(u['turns'])} turns, "
             f"{_e(u['distinct_questions'])} distinct questions, grouped by meaning "
             f"(average-linkage clusters at cosine distance {_e(u['cluster_distance'])}).</p>")
    if not u["clusters"]:
        return "<h2>Top unanswered questions</h2>\n" + intro + "<p>None in this period.</p>"
    items = []
    for c in u["clusters"]:
        examples = "".join(f"<li>{_e(x)}</li>" for x in c["examples"])
        turns = "turn" if c["size"] == 1 else "turns"
        items.append(f"<li><strong>{_e(c['size'])} {turns}</strong> "
                     f"<span class=\"muted\">({_e(c['distinct'])} distinct)</span><ul>{examples}</ul></li>")
    more = []
    if u["more_clusters"]:
        more.append(f"{u['more_clusters']} smaller clusters not shown")
    if u["left_out"]:
        more.append(f"{u['left_out']} rarest distinct questions not clustered")
    tail = f"<p class=\"muted\">{_e('; '.join(more))}.</p>" if more else ""
    return ("<h2>Top unanswered questions</h2>\n" + intro
            + f"<ol class=\"questions\">{''.join(items)}</ol>" + tail)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "<p class=\"muted\">No data in this period.</p>"

    def cell(tag: str, i: int, value: Any) -> str:
        cls = " class=\"n\"" if i else ""
        return f"<{tag}{cls}>{_e(value)}</{tag}>"

    header = "".join(cell("th", i, h) for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _chart(figure: Figure | None, alt: str) -> str:
    if figure is None:
        return f"<p class=\"muted\">{_e(alt)}: no data in this period.</p>"
    buf = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buf)  # type: ignore[no-untyped-call]
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img class=\"chart\" alt=\"{_e(alt)}\" src=\"data:image/png;base64,{data}\"/>"


# -- charts ----------------------------------------------------------------------

def _figure(height: float = 3.0) -> Figure:
    return Figure(figsize=(9, height), dpi=100, layout="constrained")


def _short(day: str) -> str:
    return day[5:]  # "2025-06-02" -> "06-02"


def _days_axis(ax: Any, days: Sequence[Mapping[str, Any]]) -> None:
    """Day labels under the bars; a short period is centred at the width of a week, so
    that one day is not drawn as one wall-to-wall bar."""
    n = len(days)
    pad = max(0.0, (7 - n) / 2)
    ax.set_xlim(-0.5 - pad, n - 0.5 + pad)
    ax.set_xticks(list(range(n)), [_short(d["day"]) for d in days], rotation=45 if n > 10 else 0)


def _volume_chart(days: Sequence[Mapping[str, Any]]) -> Figure | None:
    if not any(d["customer_messages"] for d in days):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    xs = range(len(days))
    ax.bar([x - 0.2 for x in xs], [d["conversations"] for d in days], 0.4, color=PRIMARY,
           label="conversations")
    ax.bar([x + 0.2 for x in xs], [d["customer_messages"] for d in days], 0.4, color=SECONDARY,
           label="customer messages")
    _days_axis(ax, days)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(loc="outside upper center", ncol=2, frameon=False)
    return fig


def _sentiment_days_chart(days: Sequence[Mapping[str, Any]]) -> Figure | None:
    if not any(sum(d["counts"].values()) for d in days):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    xs = list(range(len(days)))
    bottom = [0.0] * len(days)
    for label, color in COLORS.items():
        shares = [d["shares"][label] for d in days]
        ax.bar(xs, shares, 0.7, bottom=bottom, color=color, label=label)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of turns")
    _days_axis(ax, days)
    mean = ax.twinx()
    scored = [(x, d["mean_score"]) for x, d in zip(xs, days, strict=True) if d["mean_score"] is not None]
    mean.plot([x for x, _ in scored], [s for _, s in scored], "o-", color="#222", label="mean score")
    mean.set_ylim(-1, 1)
    mean.set_ylabel("mean sentiment score")
    mean.spines["right"].set_visible(True)
    handles = ax.get_legend_handles_labels()[0] + mean.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside upper center", ncol=4, frameon=False)
    return fig


def _sentiment_intents_chart(intents: Sequence[Mapping[str, Any]]) -> Figure | None:
    rows = [i for i in intents if sum(i["counts"].values())]
    if not rows:
        return None
    fig = _figure(1.3 + 0.28 * len(rows))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))[::-1]  # the busiest intent on top
    left = [0.0] * len(rows)
    for label, color in COLORS.items():
        shares = [r["shares"][label] for r in rows]
        ax.barh(ys, shares, 0.7, left=left, color=color, label=label)
        left = [a + s for a, s in zip(left, shares, strict=True)]
    ax.set_yticks(ys, [f"{r['intent']} ({r['turns']})" for r in rows])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of turns")
    fig.legend(loc="outside upper center", ncol=3, frameon=False)
    return fig


def _bars(labels: Sequence[str], values: Sequence[int], xlabel: str) -> Figure | None:
    if not labels:
        return None
    fig = _figure(1.0 + 0.28 * len(labels))
    ax = fig.add_subplot()
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, list(values), 0.7, color=PRIMARY)
    ax.set_yticks(ys, list(labels))
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for y, v in zip(ys, values, strict=True):
        ax.annotate(str(v), (v, y), xytext=(3, 0), textcoords="offset points", va="center")
    return fig
