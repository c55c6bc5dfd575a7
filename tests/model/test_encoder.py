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
