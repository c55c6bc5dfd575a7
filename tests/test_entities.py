"""Entity extraction on the demo shop's real NLU data and domain (pure Python, no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.errors import ProjectError
from dialogue.entities import Entity, EntityExtractor, parse_budget
from dialogue.project import load_project

SHOP = Path(__file__).resolve().parent.parent / "examples" / "shop"


@pytest.fixture(scope="module")
def shop() -> EntityExtractor:
    return EntityExtractor.for_project(load_project(SHOP))


def found(extractor: EntityExtractor, text: str) -> list[tuple[str, Any]]:
    return [(e.entity, e.value) for e in extractor.extract(text)]


def test_shop_knows_every_domain_entity(shop: EntityExtractor) -> None:
    assert shop.entity_names == ["budget", "category", "color", "email", "order_id", "size"]


@pytest.mark.parametrize("text, order_id", [
    ("Where is my order NW-10234?", "NW-10234"),
    ("where's nw10234", "nw10234"),
    ("status of NW 10234 pls", "NW 10234"),
    ("order #10238 hasn't arrived", "10238"),
    ("my order number is 10236", "10236"),
    ("10234", "10234"),
    ("  #10234. ", "10234"),
])
def test_order_ids_as_customers_type_them(shop: EntityExtractor, text: str, order_id: str) -> None:
    assert found(shop, text) == [("order_id", order_id)]


def test_five_digit_numbers_elsewhere_are_not_order_ids(shop: EntityExtractor) -> None:
    assert found(shop, "please ship to Hauptstrasse 5, 10115 Berlin") == []


def test_email_span_and_rasa_dict(shop: EntityExtractor) -> None:
    text = "it's Anna.K+shop@example.co.uk, thx"
    [entity] = shop.extract(text)
    assert text[entity.start:entity.end] == "Anna.K+shop@example.co.uk"
    assert entity.to_rasa() == {"entity": "email", "value": "Anna.K+shop@example.co.uk",
                                "start": 5, "end": 30, "extractor": "regex"}


def test_a_realistic_product_search(shop: EntityExtractor) -> None:
    text = "do u hav BLACK trainers in size 42 under 80 euros??"
    entities = shop.extract(text)
    assert [(e.entity, e.value, e.extractor) for e in entities] == [
        ("color", "black", "lookup"),
        ("category", "sneakers", "synonym"),
        ("size", "42", "regex"),
        ("budget", 80.0, "regex"),
    ]
    assert [text[e.start:e.end] for e in entities] == ["BLACK", "trainers", "42", "under 80 euros"]


@pytest.mark.parametrize("text, budget", [
    ("something under 100 euros", 100.0),
    ("€80 max", 80.0),
    ("max 50", 50.0),
    ("less than 120€ please", 120.0),
    ("my budget is 70", 70.0),
    ("around 59,90 eur", 59.9),
    ("up to 1.000 €", 1000.0),
])
def test_budgets_become_euros(shop: EntityExtractor, text: str, budget: float) -> None:
    assert found(shop, text) == [("budget", budget)]


def test_minimums_and_durations_are_not_budgets(shop: EntityExtractor) -> None:
    assert found(shop, "is shipping free over €60?") == []
    assert found(shop, "orders of more than 60 euros") == []
    assert found(shop, "can I return it within 30 days") == []
    assert found(shop, "delivered in under 5 days?") == []


@pytest.mark.parametrize("text", [
    "is shipping free over 59,90 €?",
    "orders of more than 49.95 euros",
    "at least 29.99 eur",
    "from 120,50 €",
    "do you have sneakers up to 50% off?",
    "up to 50 % off",
])
def test_minimums_with_decimals_and_discounts_are_not_budgets(shop: EntityExtractor, text: str) -> None:
    assert [e for e in found(shop, text) if e[0] == "budget"] == []


@pytest.mark.parametrize("text, span", [
    ("budget 100-150 euros", "budget 100-150"),
    ("budget 100 to 150", "budget 100 to 150"),
    ("sneakers, 100–150 €", "100–150 €"),
    ("from 100 to 150 euros", "100 to 150 euros"),
    ("€100-€150", "€100-€150"),
])
def test_a_budget_range_is_one_budget_its_upper_bound(shop: EntityExtractor, text: str, span: str) -> None:
    budgets = [e for e in shop.extract(text) if e.entity == "budget"]
    assert [(e.value, text[e.start:e.end]) for e in budgets] == [(150.0, span)]


def test_parse_budget_edge_cases() -> None:
    assert parse_budget("€79.95") == 79.95
    assert parse_budget("1,000 euros") == 1000.0
    assert parse_budget("0 euros") is None
    assert parse_budget("cheap") is None


@pytest.mark.parametrize("text, size", [
    ("size 42", "42"),
    ("EU 38 please", "38"),
    ("a medium please", "M"),
    ("I'd like it in a large", "L"),
    ("have it in xl?", "XL"),
    ("the 2xl one", "XXL"),
    ("size small", "S"),
    ("extra large", "XL"),
])
def test_sizes(shop: EntityExtractor, text: str, size: str) -> None:
    assert found(shop, text) == [("size", size)]


def test_contractions_decimals_and_small_things_are_not_sizes(shop: EntityExtractor) -> None:
    assert found(shop, "I'm sure it's fine, I'll wait") == []
    assert found(shop, "do you have 42.5") == []
    assert found(shop, "it's a small bag") == [("category", "accessories")]


@pytest.mark.parametrize("text, sizes", [
    ("I'd like it in l", ["L"]),
    ("M please", ["M"]),
    ("EU42 please", ["42"]),
    ("size 42,43", ["42", "43"]),
    ("I'm between 41 and 42", ["41", "42"]),
    ("do you ship to the U.S.?", []),
    ("I live in L.A.", []),
    ("what's the return policy for S&M?", []),
    ("I'm 1 m 80 tall", []),
    ("it is 40 cm long", []),
    ("it was 44 degrees", []),
    ("about 36 hours", []),
    ("i ordered 42 days ago", []),
    ("I bought 2 items 40 min ago", []),
    ("we have 40,000 customers", []),
])
def test_bare_sizes_but_not_measures_times_or_abbreviations(shop: EntityExtractor, text: str,
                                                            sizes: list[str]) -> None:
    assert [v for e, v in found(shop, text) if e == "size"] == sizes


def test_lookups_skip_abbreviations_names_and_numbers(tmp_path: Path) -> None:
    slots = {"size": {"type": "categorical", "values": ["S", "M", "L", "42", "43"],
                      "mappings": [{"type": "from_entity", "entity": "size"}]}}
    extractor = EntityExtractor([_write(tmp_path, "version: '3.1'\nnlu: []\n")], slots)
    assert found(extractor, "ship to the U.S. or L.A.? like H&M") == []
    assert found(extractor, "42.5, 42,5 or 43.000") == []
    assert [v for _, v in found(extractor, "S, M or 42,43.")] == ["S", "M", "42", "43"]


def test_colours_case_synonyms_and_multiword(shop: EntityExtractor) -> None:
    assert found(shop, "in grey") == [("color", "grey")]
    assert found(shop, "in GRAY") == [("color", "grey")]
    assert found(shop, "a light gray hoodie") == [("color", "light grey"), ("category", "sweaters")]
    assert found(shop, "off white sneakers") == [("color", "off-white"), ("category", "sneakers")]
    assert found(shop, "the navy/white striped tee") == [("color", "navy/white"), ("category", "t-shirts")]


def test_every_catalog_colour_is_extractable(shop: EntityExtractor) -> None:
    import json

    colours = {c for p in json.loads((SHOP / "catalog.json").read_text()) for c in p["colors"]}
    for colour in sorted(colours):
        assert found(shop, f"do you have it in {colour}?") == [("color", colour)], colour


@pytest.mark.parametrize("word, category", [
    ("trainers", "sneakers"), ("tee", "t-shirts"), ("tshirts", "t-shirts"), ("T Shirt", "t-shirts"),
    ("hoodie", "sweaters"), ("jumper", "sweaters"), ("chelsea boots", "boots"), ("sandals", "shoes"),
    ("socks", "accessories"), ("puffer jacket", "jackets"), ("Jeans", "jeans"), ("DRESSES", "dresses"),
])
def test_category_words_map_to_categories(shop: EntityExtractor, word: str, category: str) -> None:
    assert found(shop, f"show me {word} please") == [("category", category)]


def test_overlaps_keep_the_longest_match(shop: EntityExtractor) -> None:
    # "denim jacket" (category) beats "denim" (jeans); "light blue" beats "blue";
    # "under 40 euros" (budget) beats size 40.
    assert found(shop, "light blue denim jacket under 40 euros") == [
        ("color", "light blue"), ("category", "jackets"), ("budget", 40.0)]


def _write(tmp_path: Path, nlu: str) -> Path:
    path = tmp_path / "nlu.yml"
    path.write_text(nlu, encoding="utf-8")
    return path


def test_categorical_slot_values_are_lookups_for_their_entity(tmp_path: Path) -> None:
    slots = {"fabric": {"type": "categorical", "values": ["linen", "Wool"],
                        "mappings": [{"type": "from_entity", "entity": "fabric"}]},
             "note": {"type": "categorical", "values": ["secret"], "mappings": [{"type": "from_text"}]}}
    extractor = EntityExtractor([_write(tmp_path, "version: '3.1'\nnlu: []\n")], slots)
    assert found(extractor, "a WOOL or linen scarf, secret") == [("fabric", "Wool"), ("fabric", "linen")]


def test_annotations_value_groups_and_unknown_sections(tmp_path: Path) -> None:
    nlu = """version: "3.1"
