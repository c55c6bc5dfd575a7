"""Product recommendations from the shop's catalog, the customer's words and profile.

Ranking in two steps:

1. **Hard filters** for what the customer asked for: category, size available,
   colour available, price within budget. Out-of-stock and already-bought
   products never show. When the filters leave nothing, they are relaxed:
   the dropped set is the first, in this order, that leaves a product —
   colour; size; colour and size; budget; budget and colour; ...; category
   last (binary counting with colour as the lowest bit: a colour is the
   easiest wish to give up, the kind of product the hardest). Each product
   then says in its ``reasons`` which wish it misses ("not available in red").
2. **Soft scores**: likeness to what the customer recently viewed or put in
   the basket (same category, subcategory, tags; the most recent weighs most),
   products that go with what they bought (bought sneakers: socks, tees,
   jeans), overlap of their words with name, tags and description, and a small
   bonus for bestsellers. Products they viewed or carted come after all others,
   so the bot shows something new unless nothing else fits. Ties go to the
   cheaper product, then the lower id, so the same input gives the same list.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import ProjectError

_SIGNS = {"EUR": "€", "USD": "$", "GBP": "£"}

# Weights of the soft scores. A recent view of the same category (1.0) outweighs
# word overlap on one word (0.6) and the bestseller bonus (0.2); the bonus only
# breaks near-ties. A purchase weighs 1.2 so the first complement of a bought
# item (socks for sneakers) beats a bestselling second one.
_VIEWED, _CARTED, _BOUGHT = 1.0, 1.5, 1.2
_DECAY = 0.7  # each older signal counts 0.7 times the one after it
_RECENT = 5  # signals older than the last five views (or carts, or buys) are ignored
_NAME_WORD, _TEXT_WORD = 0.6, 0.3
_BESTSELLER = 0.2
_REASON_MIN = 0.5  # a profile signal weaker than this is not worth naming on a card

# What goes with a bought category: categories or subcategories, best first.
COMPLEMENTS: Mapping[str, tuple[str, ...]] = {
    "sneakers": ("socks", "t-shirts", "jeans", "hats"),
    "shoes": ("socks", "bags", "dresses", "belts"),
    "boots": ("socks", "jeans", "scarves", "jackets"),
    "jackets": ("scarves", "gloves", "hats", "sweaters"),
    "t-shirts": ("jeans", "sneakers", "jackets"),
    "jeans": ("t-shirts", "belts", "sneakers", "sweaters"),
    "dresses": ("shoes", "bags", "jackets"),
    "sweaters": ("jeans", "scarves", "jackets"),
    "accessories": (),
}

# Tags nearly every product has say nothing about likeness.
_GENERIC_TAGS = frozenset({"unisex", "bestseller"})
_STOPWORDS = frozenset("""a an and any are but can could for from have i in is it me my of on or
    please show some something that the them this to want with you your need looking like get
    under below over above less more than max maximum min minimum around about between budget
    price euro euros eur size sizes""".split())
_WORD = re.compile(r"[a-z0-9]+")

# Relaxation order: index = bit in the binary count (colour is given up first).
_RELAXABLE = ("color", "size", "budget", "category")


@dataclass(frozen=True)
class Product:
    """One catalog product."""

    id: str
    name: str
    category: str
    subcategory: str
    price: float
    currency: str
    colors: tuple[str, ...]
    sizes: tuple[str, ...]
    material: str
    description: str
    tags: tuple[str, ...]
    in_stock: bool
    image: str
    url: str

    @property
    def price_text(self) -> str:
        """The price as a customer reads it: ``"€89.95"``."""
        return format_price(self.price, self.currency)

    @property
    def one_size(self) -> bool:
        """No size to choose: ``"One size"`` only, or no sizes listed (a gift card, a tote)."""
        return all(s.casefold() == "one size" for s in self.sizes)

    def facts_text(self) -> str:
        """Every fact about the product on one line, as grounding evidence for a reply."""
        kind = ", ".join(part for part in (self.category, self.subcategory) if part)
        parts = [kind, self.price_text,
                 f"colours: {', '.join(self.colors)}" if self.colors else "",
                 f"sizes: {_size_ranges(self.sizes) or 'one size'}",
                 f"material: {self.material}" if self.material else "",
                 "in stock" if self.in_stock else "out of stock",
                 f"tags: {', '.join(self.tags)}" if self.tags else ""]
        text = f"{self.name} ({self.id}): " + "; ".join(part for part in parts if part) + ";"
        link = f"Link: {self.url}" if self.url else ""
        return " ".join(part for part in (text, self.description, link) if part)


def format_price(amount: float, currency: str = "EUR") -> str:
    """``89.95, "EUR"`` -> ``"€89.95"``, ``80.0`` -> ``"€80"``; an unknown currency
    goes after the amount."""
    number = f"{amount:.0f}" if float(amount).is_integer() else f"{amount:.2f}"
    sign = _SIGNS.get(currency.upper())
    return f"{sign}{number}" if sign else f"{number} {currency}"


def _size_ranges(sizes: Sequence[str]) -> str:
    """``36, 37, ..., 46`` -> ``"36–46"``; other sizes are listed as they are."""
    parts: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            parts.append(f"{run[0]}–{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
            run.clear()

    for size in sizes:
        if size.isdigit():
            if run and int(size) != run[-1] + 1:
                flush()
            run.append(int(size))
        else:
            flush()
            parts.append(size)
    flush()
    return ", ".join(parts)


def load_catalog(path: Path) -> list[Product]:
    """The products in a catalog JSON file (a list of objects); raise :class:`ProjectError`
    naming the file and product on bad data. ``id``, ``name``, ``category`` and ``price``
    are required; missing text fields are empty, lists empty (no ``sizes``: one size),
    ``in_stock`` true."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProjectError(str(path), f"cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ProjectError(str(path), f"invalid JSON: {exc.msg}", exc.lineno) from exc
    if not isinstance(data, list):
        raise ProjectError(str(path), "expected a list of products")
    products: list[Product] = []
    seen: set[str] = set()
    for index, raw in enumerate(data):
        product = _product(str(path), index, raw)
        if product.id in seen:
            raise ProjectError(str(path), f"product {index}: duplicate id {product.id!r}")
        seen.add(product.id)
        products.append(product)
    return products


