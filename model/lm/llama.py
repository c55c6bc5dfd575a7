"""A lean forward pass for Llama-architecture models (SmolLM2 is one), for the engine.

transformers' generic forward spends most of a one-stream decode step on Python and
small tensor ops (masks built per call, cache objects per layer, three projections
where one would do). This one runs the same maths over the same weights with fewer,
larger operations:

* q, k and v are one matrix and gate and up another, so a layer is four matrix
  products, not seven;
* rotary embeddings come from the model's own rotary module (every rope type it
  supports), once per forward, not once per layer;
* decode writes keys and values straight into the engine's :class:`SlotKVCache`;
* ``int8``: each matrix is quantised per output channel once, at load, for fbgemm's
  dynamic int8 product (activations are quantised per call, results are float32),
  after SmoothQuant's smoothing calibrated on a short built-in conversation
  (:data:`CALIBRATION`; see :meth:`LeanLlama._quantize`).

The architecture check is strict (:func:`supports`): any other model, or a Llama with
biases or a different activation, keeps transformers' forward.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from model.lm.kvcache import SlotKVCache
from model.lm.prefix import KV

Weight = Any   # a float tensor, or fbgemm's packed int8 parameters

# What int8 calibrates its smoothing on: a support conversation like the ones it will see.
CALIBRATION = [
    {"role": "system", "content": "You are the customer assistant of an online shop. Answer briefly "
                                  "and only with the facts you are given."},
    {"role": "user", "content": "Hello! I ordered a pair of boots last week (order 10482) and they "
                                "still have not arrived. Can you check where they are? Also, what is "
                                "your return policy for sale items, and do you ship to Norway?"},
    {"role": "assistant", "content": "Of course! Order 10482 left our warehouse on Tuesday and should "
                                     "reach you within two working days. Sale items can be returned "
                                     "within 30 days, unworn and with their tags. We ship to Norway; "
                                     "customs fees may apply."},
    {"role": "user", "content": "Thanks :) One more thing: the jacket I got is too small. Can I swap "
                                "it for a size L, or do I need to send it back first?"},
]


def supports(model: Any) -> bool:
    """True for plain Llama decoders (no biases, SiLU gate, no tensor-parallel split)."""
    cfg = model.config
    return (type(model).__name__ == "LlamaForCausalLM"
            and not getattr(cfg, "attention_bias", False) and not getattr(cfg, "mlp_bias", False)
            and getattr(cfg, "hidden_act", "silu") == "silu"
            and getattr(cfg, "pretraining_tp", 1) == 1)


def _smoothing(act_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's factor per input channel: max|X|^alpha / max|W|^(1 - alpha)."""
    w_max = weight.abs().amax(0).clamp(min=1e-5)
    return (act_max.clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)).clamp(min=1e-5)


# Names what :meth:`LeanLlama._quantize` does (calibration text, alphas, packing); a saved
# int8 copy made by another recipe is not reused. Change it whenever that code changes.
INT8_RECIPE = "smoothquant-a0.5-0.7-0.8-embed16-v1"


