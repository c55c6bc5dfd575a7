"""Marketing commands: ``deskmate copy`` (ad lines) and ``deskmate draft`` (content drafts).

Both use the bot's language model (``open_chat_model()``: the embedded SmolLM2, or a
remote server with ``DESKMATE_LM_BACKEND=remote``) and keep what it writes to the shop's
facts with the checks in :mod:`dialogue.copywriting` and :mod:`dialogue.grounding`.
This module owns the I/O: files, the model's streams, stdout and the progress bar.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from bot import config
from bot.errors import ConfigError, DeskmateError, ProjectError
from bot.files import check_out, replaced
from dialogue import copywriting as cw
from dialogue import drafting as dr
from dialogue.grounding import Evidence, GroundedStream
from dialogue.recommend import Product, load_catalog

# Sampling for ad candidates: one temperature per stream, in turn. Greedy decoding gives
# the same line every time; above ~0.9 the small model drifts off the product (measured
# on the demo shop, docs/marketing.md).
AD_TEMPERATURES = (0.5, 0.7, 0.3, 0.6, 0.8, 0.4)
LINES_PER_STREAM = 3
OUTLINE_TOKENS = 60
SECTION_TEMPERATURE, RETRY_TEMPERATURE = 0.3, 0.1


def register(sub: Any) -> None:
    c = sub.add_parser("copy", help="ad lines for a product, checked against its facts",
                       description="Generate ad lines with the language model, drop those that break a "
                                   "rule (length, keywords, banned words, facts not in the product data) "
                                   "and rank the rest. Exit status 1 when fewer than --n pass.")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--product", metavar="ID", help="a product of the project's catalog")
    source.add_argument("--facts", type=Path, metavar="FILE",
                        help="the product's facts: a text file (a 'name: ...' line names it) or a "
                             "catalog-style JSON object")
    c.add_argument("--audience", required=True, help="who the ads speak to")
    c.add_argument("--keywords", required=True, help="comma-separated words every ad must use")
    c.add_argument("--n", type=int, default=5, help="ads to show (default 5)")
    c.add_argument("--candidates", type=int, default=None, help="lines to generate per round (default 3 x n)")
    c.add_argument("--rounds", type=int, default=2,
                   help="rounds of candidates while fewer than --n pass (default 2)")
    c.add_argument("--max-chars", type=int, default=90, help="longest ad, characters (default 90)")
    c.add_argument("--tone", choices=sorted(cw.TONES), default="friendly")
    c.add_argument("--banned", default="", help="comma-separated words no ad may use "
                                                "(added to config.yml's banned_words)")
    c.add_argument("--with-knowledge", action="store_true",
                   help="let ads also state the shop's knowledge-base facts (delivery, returns, ...)")
    c.add_argument("--seed", type=int, default=1, help="first sampling seed (default 1)")
    c.add_argument("--project", type=Path, help="bot project directory (DESKMATE_PROJECT)")
    c.add_argument("--json", action="store_true", help="print every candidate as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(handler=_copy)

    d = sub.add_parser("draft", help="a Markdown draft from the catalog and knowledge base",
                       description="Write an outline, then the sections (streamed), each sentence checked "
                                   "against the shop's facts; the facts used are listed at the end.")
    d.add_argument("kind", choices=list(dr.KINDS))
    d.add_argument("--product", action="append", default=[], metavar="ID",
                   help="a catalog product (repeatable)")
    d.add_argument("--topic", default="", help="what the text is about")
    d.add_argument("--project", type=Path, help="bot project directory (DESKMATE_PROJECT)")
    d.add_argument("--out", type=Path, metavar="FILE.md", help="also save the Markdown here")
    d.add_argument("--max-tokens", type=int, default=110, help="longest section, tokens (default 110)")
    d.add_argument("--fixed-outline", action="store_true", help="use the kind's fixed outline")
    d.add_argument("--seed", type=int, default=1, help="sampling seed (default 1)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument("--verbose", action="store_true", help="list the dropped sentences and why (stderr)")
    d.set_defaults(handler=_draft)


# ------------------------------------------------------------------ shared
@dataclass
class ShopData:
    root: Path
    settings: dict[str, Any]  # config.yml
    catalog: list[Product] = field(default_factory=list)

    @property
    def shop(self) -> str:
        return str((self.settings.get("persona") or {}).get("shop_name") or "our shop")

    @property
    def banned(self) -> list[str]:
        words = self.settings.get("banned_words") or []
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ProjectError(str(self.root / "config.yml"), "banned_words must be a list of words")
        if empty := cw.wordless(words):
            raise ProjectError(str(self.root / "config.yml"), f"banned_words: {empty[0]!r} has no "
                                                              "letters or digits, so it would match nothing")
        return words

    def product(self, product_id: str) -> Product:
        for p in self.catalog:
            if p.id.casefold() == product_id.casefold():
                return p
        raise ProjectError(str(self.root / "catalog.json"), f"no product {product_id!r}")

    def knowledge(self) -> list[tuple[str, str, str, tuple[str, ...]]]:
        from dialogue.knowledge import load_knowledge

        folder = self.root / "knowledge"
        if not folder.is_dir():
            return []
        return [(e.source, e.title, e.text, e.tags) for e in load_knowledge(folder)]


def load_shop(project: Path | None) -> ShopData:
    from dialogue.project import read_yaml

    root = Path(project or config.from_env().project)
    settings = read_yaml(root / "config.yml") if (root / "config.yml").is_file() else {}
    catalog = load_catalog(root / "catalog.json") if (root / "catalog.json").is_file() else []
    return ShopData(root, settings, catalog)


@contextlib.contextmanager
def open_model(shop: ShopData) -> Iterator[Any]:
    """The configured language model for the length of a command (tests swap in theirs)."""
    backend = config.from_env().lm_backend or str((shop.settings.get("language_model") or {})
                                                    .get("backend") or "embedded")
    if backend == "none":
        raise ConfigError("DESKMATE_LM_BACKEND", "these commands need a language model: "
                          "set it to embedded or remote")
    from model.lm import open_chat_model

    model = open_chat_model(backend=backend)
    try:
        yield model
    finally:
        close = getattr(model, "close", None)
        if close is not None:
            close()


def _bar(enabled: bool, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tok", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=False)


def _context(lm: Any) -> tuple[Callable[[Sequence[Any]], int], int]:
    """The model's token counter and context; for a remote model, whose tokenizer is not
    here, an over-estimate and the 2048 tokens every server offers."""
    from model.lm import approx_tokens

    return getattr(lm, "count_tokens", None) or approx_tokens, int(getattr(lm, "context", 0) or 2048)


def _words(csv: str, flag: str) -> tuple[str, ...]:
    """A comma-separated word list; an entry with no letter or digit (``--banned '!!'``) is
    refused, as it would match nothing and the check would pass unseen."""
    words = tuple(w.strip() for w in csv.split(",") if w.strip())
    if empty := cw.wordless(words):
        raise ConfigError(flag, f"{empty[0]!r} has no letters or digits, so it would match nothing")
    return words


# ------------------------------------------------------------------ copy
def ad_brief(args: argparse.Namespace, shop: ShopData) -> cw.AdBrief:
    """The brief of a ``copy`` run: the product's facts, the words asked for and banned."""
    if args.product:
        product = shop.product(args.product)
        name, facts, shown = product_facts(product)
    else:
        name, facts, shown = _read_facts(args.facts)
    knowledge = tuple(text for _, _, text, _ in shop.knowledge()) if args.with_knowledge else ()
    return cw.AdBrief(name, facts, args.audience, _words(args.keywords, "--keywords"), tone=args.tone,
                      max_chars=args.max_chars, banned=tuple(shop.banned) + _words(args.banned, "--banned"),
                      shown=shown, knowledge=knowledge)