def _product(path: str, index: int, raw: Any) -> Product:
    if not isinstance(raw, dict):
        raise ProjectError(path, f"product {index}: expected an object")
    where = f"product {index} ({raw.get('id', '?')})"

    def text(key: str, required: bool = False) -> str:
        value = raw.get(key, None if required else "")
        if not isinstance(value, str) or (required and not value.strip()):
            raise ProjectError(path, f"{where}: {key!r} must be a{' non-empty' if required else ''} string")
        return value

    def strings(key: str) -> tuple[str, ...]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProjectError(path, f"{where}: {key!r} must be a list of strings")
        return tuple(value)

    price = raw.get("price")
    if isinstance(price, bool) or not isinstance(price, int | float):
        raise ProjectError(path, f"{where}: 'price' must be a number >= 0")
    try:
        amount = float(price)
    except OverflowError:  # an integer too large for a float
        amount = math.inf
    # Python's JSON reader accepts NaN and Infinity; a card would say "€nan".
    if not math.isfinite(amount) or amount < 0:
        raise ProjectError(path, f"{where}: 'price' must be a finite number >= 0, not {amount}")
    in_stock = raw.get("in_stock", True)
    if not isinstance(in_stock, bool):
        raise ProjectError(path, f"{where}: 'in_stock' must be true or false")
    return Product(id=text("id", True), name=text("name", True), category=text("category", True),
                   subcategory=text("subcategory"), price=amount, currency=text("currency") or "EUR",
                   colors=strings("colors"), sizes=strings("sizes"), material=text("material"),
                   description=text("description"), tags=strings("tags"), in_stock=in_stock,
                   image=text("image"), url=text("url"))


@dataclass(frozen=True)
class Preferences:
    """What the customer asked for in this conversation (usually from slots)."""

    category: str | None = None
    size: str | None = None
    color: str | None = None
    budget: float | None = None  # most they want to spend, in the catalog's currency
    words: tuple[str, ...] = ()  # other words of their request ("waterproof", "wedding")


