"""Ad copy kept to the shop's facts: prompts, checks, scoring. No I/O.

``bot/cli_marketing.py`` drives the language model; drafts live in :mod:`dialogue.drafting`
and share the word handling and claim checks defined here.

**Ad lines** (``deskmate copy``). :func:`ad_messages` asks the model for a few ad lines
(two invented products as examples, one line per ad); :func:`parse_ad_lines` strips the
clutter small models add (numbering, quotes, emoji, "Here are..."). :class:`AdChecker`
rejects a line that is too long, misses a keyword, uses a banned word, or states what
the product data does not: a number, price or policy term (:mod:`dialogue.grounding`), a
material, colour, property, origin or status claim, a superlative, an unknown name, or
words of the prompt's example products. :func:`rank` scores the lines that pass
(:data:`WEIGHTS`), drops near-duplicates and orders them best first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from dialogue.grounding import Evidence
from dialogue.recommend import Product

Message = dict[str, str]

# ------------------------------------------------------------------ words
# Letters and digits of any script: "тёплая" and "café" are words too (an ASCII pattern
# dropped them, and with them the keywords and banned words written in them).
_TOKEN = re.compile(r"[^\W_]+")
# What may separate the halves of a word written in two: a hyphen or a space, nothing else.
_SPLIT = re.compile(r"\s*[-‐‑]\s*|\s+")
STOPWORDS = frozenset("""a an and are as at be but by for from has have in into is it its it's
    of on or our so that the their this to was with you your yours we us all any every
    will can just more than then them they what when where which who how not no""".split())


def stem(word: str) -> str:
    """A crude English stem, the same on both sides of every comparison: ``cushioned``,
    ``cushions`` and ``cushioning`` -> ``cushion``; ``lighter`` -> ``light``; ``running``
    -> ``run``. Enough to tolerate plurals and inflections; not a lemmatiser."""
    w = word.casefold()
    if len(w) > 3 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith("es") and w[-3] in "sxz" or w.endswith(("ches", "shes")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed", "er", "est", "ly"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[:-len(suffix)]
            break
    if w.endswith("i") and len(w) > 3:
        w = w[:-1] + "y"
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiouls":
        w = w[:-1]  # runn -> run, bigg -> big
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


def tokens(text: str) -> list[str]:
    """The words of ``text``, case-folded (NFC first, so that a decomposed "é" stays one word)."""
    return _TOKEN.findall(unicodedata.normalize("NFC", text).casefold())


def stems(text: str) -> list[str]:
    return [stem(t) for t in tokens(text)]


def wordless(words: Iterable[str]) -> list[str]:
    """The entries of a word list (keywords, banned words) with no letter or digit in any
    script: nothing can match them, so a check built on them would silently pass."""
    return [w for w in words if not tokens(w)]


def _split_words(text: str) -> list[tuple[int, str]]:
    """``(index, stem)`` of every two adjacent words of ``text`` joined into one, where
    only a hyphen or a space separates them: ``water-proof`` -> ``(i, "waterproof")``, so
    that a claim word split in two is still that claim. ``index`` counts :func:`tokens`."""
    folded = unicodedata.normalize("NFC", text).casefold()
    spans = [m.span() for m in _TOKEN.finditer(folded)]
    return [(i, stem(folded[a:b] + folded[c:d])) for i, ((a, b), (c, d)) in enumerate(pairwise(spans))
            if _SPLIT.fullmatch(folded[b:c])]


def find_phrase(haystack: Sequence[str], phrase: Sequence[str]) -> int:
    """Index of the first run of ``phrase`` (stems) in ``haystack`` (stems), or -1."""
    n = len(phrase)
    for i in range(len(haystack) - n + 1):
        if list(haystack[i:i + n]) == list(phrase):
            return i
    return -1


def find_word(words: Sequence[str], phrase: Sequence[str]) -> int:
    """Index of ``phrase`` (a keyword's stems) in ``words`` (a text's tokens), or -1.
    Inflections match ("cushions", "cushioning" for "cushioned"), and so does a one-word
    keyword of four letters or more beginning a compound ("lightweight" for "light")."""
    at = find_phrase([stem(w) for w in words], phrase)
    if at >= 0 or len(phrase) != 1 or len(phrase[0]) < 4:
        return at
    return next((i for i, w in enumerate(words) if w.startswith(phrase[0]) and len(w) - len(phrase[0]) >= 4),
                -1)


def form_problems(text: str) -> list[Problem]:
    """A word said three times, or a list of words instead of a sentence."""
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for t in tokens(text):
        if t not in STOPWORDS and len(t) > 2:
            counts[stem(t)] = counts.get(stem(t), 0) + 1
            first.setdefault(stem(t), t)
    out = [Problem("form", f"repeats {first[w]!r} {n} times") for w, n in counts.items() if n >= 3]
    words = [stem(t) for t in tokens(text)]
    for i, w in enumerate(words):  # "leather leather", "stylish and stylish"; not "light steps, light runs"
        if w in counts and (words[i + 1:i + 2] == [w] or (words[i + 1:i + 2] in (["and"], ["or"])
                                                         and words[i + 2:i + 3] == [w])):
            out.append(Problem("form", f"repeats {first[w]!r}"))
            break
    short = [seg for seg in re.split(r"[,:;]", text) if 0 < len(tokens(seg)) <= 2]
    if len(short) >= 4:
        out.append(Problem("form", "a list of words, not a sentence"))
    return out


def content(text: str) -> set[str]:
    """The stems of a text's content words (for overlap and near-duplicates)."""
    return {stem(t) for t in tokens(text) if t not in STOPWORDS and len(t) > 1}


