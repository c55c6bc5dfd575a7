"""Content drafts kept to the shop's facts: outlines, sections, fallbacks. No I/O.

``deskmate draft`` (driven by ``bot/cli_marketing.py``). The evidence is cut into
:class:`Piece` s (one product fact, one knowledge entry); :func:`outline_messages` asks for headings, which
:func:`parse_outline` and :func:`validate_outline` accept or replace with the kind's
fixed outline; :func:`section_messages` asks for one section; :class:`SentenceGate`
screens each grounded sentence; :func:`fallback_text` states a section's facts plainly
when the model gives nothing usable; :func:`cited` tells which pieces the text uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dialogue.copywriting import (
    DUPLICATE,
    EXAMPLE_WORDS,
    STOPWORDS,
    ClaimGuard,
    Message,
    Problem,
    clean_line,
    content,
    find_word,
    form_problems,
    overlap,
    overlap_without,
    stem,
    stems,
    tokens,
    wordless,
)
from dialogue.grounding import Evidence, extract_facts
from dialogue.recommend import Product


@dataclass(frozen=True)
class Piece:
    """One fact given to the model: a product detail, a knowledge entry or the topic."""

    id: str  # "P1001 price", "knowledge/faq.yml#returns-policy", "topic"
    label: str  # what the facts list calls it: "Harbor Runner · price", the entry's title
    text: str  # the fact as a sentence: the prompt, the evidence and the plain fallback
    kind: str = "product"  # product | knowledge | shop | topic


@dataclass(frozen=True)
class Kind:
    label: str  # "product description"
    voice: str  # one sentence of style for the section prompt
    # The outline used when the model's is unusable: (heading, what it needs). A section
    # that needs "product", "knowledge" or "shop" facts is left out of a draft without them
    # and is written from those facts only ({shop} is filled in).
    fixed: tuple[tuple[str, str], ...]
    hints: str  # words that pick the knowledge entries a draft of this kind may use


KINDS: dict[str, Kind] = {
    "product-description": Kind("product description", "Speak to the shopper as 'you'.",
                                (("Overview", "product"), ("Why you will like it", "product"),
                                 ("Materials, colours and sizes", "product"),
                                 ("Delivery and returns", "knowledge")), "shipping costs returns policy"),
    "blog-post": Kind("blog post", "Write like a helpful, friendly shop blog.",
                      (("Introduction", ""), ("What to look for", ""), ("Our picks", "product"),
                       ("Before you order", "knowledge")), "size fit delivery"),
    "newsletter": Kind("newsletter", "Write like a short, friendly newsletter to our customers.",
                       (("What's new", ""), ("Featured picks", "product"), ("Good to know", "knowledge")),
                       "newsletter free shipping"),
    "press-note": Kind("press note", "Write in the third person, factual, like a press release; "
                       "never address the reader.",
                       (("The announcement", ""), ("About the products", "product"),
                        ("Availability", "knowledge"), ("About {shop}", "shop")), "ship countries delivery"),
}
MIN_HEADINGS, MAX_HEADINGS = 3, 5


def _join(items: Sequence[str]) -> str:
    items = [i for i in items if i]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def _sizes(sizes: Sequence[str]) -> str:
    if sizes and all(s.isdigit() for s in sizes):
        values = sorted(int(s) for s in sizes)
        if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
            return f"{values[0]}–{values[-1]}"
    return ", ".join(sizes)


def product_pieces(product: Product) -> list[Piece]:
    """A product cut into single facts, each a sentence built only from catalog data and
    naming the product (a draft may feature several)."""
    name, pid = product.name, product.id
    kind = f"{product.category} ({product.subcategory})" if product.subcategory else product.category
    facts = [("name", "what it is", f"The {name} is one of our {kind}."),
             ("price", "price", f"The {name} costs {product.price_text}.")]
    if product.colors:
        facts.append(("colours", "colours", f"The {name} comes in {_join(product.colors)}."))
    if product.sizes:
        sizes = "one size" if product.one_size else f"sizes {_sizes(product.sizes)}"
        facts.append(("sizes", "sizes", f"The {name} is available in {sizes}."))
    if product.material:
        facts.append(("material", "material", f"The {name} is made of: {product.material}."))
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", product.description.strip()) if x]
    facts += [(f"description {i}", "description", x) for i, x in enumerate(sentences, 1)]
    facts.append(("stock", "stock", f"The {name} is {'in stock' if product.in_stock else 'out of stock'}."))
    if product.tags:
        facts.append(("tags", "tags", f"The {name} is tagged: {', '.join(product.tags)}."))
    return [Piece(f"{pid} {key}", f"{name} · {label}", text) for key, label, text in facts]


def pick_knowledge(entries: Sequence[tuple[str, str, str, Sequence[str]]], query: str,
                   k: int) -> list[Piece]:
    """The ``k`` knowledge entries ``(source, title, text, tags)`` sharing most content words
    with ``query`` (title and tags count double); none that share nothing."""
    want = content(query)
    scored: list[tuple[int, int, Piece]] = []
    for i, (source, title, text, tags) in enumerate(entries):
        head = content(title + " " + " ".join(tags))
        score = 2 * len(want & head) + len(want & content(text))
        if score:
            scored.append((-score, i, Piece(source, title, " ".join(text.split()), "knowledge")))
    return [p for _, _, p in sorted(scored, key=lambda s: (s[0], s[1]))[:k]]


@dataclass(frozen=True)
class DraftPlan:
    """Everything a draft is written from; ``evidence`` is what grounding checks against."""

    kind: str
    title: str
    subject: str  # "the Harbor Runner", or the topic
    shop: str
    pieces: tuple[Piece, ...]
    evidence: tuple[str, ...]  # the pieces plus every product's full facts_text()
    names: tuple[str, ...] = ()  # the products' names

    @property
    def spec(self) -> Kind:
        return KINDS[self.kind]

    def guard(self) -> ClaimGuard:
        return ClaimGuard(self.evidence, allowed=[self.title, self.subject, self.shop],
                          foreign=EXAMPLE_WORDS)


def plan_draft(kind: str, products: Sequence[Product], knowledge: Sequence[Piece], *, topic: str = "",
               shop: str = "our shop", about_shop: str = "") -> DraftPlan:
    """The title, subject and facts of a draft (the title is never invented). ``about_shop``
    is the project's public shop description (``persona.shop_description``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    names = _join([p.name for p in products])
    subject = topic or (f"the {names}" if names else shop)
    if kind == "product-description" or not topic:
        title = names or topic or shop
        if kind == "press-note" and names:
            title = f"{shop} presents the {names}"
    else:
        title = topic[:1].upper() + topic[1:]
    pieces = [p for product in products for p in product_pieces(product)]
    pieces += list(knowledge)
    if about_shop:
        pieces.append(Piece("config.yml#persona.shop_description", shop, " ".join(about_shop.split()),
                            "shop"))
    if topic:
        pieces.append(Piece("topic", "your topic", topic, "topic"))
    evidence = tuple([p.text for p in pieces] + [p.facts_text() for p in products])
    return DraftPlan(kind, title, subject, shop, tuple(pieces), evidence, tuple(p.name for p in products))