# The widget's `track` signals and the profile list each one feeds.
TRACK_KINDS = {"view_product": "viewed", "add_to_cart": "carted", "purchase": "bought", "bought": "bought"}


@dataclass(frozen=True)
class Profile:
    """What the customer did in the shop: product ids, oldest first."""

    viewed: tuple[str, ...] = ()
    carted: tuple[str, ...] = ()
    bought: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scored:
    """A recommended product, its score, and why, for the card and the reply."""

    product: Product
    score: float
    reasons: tuple[str, ...]
    relaxed: tuple[str, ...] = ()  # the wishes dropped to find anything: "color", "size", ...


def _norm(text: str) -> str:
    return " ".join(text.casefold().replace("gray", "grey").split())


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.casefold())}


def _has_color(product: Product, color: str) -> bool:
    want = _norm(color)
    for have in map(_norm, product.colors):
        if want == have or want in re.split(r"[\s/]+", have):
            return True
    return False


def _has_size(product: Product, size: str) -> bool:
    """Whether ``size`` is available: exact, inside a range like ``39-42`` (socks), or one size
    (``"One size"`` or no sizes listed, as :attr:`Product.one_size` says)."""
    if product.one_size:
        return True
    want = _norm(size).removeprefix("eu").strip().upper()
    for have in (s.strip().upper() for s in product.sizes):
        if have in (want, "ONE SIZE"):
            return True
        low, dash, high = have.partition("-")
        if dash and want.isdigit() and low.isdigit() and high.isdigit():
            if int(low) <= int(want) <= int(high):
                return True
    return False


def _in_category(product: Product, category: str) -> bool:
    want = _norm(category)
    return want in {_norm(product.category), _norm(product.subcategory), *map(_norm, product.tags)}


