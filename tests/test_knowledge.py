"""The knowledge base: loading the shop's real knowledge, errors with file and line,
and the vector index, with synthetic vectors and with the real shared encoder."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bot.errors import ProjectError
from dialogue.knowledge import MIN_SECTION_CHARS, Hit, KnowledgeEntry, KnowledgeIndex, load_knowledge

ROOT = Path(__file__).resolve().parent.parent
SHOP_KNOWLEDGE = ROOT / "examples" / "shop" / "knowledge"
QUERIES = ROOT / "tests" / "fixtures" / "knowledge_queries.yml"

# Measured with scripts/eval_knowledge.py on QUERIES (63 answerable, 12 unanswerable):
# top-1 0.810, top-3 0.905. The bars leave a margin of about three queries.
TOP1_BAR = 0.75
TOP3_BAR = 0.85


# ------------------------------------------------------------------ loading
@pytest.fixture(scope="module")
def shop_entries() -> list[KnowledgeEntry]:
    return load_knowledge(SHOP_KNOWLEDGE)


def test_loads_every_faq_entry_and_help_page_section(shop_entries: list[KnowledgeEntry]) -> None:
    faq = yaml.safe_load((SHOP_KNOWLEDGE / "faq.yml").read_text(encoding="utf-8"))
    ids = [e.id for e in shop_entries]
    assert len(ids) == len(set(ids))
    assert [e.id for e in shop_entries if "#" not in e.id] == [item["id"] for item in faq]
    pages = {e.id.split("#")[0] for e in shop_entries if "#" in e.id}
    assert pages == {"returns", "shipping", "size-guide"}


def test_faq_entry_fields(shop_entries: list[KnowledgeEntry]) -> None:
    entry = next(e for e in shop_entries if e.id == "shipping-costs")
    assert entry.title == "How much does shipping cost?"
    assert entry.text.startswith("Standard delivery costs €4.95 and is free on orders over €60.")
    assert "\n" not in entry.text  # folded YAML scalar
    assert entry.source == "knowledge/faq.yml#shipping-costs"
    assert entry.tags == ("shipping", "costs", "free shipping", "express")
    assert entry.embedding_text() == f"{entry.title}\n{entry.text}"


def test_markdown_sections_with_heading_paths(shop_entries: list[KnowledgeEntry]) -> None:
    by_id = {e.id: e for e in shop_entries}
    refunds = by_id["returns#refunds"]
    assert refunds.title == "Returns, refunds and exchanges › Refunds"
    assert refunds.source == "knowledge/returns.md#refunds"
    assert "5–7 business days" in refunds.text and "## " not in refunds.text
    foot = by_id["size-guide#how-to-measure-your-foot"]
    assert foot.title == "Size guide › Shoes › How to measure your foot"
    assert foot.embedding_text().startswith("How to measure your foot\nStand on a sheet of paper")
    # The page title's own text (before the first ##) is an entry too.
    intro = by_id["shipping#shipping-and-delivery"]
    assert intro.text.startswith("Northwind Threads is an online-only shop.")
    # A heading followed directly by its table keeps the table.
    assert "| 42 | 8   |" in by_id["size-guide#shoes"].text


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_small_subsections_join_their_parent_and_empty_headings_vanish(tmp_path: Path) -> None:
    long = "Long enough to stand alone. " * 8
    write(tmp_path, "help.md", f"""# Help

## Delivery

Parcels leave the warehouse daily.

### Weekends

No deliveries on Sundays.

### Tracking

{long}

## Contact

### Email

{long}

```text
## not a heading inside a code fence
```