def facts_block(pieces: Sequence[Piece]) -> str:
    return "\n".join(f"- {p.text}" for p in pieces)


# The few-shot examples of the draft prompts: invented subjects, no facts (a 135M model
# copied the facts into sentences instead of writing headings when they were shown).
_OUTLINE_EXAMPLES = (
    ("product description", "the Alpine Trail Bottle",
     "Meet the Alpine Trail Bottle\nCold drinks on every ride\nBuilt for the road\nGood to know"),
    ("newsletter", "autumn walks", "Autumn is here\nOur picks for long walks\nWarm and dry\nSee you outside"),
)
_SECTION_EXAMPLE = (
    [Piece("x", "", "The Alpine Trail Bottle is one of our bottles (cycling)."),
     Piece("x", "", "Material: stainless steel, leak-proof lid."),
     Piece("x", "", "Keeps drinks cold. Fits bike bottle holders.")],
    "The Alpine Trail Bottle keeps your drinks cold on every ride. Its leak-proof lid stays shut "
    "in your bag, and it fits bike bottle holders.")
_EXAMPLE_HEADINGS = frozenset(h.lower() for _, _, text in _OUTLINE_EXAMPLES for h in text.split("\n"))


def outline_messages(plan: DraftPlan) -> list[Message]:
    """Chat messages asking for the draft's section headings, one per line."""
    system = ("You write section headings for marketing texts. A heading has 2 to 5 words. Answer with "
              f"{MAX_HEADINGS - 1} headings, one per line.")
    messages: list[Message] = [{"role": "system", "content": system}]
    for label, subject, headings in _OUTLINE_EXAMPLES:
        messages += [{"role": "user", "content": f"Headings for a {label} about {subject}:"},
                     {"role": "assistant", "content": headings}]
    messages.append({"role": "user", "content": f"Headings for a {plan.spec.label} about {plan.subject}:"})
    return messages


