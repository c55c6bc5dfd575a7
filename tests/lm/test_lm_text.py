"""Incremental detokenising and stop sequences (pure functions, real tokenizer)."""

from __future__ import annotations

from model.lm.text import IncrementalDecoder, StopMatcher


def test_multibyte_characters_never_split(loaded) -> None:  # type: ignore[no-untyped-def]
    tok = loaded.tokenizer
    text = "Grüße aus Köln — 世界 🎉🍵 naïve café"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    dec = IncrementalDecoder(lambda t: tok.decode(t, skip_special_tokens=True))
    deltas = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(deltas) == tok.decode(ids)
    assert not any("\ufffd" in d for d in deltas)
    assert len([d for d in deltas if d]) > 5  # streamed, not released at the end


def test_stop_matcher_holds_partial_match_back() -> None:
    m = StopMatcher(["\nUser:", "###"])
    assert m.feed("Hello") == ("Hello", False)
    assert m.feed(" there\nUs") == (" there", False)      # "\nUs" may start "\nUser:"
    assert m.feed("ually") == ("\nUsually", False)       # it did not: released
    assert m.feed(" ok#") == (" ok", False)
    assert m.feed("## tail") == ("", True)               # stop text itself never emitted


def test_stop_matcher_flush_and_no_stops() -> None:
    m = StopMatcher(["END"])
    assert m.feed("the EN") == ("the ", False)
    assert m.flush() == "EN"
    assert StopMatcher([]).feed("abc") == ("abc", False)


def test_stop_in_one_delta() -> None:
    m = StopMatcher(["."])
    assert m.feed("One. Two.") == ("One", True)