def overlap_without(a: str, b: str, names: str) -> float:
    skip = content(names)
    x, y = content(a) - skip, content(b) - skip
    return len(x & y) / len(x | y) if x and y else 0.0


def overlap(a: str, b: str) -> float:
    """Jaccard overlap of two texts' content stems (0: nothing shared, 1: the same words)."""
    x, y = content(a), content(b)
    return len(x & y) / len(x | y) if x and y else 0.0


# ------------------------------------------------------------------ claims
# Words that state something checkable about a product. Each must occur (as a stem
# sequence) in the product data; subjective words ("comfortable", "stylish") pass, as a
# pattern cannot judge them.
CLAIMS: dict[str, tuple[str, ...]] = {
    "material": ("leather", "suede", "cotton", "wool", "merino", "cashmere", "silk", "linen", "denim",
                 "mesh", "fleece", "nylon", "polyester", "canvas", "rubber", "foam", "gore-tex", "knit",
                 "bamboo", "hemp", "velvet", "corduroy", "steel", "aluminium", "aluminum", "plastic",
                 "eva", "spandex", "elastane", "lycra", "cork", "jute", "ripstop", "down-filled"),
    "colour": ("white", "black", "navy", "grey", "gray", "blue", "red", "green", "olive", "beige",
               "brown", "pink", "yellow", "orange", "purple", "khaki", "burgundy", "ivory", "charcoal",
               "teal", "turquoise", "lilac", "maroon"),
    "property": ("waterproof", "water-resistant", "water-repellent", "windproof", "weatherproof",
                 "breathable", "insulated", "thermal", "warm", "lightweight", "ultralight", "ultra-light",
                 "durable", "durability", "stretch", "stretchy", "non-slip", "anti-slip", "slip-resistant",
                 "grippy", "quick-dry", "reflective", "padded", "washable", "wrinkle-free", "hypoallergenic",
                 "antibacterial", "odour-resistant", "odor-resistant", "uv", "supportive", "orthopedic",
                 "cushioned", "shock-absorbing", "moisture-wicking", "sweat-wicking"),
    "origin": ("organic", "recycled", "sustainable", "sustainably", "eco", "eco-friendly", "vegan",
               "handmade", "hand-made", "handcrafted", "fair trade", "fairtrade", "ethical", "ethically",
               "carbon-neutral", "biodegradable", "locally", "made in"),
    "status": ("luxury", "luxurious", "premium", "quality", "award", "award-winning", "certified", "official",
               "patented", "exclusive", "limited", "bestseller", "best-selling", "best seller", "top-rated",
               "high-end", "number one", "unique", "one-of-a-kind", "iconic", "famous", "legendary",
               "brand-new", "brand new", "just launched", "just arrived", "proven", "clinically", "tested",
               "approved", "recommended", "trusted", "leading", "world-class", "renowned", "popular"),
    "deal": ("cheap", "bargain", "deal", "save", "savings", "half price", "affordable", "budget-friendly",
             "special offer", "clearance", "last chance", "while stocks last", "few left", "selling fast",
             "sold out", "running out", "ends soon"),
    "superlative": ("best", "ultimate", "unbeatable", "unmatched", "unrivalled", "unrivaled", "ever",
                    "most"),
}
# Longest first, so that "best seller" claims its words before "best" is looked at.
_CLAIM_PHRASES = sorted(((kind, term, stems(term)) for kind, terms in CLAIMS.items() for term in terms),
                        key=lambda c: -len(c[2]))
