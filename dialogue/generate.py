"""Generative replies, kept to the shop's facts.

The language model (a ``model.lm.ChatModel`` handed in by ``bot``) writes the
reply; :class:`~dialogue.grounding.GroundedStream` releases it sentence by
sentence and stops at the first sentence that states a fact (price, number,
duration, date, URL, policy term) the evidence does not contain. When nothing
survives — or the model is down or too slow — the grounded fallback is said
instead. The customer never waits on a hung model: the first chunk and every
next one have a deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dialogue.grounding import GroundedStream
from dialogue.types import HistoryItem

log = logging.getLogger("deskmate.generate")


class ChatStream(Protocol):
    """What dialogue needs of a language model (``model.lm.ChatModel`` fits)."""

    def stream(self, messages: Sequence[Any], *, max_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, stop: Sequence[str] = (), seed: int | None = None,
               usage: Any = None) -> AsyncIterator[str]: ...


class PromptAssembler(Protocol):
    """``model.lm.PromptBuilder``: fits persona, knowledge and history in the context."""

    def build(self, *, persona: str, history: Sequence[Any], policy: str = "",
              knowledge: Sequence[str] = (), summary: str | None = None) -> Any: ...


@dataclass(frozen=True)
class GenerationSettings:
    max_tokens: int = 160
    temperature: float = 0.3
    first_token_timeout: float = 20.0  # seconds until the first chunk, then...
    chunk_timeout: float = 10.0        # ...at most this long between chunks

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> GenerationSettings:
        d = cls()
        return cls(max_tokens=int(section.get("max_tokens", d.max_tokens)),
                   temperature=float(section.get("temperature", d.temperature)),
                   first_token_timeout=float(section.get("first_token_timeout", d.first_token_timeout)),
                   chunk_timeout=float(section.get("chunk_timeout", d.chunk_timeout)))


@dataclass
class GenerationReport:
    """Filled in while the reply streams; read once it has ended."""

    blocked: list[str] = field(default_factory=list)
    error: str | None = None
    fell_back: bool = False
    text: str = ""


def persona_text(config: Mapping[str, Any]) -> tuple[str, str]:
    """(persona, policy) for the system prompt from ``config.yml``'s ``persona`` section."""
    persona = config.get("persona") or {}
    name = persona.get("name", "the assistant")
    shop = persona.get("shop_name", "the shop")
    parts = [f"You are {name}, the customer assistant of {shop}."]
    if persona.get("shop_description"):
        parts.append(str(persona["shop_description"]).strip())
    if persona.get("tone"):
        parts.append("Tone: " + str(persona["tone"]).strip())
    return " ".join(parts), str(persona.get("policy") or "").strip()


class Writer:
    """Streams a grounded generated reply (or its fallback)."""

    def __init__(self, lm: ChatStream, prompts: PromptAssembler, config: Mapping[str, Any]) -> None:
        self.lm = lm
        self.prompts = prompts
        self.persona, self.policy = persona_text(config)
        self.settings = GenerationSettings.from_config(config.get("language_model") or {})

    def messages(self, history: Sequence[HistoryItem], text: str, knowledge: Sequence[str],
                 instruction: str | None = None) -> list[Any]:
        turns = [{"role": "user" if h.role == "user" else "assistant", "content": h.text}
                 for h in history if h.text and h.role in ("user", "bot", "agent")]
        newest = text if instruction is None else f"{text}\n\n({instruction})"
        turns.append({"role": "user", "content": newest})
        prompt = self.prompts.build(persona=self.persona, policy=self.policy, history=turns,
                                    knowledge=list(knowledge))
        return list(prompt.messages)

    async def _chunks(self, messages: Sequence[Any], seed: int) -> AsyncIterator[str]:
        source = self.lm.stream(messages, max_tokens=self.settings.max_tokens,
                                temperature=self.settings.temperature, seed=seed)
        iterator = source.__aiter__()
        timeout = self.settings.first_token_timeout
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(iterator.__anext__(), timeout)
                except StopAsyncIteration:
                    return
                timeout = self.settings.chunk_timeout
                yield chunk
        finally:
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                await closer()  # cancels the generation: its share of the engine is freed

    async def stream(self, messages: Sequence[Any], evidence: Sequence[str], fallback: str,
                     report: GenerationReport, *, seed: int = 0) -> AsyncIterator[str]:
        """The reply's text chunks; ``report`` says afterwards what was blocked or failed."""
        gate = GroundedStream(self._chunks(messages, seed), evidence)
        try:
            async for piece in gate:
                yield piece
        except TimeoutError as exc:
            report.error = f"language model timed out ({type(exc).__name__})"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the model backend failed: answer from the fallback
            report.error = f"language model failed: {exc}"
            log.warning("generation failed: %s", exc)
        report.blocked = [f.text for f in gate.blocked]
        report.text = gate.released
        if not gate.released.strip():
            report.fell_back = True
            report.text = fallback
            yield fallback