class Recommender:
    """Ranks a catalog's products for one customer. Pure: no I/O, no state between calls."""

    def __init__(self, products: Sequence[Product]) -> None:
        self._products = list(products)
        self._by_id = {p.id: p for p in self._products}

    def product(self, product_id: str) -> Product | None:
        """The product with this id, or None."""
        return self._by_id.get(product_id)

    def recommend(self, prefs: Preferences, profile: Profile, k: int = 3) -> list[Scored]:
        """Up to ``k`` products for these preferences and this profile, best first."""
        if k <= 0:
            return []
        bought = set(profile.bought)
        pool = [p for p in self._products if p.in_stock and p.id not in bought]
        wishes = {"color": prefs.color, "size": prefs.size, "category": prefs.category,
                  "budget": prefs.budget}
        active = [name for name in _RELAXABLE if wishes[name] not in (None, "")]
        relaxed: tuple[str, ...] = ()
        matches: list[Product] = []
        for mask in range(1 << len(active)):
            relaxed = tuple(name for bit, name in enumerate(active) if mask >> bit & 1)
            kept = [name for name in active if name not in relaxed]
            matches = [p for p in pool if all(self._meets(p, name, prefs) for name in kept)]
            if matches:
                break
        seen = set(profile.viewed) | set(profile.carted)
        scored = [self._score(p, prefs, profile, relaxed) for p in matches]
        # Unseen first; then by score, rounded so float noise never decides; then price, id.
        scored.sort(key=lambda s: (s.product.id in seen, -round(s.score, 6), s.product.price, s.product.id))
        return scored[:k]

    @staticmethod
    def _meets(product: Product, wish: str, prefs: Preferences) -> bool:
        if wish == "color":
            return prefs.color is None or _has_color(product, prefs.color)
        if wish == "size":
            return prefs.size is None or _has_size(product, prefs.size)
        if wish == "budget":
            return prefs.budget is None or product.price <= prefs.budget
        return prefs.category is None or _in_category(product, prefs.category)

    def _score(self, product: Product, prefs: Preferences, profile: Profile,
               relaxed: tuple[str, ...]) -> Scored:
        reasons = [self._miss(product, wish, prefs) for wish in relaxed
                   if not self._meets(product, wish, prefs)]
        score = 0.0
        if "budget" in relaxed and prefs.budget and product.price > prefs.budget:
            score -= (product.price - prefs.budget) / prefs.budget  # over budget: the least over first
        signal, best_reason = self._profile_score(product, profile)
        score += signal
        if best_reason:
            reasons.append(best_reason)
        matched, word_score = self._word_score(product, prefs.words)
        score += word_score
        if matched:
            reasons.append("matches " + ", ".join(f"'{w}'" for w in matched[:2]))
        if "bestseller" in product.tags:
            score += _BESTSELLER
            reasons.append("a bestseller")
        return Scored(product=product, score=score, reasons=tuple(reasons), relaxed=relaxed)

    @staticmethod
    def _miss(product: Product, wish: str, prefs: Preferences) -> str:
        if wish == "color":
            return f"not available in {prefs.color}"
        if wish == "size":
            return f"not available in size {prefs.size}"
        if wish == "budget":
            return f"over your {format_price(prefs.budget or 0.0, product.currency)} budget"
        return f"instead of {prefs.category}"

    def _profile_score(self, product: Product, profile: Profile) -> tuple[float, str | None]:
        """Likeness to recent views and basket items, fit with purchases; and the
        strongest of these as a reason ("like the Harbor Runner you viewed")."""
        total, best, best_reason = 0.0, 0.0, None
        for ids, weight, phrase, bought in (
                (profile.viewed, _VIEWED, "like the {} you viewed", False),
                (profile.carted, _CARTED, "like the {} in your basket", False),
                (profile.bought, _BOUGHT, "goes with the {} you bought", True)):
            recent = [p for p in (self._by_id.get(i) for i in ids) if p is not None][-_RECENT:]
            for age, other in enumerate(reversed(recent)):
                if other.id == product.id:
                    continue
                fit = _complement(product, other) if bought else _likeness(product, other)
                part = weight * _DECAY**age * fit
                total += part
                if part > best:
                    best, best_reason = part, phrase.format(other.name)
        return total, best_reason if best >= _REASON_MIN else None

    @staticmethod
    def _word_score(product: Product, words: Sequence[str]) -> tuple[list[str], float]:
        strong = _words(" ".join([product.name, product.category, product.subcategory, *product.tags]))
        weak = _words(f"{product.description} {product.material}")
        matched: list[str] = []
        score = 0.0
        for word in dict.fromkeys(w for text in words for w in _WORD.findall(text.casefold())):
            # A number is a budget, a size or a count, never a word to match: "100" is in
            # "100% cotton".
            if len(word) < 3 or word in _STOPWORDS or word.isdigit():
                continue
            stem = _stem(word)
            if stem in strong:
                score += _NAME_WORD
            elif stem in weak:
                score += _TEXT_WORD
            else:
                continue
            matched.append(word)
        return matched, score

    def card(self, scored: Scored) -> dict[str, Any]:
        """A product card for the chat widget: title, subtitle with price and why, image,
        link, and buttons for similar products and size help (none for one-size items)."""
        product = scored.product
        subtitle = " · ".join([product.price_text, *scored.reasons[:2]])
        similar = json.dumps({"category": product.category}, ensure_ascii=False)
        buttons = [{"title": "Show similar", "payload": f"/recommend{similar}"}]
        if not product.one_size:
            buttons.append({"title": "Size help", "payload": "/size_help"})
        return {"title": product.name, "subtitle": subtitle, "image": product.image,
                "url": product.url, "buttons": buttons}


def _likeness(product: Product, other: Product) -> float:
    """Same category 1, same subcategory +0.5, +0.2 per shared telling tag (up to 3)."""
    score = 1.0 if product.category == other.category else 0.0
    if product.subcategory and product.subcategory == other.subcategory:
        score += 0.5
    shared = (set(product.tags) & set(other.tags)) - _GENERIC_TAGS
    return score + 0.2 * min(len(shared), 3)


def _complement(product: Product, bought: Product) -> float:
    """How well ``product`` goes with something bought: 1 for the first complement of
    its category, 0.25 less for each later one; a second of the same subcategory is
    unlikely to be wanted soon (-0.5)."""
    score = 0.0
    for rank, target in enumerate(COMPLEMENTS.get(bought.category, ())):
        if target in (product.category, product.subcategory):
            score = max(score, 1.0 - 0.25 * rank)
    if product.subcategory and product.subcategory == bought.subcategory:
        score -= 0.5
    return score