# One-word claims, by stem: also found written as two words ("water-proof", "hand crafted").
_ONE_WORD_CLAIMS = {phrase[0]: (kind, term) for kind, term, phrase in reversed(_CLAIM_PHRASES)
                    if len(phrase) == 1}
# Words ending in -est that are not superlatives ("interest", "harvest").
_NOT_SUPERLATIVE = frozenset("""interest forest honest modest harvest request suggest digest protest
    contest manifest arrest invest attest priest conquest inquest unrest earnest tempest behest
    midwest everest bequest""".split())
_SUPERLATIVE = re.compile(r"\b[a-z]{3,}(?:est)\b")
# Title words that a capitalised heading or line may use without naming anything.
_TITLE_WORDS = STOPWORDS | frozenset("""meet say hello get go grab try step why what how new good know
    more here now today ready made for with""".split())

# Scoring. Weights sum to 1; each part is 0..1 (see docs/marketing.md).
WEIGHTS: dict[str, float] = {"keywords": 0.30, "length": 0.20, "tone": 0.15, "readability": 0.20,
                             "novelty": 0.15}
MIN_CHARS = 20  # the shortest line length a brief may ask for (--max-chars)
TARGET_SHARE = 0.75  # an ad of about 3/4 of the allowed length reads complete yet not cramped
DUPLICATE = 0.6  # content-word overlap at or above this with a better line: a near-duplicate
TONES: dict[str, tuple[str, ...]] = {
    "friendly": ("you", "your", "easy", "enjoy", "love", "meet", "say hello", "ready", "happy",
                 "everyday", "comfy", "favourite", "favorite", "feel"),
    "premium": ("classic", "refined", "timeless", "elegant", "effortless", "understated", "clean",
                "considered", "quietly", "detail", "simple", "pure", "polished", "calm"),
    "urgent": ("now", "today", "don't wait", "hurry", "grab", "go", "get", "ready", "move", "start",
               "time", "quick"),
}


@dataclass(frozen=True)
class Problem:
    """Why a line (or sentence) fails: ``check`` names the rule, ``detail`` says what."""

    check: str  # length | keyword | banned | fact | claim | name | example | form
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