def section_pieces(plan: DraftPlan, heading: str) -> list[Piece]:
    """The facts a section is written from. A section of the fixed outline about the shop
    ("Delivery and returns") gets the knowledge entries and the products' names; any other
    gets the products' facts and the topic, plus the knowledge entries its heading is about
    (all of them when the draft has no product)."""
    need = next((n for h, n in plan.spec.fixed if h.format(shop=plan.shop) == heading), "")
    if need in ("knowledge", "shop") and any(p.kind == need for p in plan.pieces):
        return [p for p in plan.pieces if p.id.endswith(" name") or p.kind == need]
    has_product = any(p.kind == "product" for p in plan.pieces)
    return [p for p in plan.pieces if p.kind not in ("knowledge", "shop") or not has_product
            or content(heading) & content(p.label + " " + p.text) - content(plan.subject)]


def section_messages(plan: DraftPlan, heading: str, pieces: Sequence[Piece]) -> list[Message]:
    """Chat messages asking for one section (two or three plain sentences)."""
    facts, example = _SECTION_EXAMPLE
    name = "Alpine Trail Bottle"
    system = (f"You write marketing texts for the online shop {plan.shop}. Write 2 or 3 short, plain "
              f"sentences. No headings, no lists. {plan.spec.voice} Use only the facts given; never "
              "invent prices, numbers, materials, dates or promises.")

    def ask(label: str, about: str, head: str, shown: Sequence[Piece]) -> str:
        return f"Facts:\n{facts_block(shown)}\n\nWrite the section \"{head}\" of a {label} about {about}."

    return [{"role": "system", "content": system},
            {"role": "user", "content": ask("product description", f"the {name}", "Cold drinks on every ride",
                                            facts)},
            {"role": "assistant", "content": example},
            {"role": "user", "content": ask(plan.spec.label, plan.subject, heading, pieces)}]


_HEADING_LABEL = re.compile(r"^(?:(?:here (?:are|is)|outline|headings?|sections?)\b|sure\s*(?:[!,.]|$))",
                            re.I)
_PLACEHOLDER = re.compile(r"^(?:section|heading|header|part|title|chapter)s?(?:\s+(?:\d+|[ivx]+))?$", re.I)


def parse_outline(text: str) -> list[str]:
    """Candidate headings in a model reply: one per line, without numbering, Markdown
    marks, quotes or a trailing description ("**Fit**: how it fits" -> "Fit")."""
    out: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip().lstrip("#").strip()
        bold = re.search(r"\*\*(.+?)\*\*", line)
        if bold:
            line = bold.group(1)
        line = re.sub(r"^(?:section|heading|part)\s*\d+\s*[:.)-]\s*", "", clean_line(line), flags=re.I)
        head, sep, _ = line.partition(":")
        if sep and 0 < len(head.split()) <= 8:
            line = head
        line = line.strip(" .;:-–—\"'")
        if line and not _HEADING_LABEL.match(line):
            out.append(line)
    return out


