"""Fixtures for the language-model tests: the real SmolLM2-135M-Instruct, loaded once.

The converted model is cached under ``$DESKMATE_LM_CACHE`` (default ``var/models`` in
the repository), so only the first run pays for the GGUF conversion (~30 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def loaded():  # type: ignore[no-untyped-def]
    """The default model in float32 (exact, so batched == unbatched can be asserted)."""
    from model.lm.loader import load_model

    return load_model(cache=os.environ.get("DESKMATE_LM_CACHE") or ROOT / "var" / "models")


@pytest.fixture(scope="session")
def engine(loaded) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """One engine shared by the session (its thread serves every test's event loop)."""
    from model.lm.engine import Engine

    eng = Engine(loaded)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def reference(loaded):  # type: ignore[no-untyped-def]
    """Unbatched greedy reference: transformers' own ``generate`` on one prompt at a time."""
    import torch

    tok = loaded.tokenizer

    def generate(messages: list[dict[str, str]], max_new_tokens: int) -> str:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=max_new_tokens, do_sample=False)
        return str(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))

    return generate