class ClaimGuard:
    """Claim words, superlatives, unknown names and example words a text may not use.

    ``evidence`` is what the shop wrote about the product (and, where allowed, its
    knowledge); ``allowed`` adds words that are not claims about the product (audience,
    keywords, topic) for the name check only; ``foreign`` lists words that must not
    appear at all (the prompt's invented example products).
    """

    def __init__(self, evidence: Iterable[str], *, allowed: Iterable[str] = (),
                 foreign: Iterable[str] = ()) -> None:
        texts = list(evidence)
        self.stems = [stems(t) for t in texts]
        self.joined = {joined for t in texts for _, joined in _split_words(t)}  # "water-proof": "waterproof"
        self.words = {t for text in texts for t in tokens(text)}
        self.known = self.words | {t for text in allowed for t in tokens(text)}
        known_stems = {stem(t) for t in self.known}
        self.foreign = {stem(t) for text in foreign for t in tokens(text) if t not in STOPWORDS} - known_stems

    def _stated(self, phrase: Sequence[str]) -> bool:
        """Whether the evidence says ``phrase``, also written as one word ("bestseller") or,
        for a one-word claim, as two ("water-proof")."""
        return any(find_phrase(s, phrase) >= 0 for s in self.stems) or (
            len(phrase) > 1 and any(stem("".join(phrase)) in s for s in self.stems)) or (
            len(phrase) == 1 and phrase[0] in self.joined)

    def _claims(self, text: str) -> list[tuple[str, str, list[str]]]:
        """The claim terms ``(kind, term, stems)`` that ``text`` uses, each once. Every
        occurrence counts, except the words a longer claim already covers: "best seller"
        (a claim of its own, allowed or not) is not also the superlative "best", but a
        later "the best one" is."""
        words = tokens(text)
        have = [stem(w) for w in words]
        matches: list[tuple[int, int, str, str, list[str]]] = []  # (start, end, kind, term, stems)
        for kind, term, phrase in _CLAIM_PHRASES:
            n = len(phrase)
            for at in range(len(have) - n + 1):
                if have[at:at + n] != phrase:
                    continue
                # "mostly" stems to "most", "ultimately" to "ultimate": adverbs, not superlatives.
                if kind == "superlative" and words[at].endswith("ly") and not term.endswith("ly"):
                    continue
                matches.append((at, at + n, kind, term, phrase))
        for at, joined in _split_words(text):  # "water-proof", "hand crafted"
            if joined in _ONE_WORD_CLAIMS:
                kind, term = _ONE_WORD_CLAIMS[joined]
                matches.append((at, at + 2, kind, term, [joined]))
        taken: set[int] = set()
        out: list[tuple[str, str, list[str]]] = []
        for start, end, kind, term, phrase in sorted(matches, key=lambda m: (m[0] - m[1], m[0])):
            span = set(range(start, end))
            if span & taken:
                continue
            taken |= span
            if (kind, term, phrase) not in out:
                out.append((kind, term, phrase))
        return out

    def problems(self, text: str) -> list[Problem]:
        out = [Problem("claim", f"{kind} {term!r} is not in the product data")
               for kind, term, phrase in self._claims(text) if not self._stated(phrase)]
        lower = unicodedata.normalize("NFC", text).casefold()
        for m in _SUPERLATIVE.finditer(lower):
            word = m.group(0)
            if word not in _NOT_SUPERLATIVE and word not in self.words and word not in CLAIMS["superlative"]:
                out.append(Problem("claim", f"superlative {word!r} is not in the product data"))
        copied = sorted({t for t in tokens(text) if stem(t) in self.foreign})
        if copied:
            out.append(Problem("example", f"copies the prompt's example ({', '.join(copied)})"))
        for name in self._names(text):
            if stem(name) not in self.foreign:
                out.append(Problem("name", f"{name!r} is not in the product data"))
        return out

    def _names(self, text: str) -> list[str]:
        """Capitalised words not at a sentence start that nothing given mentions.
        A Title-Case line is exempt: its capitals mark style, not names."""
        words = re.findall(r"[A-Za-z][\w'’-]*", text)
        if words and sum(w[0].isupper() for w in words) >= 0.7 * len(words) and len(words) > 2:
            return []
        out: list[str] = []
        for m in re.finditer(r"(?<![\w'’-])([A-Z][a-z][\w'’-]*)", text):
            before = text[:m.start()].rstrip(" \"'“‘(")
            label = re.match(r"[\w'’-]*(?::|['’]s\b)", text[m.start():])  # "Tokyo: ...", "Heelie's"
            if (not before or before[-1] in ".!?:;—–-\n") and not label:
                continue
            word = m.group(1).rstrip("'’").removesuffix("'s").removesuffix("’s")
            if all(t in self.known or t in _TITLE_WORDS for t in tokens(word)):
                continue
            out.append(word)
        return out


