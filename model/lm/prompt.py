"""Prompt assembly under a token budget. Pure logic: no torch, no Redis, no I/O.

Parts, in order of priority (what is cut last comes first):

1. persona + policy (the bot project's config) and the caller's running summary — never
   cut; if they leave no room even for the newest message trimmed to "…",
   :class:`ContextOverflowError` is raised, since that is a configuration error;
2. the newest message (the customer's turn) — kept, its *beginning* trimmed if it alone
   would overflow (the end of a long paste is usually the question);
3. retrieved knowledge, most relevant first, up to ``knowledge_share`` of what is left;
4. earlier conversation, newest first: the oldest turns are dropped first, and a
   one-line note (or the caller's running summary) says that earlier turns exist.

Tokens are counted with the real chat template (``Engine.count_tokens``) or, for a
remote model whose tokenizer is not here, with :func:`approx_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from model.lm.api import ContextOverflowError, Message

TokenCounter = Callable[[Sequence[Message]], int]


def approx_tokens(messages: Sequence[Message]) -> int:
    """A safe over-estimate for English BPE vocabularies: ~3.5 characters a token, plus
    the chat template's per-message framing."""
    return sum(len(m["content"]) * 2 // 7 + 8 for m in messages) + 8


@dataclass(frozen=True)
class PromptBudget:
    """How the context is shared (defaults written out)."""

    context: int = 8192            # the model's context window, tokens
    reply_tokens: int = 256        # reserved for the answer (the request's max_tokens)
    knowledge_share: float = 0.5   # at most this share of the free space goes to knowledge
    omitted_note: str = "(Earlier messages in this conversation were omitted.)"


@dataclass(frozen=True)
class Prompt:
    """An assembled prompt and what was left out of it."""

    messages: list[Message]
    tokens: int
    dropped_turns: int
    dropped_knowledge: int
    truncated_last: bool


class PromptBuilder:
    """Builds chat messages that fit ``budget.context - budget.reply_tokens`` tokens."""

    def __init__(self, count: TokenCounter, budget: PromptBudget | None = None) -> None:
        self.count = count
        self.budget = budget or PromptBudget()

    @property
    def limit(self) -> int:
        return self.budget.context - self.budget.reply_tokens

    def build(self, *, persona: str, history: Sequence[Message], policy: str = "",
              knowledge: Sequence[str] = (), summary: str | None = None) -> Prompt:
        """Assemble ``[system, *recent history]``; ``history`` ends with the newest turn."""
        if not history:
            raise ValueError("history must hold at least the customer's newest message")
        head = "\n\n".join(p for p in (persona.strip(), policy.strip()) if p)
        newest = history[-1]
        earlier = list(history[:-1])

        def system(passages: Sequence[str], note: str | None) -> Message:
            text = head
            if passages:
                text += "\n\nUse these facts when they help:\n" + "\n".join(f"- {p}" for p in passages)
            if note:
                text += "\n\n" + note
            return {"role": "system", "content": text}

        # The longest note the prompt may carry: the summary is always sent; the omitted-turns
        # note only when earlier turns exist (and are dropped).
        note = summary or (self.budget.omitted_note if earlier else None)
        bare = system([], note)
        base = self.count([bare])
        if base >= self.limit:
            raise ContextOverflowError(base, self.limit)
        newest_msg: Message = {"role": newest["role"], "content": newest["content"]}
        truncated = False
        if base + self.count([newest_msg]) > self.limit:
            newest_msg, truncated = self._trim_start(newest_msg, self.limit - base), True
        fixed = self.count([bare, newest_msg])
        if fixed > self.limit:
            # Not even "…" fits beside persona, policy and the note: a configuration error.
            raise ContextOverflowError(fixed, self.limit)

        # Knowledge: most relevant first, within its share of the free space.
        knowledge_room = int((self.limit - fixed) * self.budget.knowledge_share)
        kept: list[str] = []
        for passage in knowledge:
            trial = self.count([system(kept + [passage], note), newest_msg])
            if trial - fixed > knowledge_room:
                break
            kept.append(passage)

        # History: newest first, until the next older turn does not fit.
        turns: list[Message] = []
        for msg in reversed(earlier):
            candidate = [{"role": msg["role"], "content": msg["content"]}, *turns]
            trial = self.count([system(kept, note), *candidate, newest_msg])  # type: ignore[list-item]
            if trial > self.limit:
                break
            turns = candidate  # type: ignore[assignment]
        dropped = len(earlier) - len(turns)
        messages = [system(kept, note if dropped else summary), *turns, newest_msg]
        tokens = self.count(messages)
        if tokens > self.limit:         # a counter that is not monotone in the text's length
            raise ContextOverflowError(tokens, self.limit)
        return Prompt(messages=messages, tokens=tokens, dropped_turns=dropped,
                      dropped_knowledge=len(knowledge) - len(kept), truncated_last=truncated)

    def _trim_start(self, msg: Message, room: int) -> Message:
        """Cut the beginning of ``msg`` (binary search on characters) until it fits ``room``;
        at worst only "…" is left, which the caller checks."""
        text = msg["content"]
        lo, hi = 0, len(text)              # keep text[cut:]; find the smallest cut that fits
        while lo < hi:
            mid = (lo + hi) // 2
            if self.count([{"role": msg["role"], "content": "…" + text[mid:]}]) <= room:
                hi = mid
            else:
                lo = mid + 1
        return {"role": msg["role"], "content": "…" + text[lo:]}
