"""Prompt-prefix reuse: the cache's bookkeeping, and the same text with and without it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from model.lm.api import Usage, complete
from model.lm.engine import Engine, EngineConfig
from model.lm.prefix import PrefixCache

SYSTEM = ("You are Nora, the customer assistant of the online shop Northwind Threads. Answer only "
          "questions about the shop, its products, orders, delivery, returns, payment and customer "
          "accounts. Use only the facts in the provided knowledge. Never invent prices or dates. "
          "Keep replies to two or three sentences.")


def _layers(n: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fake per-layer KV whose values encode the token position, to check slicing."""
    pos = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1).expand(1, 2, n, 4).contiguous()
    return [(pos.clone(), -pos.clone()) for _ in range(layers)]


def test_whole_blocks_are_kept_and_one_token_is_always_left_to_prefill() -> None:
    cache = PrefixCache(capacity_bytes=1 << 20, block=4)
    ids = list(range(100, 110))                       # 10 tokens: 2 whole blocks kept
    cache.store(ids, _layers(10))
    assert cache.lookup(list(range(100, 200))) is not None
    n, kv = cache.lookup(ids + [1, 2])                # type: ignore[misc]
    assert n == 8 and kv[0][0].shape == (1, 2, 8, 4)
    assert kv[0][0][0, 0, :, 0].tolist() == list(range(8)) and kv[1][1][0, 0, 7, 0] == -7
    assert cache.lookup(ids[:8])[0] == 4              # type: ignore[index]  # 8 cached, 1 left to do
    assert cache.lookup(ids[:6] + [0, 0, 0, 0])[0] == 4  # type: ignore[index]  # shares one block
    assert cache.lookup([0] + ids) is None
    assert (cache.stats.lookups, cache.stats.hits, cache.stats.tokens) == (5, 4, 24)


def test_least_recently_used_goes_first_when_full() -> None:
    one = 2 * 2 * 8 * 4 * 4 * 2                      # bytes of 8 tokens: 2 layers x K and V
    cache = PrefixCache(capacity_bytes=2 * one, block=4)
    a, b, c = list(range(8)), list(range(10, 18)), list(range(20, 28))
    for ids in (a, b):
        cache.store(ids, _layers(8))
    assert cache.lookup(a + [99]) is not None         # a is now the most recent
    cache.store(c, _layers(8))                        # evicts b
    assert len(cache) == 2 and cache.nbytes == 2 * one
    assert cache.lookup(b + [99]) is None
    assert cache.lookup(a + [99]) is not None and cache.lookup(c + [99]) is not None
    cache.store(a, _layers(8))                        # already there: nothing added
    assert len(cache) == 2


def test_a_hash_collision_never_serves_another_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = PrefixCache(capacity_bytes=1 << 20, block=4)
    monkeypatch.setattr(cache, "_chain", lambda ids, blocks: list(range(blocks)))   # every prompt collides
    cache.store([1, 2, 3, 4, 5], _layers(5))
    assert cache.lookup([9, 9, 9, 9, 9]) is None
    assert cache.lookup([1, 2, 3, 4, 5])[0] == 4     # type: ignore[index]


@torch.inference_mode()
def test_prefill_after_a_prefix_equals_one_prefill(loaded: Any) -> None:
    tok, lean = loaded.tokenizer, loaded.lean
    ids = tok(SYSTEM + " Where is my order 10482?", add_special_tokens=False)["input_ids"]
    whole, whole_kv = lean.prefill(torch.tensor([ids]), torch.arange(len(ids))[None], None)
    p = 32
    _, past = lean.prefill(torch.tensor([ids[:p]]), torch.arange(p)[None], None)
    rest, rest_kv = lean.prefill(torch.tensor([ids[p:]]), torch.arange(p, len(ids))[None], None, past=past)
    torch.testing.assert_close(rest, whole, atol=2e-4, rtol=1e-4)
    for (k1, v1), (k2, v2) in zip(whole_kv, rest_kv, strict=True):
        torch.testing.assert_close(k2, k1, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(v2, v1, atol=1e-4, rtol=1e-4)


async def test_shared_system_prompt_is_reused_and_the_text_is_unchanged(loaded: Any, reference: Any) -> None:
    """Eight customers with the shop's system prompt, admitted a few at a time: later ones
    start from the cached prefix and every reply equals transformers' unbatched greedy."""
    engine = Engine(loaded, EngineConfig(prefill_tokens=256))
    try:
        questions = ["Where is my order?", "Can I return sale items?", "Do you ship to Norway?",
                     "Is the blue jacket waterproof?", "How long does delivery take?",
                     "Can I pay by invoice?", "My parcel is damaged.", "Do you have size 46 boots?"]
        chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in questions]
        usages = [Usage() for _ in chats]
        outs = await asyncio.gather(*[complete(engine, c, max_tokens=10, usage=u)
                                      for c, u in zip(chats, usages, strict=True)])
        assert engine.prefixes is not None and engine.prefixes.stats.hits >= 4
        reused = [u.cached_tokens for u in usages]
        assert sum(1 for r in reused if r >= 64) >= 4, reused
        for chat, out in zip(chats, outs, strict=True):
            assert out == reference(chat, 10), chat[-1]["content"]
        # The same conversation again: all of it but the last block comes from the cache.
        again = Usage()
        assert await complete(engine, chats[0], max_tokens=10, usage=again) == outs[0]
        assert again.cached_tokens >= again.prompt_tokens - 32
    finally:
        engine.close()


async def test_cache_off(loaded: Any) -> None:
    engine = Engine(loaded, EngineConfig(prefix_cache_mb=0))
    try:
        assert engine.prefixes is None
        usage = Usage()
        await complete(engine, [{"role": "user", "content": "hi"}], max_tokens=2, usage=usage)
        await complete(engine, [{"role": "user", "content": "hi"}], max_tokens=2, usage=usage)
        assert usage.cached_tokens == 0
    finally:
        engine.close()