# ------------------------------------------------------------------ ad lines
@dataclass(frozen=True)
class AdBrief:
    """What one ``deskmate copy`` run asks for (defaults written out)."""

    product: str  # the name the ads use ("Harbor Runner"; "the product" when unknown)
    facts: str  # the product data: the only source of claims (Product.facts_text() or a file)
    audience: str
    keywords: tuple[str, ...] = ()
    tone: str = "friendly"  # friendly | premium | urgent
    max_chars: int = 90  # at least MIN_CHARS
    banned: tuple[str, ...] = ()  # config.yml banned_words plus --banned
    shown: str = ""  # the facts as the model sees them (default: ``facts``)
    knowledge: tuple[str, ...] = ()  # shop-wide facts an ad may also state (opt-in)

    def __post_init__(self) -> None:
        if self.tone not in TONES:
            raise ValueError(f"tone must be one of {', '.join(TONES)}, not {self.tone!r}")
        if self.max_chars < MIN_CHARS:
            raise ValueError(f"max_chars must be at least {MIN_CHARS}, not {self.max_chars}")
        for what, words in (("keyword", self.keywords), ("banned word", self.banned)):
            if empty := wordless(words):
                raise ValueError(f"{what} {empty[0]!r} has no letters or digits to match")


def product_summary(product: Product) -> str:
    """The product as the model is shown it: its description only. The 135M model copies
    whatever it is given; with material, colours, price and tags in the prompt it wrote tag
    lists and over-long lines (measured: 2 of 36 lines passed, against 9 of 36 with the
    description alone). The checks still use every fact."""
    return product.description


# Two invented products as examples, one set of lines per tone: (name, facts, audience,
# keywords, lines by tone, the example's own nouns). Every line uses both keywords.
# ClaimGuard rejects lines that use the examples' names or nouns (unless the product's own
# data has them); the nouns are few on purpose: "ride" or "mornings" fit a sneaker ad too.
_EXAMPLES: list[tuple[str, str, str, tuple[str, ...], dict[str, str], str]] = [
    ("Alpine Trail Bottle", "A stainless steel water bottle that keeps drinks cold. Leak-proof lid. "
     "Fits bike bottle holders.", "cyclists", ("cold", "leak-proof"), {
         "friendly": "Cold water on every climb with the leak-proof Alpine Trail Bottle.\n"
                     "Meet the Alpine Trail Bottle: leak-proof, and your water stays cold.\n"
                     "Leak-proof and cold, it is made for cyclists like you.",
         "premium": "Cold, clean water in a leak-proof steel bottle: the Alpine Trail Bottle.\n"
                    "Quietly leak-proof, reliably cold. The Alpine Trail Bottle.\n"
                    "A leak-proof classic that keeps the water of every ride cold.",
         "urgent": "Get the leak-proof Alpine Trail Bottle now and ride with cold water.\n"
                   "Cold drinks and no leaks: grab your leak-proof bottle today.\n"
                   "Ride now, drink cold: the leak-proof Alpine Trail Bottle is ready.",
     }, "bottle lid cyclists bike"),
    ("Meadow Wool Scarf", "A soft merino wool scarf in grey and green. Warm but light.", "commuters",
     ("soft", "warm"), {
         "friendly": "Soft merino for cold mornings: the warm Meadow Wool Scarf.\n"
                     "Stay warm on the way to work with the soft Meadow Wool Scarf.\n"
                     "Warm and soft, in grey or green: say hello to your new scarf.",
         "premium": "Soft merino, quietly warm: the Meadow Wool Scarf.\n"
                    "A warm, soft classic in grey or green for every season.\n"
                    "Refined merino wool. Soft to the touch, warm all day.",
         "urgent": "Cold outside? Get the soft, warm Meadow Wool Scarf today.\n"
                   "Warm up now: the soft Meadow Wool Scarf is ready for you.\n"
                   "Grab a soft, warm scarf before your next cold morning.",
     }, "scarf merino commuters"),
]
EXAMPLE_WORDS = tuple(f"{name} {audience} {words}" for name, _, audience, _, _, words in _EXAMPLES)
_TONE_VOICE = {"friendly": "Sound warm and friendly; speak to the reader as 'you'.",
               "premium": "Sound calm, refined and understated.",
               "urgent": "Sound energetic and invite the reader to act now, without inventing "
                         "deadlines, discounts or stock levels."}


