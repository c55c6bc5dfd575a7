"""The shared encoder: offline loading, exact embeddings, the split forward pass."""

from __future__ import annotations

import numpy as np
import torch

from model.adapter import AdapterConfig, TaskModel


def test_loaded_once_and_offline(encoder) -> None:  # type: ignore[no-untyped-def]
    from model.encoder import load_encoder

    assert load_encoder() is encoder
    assert "site-packages" in str(encoder.path)


def test_embed_matches_transformers_reference(encoder) -> None:  # type: ignore[no-untyped-def]
    texts = ["Where is my parcel?", "héllo wörld 你好", "a"]
    batch = encoder.tokenize(texts)
    with torch.no_grad():
        ref = encoder.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    mask = batch.attention_mask.unsqueeze(-1).float()
    pooled = (ref.last_hidden_state * mask).sum(1) / mask.sum(1)
    expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    got = encoder.embed(texts)
    assert got.shape == (3, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # paraphrases are closer than unrelated sentences
    a, b, c = encoder.embed(["track my order", "where is my package", "I love pizza"])
    assert a @ b > a @ c


def test_untrained_adapter_is_the_base_model(encoder) -> None:  # type: ignore[no-untyped-def]
    batch = encoder.tokenize(["refund my shoes please", "hi"])
    model = TaskModel(AdapterConfig(top_layers=2), encoder, 3).eval()
    with torch.no_grad():
        trunk = encoder.trunk(batch, model.start_layer)
        top = encoder.top(trunk, batch.attention_mask, model.start_layer, model.adapter)
        full = encoder.trunk(batch, encoder.num_layers)
    torch.testing.assert_close(top, full)
    # the adapter holds no copy of the base weights
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_length_groups_is_the_cheapest_cut() -> None:
    """The classifier's batches: every text once, at most ``max_rows`` a batch, and the
    cheapest cost over every way of cutting the texts sorted by length (brute force)."""
    import itertools
    import random

    from model.encoder import length_groups

    def cost(groups: list[list[int]], lengths: list[int], call: int) -> int:
        return sum(call + len(g) * max(lengths[i] for i in g) for g in groups)

    rng = random.Random(7)
    for _ in range(200):
        lengths = [rng.choice([3, 4, 5, 8, 12, 20, 41, 56]) for _ in range(rng.randint(1, 9))]
        call, max_rows = rng.choice([0, 8, 32, 100]), rng.randint(1, 5)
        groups = length_groups(lengths, max_rows, call)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert all(1 <= len(g) <= max_rows for g in groups)
        ordered = sorted(lengths)
        cheapest = min(
            sum(call + (b - a) * ordered[b - 1] for a, b in itertools.pairwise((0, *cuts, len(ordered))))
            for k in range(len(ordered))
            for cuts in itertools.combinations(range(1, len(ordered)), k)
            if all(b - a <= max_rows for a, b in itertools.pairwise((0, *cuts, len(ordered)))))
        assert cost(groups, lengths, call) == cheapest, (lengths, call, max_rows)
    # a greeting is not run at the length of a long message that came with it
    assert length_groups([4, 60, 5, 3], 64) == [[3, 0, 2], [1]]
    assert length_groups([4, 5, 3, 6], 64) == [[2, 0, 1, 3]]   # close lengths: one batch


def test_an_empty_thread_setting_is_the_default(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """DESKMATE_TORCH_THREADS="" means unset, as an empty value does for every other
    setting (it was "not an integer: ''")."""
    from model.encoder import configure_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("DESKMATE_TORCH_THREADS", "")
    try:
        configure_threads()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