@dataclass(frozen=True)
class Outline:
    headings: tuple[str, ...]
    source: str  # "model" | "fixed"
    rejected: tuple[tuple[str, str], ...] = ()  # (heading, why) of what the model wrote


def validate_outline(candidates: Sequence[str], plan: DraftPlan) -> Outline:
    """The model's headings when at least :data:`MIN_HEADINGS` of them are usable, else the
    kind's fixed outline. A heading is usable when it has 1–8 words and at most 60 characters,
    is mostly letters, is not a placeholder ("Section 2") or an example heading, shares a
    word with the facts or the subject, states nothing the facts do not (numbers, policy
    terms, claims, names), and is not a near-copy of the title or another."""
    guard = plan.guard()
    evidence = Evidence(plan.evidence)
    about = set().union(*(content(t) for t in (*plan.evidence, plan.subject, plan.title)))
    taken: list[str] = []
    rejected: list[tuple[str, str]] = []
    for heading in candidates:
        letters = sum(c.isalpha() for c in heading)
        why = ""
        if not 1 <= len(heading.split()) <= 8 or len(heading) > 60:
            why = "not 1–8 words of at most 60 characters"
        elif letters < 0.7 * len(heading.replace(" ", "")):
            why = "not mostly letters"
        elif _PLACEHOLDER.match(heading):
            why = "a placeholder"
        elif heading.lower() in _EXAMPLE_HEADINGS:
            why = "copies the prompt's example"
        elif not content(heading) & about:
            why = "about nothing in the facts or the subject"
        elif facts := evidence.unsupported(heading):
            why = f"states {facts[0].text!r}, not in the facts"
        elif problems := guard.problems(heading):
            why = str(problems[0])
        elif overlap(heading, plan.title) >= 0.8 and content(heading):
            why = "repeats the title"
        elif any(overlap(heading, t) >= DUPLICATE or heading.lower() == t.lower() for t in taken):
            why = "repeats another heading"
        if why:
            rejected.append((heading, why))
        elif len(taken) < MAX_HEADINGS:
            taken.append(heading)
    if len(taken) >= MIN_HEADINGS:
        return Outline(tuple(taken), "model", tuple(rejected))
    return Outline(fixed_outline(plan), "fixed", tuple(rejected))


def fixed_outline(plan: DraftPlan) -> tuple[str, ...]:
    """The kind's own outline, without the sections whose facts the draft does not have."""
    have = {p.kind for p in plan.pieces}
    return tuple(h.format(shop=plan.shop) for h, need in plan.spec.fixed if not need or need in have)


_ENDS_SENTENCE = re.compile(r"[.!?…][\"'”’)\]]*$")
_ECHO = re.compile(r"\bfacts:|write the section|plan a\b", re.I)


