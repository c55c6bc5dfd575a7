"""Recommendations on the demo shop's real catalog (pure Python, no model)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bot.errors import ProjectError
from dialogue.engine import DialogueEngine
from dialogue.entities import EntityExtractor
from dialogue.project import load_project
from dialogue.recommend import Preferences, Product, Profile, Recommender, format_price, load_catalog
from dialogue.types import Conversation, Reply, UserMessage

NOBODY = Profile()
SHOP = Path(__file__).resolve().parent.parent / "examples" / "shop"
CATALOG = SHOP / "catalog.json"


@pytest.fixture(scope="module")
def products() -> list[Product]:
    return load_catalog(CATALOG)


@pytest.fixture(scope="module")
def shop(products: list[Product]) -> Recommender:
    return Recommender(products)


def ids(shop: Recommender, prefs: Preferences, profile: Profile = NOBODY, k: int = 3) -> list[str]:
    return [s.product.id for s in shop.recommend(prefs, profile, k)]


def category(shop: Recommender, product_id: str) -> str:
    product = shop.product(product_id)
    assert product is not None
    return product.category


def test_catalog_loads_with_facts(products: list[Product], shop: Recommender) -> None:
    assert len(products) == 59 and len({p.id for p in products}) == 59
    runner = shop.product("P1001")
    assert runner is not None and runner.name == "Harbor Runner"
    assert runner.colors == ("white", "black", "navy")
    facts = runner.facts_text()
    assert "\n" not in facts
    for fact in ("Harbor Runner", "€89.95", "white, black, navy", "36–46", "EVA midsole", "in stock",
                 "/demo/products/P1001"):
        assert fact in facts
    socks = shop.product("P7006")
    assert socks is not None and "36-38, 39-42, 43-46" in socks.facts_text()
    assert shop.product("P9999") is None


def test_format_price() -> None:
    assert format_price(89.95) == "€89.95" and format_price(80.0) == "€80"
    assert format_price(10.5, "CHF") == "10.50 CHF"


def test_filters_are_all_honoured(shop: Recommender) -> None:
    prefs = Preferences(category="sneakers", color="black", size="42", budget=80.0)
    results = shop.recommend(prefs, Profile(), k=10)
    assert results
    for scored in results:
        p = scored.product
        assert p.category == "sneakers" and "black" in p.colors and "42" in p.sizes
        assert p.price <= 80.0 and p.in_stock and scored.relaxed == ()


def test_budget_is_respected_everywhere(shop: Recommender) -> None:
    results = shop.recommend(Preferences(budget=30.0), Profile(viewed=("P2002",)), k=59)
    assert results and all(s.product.price <= 30.0 for s in results)


def test_out_of_stock_never_shows(shop: Recommender, products: list[Product]) -> None:
    out = {p.id for p in products if not p.in_stock}
    assert out and not out & set(ids(shop, Preferences(), k=59))
    assert "P1006" not in ids(shop, Preferences(category="sneakers", words=("walking", "wide", "fit")))


def test_clothing_sizes_and_one_size_items(shop: Recommender) -> None:
    results = shop.recommend(Preferences(category="accessories", size="40"), Profile(), k=10)
    # Socks come in 39-42; bags, caps and scarves are one size; belts and gloves (S-L) are out.
    assert {s.product.id for s in results} == {"P7002", "P7003", "P7004", "P7005", "P7006", "P7008", "P7009"}
    assert all(s.product.category == "jackets" for s in shop.recommend(Preferences(category="jackets",
                                                                                    size="m"), Profile()))


def test_colour_is_relaxed_first_and_said(shop: Recommender) -> None:
    results = shop.recommend(Preferences(category="sneakers", color="purple", size="42"), Profile())
    assert results
    for scored in results:
        assert scored.relaxed == ("color",)
        assert scored.product.category == "sneakers" and "42" in scored.product.sizes
        assert scored.reasons[0] == "not available in purple"


def test_relaxation_keeps_the_more_important_wishes(shop: Recommender) -> None:
    # No sneakers under €50: the budget goes, but the colour and size stay.
    results = shop.recommend(Preferences(category="sneakers", color="black", size="42", budget=50.0),
                             Profile(), k=10)
    assert results and all(s.relaxed == ("budget",) for s in results)
    assert all("black" in s.product.colors and "42" in s.product.sizes for s in results)
    assert results[0].product.id == "P1005"  # the least over budget first (€64.95)
    assert "over your €50 budget" in results[0].reasons
    # Nothing at all in that category: it goes last, and says so.
    anything = shop.recommend(Preferences(category="surfboards"), Profile())
    assert anything and anything[0].relaxed == ("category",)
    assert "instead of surfboards" in anything[0].reasons


def test_viewed_sneakers_rank_sneakers_up(shop: Recommender) -> None:
    assert {category(shop, i) for i in ids(shop, Preferences())} != {"sneakers"}
    results = shop.recommend(Preferences(), Profile(viewed=("P3001", "P1001")))
    assert [s.product.category for s in results] == ["sneakers"] * 3
    assert "P1001" not in [s.product.id for s in results]  # just viewed: something new instead
    assert results[0].reasons[0] == "like the Harbor Runner you viewed"


def test_recent_views_weigh_more(shop: Recommender) -> None:
    boots_last = Profile(viewed=("P1001", "P1201"))  # oldest first
    boots_first = Profile(viewed=("P1201", "P1001"))
    assert category(shop, ids(shop, Preferences(), boots_first)[0]) == "sneakers"
    rain_boot = Preferences(category="boots", color="yellow")
    assert shop.recommend(rain_boot, boots_last)[0].score > shop.recommend(rain_boot, boots_first)[0].score


def test_basket_counts_more_than_a_view(shop: Recommender) -> None:
    top = shop.recommend(Preferences(), Profile(viewed=("P1201",), carted=("P5001",)))[0]
    assert top.product.category == "dresses" and top.reasons[0] == "like the Linen Midi Dress in your basket"


def test_bought_items_are_never_recommended_and_complements_come_up(shop: Recommender) -> None:
    profile = Profile(bought=("P1001", "P3001"))
    results = shop.recommend(Preferences(category="sneakers"), profile, k=59)
    assert results and "P1001" not in [s.product.id for s in results]
    assert "P3001" not in ids(shop, Preferences(), profile, k=59)
    top = shop.recommend(Preferences(), Profile(bought=("P1001",)))[0]
    assert top.product.id == "P7006" and top.reasons[0] == "goes with the Harbor Runner you bought"


def test_viewed_items_only_when_nothing_else(shop: Recommender) -> None:
    prefs = Preferences(category="sneakers", color="olive")  # only the Summit Trail Runner
    assert ids(shop, prefs, Profile(viewed=("P1004",))) == ["P1004"]


def test_words_match_name_tags_and_description(shop: Recommender) -> None:
    results = shop.recommend(Preferences(words=("something", "waterproof", "for", "the", "rain")), Profile())
    assert {s.product.id for s in results[:2]} == {"P2001", "P1206"}  # rain jacket, rain boot
    assert all(s.reasons[0] == "matches 'waterproof', 'rain'" for s in results[:2])
    assert results[2].reasons == ("matches 'waterproof'",)


def test_numbers_and_price_words_are_not_matched(shop: Recommender) -> None:
    # "100" is in "100% cotton", but a budget is not a word to look for.
    for scored in shop.recommend(Preferences(category="t-shirts", words=("under", "100", "euros")),
                                 Profile(), k=10):
        assert not any(r.startswith("matches") for r in scored.reasons), scored


def test_bestsellers_break_ties_without_other_signals(shop: Recommender) -> None:
    assert all("bestseller" in shop.recommend(Preferences(), Profile())[n].product.tags for n in range(3))


def test_deterministic_and_k(shop: Recommender, products: list[Product]) -> None:
    prefs = Preferences(category="t-shirts", words=("cotton",))
    profile = Profile(viewed=("P1001", "P3002"), bought=("P4001",))
    first = shop.recommend(prefs, profile, k=5)
    assert first == shop.recommend(prefs, profile, k=5)
    assert first == Recommender(list(reversed(products))).recommend(prefs, profile, k=5)
    assert len(first) == 5 and shop.recommend(prefs, profile, k=0) == []
    scores = [s.score for s in first]
    assert scores == sorted(scores, reverse=True)


def test_cards_are_well_formed(shop: Recommender) -> None:
    scored = shop.recommend(Preferences(), Profile(viewed=("P1001",)))[0]
    card = shop.card(scored)
    assert card == {
        "title": scored.product.name,
        "subtitle": f"{scored.product.price_text} · like the Harbor Runner you viewed · a bestseller",
        "image": scored.product.image,
        "url": scored.product.url,
        "buttons": [{"title": "Show similar", "payload": '/recommend{"category": "sneakers"}'},
                    {"title": "Size help", "payload": "/size_help"}],
    }
    payload = card["buttons"][0]["payload"]
    assert json.loads(payload.removeprefix("/recommend")) == {"category": "sneakers"}
    bag = shop.recommend(Preferences(category="bags"), Profile())[0]
    assert [b["title"] for b in shop.card(bag)["buttons"]] == ["Show similar"]  # one size: no size help
    assert shop.card(replace(bag, reasons=()))["subtitle"] == bag.product.price_text


def test_a_product_without_sizes_is_one_size(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps([
        {"id": "T1", "name": "Canvas Tote", "category": "accessories", "price": 20, "sizes": []},
        {"id": "G1", "name": "Gloves", "category": "accessories", "price": 25, "sizes": ["S", "L"]}]),
        encoding="utf-8")
    [tote, gloves] = load_catalog(path)
    assert tote.one_size and "sizes: one size;" in tote.facts_text()
    # Fields the catalogue leaves out are left out of the facts, not written empty.
    assert tote.facts_text() == "Canvas Tote (T1): accessories; €20; sizes: one size; in stock;"
    totes = Recommender([tote, gloves])
    # Asked for a size, the tote fits like any one-size item; the gloves do not come in M.
    [scored] = totes.recommend(Preferences(category="accessories", size="M"), Profile(), k=5)
    assert scored.product.id == "T1" and scored.relaxed == ()
    assert [b["title"] for b in totes.card(scored)["buttons"]] == ["Show similar"]


# ------------------------------------------------- in the dialogue engine
@pytest.fixture(scope="module")
def engine() -> DialogueEngine:
    project = load_project(SHOP)
    return DialogueEngine(project, entities=EntityExtractor.for_project(project),
                          recommender=Recommender(load_catalog(CATALOG)))


async def picks(engine: DialogueEngine, text: str) -> Reply:
    """The recommendation reply to ``text``, read as a product search."""
    message = UserMessage("e1", text, None, {"intent": "product_search", "confidence": 0.95})
    replies = [o async for o in engine.respond(Conversation("s1", "bot"), message) if isinstance(o, Reply)]
    return next(r for r in replies if r.cards)


async def test_the_reply_says_when_wishes_were_relaxed(engine: DialogueEngine) -> None:
    exact = await picks(engine, "show me black sneakers")
    assert exact.text == "Here are a few picks for you:"
    for text in ("show me purple sneakers", "sneakers under 20 euros", "black dresses in size 46"):
        relaxed = await picks(engine, text)
        assert relaxed.text == "I couldn't find an exact match, so here are the closest picks:", text


async def test_what_entities_filter_is_not_matched_as_words(engine: DialogueEngine) -> None:
    tees = await picks(engine, "t-shirts under 100 euros")
    assert tees.cards and not any("'100'" in c["subtitle"] for c in tees.cards), tees.cards
    # "sneakers" and "black" are filters already, not words to match on every card.
    sneakers = await picks(engine, "black sneakers in size 42")
    assert not any("matches" in c["subtitle"] for c in sneakers.cards), sneakers.cards
    # Other words still count; so does a word a synonym turned into a category.
    rain = await picks(engine, "something waterproof for the rain")
    assert "matches 'waterproof', 'rain'" in rain.cards[0]["subtitle"]
    hoodies = await picks(engine, "show me hoodies")
    assert hoodies.cards[0]["title"] == "Organic Cotton Hoodie"
    assert "matches 'hoodies'" in hoodies.cards[0]["subtitle"]


def _products(*items: str) -> str:
    return "[" + ", ".join('{"id": "A", "name": "x", "category": "c", ' + i + "}" for i in items) + "]"


@pytest.mark.parametrize("data, message", [
    ('[{"id": 1}', "invalid JSON"),
    ('{"products": []}', "expected a list"),
    (_products('"price": "9"'), "'price'"),
    (_products('"price": -1'), "'price'"),
    (_products('"price": NaN'), "product 0 (A): 'price' must be a finite number"),
    (_products('"price": Infinity'), "product 0 (A): 'price' must be a finite number"),
    (_products('"price": 1' + "0" * 400), "product 0 (A): 'price' must be a finite number"),
    (_products('"price": 9, "colors": "red"'), "'colors'"),
    (_products('"price": 9, "in_stock": "yes"'), "'in_stock'"),
    (_products('"price": 9', '"price": 9'), "duplicate id"),
    ('[{"name": "x", "category": "c", "price": 9}]', "'id'"),
])
def test_bad_catalogs_name_the_file(tmp_path: Path, data: str, message: str) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(data, encoding="utf-8")
    with pytest.raises(ProjectError) as info:
        load_catalog(path)
    assert info.value.path == str(path) and message in str(info.value)