def _ad_request(name: str, facts: str, audience: str, keywords: Sequence[str], k: int) -> str:
    words = f" with the words {' and '.join(keywords)}" if keywords else ""
    return f"Product: {name}\nFacts: {facts}\nAudience: {audience}\nWrite {k} ads{words}."


def ad_messages(brief: AdBrief, k: int = 3) -> list[Message]:
    """Chat messages asking for ``k`` ad lines, one per line, for ``brief``."""
    system = (f"You write short ad lines for an online shop. Write each ad on its own line: one "
              f"sentence of at most {brief.max_chars} characters that uses every keyword. "
              f"{_TONE_VOICE[brief.tone]} Say only what the facts say: no prices, numbers, materials "
              "or promises that are not in the facts. No hashtags, no emoji, no numbering.")
    messages: list[Message] = [{"role": "system", "content": system}]
    for name, facts, audience, keywords, lines, _ in _EXAMPLES:
        messages.append({"role": "user", "content": _ad_request(name, facts, audience, keywords, 3)})
        messages.append({"role": "assistant", "content": lines[brief.tone]})
    messages.append({"role": "user", "content": _ad_request(brief.product, brief.shown or brief.facts,
                                                            brief.audience, brief.keywords, k)})
    return messages


_NUMBERING = re.compile(r"^\s*(?:(?:ad|option|variant|line)\s*\d+\s*[:.)-]\s*|\d+\s*[.):-]\s+|[-*•·>]+\s*)",
                        re.I)
# The model's own framing, not an ad: an echoed field ("Tone: friendly"), "Sure!", "Here are
# three ads". Ads may begin with the same words ("Sure-footed on wet roads", "Tone up your
# runs", "Here is your new everyday sneaker"), so the label must look like one.
_LABEL = re.compile(r"^(?:(?:product|facts?|audience|keywords?|tone)\s*:|sure\s*(?:[!,.]|$)|"
                    r"here(?:'s|’s|\s+(?:are|is))\s+(?:(?:some|a\s+few|the|your|my|more|\d+|two|three|"
                    r"four|five|six|seven|eight|nine|ten)\s+)*(?:\w+\s+)?"
                    r"(?:ads?|ad\s+lines?|lines?|options?|variants?|versions?|taglines?|slogans?)\b)", re.I)
# Quotes by family (double, single); the curly ones say whether they open or close.
_QUOTE_FAMILY = {"\"": "\"", "“": "\"", "”": "\"", "'": "'", "‘": "'", "’": "'"}


def clean_line(line: str) -> str:
    """One candidate line without numbering, quotes, Markdown emphasis or emoji."""
    text = "".join(c for c in line if unicodedata.category(c) not in ("So", "Cs", "Co", "Mn")
                   and c not in "\u200d\ufe0f")
    text = _NUMBERING.sub("", text.strip())
    text = text.replace("**", "").replace("__", "")
    text = " ".join(text.split())
    for _ in range(3):
        pairs, unpaired = _quote_pairs(text)
        if len(text) > 1 and pairs.get(0) == len(text) - 1:  # "…" around the whole line
            text = text[1:-1].strip()
        elif stray := [i for i in unpaired if i in (0, len(text) - 1) and text[i] in "\"“”"]:
            text = "".join(c for i, c in enumerate(text) if i not in stray).strip()  # a quote left open
        else:
            break
    return text


