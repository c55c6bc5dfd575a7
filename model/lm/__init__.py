"""The language model: an embedded continuous-batching engine, a remote backend, prompts.

What ``dialogue/`` and ``bot/`` use::

    from model.lm import open_chat_model, PromptBuilder, PromptBudget

    lm = open_chat_model()                 # embedded engine, or remote if configured
    async for delta in lm.stream(messages, max_tokens=128, temperature=0.7, stop=["\\n\\n"]):
        ...

Importing this package is cheap; torch and transformers load when an engine is made.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from model.lm.api import (
    ChatModel,
    ContextOverflowError,
    EngineClosedError,
    InvalidRequestError,
    LMError,
    Message,
    SamplingParams,
    Usage,
    complete,
)
from model.lm.prompt import Prompt, PromptBudget, PromptBuilder, approx_tokens

if TYPE_CHECKING:
    from model.lm.engine import EngineConfig

__all__ = [
    "ChatModel", "ContextOverflowError", "EngineClosedError", "InvalidRequestError", "LMError",
    "Message", "Prompt", "PromptBudget", "PromptBuilder", "SamplingParams", "Usage", "approx_tokens",
    "complete", "open_chat_model",
]


def open_chat_model(*, backend: str | None = None, config: EngineConfig | None = None) -> ChatModel:
    """The configured model: ``DESKMATE_LM_BACKEND`` = ``embedded`` (default) or ``remote``.

    embedded: ``DESKMATE_LM_MODEL`` (.gguf or model folder; default SmolLM2-135M-Instruct),
    ``DESKMATE_LM_CACHE``, ``DESKMATE_LM_DTYPE`` (float32 | int8 | bfloat16),
    ``DESKMATE_LM_THREADS`` (default: every core), ``DESKMATE_LM_PREFIX_CACHE_MB`` (default 64;
    0 = off), ``DESKMATE_LM_KV_DTYPE`` (float16 | bfloat16 | float32; default: the weights'
    float type). remote: see
    :meth:`model.lm.remote.RemoteConfig.from_env`. Blocking (loads the model): call it
    at startup, or in a thread.

    embedded: the calling thread is left with one torch thread (:func:`leave_cores_to_engine`).
    """
    backend = backend or os.environ.get("DESKMATE_LM_BACKEND", "embedded")
    if backend == "remote":
        from model.lm.remote import RemoteChatModel, RemoteConfig

        return RemoteChatModel(RemoteConfig.from_env())
    if backend != "embedded":
        raise ValueError(f"DESKMATE_LM_BACKEND must be 'embedded' or 'remote', not {backend!r}")
    from model.lm.engine import Engine, EngineConfig, leave_cores_to_engine

    leave_cores_to_engine()
    n_threads = _int_env("DESKMATE_LM_THREADS")
    if config is None:
        prefix_mb = _int_env("DESKMATE_LM_PREFIX_CACHE_MB")
        if prefix_mb is None:
            prefix_mb = EngineConfig.prefix_cache_mb
        kv_dtype = os.environ.get("DESKMATE_LM_KV_DTYPE") or None
        config = EngineConfig(prefix_cache_mb=prefix_mb, kv_dtype=kv_dtype)
    return Engine.load(dtype=os.environ.get("DESKMATE_LM_DTYPE", "float32"), threads=n_threads,
                       config=config)


def _int_env(name: str) -> int | None:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw else None
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None
