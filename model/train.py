"""Training a :class:`~model.adapter.TaskModel` (intent or sentiment) with torch.

The frozen trunk of the shared encoder is run once over the training set and its
output cached per batch, so each epoch only runs the adapted top layers: this is
what keeps a 600-example bot under a minute and Banking77 within minutes on 2 cores.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from model.adapter import AdapterConfig, TaskModel
from model.encoder import SharedEncoder


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults were chosen on Banking77 and SST-2 (docs/nlu.md)."""

    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    epochs: int = 0  # 0 = pick from the data size (see epochs_for)
    batch_size: int = 32
    lr: float = 3e-3  # AdamW, for adapter and head alike
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of steps with a linear warm-up
    label_smoothing: float = 0.1  # keeps confidences below 1, which the OOS threshold needs
    max_length: int = 64  # word pieces; longer support messages are rare and truncated
    seed: int = 0

    def epochs_for(self, n: int) -> int:
        """Epochs for ``n`` examples: small bot data sets need more passes."""
        if self.epochs:
            return self.epochs
        # A head over frozen features needs many cheap passes (Banking77: 30 epochs
        # measured best); small bot sets get at least ~3000 steps, capped at 100 epochs.
        steps_per_epoch = max(1, math.ceil(n / self.batch_size))
        return min(100, max(30, math.ceil(3000 / steps_per_epoch)))


class TrunkCache:
    """Frozen trunk output per text, computed once in length-sorted batches.

    Held unpadded, one (T, C) tensor per text, so a calibration run and the final
    run share one encoding pass and training batches can be re-drawn every epoch.
    """

    def __init__(self, encoder: SharedEncoder, stop_layer: int, max_length: int) -> None:
        self.encoder = encoder
        self.stop_layer = stop_layer
        self.max_length = max_length
        self.states: dict[str, torch.Tensor] = {}

    def add(self, texts: list[str], progress: bool = False, batch_size: int = 64) -> None:
        # Ties broken by the text: a set's order follows PYTHONHASHSEED, and which texts
        # share a padded batch moves the trunk's float rounding, so the same seed would
        # train different weights in another process.
        todo = sorted({t for t in texts if t not in self.states}, key=lambda t: (len(t), t))
        chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        for chunk in tqdm(chunks, desc="encoding", unit="batch", disable=not progress, leave=False):
            tok = self.encoder.tokenize(chunk, max_length=self.max_length)
            trunk = self.encoder.trunk(tok, self.stop_layer)  # (B, T, C)
            lengths = tok.attention_mask.sum(1).tolist()
            for text, states, n in zip(chunk, trunk, lengths, strict=True):
                self.states[text] = states[:n].clone()

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded trunk states (B, T, C) and attention mask (B, T)."""
        states = [self.states[t] for t in texts]
        padded = pad_sequence(states, batch_first=True)
        mask = torch.zeros(padded.shape[:2], dtype=torch.long)
        for i, st in enumerate(states):
            mask[i, : st.shape[0]] = 1
        return padded, mask


def train_task(
    encoder: SharedEncoder,
    texts: list[str],
    labels: list[int],
    num_labels: int,
    config: TrainConfig | None = None,
    *,
    cache: TrunkCache | None = None,
    allowed: torch.Tensor | None = None,
    progress: bool = True,
    desc: str = "training",
) -> TaskModel:
    """Train adapter + head on ``texts`` with integer ``labels``; returns it in eval mode.

    ``allowed`` (N, num_labels) bool, optional: the labels each example chooses among.
    An example that only knows some of the labels (a binary sentiment corpus has no
    ``neutral``) is scored against those alone, so it teaches which of them fits
    without teaching that the others never do.

    Deterministic for a given seed and thread count. Batches are drawn from
    length buckets (similar lengths, little padding) and reshuffled every epoch.
    """
    config = config or TrainConfig()
    if len(texts) != len(labels) or not texts:
        raise ValueError("texts and labels must be non-empty and of the same length")
    if allowed is not None:
        if allowed.shape != (len(texts), num_labels):
            raise ValueError(f"allowed must be ({len(texts)}, {num_labels}), got {tuple(allowed.shape)}")
        if not bool(allowed[torch.arange(len(labels)), torch.tensor(labels)].all()):
            raise ValueError("an example's own label is not among its allowed labels")
    torch.manual_seed(config.seed)
    model = TaskModel(config.adapter, encoder, num_labels)
    if cache is None:
        cache = TrunkCache(encoder, model.start_layer, config.max_length)
    if cache.stop_layer != model.start_layer:
        raise ValueError("trunk cache computed to a different layer than the adapter needs")
    cache.add(texts, progress=progress)
    target = torch.tensor(labels)
    epochs = config.epochs_for(len(texts))
    steps_per_epoch = math.ceil(len(texts) / config.batch_size)
    total = epochs * steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warm = max(1, int(config.warmup * total))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, schedule)
    rng = random.Random(config.seed)
    by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    model.train()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress)
    for epoch in range(epochs):
        # buckets of 8 batches of similar length, shuffled inside and between
        bucket = config.batch_size * 8
        order: list[list[int]] = []
        for b in range(0, len(by_length), bucket):
            chunk = by_length[b : b + bucket]
            rng.shuffle(chunk)
            order += [chunk[i : i + config.batch_size] for i in range(0, len(chunk), config.batch_size)]
        rng.shuffle(order)
        running = 0.0
        for n, idx in enumerate(order, 1):
            trunk, mask = cache.batch([texts[i] for i in idx])
            logits = model(trunk, mask)  # (B, L)
            if allowed is None:
                loss = F.cross_entropy(logits, target[idx], label_smoothing=config.label_smoothing)
            else:
                loss = restricted_cross_entropy(logits, target[idx], allowed[idx], config.label_smoothing)
            optim.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optim.step()
            sched.step()
            running += loss.item()
            bar.update(1)
            if n % 20 == 0 or n == len(order):
                bar.set_postfix(epoch=epoch + 1, loss=f"{running / n:.3f}")
    bar.close()
    model.eval()
    return model


def restricted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor,
                             smoothing: float) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, L) over each row's ``allowed`` labels (B, L) only,
    with label smoothing spread over those labels; equals ``F.cross_entropy`` where every
    label is allowed."""
    logp = F.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1)        # (B, L)
    share = smoothing / allowed.sum(-1, keepdim=True)                             # (B, 1)
    q = torch.where(allowed, share, 0.0)
    q = q.scatter_add(1, target[:, None], torch.full_like(share, 1.0 - smoothing))
    return -(q * logp.masked_fill(~allowed, 0.0)).sum(-1).mean()
