"""The async streaming interface shared by the embedded engine and the remote backend.

``dialogue/`` and ``bot/`` depend only on :class:`ChatModel`::

    async for delta in lm.stream(messages, max_tokens=128, temperature=0.7, stop=["\\n\\n"], seed=1):
        ...

Closing the async generator (``break``, ``aclose()``, or cancelling the task that
iterates it) releases the request's share of the engine at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict, runtime_checkable

from bot.errors import DeskmateError


class Message(TypedDict):
    """One chat message, as in the OpenAI chat-completions API."""

    role: str       # "system" | "user" | "assistant"
    content: str


FinishReason = Literal["stop", "length", "cancelled", "error"]


class LMError(DeskmateError):
    """Base of the language-model errors; ``code`` is what the HTTP edge reports."""

    code = "lm_error"


class ContextOverflowError(LMError):
    """The prompt alone does not fit the model's context window."""

    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, context: int) -> None:
        super().__init__(f"prompt has {prompt_tokens} tokens; the context holds {context} "
                         "(assemble prompts with model.lm.prompt.PromptBuilder)")
        self.prompt_tokens = prompt_tokens
        self.context = context


class EngineClosedError(LMError):
    """The engine was stopped, or its thread died, before the request finished."""

    code = "engine_closed"


class InvalidRequestError(LMError, ValueError):
    """A parameter is out of range (negative max_tokens, temperature, empty messages)."""

    code = "invalid_request"


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings (defaults written out)."""

    max_tokens: int = 256          # new tokens at most; clamped to what the context allows
    temperature: float = 0.0       # 0 = greedy (deterministic)
    top_p: float = 1.0             # nucleus sampling; 1.0 = off
    stop: tuple[str, ...] = ()     # text that ends the reply (not included in the output)
    seed: int | None = None        # per-request torch.Generator seed; None = random
    ignore_eos: bool = False       # benchmarks only: always generate max_tokens

    def validate(self) -> SamplingParams:
        if self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, not {self.max_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            raise InvalidRequestError(f"temperature must be in [0, 5], not {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError(f"top_p must be in (0, 1], not {self.top_p}")
        return self


@dataclass
class Usage:
    """Token counts and timings of one finished request."""

    prompt_tokens: int = 0
    cached_tokens: int = 0         # prompt tokens whose KV came from the engine's prefix cache
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None
    ttft_s: float | None = None    # submit -> first text delta
    steps: int = 0                 # batched decode steps this request took part in (live)
    extra: dict[str, float] = field(default_factory=dict)


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """Validate chat messages at the boundary; return them as a plain list."""
    if not messages:
        raise InvalidRequestError("messages must not be empty")
    out: list[Message] = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
                m.get("content"), str):
            raise InvalidRequestError(f"bad message {m!r}: need role and content strings")
        out.append({"role": m["role"], "content": m["content"]})
    return out


@runtime_checkable
class ChatModel(Protocol):
    """What dialogue/ and bot/ hold: the embedded :class:`~model.lm.engine.Engine` or a
    :class:`~model.lm.remote.RemoteChatModel`."""

    name: str

    def stream(self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, stop: Sequence[str] = (), seed: int | None = None,
               usage: Usage | None = None) -> AsyncIterator[str]:
        """Text deltas of the reply; ``usage`` (if given) is filled in when it ends."""
        ...


async def complete(model: ChatModel, messages: Sequence[Message], **kwargs: object) -> str:
    """The whole reply as one string (convenience for tests and batch jobs)."""
    parts: list[str] = []
    async for delta in model.stream(messages, **kwargs):  # type: ignore[arg-type]
        parts.append(delta)
    return "".join(parts)


class _Done:
    """End-of-stream marker put on a request's queue by the engine thread."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


QueueItem = str | _Done
DONE = _Done()


def make_queue() -> asyncio.Queue[QueueItem]:
    """Unbounded: the engine thread must never block on a slow consumer."""
    return asyncio.Queue()