def product_facts(product: Product) -> tuple[str, str, str]:
    """A catalog product's name, its facts (what ads may state) and its summary for the prompt."""
    return product.name, product.facts_text(), cw.product_summary(product)


def _read_facts(path: Path) -> tuple[str, str, str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # Notepad and PowerShell save with a BOM
    except OSError as exc:
        raise ProjectError(str(path), f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ProjectError(str(path), f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if text.lstrip().startswith("{"):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # reuse the catalog loader's checks
            listed = Path(tmp) / path.name
            listed.write_text(f"[{text}]", encoding="utf-8")
            product = load_catalog(listed)[0]
        return product_facts(product)
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.lower().startswith("name:")), "the product")
    facts = " ".join(text.split())
    return name, facts, facts


async def generate_ads(lm: Any, brief: cw.AdBrief, *, candidates: int, seed: int = 1,
                       bar: Any = None) -> list[tuple[str, int, float]]:
    """Candidate lines ``(text, seed, temperature)`` from concurrent streams (the embedded
    engine decodes them in one batch), :data:`LINES_PER_STREAM` lines each."""
    from model.lm import Usage

    streams = max(1, math.ceil(candidates / LINES_PER_STREAM))
    max_tokens = LINES_PER_STREAM * (brief.max_chars // 3 + 8)  # ~3.5 characters a token, and slack
    messages = cw.ad_messages(brief, LINES_PER_STREAM)
    count, context = _context(lm)
    if count(messages) + max_tokens > context:
        raise ProjectError("facts", f"the product facts are too long for the model's context ({context} "
                                    "tokens); shorten them")

    async def one(i: int) -> list[tuple[str, int, float]]:
        temperature = AD_TEMPERATURES[i % len(AD_TEMPERATURES)]
        usage, text, used = Usage(), "", 0
        gen = lm.stream(messages, max_tokens=max_tokens, temperature=temperature, top_p=0.95,
                        seed=seed + i, usage=usage)
        async with contextlib.aclosing(gen):
            async for delta in gen:
                text, used = text + delta, used + 1
                if bar is not None:
                    bar.update(1)
                if "\n" in delta and len(cw.parse_ad_lines(text, complete=False)) >= LINES_PER_STREAM:
                    break  # enough lines: free the engine's slot for the others
        if bar is not None:
            bar.update(max_tokens - used)
        lines = cw.parse_ad_lines(text, complete=usage.finish_reason == "stop")
        return [(line, seed + i, temperature) for line in lines]

    results = await asyncio.gather(*(one(i) for i in range(streams)))
    return [line for lines in results for line in lines]


async def copy_report(lm: Any, brief: cw.AdBrief, *, n: int, candidates: int, rounds: int = 2,
                      seed: int = 1, bar: Any = None) -> dict[str, Any]:
    """Generate, check and rank; the report ``--json`` prints (and the agent console's
    ``copy_result``). When fewer than ``n`` lines pass, another round of ``candidates`` lines
    (new seeds) is generated, up to ``rounds``. ``bar`` (a tqdm) is sized for one round and
    grows by one per extra round."""
    checker = cw.AdChecker(brief)
    streams = max(1, math.ceil(candidates / LINES_PER_STREAM))
    per_round = streams * LINES_PER_STREAM * (brief.max_chars // 3 + 8)
    started = time.monotonic()
    lines: list[tuple[str, int, float]] = []
    for done in range(1, rounds + 1):
        lines += await generate_ads(lm, brief, candidates=candidates, seed=seed + (done - 1) * streams,
                                    bar=bar)
        variants = cw.rank(lines, checker, n)
        selected = [v for v in variants if v.status == "selected"]
        if len(selected) >= n or done == rounds:
            break
        if bar is not None:
            bar.total += per_round
            bar.refresh()
    return {"product": brief.product, "audience": brief.audience, "keywords": list(brief.keywords),
            "tone": brief.tone, "max_chars": brief.max_chars, "banned": list(brief.banned),
            "model": str(getattr(lm, "name", "")), "seconds": round(time.monotonic() - started, 1),
            "requested": n, "rounds": done, "generated": len(lines), "unique": len(variants),
            "passed": sum(v.status in ("selected", "passed") for v in variants),
            "duplicates": sum(v.status == "duplicate" for v in variants),
            "enough": len(selected) >= n, "weights": cw.WEIGHTS,
            "warnings": [f"keyword {k!r} is not supported by the product data: every line using it fails"
                         for k in checker.unsupported_keywords()],
            "variants": [v.to_dict() for v in variants]}


def run_copy(lm: Any, brief: cw.AdBrief, *, n: int, candidates: int, rounds: int = 2, seed: int = 1,
             progress: bool = False) -> dict[str, Any]:
    """:func:`copy_report` for the command line, with its progress bar."""
    streams = max(1, math.ceil(candidates / LINES_PER_STREAM))
    per_round = streams * LINES_PER_STREAM * (brief.max_chars // 3 + 8)
    with _bar(progress, per_round, "ad lines") as bar:
        try:
            return asyncio.run(copy_report(lm, brief, n=n, candidates=candidates, rounds=rounds, seed=seed,
                                           bar=bar))
        except DeskmateError:
            raise
        except Exception as exc:  # the model failed (unreachable, broke mid-stream): said, not a traceback
            raise _failed("the ads", exc) from exc


def _copy(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigError("--n", "must be at least 1")
    if args.max_chars < cw.MIN_CHARS:
        raise ConfigError("--max-chars", f"must be at least {cw.MIN_CHARS}")
    shop = load_shop(args.project)
    brief = ad_brief(args, shop)
    candidates = args.candidates or 3 * args.n
    with open_model(shop) as lm:
        report = run_copy(lm, brief, n=args.n, candidates=candidates, rounds=max(1, args.rounds),
                          seed=args.seed, progress=not args.quiet)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_copy(report, sys.stdout)
    sys.stdout.flush()
    if not report["enough"]:
        print(f"deskmate: only {sum(v['status'] == 'selected' for v in report['variants'])} of "
              f"{args.n} ads passed the checks", file=sys.stderr)
    return 0 if report["enough"] else 1


def print_copy(report: dict[str, Any], out: TextIO) -> None:
    """The human-readable ``copy`` output: the ranked ads with their score parts, then why
    the best of the others failed when there are too few."""
    w = out.write
    w(f"Ads for {report['product']} · audience: {report['audience']} · keywords: "
      f"{', '.join(report['keywords'])} · tone: {report['tone']} · at most {report['max_chars']} chars\n")
    w(f"{report['generated']} lines in {report['rounds']} round(s) from {report['model']} in "
      f"{report['seconds']} s; {report['unique']} distinct, {report['passed']} passed the checks, "
      f"{report['duplicates']} near-duplicate(s) dropped.\n")
    for warning in report["warnings"]:
        w(f"warning: {warning}\n")
    variants = report["variants"]
    selected = [v for v in variants if v["status"] == "selected"]
    for v in selected:
        parts = " · ".join(f"{k} {v['breakdown'].get(k, 0):.2f}" for k in cw.WEIGHTS)
        w(f"\n{v['rank']:>2}. {v['text']}\n    score {v['score']:.2f} = {parts} ({v['chars']} chars)\n")
    if not report["enough"]:
        rejected = [v for v in variants if v["status"] == "rejected"]
        w(f"\nOnly {len(selected)} of {report['requested']} ads passed. The closest of the "
          f"{len(rejected)} rejected lines (not usable as they are):\n")
        for v in rejected[:max(3, report["requested"] - len(selected))]:
            w(f"  ✗ {v['text']}\n    " + "; ".join(v["reasons"]) + "\n")
    elif any(v["status"] == "rejected" for v in variants):
        count = sum(v["status"] == "rejected" for v in variants)
        w(f"\n{count} lines failed a check (--json lists them with the reasons).\n")


# ------------------------------------------------------------------ draft
@dataclass
class SectionReport:
    heading: str
    outcome: str = "model"  # model | retried | fallback
    kept: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (sentence, why)
    blocked: list[str] = field(default_factory=list)  # facts that stopped a generation


@dataclass
class DraftReport:
    outline: dr.Outline
    sections: list[SectionReport]
    markdown: str
    given: list[dr.Piece]  # the pieces some section was written from, as the facts list shows them
    cited: list[bool]


class _Done:
    """The end of one attempt at a section: the facts that stopped it, or why it failed."""

    def __init__(self, blocked: list[str], error: Exception | None = None) -> None:
        self.blocked = blocked
        self.error = error


def _failed(what: str, exc: Exception) -> DeskmateError:
    """The error a draft stops with when the model fails: the model is unreachable or broke
    mid-stream; that is not "it wrote nothing usable", which a fallback would hide."""
    detail = str(exc) if isinstance(exc, DeskmateError) else f"{type(exc).__name__}: {exc}"
    return DeskmateError(f"writing {what} failed: {detail}")


def plan_from_args(kind: str, product_ids: Sequence[str], topic: str, shop: ShopData) -> dr.DraftPlan:
    products = [shop.product(pid) for pid in product_ids]
    if kind == "product-description" and not products:
        raise ConfigError("--product", "a product description needs a product")
    if not products and not topic:
        raise ConfigError("--topic", f"a {kind} needs --topic or --product")
    spec = dr.KINDS[kind]
    # Topic and the kind's own words only: product tags matched entries by chance
    # ("running" -> "Do your items run small?").
    query = f"{topic} {spec.hints}"
    knowledge = dr.pick_knowledge(shop.knowledge(), query, 2 if products else 4)
    about = str((shop.settings.get("persona") or {}).get("shop_description") or "")
    return dr.plan_draft(kind, products, knowledge, topic=topic, shop=shop.shop, about_shop=about)


async def write_draft(lm: Any, plan: dr.DraftPlan, out: Sequence[TextIO], *, banned: Sequence[str] = (),
                      seed: int = 1, max_tokens: int = 110, model_outline: bool = True,
                      bar: Any = None) -> DraftReport:
    """Outline, then sections: all first attempts start at once (the engine batches them)
    and are written in order as their grounded sentences arrive."""
    from model.lm import complete

    def write(text: str) -> None:
        for stream in out:
            stream.write(text)
            stream.flush()

    parts: list[str] = []

    def emit(text: str) -> None:
        parts.append(text)
        write(text)

    names = plan.names
    if model_outline:
        try:
            reply = await complete(lm, cast(Any, dr.outline_messages(plan)),
                                   max_tokens=OUTLINE_TOKENS, temperature=0.3, seed=seed)
        except Exception as exc:
            raise _failed("the outline", exc) from exc
        if bar is not None:
            bar.update(OUTLINE_TOKENS)
        outline = dr.validate_outline(dr.parse_outline(reply), plan)
    else:
        outline = dr.Outline(dr.fixed_outline(plan), "fixed")
    if bar is not None:
        bar.total = bar.n + len(outline.headings) * max_tokens
        bar.refresh()
    evidence = Evidence(plan.evidence)
    count, context = _context(lm)

    given: set[str] = set()  # ids of the pieces some section was written from

    def messages(heading: str) -> tuple[list[dict[str, str]], list[dr.Piece]]:
        pieces = dr.section_pieces(plan, heading)
        msgs = dr.section_messages(plan, heading, pieces)
        while count(cast(Any, msgs)) + max_tokens > context and any(p.kind == "knowledge" for p in pieces):
            drop = max(i for i, p in enumerate(pieces) if p.kind == "knowledge")  # least relevant last
            pieces = pieces[:drop] + pieces[drop + 1:]
            msgs = dr.section_messages(plan, heading, pieces)
        given.update(p.id for p in pieces)
        return msgs, pieces

    def start(heading: str, attempt: int) -> asyncio.Queue[str | _Done]:
        queue: asyncio.Queue[str | _Done] = asyncio.Queue()
        msgs, _ = messages(heading)
        temperature = SECTION_TEMPERATURE if attempt == 1 else RETRY_TEMPERATURE
        tasks.append(asyncio.create_task(_attempt(lm, msgs, evidence, queue, seed=seed + 100 * attempt,
                                                  temperature=temperature, max_tokens=max_tokens, bar=bar)))
        return queue

    tasks: list[asyncio.Task[None]] = []
    gate = dr.SentenceGate(plan.guard(), banned=banned, names=names)
    reports = [SectionReport(h) for h in outline.headings]
    try:
        queues = [start(h, 1) for h in outline.headings]
        emit(f"# {plan.title}\n")
        used: list[str] = []
        for report, queue in zip(reports, queues, strict=True):
            emit(f"\n## {report.heading}\n\n")
            pieces = messages(report.heading)[1]
            attempt, source = 1, queue
            while True:
                # Sentences wait until one of them states a fact of the section: a section
                # of pure filler ("a great choice for a lot of people") is not printed.
                held: list[str] = []
                while not isinstance(item := await source.get(), _Done):
                    sentence, problem = gate.check(item)
                    if problem is not None:
                        if sentence:
                            report.dropped.append((sentence, str(problem)))
                        continue
                    held.append(sentence)
                    if report.kept or any(dr.cited(sentence, pieces, ignore=names)):
                        for text in held:
                            emit(("" if report.kept == 0 else " ") + text)
                            report.kept += 1
                        held = []
                if item.error is not None:
                    raise _failed(f"the section {report.heading!r}", item.error) from item.error
                report.dropped += [(text, "states none of the section's facts") for text in held]
                gate.forget(held)
                report.blocked += item.blocked
                step = dr.next_step(report.kept, attempt)
                if step == "retry":
                    attempt, report.outcome = 2, "retried"
                    if bar is not None:
                        bar.total += max_tokens
                        bar.refresh()
                    source = start(report.heading, 2)
                    continue
                if step == "fallback":
                    report.outcome = "fallback"
                    text = dr.fallback_text(report.heading, pieces, used)
                    gate.kept.append(text)
                    emit(text)
                break
            body = "".join(parts)
            used = [p.id for p, mark in zip(plan.pieces, dr.cited(body, plan.pieces, ignore=names),
                                            strict=True) if mark]
            emit("\n")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    body = "".join(parts)
    listed = [p for p in plan.pieces if p.id in given]
    marks = dr.cited(body, listed, ignore=names)
    emit("\n" + dr.facts_markdown(listed, marks))
    return DraftReport(outline, reports, "".join(parts), listed, marks)


async def _attempt(lm: Any, messages: list[dict[str, str]], evidence: Evidence,
                   queue: asyncio.Queue[str | _Done], *, seed: int, temperature: float, max_tokens: int,
                   bar: Any) -> None:
    """One generation of one section: its grounded sentences onto ``queue``, then a _Done
    (carrying the model's error, if it failed)."""
    used = 0
    error: Exception | None = None

    async def counted(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        nonlocal used
        async for chunk in chunks:
            used += 1
            if bar is not None:
                bar.update(1)
            yield chunk

    grounded = GroundedStream(counted(lm.stream(messages, max_tokens=max_tokens, temperature=temperature,
                                                top_p=0.95, seed=seed)), evidence)
    try:
        async for sentence in grounded:
            queue.put_nowait(sentence)
    except Exception as exc:  # the reader raises it, in section order
        error = exc
    finally:
        if bar is not None:
            bar.update(max(0, max_tokens - used))
        queue.put_nowait(_Done([f"{f.kind} {f.text!r}" for f in grounded.blocked], error))


def _draft(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_out(args.out, "--out")
    shop = load_shop(args.project)
    plan = plan_from_args(args.kind, args.product, args.topic, shop)
    # The bar would tear the streamed text apart when both go to the same terminal.
    progress = not args.quiet and not (sys.stdout.isatty() and sys.stderr.isatty())
    with contextlib.ExitStack() as stack:
        outs: list[TextIO] = [sys.stdout]
        if args.out:
            # Written beside the file and renamed over it once the draft is done: a model that
            # fails to load, or a Ctrl-C, leaves yesterday's draft as it was (opening the file
            # itself truncated it before the model was even loaded).
            outs.append(stack.enter_context(replaced(args.out)))
        lm = stack.enter_context(open_model(shop))
        bar = stack.enter_context(_bar(progress, OUTLINE_TOKENS, "draft"))
        report = asyncio.run(write_draft(lm, plan, outs, banned=shop.banned, seed=args.seed,
                                         max_tokens=args.max_tokens, model_outline=not args.fixed_outline,
                                         bar=bar))
    print(f"outline: {report.outline.source}"
          + (f" (the model's was unusable: {report.outline.rejected[0][1]})"
             if report.outline.source == "fixed" and report.outline.rejected else ""), file=sys.stderr)
    for s in report.sections:
        note = f"; stopped at {', '.join(s.blocked)}" if s.blocked else ""
        print(f"  {s.heading}: {s.outcome}, {s.kept} sentences kept, {len(s.dropped)} dropped{note}",
              file=sys.stderr)
        for sentence, why in s.dropped if args.verbose else []:
            print(f"    - {sentence}  [{why}]", file=sys.stderr)
    return 0
