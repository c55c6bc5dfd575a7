"""The engine's own Llama forward (model/lm/llama.py) against transformers' forward."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from model.lm.kvcache import SlotKVCache
from model.lm.llama import LeanLlama, _pack_int8, greedy_agreement, supports
from model.lm.loader import load_model
from model.threads import on_own_thread, pin_torch_threads


def _prompts(loaded: Any) -> list[list[int]]:
    tok = loaded.tokenizer
    texts = ["Where is my parcel? It was due on Monday.", "hi",
             "Do you sell wool socks in size 44, and how much is delivery to Spain?"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    return ids, mask


def test_default_model_gets_the_lean_forward(loaded: Any) -> None:
    assert supports(loaded.model)
    assert isinstance(loaded.lean, LeanLlama)


@torch.inference_mode()
def test_prefill_and_decode_match_transformers(loaded: Any) -> None:
    """Left-padded prefill of three prompts, then three decode steps through the slot
    cache: every row's logits equal transformers' for that prompt alone (float32)."""
    model, lean = loaded.model, loaded.lean
    prompts = _prompts(loaded)
    ids, mask = _left_padded(prompts)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits, layers = lean.prefill(ids, positions, mask)
    assert all(torch.isfinite(k).all() and torch.isfinite(v).all() for k, v in layers)
    cfg = model.config
    kv = SlotKVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, torch.float32)
    width = ids.shape[1]
    for b, p in enumerate(prompts):
        cut = width - len(p)
        kv.add([(k[b:b + 1, :, cut:], v[b:b + 1, :, cut:]) for k, v in layers])
    next_ids = logits.argmax(-1)
    caches = []
    for b, p in enumerate(prompts):                     # the reference, one prompt at a time
        cache = DynamicCache(config=cfg)
        ref = model(input_ids=torch.tensor([p]), cache=cache, use_cache=True).logits[0, -1]
        torch.testing.assert_close(logits[b], ref, atol=2e-4, rtol=1e-4)
        caches.append(cache)
    for _ in range(3):
        kv.reserve(1)
        step_mask, step_positions = kv.step_inputs()
        out = lean.decode(next_ids[:, None], step_positions, kv, step_mask.bool())
        kv.advance(1)
        for b in range(len(prompts)):
            ref = model(input_ids=next_ids[b].view(1, 1), cache=caches[b], use_cache=True).logits[0, -1]
            torch.testing.assert_close(out[b], ref, atol=2e-4, rtol=1e-4)
        next_ids = out.argmax(-1)


def test_int8_is_smoothed_and_releases_the_float_weights(loaded: Any) -> None:
    """int8 agrees with float32 on the next token at most positions of a support
    conversation, far more often than plain per-call int8 without smoothing."""
    from model.lm.bench import support_prompt

    int8 = load_model(dtype="int8", cache=loaded.path.parent)
    assert isinstance(int8.lean, LeanLlama) and int8.lean.int8
    # The transformers model's own tensors are gone (its config stays for the engine).
    assert all(p.device.type == "meta" for p in int8.model.parameters())
    tok = loaded.tokenizer
    text = tok.apply_chat_template(support_prompt(3), tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    smoothed = greedy_agreement(loaded.lean, int8.lean, ids)
    plain = LeanLlama.__new__(LeanLlama)
    plain.__dict__.update(loaded.lean.__dict__)
    plain.layers = [(n1, n2, *map(_pack_int8, mats)) for n1, n2, *mats in loaded.lean.layers]
    plain.head, plain.int8 = _pack_int8(loaded.lean.head), True
    unsmoothed = greedy_agreement(loaded.lean, plain, ids)
    assert smoothed > 0.6 and smoothed > unsmoothed + 0.1, (smoothed, unsmoothed)


def test_loading_work_runs_on_its_own_thread_and_errors_come_back() -> None:
    seen: list[str] = []
    assert on_own_thread(lambda: seen.append(threading.current_thread().name) or 7, threads=1) == 7
    assert seen and seen[0] != threading.current_thread().name

    def broken() -> None:
        raise LookupError("no such weights")

    with pytest.raises(LookupError, match="no such weights"):
        on_own_thread(broken)


def test_pinned_threads_survive_another_thread_changing_the_default() -> None:
    counts: list[int] = []

    def worker() -> None:
        pin_torch_threads(1)
        barrier.wait()        # the main thread now changes torch's default
        barrier.wait()
        counts.append(torch.get_num_threads())

    barrier = threading.Barrier(2)
    before = torch.get_num_threads()
    thread = threading.Thread(target=worker)
    thread.start()
    barrier.wait()
    torch.set_num_threads(2)
    barrier.wait()
    thread.join()
    torch.set_num_threads(before)
    assert counts == [1]


def _prefill_logits(lean: LeanLlama, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return lean.prefill(torch.tensor([ids]), torch.arange(len(ids))[None], None)[0]


def test_int8_is_saved_once_and_later_starts_load_it_bit_for_bit(loaded: Any, tmp_path: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The first int8 start quantises and saves; later starts read the saved int8 forward
    without reading the float32 weights, and compute exactly the same logits."""
    import transformers

    from model.lm.loader import int8_cache_file

    first = load_model(loaded.path, dtype="int8", cache=tmp_path)
    saved = int8_cache_file(loaded.path, tmp_path)
    assert saved.is_file() and list(tmp_path.iterdir()) == [saved]

    def no_float_weights(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the float32 weights were read")

    with monkeypatch.context() as patch:
        patch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_float_weights)
        second = load_model(loaded.path, dtype="int8", cache=tmp_path)
    assert second.lean.int8 and all(p.device.type == "meta" for p in second.model.parameters())
    assert second.model.generation_config.eos_token_id == loaded.model.generation_config.eos_token_id
    ids = _prompts(loaded)[2]
    assert torch.equal(_prefill_logits(first.lean, ids), _prefill_logits(second.lean, ids))