## Contact
Second section with the same heading.
""")
    entries = {e.id: e for e in load_knowledge(tmp_path)}
    assert list(entries) == ["help#delivery", "help#tracking", "help#email", "help#contact-1"]
    delivery = entries["help#delivery"]
    assert "### Weekends\n\nNo deliveries on Sundays." in delivery.text  # shorter than MIN_SECTION_CHARS
    assert len("No deliveries on Sundays.") < MIN_SECTION_CHARS
    assert entries["help#tracking"].title == "Help › Delivery › Tracking"
    assert "## not a heading" in entries["help#email"].text  # "## Contact" had no text of its own
    assert entries["help#contact-1"].source == f"{tmp_path.name}/help.md#contact-1"


def test_text_before_any_heading_is_an_intro_entry(tmp_path: Path) -> None:
    write(tmp_path, "care-tips.md", "Wash dark clothes inside out.\n\n## Leather\n\nUse a soft brush.\n")
    entries = load_knowledge(tmp_path)
    assert [(e.id, e.title) for e in entries] == [("care-tips#intro", "Care tips"),
                                                  ("care-tips#leather", "Leather")]


def test_a_heading_named_intro_and_text_before_it_both_load(tmp_path: Path) -> None:
    write(tmp_path, "care.md", "Read this first.\n\n## Intro\n\nWash at 30 degrees.\n\n"
                               "## Intro 1\n\nIron low.\n\n## Intro\n\nDry flat.\n")
    entries = load_knowledge(tmp_path)
    # Headings keep GitHub's anchors ("Intro 1" is intro-1, so the second "Intro" is
    # intro-2); the text before them takes the next free one.
    assert [(e.id, e.text) for e in entries] == [
        ("care#intro-3", "Read this first."), ("care#intro", "Wash at 30 degrees."),
        ("care#intro-1", "Iron low."), ("care#intro-2", "Dry flat.")]


def test_a_short_subsection_joins_its_parent_after_a_long_sibling(tmp_path: Path) -> None:
    long = "Long enough to stand alone. " * 8
    write(tmp_path, "ship.md", f"# Shipping\n\n## Options\n\nTwo ways.\n\n### Express\n\n{long}\n\n"
                               "### Pickup\n\nPick up in store.\n\n# Other\n\n### Gifts\n\nNo wrapping.\n")
    entries = {e.id: e for e in load_knowledge(tmp_path)}
    assert list(entries) == ["ship#options", "ship#express", "ship#gifts"]
    assert entries["ship#options"].text == "Two ways.\n\n### Pickup\n\nPick up in store."
    assert "Pickup" not in entries["ship#express"].text
    # A ### with no ## above it has no parent to join.
    assert entries["ship#gifts"].title == "Other › Gifts"


def test_empty_and_other_files(tmp_path: Path) -> None:
    write(tmp_path, "empty.yml", "# nothing yet\n")
    write(tmp_path, "notes.txt", "ignored")
    write(tmp_path, "blank.md", "\n")
    assert load_knowledge(tmp_path) == []


def expect_error(tmp_path: Path, text: str, line: int | None, message: str, name: str = "faq.yml") -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ProjectError) as info:
        load_knowledge(tmp_path)
    assert info.value.path == str(path)
    assert info.value.line == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"{path}:{line}" if line else str(path))


GOOD = "- id: a\n  question: Q?\n  answer: A.\n"


@pytest.mark.parametrize(("text", "line", "message"), [
    (GOOD + "- id: a\n  question: Again?\n  answer: B.\n", 4,
     "duplicate id 'a' (first defined at faq.yml:1)"),
    (GOOD + "- id: b\n  question: Q?\n", 4, "FAQ entry 'b' has no answer"),
    (GOOD + "- id: b\n  question: Q?\n  answer:\n", 6, "FAQ entry 'b' has no answer"),
    (GOOD + "- id: b\n  question: Q?\n  answer: '  '\n", 6, "FAQ entry 'b' has no answer"),
    (GOOD + "- question: Q?\n  answer: A.\n", 4, "FAQ entry without an id"),
    (GOOD + "- id: two words\n  question: Q?\n  answer: A.\n", 4, "id 'two words' must be"),
    (GOOD + "- id: b\n  question: [not, text]\n  answer: A.\n", 5, "question must be text"),
    (GOOD + "- id: b\n  question: Q?\n  answer: A.\n  tags: {a: 1}\n", 7, "tags must be a list"),
    (GOOD + "- just a string\n", 4, "must be a mapping"),
    ("id: a\nquestion: Q?\n", 1, "expected a list of FAQ entries"),
    (GOOD + "- id: b\n  question: 'unclosed\n  answer: A.\n", 7, "invalid YAML"),
])
def test_bad_faq_names_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    expect_error(tmp_path, text, line, message)


def test_duplicate_id_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", GOOD)
    expect_error(tmp_path, "\n" + GOOD, 2, "duplicate id 'a' (first defined at a.yml:1)", name="b.yml")


def test_not_utf8_and_missing_directory(tmp_path: Path) -> None:
    (tmp_path / "faq.yml").write_bytes(b"- id: a\n  answer: caf\xe9\n")
    with pytest.raises(ProjectError, match="not UTF-8"):
        load_knowledge(tmp_path)
    with pytest.raises(ProjectError, match="knowledge directory not found"):
        load_knowledge(tmp_path / "missing")


def test_unknown_keys_are_logged_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "faq.yml",
          "- id: a\n  question: Q?\n  answer: A.\n  audience: everyone\n  tags: returns\n")
    with caplog.at_level(logging.WARNING, logger="deskmate.knowledge"):
        (entry,) = load_knowledge(tmp_path)
    assert entry == KnowledgeEntry("a", "Q?", "A.", f"{tmp_path.name}/faq.yml#a", ("returns",))
    assert "faq.yml:4: unknown key 'audience'" in caplog.text


# ------------------------------------------------------- index, synthetic vectors
def entry(i: int | str) -> KnowledgeEntry:
    return KnowledgeEntry(f"e{i}", f"Title {i}", f"Text {i}", f"knowledge/faq.yml#e{i}")


def test_search_normalises_and_ranks() -> None:
    vectors = np.array([[10.0, 0, 0], [1, 1, 0], [0, 0, 3]])  # not unit length
    index = KnowledgeIndex([entry(0), entry(1), entry(2)], vectors)
    hits = index.search([2.0, 0, 0], k=2)
    assert [h.entry.id for h in hits] == ["e0", "e1"]
    assert hits[0].score == pytest.approx(1.0)
    assert hits[1].score == pytest.approx(np.sqrt(0.5))
    ranked = index.search(np.array([0, 0, 1.0]), k=10)
    assert [h.entry.id for h in ranked] == ["e2", "e0", "e1"]  # e0 and e1 tie at 0: index order
    assert index.search([1.0, 0, 0], k=0) == []
    assert len(index) == 3 and index.dimension == 3
    assert index.entries == [entry(0), entry(1), entry(2)]


def test_ties_at_the_cut_go_by_index_order() -> None:
    # e7 is best; the other 19 tie, so the next two are e0 and e1 whatever k and N.
    vectors = np.tile(np.array([[1.0, 0.5]], dtype=np.float32), (20, 1))
    vectors[7] = [1.0, 0.0]
    index = KnowledgeIndex([entry(i) for i in range(20)], vectors)
    assert [h.entry.id for h in index.search([1.0, 0.0], k=3)] == ["e7", "e0", "e1"]
    assert [h.entry.id for h in index.search([1.0, 0.0], k=5)] == ["e7", "e0", "e1", "e2", "e3"]


def test_bad_vectors_are_refused() -> None:
    with pytest.raises(ValueError, match="2 entries but 1 vectors"):
        KnowledgeIndex([entry(0), entry(1)], np.ones((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        KnowledgeIndex([entry(0)], np.array([[np.nan, 1, 1]]))
    with pytest.raises(ValueError, match="duplicate entry id 'e0'"):
        KnowledgeIndex([entry(0), entry(0)], np.ones((2, 3)))
    index = KnowledgeIndex([entry(0)], np.ones((1, 3)))
    with pytest.raises(ValueError, match="dimension 3"):
        index.search([1.0, 0])
    with pytest.raises(ValueError, match="dimension 3"):
        index.add(entry(1), [1.0, 0])


def test_empty_index() -> None:
    index = KnowledgeIndex([], np.zeros((0, 4)))
    assert len(index) == 0 and index.search([1.0, 0, 0, 0]) == []
    index.add(entry(0), [0, 1.0, 0, 0])
    (hit,) = index.search([0, 1.0, 0, 0])
    assert isinstance(hit, Hit) and hit.entry == entry(0) and hit.score == pytest.approx(1.0)


def test_add_new_and_replace_by_id() -> None:
    index = KnowledgeIndex([entry(0), entry(1)], np.eye(3)[:2])
    before = index.entries
    index.add(entry(2), [0, 0, 5.0])
    assert [e.id for e in index.entries] == ["e0", "e1", "e2"]
    assert index.search([0, 0, 1.0], k=1)[0].entry == entry(2)
    replacement = KnowledgeEntry("e0", "New title", "New text", "live")
    index.add(replacement, [0, 0, 1.0])  # e0 now points where e2 does
    assert len(index) == 3 and index.entries[0] == replacement
    assert index.search([1.0, 0, 0], k=1)[0].score == pytest.approx(0.0)
    assert before == [entry(0), entry(1)]  # an earlier entries list is a copy


def test_searches_stay_consistent_while_entries_are_added() -> None:
    # Every entry's vector is the one-hot of its number, so a consistent snapshot always
    # returns the entry whose number matches the query.
    dim = 400
    index = KnowledgeIndex([entry(0)], np.eye(dim)[:1])
    errors: list[str] = []

    def writer() -> None:
        for i in range(1, dim):
            index.add(entry(i), np.eye(dim)[i])

    def reader() -> None:
        for _ in range(2000):
            n = len(index)
            target = max(0, n - 1)
            hit = index.search(np.eye(dim)[target], k=1)[0]
            if hit.entry.id != f"e{target}" or hit.score < 0.99:
                errors.append(f"{target}: {hit}")

    threads = [threading.Thread(target=writer), *(threading.Thread(target=reader) for _ in range(3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(index) == dim


# ------------------------------------------------------------ the real encoder
@pytest.fixture(scope="module")
def encoder() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model.encoder import load_encoder

    return load_encoder()


@pytest.fixture(scope="module")
def shop_index(encoder: Any, shop_entries: list[KnowledgeEntry]) -> KnowledgeIndex:
    return KnowledgeIndex(shop_entries, encoder.embed([e.embedding_text() for e in shop_entries]))


def load_queries() -> list[tuple[str, set[str]]]:
    data = yaml.safe_load(QUERIES.read_text(encoding="utf-8"))
    return [(item["query"], set(item["expect"])) for item in data]


def test_query_set_is_valid(shop_entries: list[KnowledgeEntry]) -> None:
    queries = load_queries()
    ids = {e.id for e in shop_entries}
    assert len(queries) >= 40 and sum(1 for _, expect in queries if not expect) >= 10
    assert set().union(*(expect for _, expect in queries)) <= ids


def test_retrieval_accuracy_on_paraphrased_questions(encoder: Any, shop_index: KnowledgeIndex) -> None:
    queries = [(q, expect) for q, expect in load_queries() if expect]
    vectors = encoder.embed([q for q, _ in queries])
    hits = [shop_index.search(v, k=3) for v in vectors]
    top1 = sum(h[0].entry.id in expect for h, (_, expect) in zip(hits, queries, strict=True)) / len(queries)
    top3 = sum(any(x.entry.id in expect for x in h) for h, (_, expect) in zip(hits, queries, strict=True))
    assert top1 >= TOP1_BAR
    assert top3 / len(queries) >= TOP3_BAR


def test_shop_threshold_rejects_what_the_knowledge_base_cannot_answer(encoder: Any,
                                                                       shop_index: KnowledgeIndex) -> None:
    threshold = yaml.safe_load((ROOT / "examples/shop/config.yml").read_text())["thresholds"]["knowledge"]
    queries = load_queries()
    tops = [shop_index.search(v, k=1)[0] for v in encoder.embed([q for q, _ in queries])]
    answered = [(hit, expect) for hit, (_, expect) in zip(tops, queries, strict=True)
                if hit.score >= threshold]
    assert all(expect for _, expect in answered), "an unanswerable question got an answer"
    precision = sum(hit.entry.id in expect for hit, expect in answered) / len(answered)
    assert precision >= 0.9


def test_search_with_real_embeddings(encoder: Any, shop_index: KnowledgeIndex) -> None:
    hits = shop_index.search(encoder.embed(["How much does delivery cost?"])[0], k=3)
    assert hits[0].entry.id in {"shipping-costs", "shipping#delivery-options-and-costs", "shipping-free"}
    assert hits[0].score > 0.6 and hits[0].score >= hits[1].score >= hits[2].score
    cars = shop_index.search(encoder.embed(["do you sell cars"])[0], k=1)[0]
    assert cars.score < 0.4


def test_live_learning_add_and_replace(encoder: Any, shop_entries: list[KnowledgeEntry]) -> None:
    index = KnowledgeIndex(shop_entries, encoder.embed([e.embedding_text() for e in shop_entries]))
    query = encoder.embed(["do you offer gift wrapping?"])[0]
    assert index.search(query, k=1)[0].score < 0.5
    wrap = KnowledgeEntry("gift-wrapping", "Do you offer gift wrapping?",
                          "Not yet: parcels are sent in our standard recycled boxes.", "agent:live")
    index.add(wrap, encoder.embed([wrap.embedding_text()])[0])
    top = index.search(query, k=1)[0]
    assert top.entry == wrap and top.score > 0.7
    # Replacing by id: the answer changes, the count does not.
    updated = KnowledgeEntry("gift-wrapping", wrap.title, "Yes, for €3.50 at checkout.", "agent:live")
    index.add(updated, encoder.embed([updated.embedding_text()])[0])
    assert len(index) == len(shop_entries) + 1
    assert index.search(query, k=1)[0].entry.text == "Yes, for €3.50 at checkout."


async def test_a_learned_entry_overrides_a_rule_in_a_project_without_knowledge(tmp_path: Path,
                                                                              encoder: Any) -> None:
    """bot/learning.py creates the index with the first approved entry; the rules' responses
    must have been embedded at start all the same, or the entry could never be more specific."""
    from bot.brain import build_engine
    from dialogue.project import load_project
    from dialogue.types import Conversation, Reply, UserMessage

    shop = tmp_path / "shop"
    shutil.copytree(ROOT / "examples" / "shop", shop, ignore=shutil.ignore_patterns("knowledge", "models"))
    engine = build_engine(load_project(shop), embed=encoder.embed)
    assert engine.knowledge is None and "utter_check_refund_policy" in engine.response_vectors
    answer = ("Yes. Sale items can be returned within 30 days of delivery, just like full-price items, "
              "and the return is free.")
    learned = KnowledgeEntry("agents/1", "Can I return sale items?", answer, "agents/1")
    engine.knowledge = KnowledgeIndex([learned], encoder.embed([learned.embedding_text()]))
    question = "can I return sale items?"
    message = UserMessage("e1", question, None, {"intent": "check_refund_policy", "confidence": 0.95},
                          encoder.embed([question])[0])
    replies = [o async for o in engine.respond(Conversation("s1", "bot"), message) if isinstance(o, Reply)]
    assert [(r.name, r.text) for r in replies] == [("action_knowledge_answer", learned.text)]


# ------------------------------------------------------------------ the embedding cache
def test_embedding_cache_is_reused_only_by_the_encoder_that_made_it(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """models/embeddings.npz spares a restart from embedding the knowledge again, but only
    for the same encoder: a server switched to int8 weights (or a new encoder release)
    embeds again and replaces the file, instead of comparing its questions with vectors
    another encoder made."""
    import hashlib

    from bot.brain import EmbeddingCache

    calls: list[list[str]] = []

    def encoder(offset: float):  # type: ignore[no-untyped-def]
        def embed(texts: list[str]) -> np.ndarray:
            calls.append(list(texts))
            return np.asarray([[len(t) + offset, 1.0, offset] for t in texts], dtype=np.float32)
        return embed

    path = tmp_path / "models" / "embeddings.npz"
    texts = ["returns within 30 days", "shipping to Norway"]
    first = EmbeddingCache(encoder(0.0), path, "minilm 0.1.0 fp32")(texts)
    assert calls == [sorted(texts, key=lambda t: hashlib.sha1(t.encode()).hexdigest())]
    calls.clear()
    again = EmbeddingCache(encoder(0.0), path, "minilm 0.1.0 fp32")(texts)
    assert calls == [] and np.array_equal(again, first)      # same encoder: read, not embedded
    with caplog.at_level(logging.INFO, logger="deskmate.brain"):
        other = EmbeddingCache(encoder(0.5), path, "minilm 0.1.0 int8")(texts)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(texts)
    assert other[:, 2].tolist() == [0.5, 0.5]                 # the int8 encoder's own vectors
    assert "made by another encoder (minilm 0.1.0 fp32, not minilm 0.1.0 int8)" in caplog.text
    with np.load(path) as data:
        assert str(data["encoder"]) == "minilm 0.1.0 int8"     # the file now holds int8's
    calls.clear()
    EmbeddingCache(encoder(0.0), path, "minilm 0.1.0 fp32")(texts)
    assert len(calls) == 1                                    # and fp32 embeds again in turn


def test_embedding_cache_ignores_a_file_that_names_no_encoder(tmp_path: Path) -> None:
    """A file written before the cache named its encoder is embedded again, not trusted."""
    import hashlib

    from bot.brain import EmbeddingCache

    path = tmp_path / "embeddings.npz"
    key = hashlib.sha1(b"shipping").hexdigest()
    np.savez(path, keys=np.asarray([key]), vectors=np.asarray([[9.0, 9.0]], dtype=np.float32))
    cache = EmbeddingCache(lambda texts: np.ones((len(texts), 2), np.float32), path, "minilm fp32")
    assert cache(["shipping"]).tolist() == [[1.0, 1.0]]


def test_embedding_cache_keeps_every_call_of_a_start(tmp_path: Path) -> None:
    """An engine embeds its knowledge and then its rules' responses: a restart embeds
    neither again (each call used to keep only its own texts in the file, so every
    start embedded one of the two again), and an edited text costs only itself."""
    from bot.brain import EmbeddingCache

    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(sorted(texts))
        return np.asarray([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    path = tmp_path / "embeddings.npz"
    knowledge, responses = ["returns within 30 days", "shipping to Norway"], ["Hi! How can I help?"]

    def start(knowledge: list[str]) -> None:
        cache = EmbeddingCache(embed, path, "minilm fp32")
        cache(knowledge)
        cache(responses)
        cache.prune()

    start(knowledge)
    assert calls == [sorted(knowledge), responses]
    calls.clear()
    start(knowledge)
    assert calls == []                                         # nothing embedded again
    edited = [knowledge[0], "shipping to Norway and Sweden"]
    start(edited)
    assert calls == [["shipping to Norway and Sweden"]]        # only the edited text
    with np.load(path) as data:
        assert len(data["keys"]) == 3                          # the old text is dropped
    calls.clear()
    start(edited)
    assert calls == []


def test_instances_writing_the_embedding_cache_at_once_each_write_a_whole_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Two instances started together from one project folder both write the cache: each
    writes a file of its own and renames it, so neither write is lost to the other (with
    one shared temporary name, the second writer overwrote the first's file and the
    first's rename failed), and no temporary file is left behind."""
    import bot.brain
    from bot.brain import EmbeddingCache

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    path = tmp_path / "embeddings.npz"
    real_replace = os.replace
    others: list[int] = []

    def replace(src: str, dst: str) -> None:
        if not others:  # the other instance writes its file while this one is about to rename
            others.append(1)
            EmbeddingCache(embed, path, "minilm fp32")(["the other instance's text"])
        real_replace(src, dst)

    monkeypatch.setattr(bot.brain.os, "replace", replace)
    with caplog.at_level(logging.WARNING, logger="deskmate.brain"):
        EmbeddingCache(embed, path, "minilm fp32")(["shipping", "returns"])
    assert "cannot write" not in caplog.text
    with np.load(path) as data:
        assert len(data["keys"]) == 2                     # the last rename's whole file
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_embedding_cache_is_embedded_again(tmp_path: Path, damage: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A cache file cut short (a full disk, a power cut) is embedded again with a warning,
    not a server that cannot start: an empty file made np.load raise EOFError and a
    truncated one zipfile.BadZipFile, neither of which the loader caught."""
    from bot.brain import EmbeddingCache

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    path = tmp_path / "embeddings.npz"
    EmbeddingCache(embed, path, "minilm fp32")(["shipping", "returns"])
    whole = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="deskmate.brain"):
        cache = EmbeddingCache(embed, path, "minilm fp32")
    assert cache.vectors == {} and cache.stored == set()
    assert "cannot read the embedding cache" in caplog.text
    assert cache(["shipping"]).tolist() == [[8.0, 1.0]]
    with np.load(path) as data:                               # and the file is whole again
        assert len(data["keys"]) == 1


def test_the_embedding_cache_reaches_the_disk_before_its_name(tmp_path: Path,
                                                              disk_writes: list[str]) -> None:
    """The temporary file is fsynced before it is renamed over the cache: otherwise a power
    cut can leave the new name pointing at an empty file."""
    from bot.brain import EmbeddingCache

    EmbeddingCache(lambda texts: np.ones((len(texts), 2), np.float32),
                   tmp_path / "embeddings.npz", "minilm fp32")(["shipping"])
    assert disk_writes == ["fsync", "replace"]