class SentenceGate:
    """Screens each grounded sentence of a draft, in document order.

    A sentence is dropped (the section goes on) when it is not a complete sentence, is a
    heading or list marker left alone, echoes the prompt, repeats itself, makes a claim the
    facts do not (:class:`ClaimGuard`), uses a banned word, or says again what an earlier
    sentence of the draft said. Numbers and policy terms were checked before, by
    :class:`~dialogue.grounding.GroundedStream`, which stops the section instead.
    """

    def __init__(self, guard: ClaimGuard, *, banned: Sequence[str] = (), names: Sequence[str] = ()) -> None:
        self.guard = guard
        self.names = " ".join(names)  # product names: said everywhere, not what makes a repeat
        if empty := wordless(banned):  # it would match nothing: the word would pass unseen
            raise ValueError(f"banned word {empty[0]!r} has no letters or digits to match")
        self.banned = [(b, stems(b)) for b in banned]
        self.kept: list[str] = []

    def check(self, raw: str) -> tuple[str, Problem | None]:
        """``(cleaned sentence, None)`` to keep it, or ``(cleaned, problem)`` to drop it."""
        stripped = raw.strip()
        if stripped.startswith("#"):
            return stripped, Problem("form", "a heading")
        text = clean_line(stripped)
        words = tokens(text)
        if len(words) < 3 or not _ENDS_SENTENCE.search(text):
            return text, Problem("form", "not a complete sentence")
        if _ECHO.search(text):
            return text, Problem("form", "echoes the prompt")
        # A repeated three-word run with two content words ("a great choice ... a great
        # choice"); "it's available in ... it's available in" is ordinary.
        grams = [g for g in (tuple(words[i:i + 3]) for i in range(len(words) - 2))
                 if sum(w not in STOPWORDS and len(w) > 1 for w in g) >= 2]
        if len(grams) != len(set(grams)):
            return text, Problem("form", "repeats itself")
        problems = form_problems(text) + self.guard.problems(text)
        problems += [Problem("banned", f"uses {b!r}") for b, p in self.banned if find_word(words, p) >= 0]
        if problems:
            return text, problems[0]
        for earlier in self.kept:
            if overlap_without(text, earlier, self.names) >= DUPLICATE:
                return text, Problem("duplicate", f"says again: {earlier!r}")
        self.kept.append(text)
        return text, None

    def forget(self, sentences: Iterable[str]) -> None:
        """Sentences that were kept here but then not used (their section was discarded)."""
        for sentence in sentences:
            if sentence in self.kept:
                self.kept.remove(sentence)


def next_step(kept: int, attempt: int) -> str:
    """What to do when a section's generation ended: ``done`` when a sentence survived
    (the caller counts a section's sentences only once one of them states a fact of the
    section), else ``retry`` (once, another seed, a lower temperature), else ``fallback``."""
    if kept:
        return "done"
    return "retry" if attempt == 1 else "fallback"


def fallback_text(heading: str, pieces: Sequence[Piece], used: Iterable[str] = ()) -> str:
    """A plain statement of the facts for a section the model could not write: the pieces
    its heading is about, else up to two not yet used; the text is the pieces' own."""
    taken = set(used)
    facts = [p for p in pieces if p.kind != "topic"] or list(pieces)
    about = [p for p in facts if content(heading) & content(p.label + " " + p.text)]
    fresh = [p for p in facts if p.id not in taken]
    # Facts not said yet come first; repeating one is the last resort.
    chosen = ([p for p in about if p.id not in taken] or fresh or about or facts)[:2]
    return " ".join(p.text for p in chosen)


def cited(text: str, pieces: Sequence[Piece], *, ignore: Iterable[str] = ()) -> list[bool]:
    """Whether ``text`` states each piece: it repeats one of the piece's checkable facts
    (price, number, duration, policy term...), or one sentence shares two of its content
    words (three for a long knowledge entry; one for a one-word piece). Words in
    ``ignore`` (the product names, said everywhere) do not count."""
    skip = {stem(w) for w in tokens(" ".join(ignore))} | content("it is comes available one our costs")
    have_facts = {(f.kind, f.key) for f in extract_facts(text)}
    sentences = [content(s) for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
    out: list[bool] = []
    for piece in pieces:
        facts = {(f.kind, f.key) for f in extract_facts(piece.text)}
        words = content(piece.text) - skip
        need = 1 if len(words) == 1 else 3 if len(words) > 12 else 2
        out.append(bool(facts & have_facts) or (bool(words) and any(len(words & s) >= need
                                                                     for s in sentences)))
    return out


def facts_markdown(pieces: Sequence[Piece], marks: Sequence[bool]) -> str:
    """The "Facts used" section that ends every draft: the pieces some section was given."""
    lines = ["## Facts used", "", "Given to the model as evidence; [x] marks the ones the text states.", ""]
    for piece, mark in zip(pieces, marks, strict=True):
        where, what = (piece.id, piece.label) if piece.kind == "knowledge" else (piece.label, piece.text)
        where = piece.id if piece.kind == "shop" else where
        lines.append(f"- [{'x' if mark else ' '}] {where}: {what}")
    return "\n".join(lines) + "\n"