def _quote_pairs(text: str) -> tuple[dict[int, int], list[int]]:
    """The quotes of ``text`` paired up, ``({opening index: closing index}, [unpaired
    indexes])``. Curly quotes say which they are; a straight one opens at the start or
    after a space or bracket and closes elsewhere; one between two letters ("it's") is an
    apostrophe, not a quote."""
    pairs: dict[int, int] = {}
    unpaired: list[int] = []
    open_at: dict[str, list[int]] = {"\"": [], "'": []}  # by family, innermost last
    for i, c in enumerate(text):
        family = _QUOTE_FAMILY.get(c)
        before, after = text[i - 1:i], text[i + 1:i + 2]
        if family is None or family == "'" and before.isalnum() and after.isalnum():
            continue
        if c in "“‘" or c in "\"'" and (not before or before.isspace() or before in "([{—–-"):
            open_at[family].append(i)
        elif open_at[family]:
            pairs[open_at[family].pop()] = i
        else:
            unpaired.append(i)
    unpaired += [i for stack in open_at.values() for i in stack]
    return pairs, sorted(unpaired)


def parse_ad_lines(text: str, *, complete: bool = True) -> list[str]:
    """The candidate ad lines in a model reply. ``complete=False`` (the reply was cut at
    max_tokens) drops the last, unfinished line."""
    lines = text.split("\n")
    if not complete and lines:
        lines = lines[:-1]
    out: list[str] = []
    for raw in lines:
        line = clean_line(raw)
        if not line or _LABEL.match(line) or line.endswith(":") or len(tokens(line)) < 3:
            continue
        out.append(line)
    return out


class AdChecker:
    """Every check a line must pass before it may be shown as a usable ad."""

    def __init__(self, brief: AdBrief) -> None:
        self.brief = brief
        self.evidence = Evidence([brief.facts, *brief.knowledge, brief.audience])
        self.claims = ClaimGuard([brief.facts, *brief.knowledge],
                                 allowed=[brief.product, brief.audience, *brief.keywords],
                                 foreign=EXAMPLE_WORDS)
        self.keywords = [(k, stems(k)) for k in brief.keywords]  # AdBrief refuses word-less ones
        self.banned = [(b, stems(b)) for b in brief.banned]

    def keyword_position(self, text: str, phrase: Sequence[str]) -> float | None:
        """Where the keyword starts, as a share of the line (None: absent)."""
        words = tokens(text)
        at = find_word(words, phrase)
        if at < 0:
            return None
        offset = len(" ".join(words[:at]))
        return offset / max(1, len(" ".join(words)))

    def problems(self, text: str) -> list[Problem]:
        out: list[Problem] = []
        if len(text) > self.brief.max_chars:
            out.append(Problem("length", f"{len(text)} characters > {self.brief.max_chars}"))
        for keyword, phrase in self.keywords:
            if self.keyword_position(text, phrase) is None:
                out.append(Problem("keyword", f"missing {keyword!r}"))
        words = tokens(text)
        for word, phrase in self.banned:
            if find_word(words, phrase) >= 0:
                out.append(Problem("banned", f"uses {word!r}"))
        out.extend(form_problems(text))
        for fact in self.evidence.unsupported(text):
            out.append(Problem("fact", f"{fact.kind} {fact.text!r} is not in the product data"))
        out.extend(self.claims.problems(text))
        return out

    def unsupported_keywords(self) -> list[str]:
        """Keywords that are themselves claims the product data does not make: every line
        must use them, so every line will fail. Said before generating."""
        return [k for k in self.brief.keywords if self.claims.problems(k)
                or self.evidence.unsupported(k)]


