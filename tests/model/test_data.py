"""Loading Rasa NLU YAML and CSV training data."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import ProjectError
from model.data import data_hash, load_csv, load_project, load_rasa_yaml, strip_entities

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("has my order [4711](order_id) shipped", "has my order 4711 shipped"),
        ("return the [jacket](product:coat)", "return the jacket"),
        ('order [123-456]{"entity": "order_id"} please', "order 123-456 please"),
        ('[Berlin]{"entity": "city", "role": "to"}[x](y) now', "Berlin now"),
        ("no [brackets] here", "no [brackets] here"),
    ],
)
def test_strip_entities(raw: str, plain: str) -> None:
    assert strip_entities(raw) == plain


def test_rasa_yaml_awkward_cases() -> None:
    examples = load_rasa_yaml(FIXTURES / "shopbot" / "data" / "nlu.yml")
    by_label: dict[str, list[str]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e.text)
    # synonym / lookup / regex sections are skipped, not read as intents
    assert sorted(by_label) == ["greet", "order_status", "refund"]
    assert "has my order 4711 shipped yet" in by_label["order_status"]
    assert "what's the status of order 123-456" in by_label["order_status"]
    assert "can I return the jacket for a refund" in by_label["refund"]
    assert "hallo, grüß dich" in by_label["greet"]  # Unicode kept as is
    assert not any(t.startswith("#") for texts in by_label.values() for t in texts)
    assert len(by_label["order_status"]) == 8  # the comment line is not an example


def test_examples_as_list_with_metadata() -> None:
    examples = load_rasa_yaml(FIXTURES / "shopbot" / "data" / "more.yml")
    texts = [e.text for e in examples]
    assert {e.label for e in examples} == {"goodbye"}
    assert "bye" in texts  # a "text: |" block loses its trailing newline
    assert "that's all, thanks — ciao 👋" in texts


def test_project_skips_files_without_nlu(shopbot: Path) -> None:
    examples, files = load_project(shopbot)
    assert [f.name for f in files] == ["more.yml", "nlu.yml"]  # stories.yml has no nlu key
    assert len({e.label for e in examples}) == 4


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "nlu.yml"
    bad.write_text('version: "3.1"\nnlu:\n- intent: greet\n  examples: |\n    - hi\n  - : :\n')
    with pytest.raises(ProjectError) as err:
        load_rasa_yaml(bad)
    assert str(bad) in str(err.value)


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="no data directory"):
        load_project(tmp_path)


def test_csv_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label,extra\nhello,greet,x\n\"bye, now\",goodbye,y\n", encoding="utf-8")
    rows = load_csv(path)
    assert [(e.text, e.label) for e in rows] == [("hello", "greet"), ("bye, now", "goodbye")]
    # the hash ignores order, so reformatting a file does not make a model stale
    assert data_hash(rows) == data_hash(list(reversed(rows)))
    with pytest.raises(ProjectError, match="header"):
        (tmp_path / "bad.csv").write_text("sentence,intent\nhi,greet\n")
        load_csv(tmp_path / "bad.csv")


def test_csv_saved_by_excel_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with a BOM; read as plain UTF-8 it became part
    of the first column's name and the file was refused for want of a 'text' column."""
    path = tmp_path / "excel.csv"
    path.write_text("text,label\nwhere is my parcel,order_status\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [(e.text, e.label) for e in load_csv(path)] == [("where is my parcel", "order_status")]


def test_yaml_11_booleans_are_intents_and_examples(tmp_path: Path) -> None:
    """"- intent: on" trained a label "True" and "- text: yes" was refused ("bad example
    {'text': True}"): Rasa reads both as text (YAML 1.2)."""
    path = tmp_path / "nlu.yml"
    path.write_text('version: "3.1"\nnlu:\n- intent: on\n  examples: |\n    - switch it on\n'
                    "- intent: affirm\n  examples:\n  - text: yes\n  - text: no problem\n",
                    encoding="utf-8")
    assert [(e.text, e.label) for e in load_rasa_yaml(path)] == [
        ("switch it on", "on"), ("yes", "affirm"), ("no problem", "affirm")]


def test_the_documented_training_data_trains_what_it_says() -> None:
    """docs/nlu.md's example once ended an example line with a "# note": inside an
    ``examples: |`` block that is not a YAML comment but part of the text trained on."""
    import re

    from dialogue.project import parse_yaml
    from dialogue.rasa_nlu import section_examples

    doc = (Path(__file__).parents[2] / "docs" / "nlu.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)
    sections = [s for b in blocks for s in (parse_yaml(b) or {}).get("nlu") or [] if "intent" in s]
    texts = [t for s in sections for t in section_examples("docs/nlu.md", s)]
    assert "has order 4711 shipped" in texts
    assert not [t for t in texts if "#" in t]


def test_project_examples_given_twice_are_trained_once(shopbot: Path) -> None:
    """Training sees each (intent, text) pair once, as the data hash does: repeating an
    example changes neither the hash nor what is trained; the first occurrence is kept."""
    from model.data import Example

    before, _ = load_project(shopbot)
    extra = shopbot / "data" / "extra.yml"  # read first: files load in name order
    extra.write_text('version: "3.1"\nnlu:\n- intent: refund\n  examples: |\n'
                     + "    - refund please\n" * 30 + "    - can I return the jacket for a refund\n"
                     "- intent: greet\n  examples: |\n    - refund please\n", encoding="utf-8")
    after, files = load_project(shopbot)
    assert extra in files
    first = [Example("refund please", "refund"), Example("can I return the jacket for a refund", "refund"),
             Example("refund please", "greet")]  # the same text under another intent is kept
    assert after == first + [e for e in before if e not in first]
    assert data_hash(after) == data_hash([*before, first[2]])