nlu:
- intent: fly
  examples: |
    - fly to [Berlin](city)
    - fly to [NYC]{"entity": "city", "value": "New York"}
    - from [Munich](city:München)
- regex: flight
  examples: |
    - \\bflight\\s+(?P<value>[A-Z]{2}\\d{3,4})\\b
- regex: intent_feature_only
  examples: |
    - hello
- something_new: whatever
  examples: |
    - ignored
"""
    slots = {"flight": {"type": "text", "mappings": [{"type": "from_entity", "entity": "flight"}]}}
    extractor = EntityExtractor([_write(tmp_path, nlu)], slots)
    text = "hello, flight LH400 from munich to nyc or berlin"
    assert [(e.entity, e.value, e.extractor) for e in extractor.extract(text)] == [
        ("flight", "LH400", "regex"),  # value group; the regex that names no entity stays silent
        ("city", "München", "synonym"),
        ("city", "New York", "synonym"),
        ("city", "Berlin", "lookup"),  # the annotated spelling, whatever the case typed
    ]


def test_custom_normalisers(tmp_path: Path) -> None:
    nlu = "nlu:\n- regex: order_id\n  examples: |\n    - (?i)\\bnw[\\s-]*\\d{5}\\b\n"
    slots = {"order_id": {"type": "text", "mappings": [{"type": "from_entity", "entity": "order_id"}]}}

    def canonical(text: str) -> str | None:
        digits = "".join(c for c in text if c.isdigit())
        return f"NW-{digits}" if digits != "00000" else None

    extractor = EntityExtractor([_write(tmp_path, nlu)], slots, normalisers={"order_id": canonical})
    assert found(extractor, "nw 10234 and NW-00000") == [("order_id", "NW-10234")]


def test_bad_regex_names_file_and_line(tmp_path: Path) -> None:
    nlu = """version: "3.1"
nlu:
- intent: greet
  examples: |
    - hi
- regex: order_id
  examples: |
    - \\bNW-\\d{5}\\b

    - NW-(\\d{5}
"""
    path = _write(tmp_path, nlu)
    with pytest.raises(ProjectError) as info:
        EntityExtractor([path], {})
    assert info.value.path == str(path) and info.value.line == 10
    assert "order_id" in str(info.value) and f"{path}:10" in str(info.value)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "nlu:\n- lookup: color\n  examples: [unclosed\n")
    with pytest.raises(ProjectError) as info:
        EntityExtractor([path], {})
    assert info.value.path == str(path) and info.value.line is not None


def test_entities_are_values() -> None:
    entity = Entity(entity="size", value="M", start=0, end=1, extractor="lookup")
    same = Entity("size", "M", 0, 1, "lookup")
    assert entity == same and hash(entity) == hash(same)