def test_the_int8_forward_keeps_nothing_of_the_loaded_file(loaded: Any, tmp_path: Any) -> None:
    """The tensors of a loaded safetensors file share one mapping of the whole file; the
    forward copies the few it keeps (embedding, norms), so the file's pages, all read while
    packing, are released with the state instead of staying resident."""
    from safetensors.torch import load_file

    from model.lm.llama import LeanLlama
    from model.lm.loader import int8_cache_file

    load_model(loaded.path, dtype="int8", cache=tmp_path)
    state = load_file(str(int8_cache_file(loaded.path, tmp_path)))
    lean = LeanLlama.from_int8_state(loaded.model, state)
    file_storages = {t.untyped_storage().data_ptr() for t in state.values()}
    kept = [lean.embed, lean.norm, *(t for layer in lean.layers for t in layer[:2])]
    assert not file_storages & {t.untyped_storage().data_ptr() for t in kept}
    assert torch.equal(lean.embed, state["embed"]) and torch.equal(lean.norm, state["norm"])


def test_a_damaged_or_stale_int8_file_is_replaced(loaded: Any, tmp_path: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from model.lm.loader import int8_cache_file

    saved = int8_cache_file(loaded.path, tmp_path)
    stale = tmp_path / saved.name.replace("-int8-", "-int8-0ld")
    stale.write_bytes(b"an earlier recipe's copy")
    saved.write_bytes(b"not a safetensors file")
    with caplog.at_level("WARNING", logger="model.lm.loader"):
        fresh = load_model(loaded.path, dtype="int8", cache=tmp_path)
    assert "ignoring the saved int8 model" in caplog.text
    assert list(tmp_path.iterdir()) == [saved]               # rewritten whole; the stale copy gone
    assert fresh.lean.int8 and load_model(loaded.path, dtype="int8", cache=tmp_path).lean.int8


def test_an_int8_state_that_does_not_fit_the_model_is_refused(loaded: Any) -> None:
    int8 = load_model(dtype="int8", cache=loaded.path.parent)
    state = int8.lean.int8_state()
    assert set(state) == set(LeanLlama.int8_state_keys(loaded.model.config.num_hidden_layers))
    missing = {k: v for k, v in state.items() if k != "layers.3.down.scales"}
    with pytest.raises(ValueError, match="layers.3.down.scales"):
        LeanLlama.from_int8_state(int8.model, missing)
    wrong = dict(state, **{"layers.0.qkv": state["layers.0.qkv"][:, :-1].contiguous()})
    with pytest.raises(ValueError, match="layers.0.qkv"):
        LeanLlama.from_int8_state(int8.model, wrong)
    with pytest.raises(ValueError, match="only an int8 forward"):
        loaded.lean.int8_state()


def test_kv_cache_buffers_start_zeroed_and_keep_their_rows_when_the_cache_grows() -> None:
    kv = SlotKVCache(2, 3, 8, torch.float32, rows=2, columns=4)
    assert all(not t.any() for t in kv.keys + kv.values)
    kv.add([(torch.ones(1, 3, 3, 8), torch.full((1, 3, 3, 8), 2.0))] * 2)
    kv.ensure_rows(5)                                           # grows: every buffer replaced
    assert kv.rows == 8 and kv.keys[1][0, :, :3].eq(1).all() and kv.values[1][0, :, :3].eq(2).all()
    assert not kv.keys[1][1:].any() and not kv.keys[1][0, :, 3:].any()


def test_a_float16_cache_is_widened_into_one_reused_buffer() -> None:
    kv = SlotKVCache(2, 3, 8, torch.float16, rows=2, columns=8)
    kv.add([(torch.full((1, 3, 5, 8), 0.5), torch.full((1, 3, 5, 8), -1.5))] * 2)
    keys, values = kv.layer(1, 5, torch.float32)
    assert keys.dtype == values.dtype == torch.float32 and keys.shape == (1, 3, 5, 8)
    assert keys.eq(0.5).all() and values.eq(-1.5).all()
    again, _ = kv.layer(0, 5, torch.float32)
    assert again.data_ptr() == keys.data_ptr()                  # the same buffer, refilled
    same, _ = SlotKVCache(1, 1, 2, torch.float32).layer(0, 1, torch.float32)
    assert same.dtype == torch.float32                          # no copy when types match


def test_the_int8_cache_file_is_readable_by_other_users(tmp_path: Path) -> None:
    """safetensors writes its files private (0600): a cache prepared by one user (the image
    build) could not be read by the server's user."""
    import torch

    from model.lm.loader import _save_int8

    class Lean:
        def int8_state(self) -> dict[str, torch.Tensor]:
            return {"w": torch.zeros(2, 2, dtype=torch.int8)}

    saved = tmp_path / "m-int8-abc.safetensors"
    _save_int8(Lean(), saved)
    from model.lm.loader import _umask

    assert saved.stat().st_mode & 0o777 == 0o666 & ~_umask()  # 0644 under the usual umask 022