def _int8_parts(weight: Weight) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed int8 matrix as plain tensors: int8 values (out, in) and scales (out,)."""
    q, _ = torch.ops.quantized.linear_unpack(weight)
    return q.int_repr().contiguous(), q.q_per_channel_scales().to(torch.float64)


def _pack_parts(values: torch.Tensor, scales: torch.Tensor) -> Weight:
    """:func:`_int8_parts` back to fbgemm's packed form (bit for bit the same matrix)."""
    zeros = torch.zeros(values.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # quantised tensors are deprecated API, still shipped
        q = torch._make_per_channel_quantized_tensor(values, scales.to(torch.float64), zeros, 0)
    return torch.ops.quantized.linear_prepack(q, None)


def _pack_int8(weight: torch.Tensor) -> Weight:
    """Per-output-channel symmetric int8, prepacked for ``quantized::linear_dynamic``."""
    w = weight.detach().float().contiguous()
    scale = (w.abs().amax(1).clamp(min=1e-8) / 127).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # quantised tensors are deprecated API, still shipped
        q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(q, None)


class LeanLlama:
    """Prefill and decode over a loaded ``LlamaForCausalLM`` (see module docstring).

    float32/bfloat16: the fused matrices are built once and the model's own q/k/v and
    gate/up weights become views of them, so no weight is held twice and the model's
    forward keeps working. int8: the model's weights may be dropped afterwards
    (:meth:`release_model_weights`); everything this class needs it holds itself.
    """

    def __init__(self, model: Any, *, int8: bool = False, calibration: list[int] | None = None) -> None:
        self._configure(model)
        self.rotary = copy.deepcopy(model.model.rotary_emb)       # survives release_model_weights
        self.layers: list[tuple[torch.Tensor, torch.Tensor, Weight, Weight, Weight, Weight]] = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((layer.input_layernorm.weight.detach(),
                                layer.post_attention_layernorm.weight.detach(),
                                self._fuse(attn.q_proj, attn.k_proj, attn.v_proj),
                                attn.o_proj.weight.detach(),
                                self._fuse(mlp.gate_proj, mlp.up_proj), mlp.down_proj.weight.detach()))
        self.norm = model.model.norm.weight.detach()
        self.embed = model.model.embed_tokens.weight.detach()
        self.head = model.lm_head.weight.detach()     # tied models: the embedding itself
        if int8:
            self._quantize(self._activation_ranges(calibration or []))

    def _configure(self, model: Any) -> None:
        if not supports(model):
            raise ValueError(f"{type(model).__name__} is not a plain Llama decoder")
        cfg = model.config
        self.int8 = False
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        self.eps = cfg.rms_norm_eps
        self._ranges: list[torch.Tensor] | None = None

    _MATRICES = ("qkv", "o", "gate_up", "down")

    def int8_state(self) -> dict[str, torch.Tensor]:
        """Everything an int8 forward holds, as plain tensors (for a safetensors file):
        int8 matrices with their per-row scales, and the float norms and embedding."""
        if not self.int8:
            raise ValueError("only an int8 forward has an int8 state")
        state = {"norm": self.norm, "embed": self.embed}
        for i, (norm1, norm2, *matrices) in enumerate(self.layers):
            state[f"layers.{i}.norm1"], state[f"layers.{i}.norm2"] = norm1, norm2
            for name, weight in zip(self._MATRICES, matrices, strict=True):
                state[f"layers.{i}.{name}"], state[f"layers.{i}.{name}.scales"] = _int8_parts(weight)
        state["head"], state["head.scales"] = _int8_parts(self.head)
        return {key: value.contiguous() for key, value in state.items()}

    @classmethod
    def from_int8_state(cls, model: Any, state: dict[str, torch.Tensor]) -> LeanLlama:
        """The int8 forward saved by :meth:`int8_state`, for ``model``'s architecture.

        ``model`` only lends its config: it may be an empty skeleton on the meta device,
        so the float32 weights are never read. Raises ``ValueError`` when the state does
        not fit the config (another model, a damaged file)."""
        self = cls.__new__(cls)
        self._configure(model)
        cfg = model.config
        self.rotary = type(model.model.rotary_emb)(config=cfg)    # real buffers, not meta ones
        inner = cfg.intermediate_size
        shapes = {"qkv": ((self.heads + 2 * self.kv_heads) * self.head_dim, self.hidden),
                  "o": (self.hidden, self.heads * self.head_dim), "gate_up": (2 * inner, self.hidden),
                  "down": (self.hidden, inner)}

        def matrix(key: str, shape: tuple[int, int]) -> Weight:
            values, scales = state[key], state[f"{key}.scales"]
            if (tuple(values.shape) != shape or values.dtype != torch.int8
                    or tuple(scales.shape) != shape[:1]):
                raise ValueError(f"{key}: {tuple(values.shape)} {values.dtype}, expected {shape} int8")
            return _pack_parts(values, scales)

        # Tensors kept from ``state`` are copied: those of a loaded safetensors file share
        # one memory mapping of the whole file, which every int8 matrix was read through, so
        # keeping one of them would keep all its pages resident (75-85 MB after packing).
        def vector(key: str) -> torch.Tensor:
            value = state[key]
            if tuple(value.shape) != (self.hidden,):
                raise ValueError(f"{key}: {tuple(value.shape)}, expected ({self.hidden},)")
            return value.clone()

        try:
            self.layers = [(vector(f"layers.{i}.norm1"), vector(f"layers.{i}.norm2"),
                            *(matrix(f"layers.{i}.{name}", shapes[name]) for name in cls._MATRICES))
                           for i in range(cfg.num_hidden_layers)]
            self.norm = vector("norm")
            self.embed = state["embed"].clone()
            self.head = matrix("head", (cfg.vocab_size, self.hidden))
        except KeyError as exc:
            raise ValueError(f"missing {exc.args[0]}") from None
        if tuple(self.embed.shape) != (cfg.vocab_size, self.hidden):
            raise ValueError(f"embed: {tuple(self.embed.shape)}, expected {(cfg.vocab_size, self.hidden)}")
        extra = set(state) - set(self.int8_state_keys(cfg.num_hidden_layers))
        if extra:
            raise ValueError(f"unexpected tensors: {sorted(extra)[:3]}")
        self.int8 = True
        return self

    @classmethod
    def int8_state_keys(cls, layers: int) -> list[str]:
        keys = ["norm", "embed", "head", "head.scales"]
        for i in range(layers):
            keys += [f"layers.{i}.norm1", f"layers.{i}.norm2"]
            keys += [f"layers.{i}.{name}{end}" for name in cls._MATRICES for end in ("", ".scales")]
        return keys

    def _activation_ranges(self, ids: list[int]) -> list[torch.Tensor]:
        """Per input channel, the largest magnitude each matrix sees on ``ids`` (float32):
        for every layer the inputs of qkv, gate/up and down, then the head's."""
        if not ids:
            raise ValueError("int8 needs calibration tokens")
        self._ranges = []
        try:
            tokens = torch.tensor([ids])
            self.prefill(tokens, torch.arange(len(ids))[None], None)
            return self._ranges
        finally:
            self._ranges = None

    def _quantize(self, ranges: list[torch.Tensor]) -> None:
        """int8 matrices with SmoothQuant's per-channel smoothing (Xiao et al., 2023).

        fbgemm quantises a product's input with one scale per call, and a few input
        channels of this model carry values hundreds of times larger than the rest, which
        would flatten everything else to zero. Dividing those channels by ``s`` and
        multiplying the matching weight columns by ``s`` leaves the product unchanged but
        shares the range between activations and weights; the division is folded into the
        preceding RMSNorm weight (qkv, gate/up, head) or into the up projection's rows
        (down), so it costs nothing per token."""
        layers = []
        for i, (norm1, norm2, qkv, o, gate_up, down) in enumerate(self.layers):
            s_qkv = _smoothing(ranges[3 * i], qkv, 0.5)
            s_gate_up = _smoothing(ranges[3 * i + 1], gate_up, 0.5)
            s_down = _smoothing(ranges[3 * i + 2], down, 0.7)
            gate_up = gate_up * s_gate_up
            gate_up[down.shape[1]:] /= s_down[:, None]             # the up rows feed down
            layers.append((norm1 / s_qkv, norm2 / s_gate_up, _pack_int8(qkv * s_qkv), _pack_int8(o),
                           _pack_int8(gate_up), _pack_int8(down * s_down)))
        s_head = _smoothing(ranges[-1], self.head, 0.8)
        # Everything kept in float is a copy, so the model's memory-mapped weights can go.
        self.layers, self.norm = layers, self.norm / s_head
        # The embedding is only looked up, a few rows per step: float16 halves its 113 MB
        # (SmolLM2) for a rounding error far below int8's.
        self.head, self.embed = _pack_int8(self.head * s_head), self.embed.to(torch.float16)
        self.int8 = True

    @staticmethod
    def _fuse(*linears: Any) -> torch.Tensor:
        """One matrix for several projections; the modules' weights become views of it."""
        fused = torch.cat([lin.weight.detach() for lin in linears]).contiguous()
        row = 0
        for lin in linears:
            rows = lin.weight.shape[0]
            lin.weight = torch.nn.Parameter(fused[row:row + rows], requires_grad=False)
            row += rows
        return fused

    def _linear(self, x: torch.Tensor, weight: Weight) -> torch.Tensor:
        if self.int8:
            out: torch.Tensor = torch.ops.quantized.linear_dynamic(x, weight, True)
            return out
        return F.linear(x, weight)

    @staticmethod
    def release_model_weights(model: Any) -> None:
        """Free the transformers model's tensors (int8: this class has its own copies).

        The model keeps its config and generation settings but can no longer run."""
        model.to("meta")

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.rotary(x, positions)                        # (B, T, D) each
        return cos[:, None], sin[:, None]                            # broadcast over heads

    def _attention_inputs(self, h: torch.Tensor, qkv_weight: Weight, cos: torch.Tensor,
                          sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, T, D), k and v (B, KV, T, D) with rotary embeddings applied to q and k."""
        b, t = h.shape[:2]
        heads, kv, d = self.heads, self.kv_heads, self.head_dim
        qkv = self._linear(h, qkv_weight).view(b, t, heads + 2 * kv, d).transpose(1, 2)
        qk = qkv[:, :heads + kv]
        first, second = qk.chunk(2, -1)
        qk = qk * cos + torch.cat((-second, first), -1) * sin
        return qk[:, :heads], qk[:, heads:], qkv[:, heads + kv:]

    def _finish_layer(self, x: torch.Tensor, attended: torch.Tensor, layer: tuple[Any, ...]) -> torch.Tensor:
        _, post_norm, _, o_weight, gate_up_weight, down_weight = layer
        b, t = x.shape[:2]
        x = x + self._linear(attended.transpose(1, 2).reshape(b, t, self.heads * self.head_dim), o_weight)
        normed = F.rms_norm(x, (self.hidden,), post_norm, self.eps)
        gate, up = self._linear(normed, gate_up_weight).chunk(2, -1)
        act = F.silu(gate) * up
        if self._ranges is not None:
            self._ranges += [normed.abs().amax((0, 1)), act.abs().amax((0, 1))]
        return x + self._linear(act, down_weight)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(F.rms_norm(x, (self.hidden,), self.norm, self.eps), self.head)

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, *,
                past: list[KV] | None = None, every_position: bool = False) -> tuple[torch.Tensor, list[KV]]:
        """Run left-padded prompts ``ids`` (B, T); ``mask`` (B, T) marks real tokens (None:
        no padding). ``past``: per-layer keys and values (1, KV, P, D) of tokens before
        ``ids`` (one prompt, no padding; ``positions`` then start at P). Return the last
        position's logits (B, V) — (B, T, V) with ``every_position`` — and each layer's
        keys and values (B, KV, P + T, D)."""
        b, t = ids.shape
        x = F.embedding(ids, self.embed).to(self.norm.dtype)
        cos, sin = self._rope(x, positions)
        if past is not None:
            if b != 1 or mask is not None:
                raise ValueError("a cached prefix continues one unpadded prompt")
            p = past[0][0].shape[-2]
            # New token i sees the whole prefix and new tokens 0..i.
            attn_mask, causal = torch.ones(t, p + t, dtype=torch.bool).tril(p), False
        elif mask is None:
            attn_mask, causal = None, t > 1
        else:
            # Causal, real keys only; a padding query sees itself so no row is all -inf
            # (its output is never used, but a NaN there would reach later layers' values).
            tri = torch.ones(t, t, dtype=torch.bool).tril()
            attn_mask = (tri & mask.bool()[:, None, :]) | torch.eye(t, dtype=torch.bool)
            attn_mask, causal = attn_mask[:, None], False
        kvs: list[KV] = []
        for i, layer in enumerate(self.layers):
            normed = F.rms_norm(x, (self.hidden,), layer[0], self.eps)
            if self._ranges is not None:
                self._ranges.append(normed.abs().amax((0, 1)))
            q, k, v = self._attention_inputs(normed, layer[2], cos, sin)
            if past is not None:   # cached keys and values may be kept in a narrower type
                k = torch.cat((past[i][0].to(k.dtype), k), -2)
                v = torch.cat((past[i][1].to(v.dtype), v), -2)
            kvs.append((k.contiguous(), v.contiguous()))
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal,
                                                      enable_gqa=True)
            x = self._finish_layer(x, attended, layer)
        if self._ranges is not None:
            self._ranges.append(F.rms_norm(x, (self.hidden,), self.norm, self.eps).abs().amax((0, 1)))
        return self._logits(x if every_position else x[:, -1]), kvs

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, cache: SlotKVCache,
               mask: torch.Tensor | None) -> torch.Tensor:
        """One token for each of the cache's ``n`` rows: ``ids`` and ``positions`` (n, 1),
        ``mask`` (n, length + 1) bool over the cache's columns (None: no padding). Writes
        keys and values at column ``cache.length`` (the caller advances it); returns (n, V)."""
        n = ids.shape[0]
        col = cache.length
        x = F.embedding(ids, self.embed).to(self.norm.dtype)
        cos, sin = self._rope(x, positions)
        attn_mask = None if mask is None else mask[:, None, None, :]
        for i, layer in enumerate(self.layers):
            q, k, v = self._attention_inputs(F.rms_norm(x, (self.hidden,), layer[0], self.eps),
                                             layer[2], cos, sin)
            keys, values = cache.keys[i], cache.values[i]
            keys[:n, :, col:col + 1] = k
            values[:n, :, col:col + 1] = v
            # A float16 cache is widened for the product: on CPUs without float16 arithmetic
            # that costs far less than float16 attention would.
            attended = F.scaled_dot_product_attention(q, *cache.layer(i, col + 1, q.dtype),
                                                      attn_mask=attn_mask, enable_gqa=True)
            x = self._finish_layer(x, attended, layer)
        return self._logits(x[:, -1])


def greedy_agreement(reference: LeanLlama, other: LeanLlama, ids: list[int]) -> float:
    """Share of the positions of ``ids`` where both models' most likely next token agree
    (teacher-forced: each position sees the same true prefix). How int8 is judged."""
    tokens = torch.tensor([ids])
    positions = torch.arange(len(ids))[None]
    with torch.inference_mode():
        ref = reference.prefill(tokens, positions, None, every_position=True)[0].argmax(-1)
        got = other.prefill(tokens, positions, None, every_position=True)[0].argmax(-1)
    return float((ref == got).float().mean())
