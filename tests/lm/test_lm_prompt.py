"""Prompt assembly under a token budget, counted with the real chat template."""

from __future__ import annotations

import pytest

from model.lm.api import ContextOverflowError
from model.lm.prompt import PromptBudget, PromptBuilder, approx_tokens

PERSONA = "You are Mia, the friendly assistant of the Teapot Shop. Answer briefly."
POLICY = "Never promise refunds; offer to connect a human agent instead."


def history(turns: int) -> list[dict[str, str]]:
    out = []
    for i in range(turns):
        out.append({"role": "user", "content": f"Question number {i}: where is parcel {i}?"})
        out.append({"role": "assistant", "content": f"Parcel {i} left our warehouse on day {i}."})
    out.append({"role": "user", "content": "And what about my teapot order?"})
    return out


def builder(engine, context: int, reply: int = 64) -> PromptBuilder:  # type: ignore[no-untyped-def]
    return PromptBuilder(engine.count_tokens, PromptBudget(context=context, reply_tokens=reply))


def test_everything_fits(engine) -> None:  # type: ignore[no-untyped-def]
    p = builder(engine, 8192).build(persona=PERSONA, policy=POLICY, history=history(3),
                                    knowledge=["Teapots ship in 2 days."])
    assert p.dropped_turns == 0 and p.dropped_knowledge == 0 and not p.truncated_last
    assert p.messages[0]["role"] == "system" and POLICY in p.messages[0]["content"]
    assert "Teapots ship in 2 days." in p.messages[0]["content"]
    assert p.messages[1:] == history(3)
    assert p.tokens == engine.count_tokens(p.messages)


def test_oldest_turns_dropped_first(engine) -> None:  # type: ignore[no-untyped-def]
    b = builder(engine, 400)
    p = b.build(persona=PERSONA, policy=POLICY, history=history(20))
    assert p.tokens <= 400 - 64
    assert p.dropped_turns > 0
    kept = p.messages[1:]
    assert kept == history(20)[-len(kept):]              # a suffix: newest turns survive
    assert "omitted" in p.messages[0]["content"]


def test_knowledge_limited_to_its_share(engine) -> None:  # type: ignore[no-untyped-def]
    facts = [f"Fact {i}: teapot model T{i} holds {i + 1} cups." for i in range(60)]
    p = builder(engine, 512).build(persona=PERSONA, history=history(2), knowledge=facts)
    assert 0 < p.dropped_knowledge < 60
    assert "Fact 0:" in p.messages[0]["content"]          # most relevant kept first
    assert p.tokens <= 512 - 64


def test_long_customer_message_trimmed_at_start(engine) -> None:  # type: ignore[no-untyped-def]
    paste = "log line with details " * 300 + "so why did my payment fail?"
    p = builder(engine, 300).build(persona=PERSONA, history=[{"role": "user", "content": paste}])
    assert p.truncated_last and p.messages[-1]["content"].endswith("why did my payment fail?")
    assert p.tokens <= 300 - 64


def test_persona_alone_too_big(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ContextOverflowError):
        builder(engine, 100).build(persona=PERSONA * 20, history=history(0))


async def test_built_prompt_runs_in_the_engine(engine) -> None:  # type: ignore[no-untyped-def]
    from model.lm.api import Usage, complete

    p = builder(engine, 8192).build(persona=PERSONA, policy=POLICY, history=history(30))
    usage = Usage()
    await complete(engine, p.messages, max_tokens=8, usage=usage)
    assert usage.prompt_tokens == p.tokens


def test_approx_counter_overestimates(engine) -> None:  # type: ignore[no-untyped-def]
    msgs = history(10)
    assert approx_tokens(msgs) >= engine.count_tokens(msgs) - 40   # system prompt of the template
    p = PromptBuilder(approx_tokens, PromptBudget(context=300, reply_tokens=50)).build(
        persona=PERSONA, history=history(20))
    assert engine.count_tokens(p.messages) <= 300


def test_summary_counts_against_the_budget() -> None:
    """The running summary is always sent, so it takes room from the newest message."""
    b = PromptBuilder(approx_tokens, PromptBudget(context=300, reply_tokens=100))
    summary = "The customer ordered a blue teapot and asked twice about delivery. " * 6   # ~400 chars
    paste = "my order number and the details again " * 13 + "where is it?"
    p = b.build(persona=PERSONA, history=[{"role": "user", "content": paste}], summary=summary)
    assert summary in p.messages[0]["content"] and p.truncated_last
    assert p.messages[-1]["content"].endswith("where is it?")
    assert p.tokens == approx_tokens(p.messages) <= 200
    # A summary that leaves no room at all is refused like an oversized persona.
    with pytest.raises(ContextOverflowError):
        b.build(persona=PERSONA, history=[{"role": "user", "content": "hi"}], summary="x" * 1000)


def test_no_room_even_for_a_trimmed_newest_message() -> None:
    """Persona and note fit, but not beside even "…": refused, never a prompt over the limit."""
    b = PromptBuilder(approx_tokens, PromptBudget(context=300, reply_tokens=100))
    earlier = {"role": "assistant", "content": "Hello! How can I help?"}
    refused = 0
    for size in range(560, 600, 2):
        persona = ("Be kind. " * 70)[:size]
        try:
            p = b.build(persona=persona, history=[earlier, {"role": "user", "content": "hi"}])
        except ContextOverflowError as exc:
            assert exc.context == 200
            refused += 1
        else:
            assert p.tokens <= 200 and p.truncated_last, size
    assert 0 < refused < 20
