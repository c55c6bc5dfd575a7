"""Low-rank adapters (LoRA) over the top layers of the shared encoder, and the
task model (adapter + pooling + linear head) that intent and sentiment both use.

An adapter adds ``B @ A`` deltas to the frozen linear maps of the last
``top_layers`` layers; the base weights are never copied, so any number of task
models share one encoder in memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from bot.errors import DeskmateError
from model.encoder import Batch, SharedEncoder, mean_pool

# The six linear maps of a BERT layer, with their (in, out) sizes as multiples of
# the hidden size C (the feed-forward block is 4C wide).
TARGETS: dict[str, tuple[int, int]] = {
    "query": (1, 1),
    "key": (1, 1),
    "value": (1, 1),
    "attn_out": (1, 1),
    "ffn_in": (1, 4),
    "ffn_out": (4, 1),
}


@dataclass(frozen=True)
class AdapterConfig:
    """Shape of a task model; stored in every artifact."""

    top_layers: int = 0  # layers (counted from the top) with adapters; 0 = frozen encoder
    rank: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scale numerator: delta = (alpha / rank) * B @ A
    targets: tuple[str, ...] = tuple(TARGETS)
    dropout: float = 0.1  # on the pooled vector before the head (training only)
    head_hidden: int = 0  # 0 = linear head; else one GELU hidden layer of this width

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> AdapterConfig:
        raw = dict(d)
        raw["targets"] = tuple(raw.get("targets", tuple(TARGETS)))  # type: ignore[arg-type]
        return cls(**raw)  # type: ignore[arg-type]


class Adapter(nn.Module):
    """LoRA pairs for each target map of each adapted layer."""

    def __init__(self, config: AdapterConfig, hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.scale = config.alpha / config.rank
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()
        for layer in range(config.top_layers):
            for name in config.targets:
                fan_in, fan_out = (m * hidden_size for m in TARGETS[name])
                a = torch.empty(config.rank, fan_in)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                # B starts at zero, so an untrained adapter is exactly the base model.
                self.down[f"{layer}_{name}"] = nn.Parameter(a)
                self.up[f"{layer}_{name}"] = nn.Parameter(torch.zeros(fan_out, config.rank))

    def delta(self, layer: int, name: str, x: torch.Tensor) -> torch.Tensor:
        """The low-rank correction to add to ``name``'s output for input ``x``."""
        key = f"{layer}_{name}"
        if key not in self.down:
            return torch.zeros((), dtype=x.dtype)
        delta: torch.Tensor = (x @ self.down[key].T @ self.up[key].T) * self.scale
        return delta


class TaskModel(nn.Module):
    """Adapter over the top layers, mean pooling and a linear head.

    Input is the trunk output of :meth:`SharedEncoder.trunk`, so several task
    models can share one trunk pass per utterance.
    """

    def __init__(self, config: AdapterConfig, encoder: SharedEncoder, num_labels: int) -> None:
        super().__init__()
        if not 0 <= config.top_layers <= encoder.num_layers:
            raise DeskmateError(f"the encoder has {encoder.num_layers} layers; cannot adapt the top "
                                f"{config.top_layers}")
        self.config = config
        self.encoder = [encoder]  # a list, so the encoder is not registered as a submodule
        self.adapter = Adapter(config, encoder.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        width = encoder.hidden_size
        self.hidden: nn.Module = nn.Identity()
        if config.head_hidden:
            self.hidden = nn.Sequential(
                nn.Linear(width, config.head_hidden), nn.GELU(), nn.Dropout(config.dropout)
            )
            width = config.head_hidden
        self.head = nn.Linear(width, num_labels)

    @property
    def start_layer(self) -> int:
        """The first layer this model runs itself; its input is the trunk up to here."""
        return self.encoder[0].num_layers - self.config.top_layers

    def forward(
        self, trunk: torch.Tensor, attention_mask: torch.Tensor, start_layer: int | None = None
    ) -> torch.Tensor:
        """Logits (B, L) from trunk states (B, T, C) computed up to ``start_layer``.

        ``start_layer`` defaults to :attr:`start_layer`; a smaller one lets a task share a
        shallower trunk with another task (the extra layers run without adapter).
        """
        enc = self.encoder[0]
        start = self.start_layer if start_layer is None else start_layer
        hidden = enc.top(trunk, attention_mask, start, self.adapter)
        pooled = mean_pool(hidden, attention_mask)  # (B, C)
        logits: torch.Tensor = self.head(self.hidden(self.dropout(pooled)))
        return logits  # (B, L)

    @torch.no_grad()
    def predict_logits(self, batch: Batch, trunk: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for a tokenized batch; computes the trunk unless it is given."""
        if trunk is None:
            trunk = self.encoder[0].trunk(batch, self.start_layer)
        return self.forward(trunk, batch.attention_mask)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Adapter and head weights only: what an artifact stores."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}