@dataclass
class Variant:
    """One candidate line, its checks and its score."""

    text: str
    seed: int | None = None
    temperature: float | None = None
    problems: list[Problem] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)  # the score's components, 0..1
    score: float = 0.0  # the weighted sum, 0..1
    status: str = "rejected"  # selected | passed | duplicate | rejected
    rank: int | None = None  # 1 = best, among selected and passed
    duplicate_of: str | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "chars": len(self.text), "status": self.status, "rank": self.rank,
                "passed": self.passed, "score": round(self.score, 4),
                "breakdown": {k: round(v, 4) for k, v in self.parts.items()},
                "reasons": [str(p) for p in self.problems], "duplicate_of": self.duplicate_of,
                "seed": self.seed, "temperature": self.temperature}


def readability(text: str) -> float:
    """0..1: distinct words (repetition reads badly), short words, few commas (lists)."""
    words = tokens(text)
    if not words:
        return 0.0
    main = [stem(w) for w in words if w not in STOPWORDS]
    distinct = len(set(main)) / len(main) if main else 0.0
    mean_len = sum(map(len, words)) / len(words)
    short = min(1.0, max(0.0, (8 - mean_len) / 3))
    commas = text.count(",")
    listy = 1.0 if commas <= 2 else max(0.0, 1 - (commas - 2) / 3)
    return (distinct + short + listy) / 3


def base_parts(text: str, checker: AdChecker) -> dict[str, float]:
    """The score's components that do not depend on the other lines."""
    brief = checker.brief
    if checker.keywords:
        positions = [checker.keyword_position(text, phrase) for _, phrase in checker.keywords]
        kw = sum(0.0 if p is None else 1.0 if p < 0.5 else 0.7 for p in positions) / len(positions)
    else:
        kw = 1.0
    target = TARGET_SHARE * brief.max_chars
    length = max(0.0, 1 - abs(len(text) - target) / target)
    have = stems(text)
    hits = sum(find_phrase(have, stems(w)) >= 0 for w in TONES[brief.tone])
    return {"keywords": kw, "length": length, "tone": min(1.0, hits / 2), "readability": readability(text)}


def rank(lines: Sequence[tuple[str, int | None, float | None]], checker: AdChecker, n: int) -> list[Variant]:
    """Check, score and order candidate lines ``(text, seed, temperature)``.

    Exact repeats are merged. Lines that pass are taken best base score first; one whose
    content words overlap a better kept line by :data:`DUPLICATE` or more becomes a
    ``duplicate``; the others get ``novelty = 1 - their largest overlap`` with a better
    kept line, are re-sorted by the full score, and the first ``n`` are ``selected``.
    Returns every variant: selected, passed, duplicate, then rejected (best score first).
    """
    seen: dict[str, Variant] = {}
    for text, seed, temperature in lines:
        key = " ".join(tokens(text))
        if key and key not in seen:
            seen[key] = Variant(text, seed, temperature, checker.problems(text))
    variants = list(seen.values())
    for v in variants:
        v.parts = base_parts(v.text, checker)
        v.score = sum(WEIGHTS[k] * x for k, x in v.parts.items())
    passing = sorted((v for v in variants if v.passed), key=lambda v: -v.score)
    kept: list[Variant] = []
    for v in passing:
        best = max(((overlap(v.text, k.text), k) for k in kept), key=lambda p: p[0], default=(0.0, None))
        if best[1] is not None and best[0] >= DUPLICATE:
            v.status, v.duplicate_of = "duplicate", best[1].text
            v.parts["novelty"] = 1 - best[0]
            v.score += WEIGHTS["novelty"] * v.parts["novelty"]
            continue
        v.parts["novelty"] = 1 - best[0]
        v.score += WEIGHTS["novelty"] * v.parts["novelty"]
        v.status = "passed"
        kept.append(v)
    kept.sort(key=lambda v: -v.score)
    for i, v in enumerate(kept, 1):
        v.rank = i
        if i <= n:
            v.status = "selected"
    for v in variants:
        if not v.passed:
            v.parts["novelty"] = 0.0
    duplicates = [v for v in passing if v.status == "duplicate"]
    rejected = sorted((v for v in variants if not v.passed), key=lambda v: (len(v.problems), -v.score))
    return kept + duplicates + rejected
