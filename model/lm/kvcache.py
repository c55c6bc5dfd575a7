"""A preallocated, slot-based KV cache for iteration-level batching.

Every running request owns one *row* of a batch-wide buffer per layer, shaped
``(rows, kv_heads, columns, head_dim)``. All rows share one write column, so a decode
step appends one column for the whole batch with a single slice assignment instead of
``torch.cat`` (transformers' ``DynamicCache`` copies the whole cache every step, which
at 32 streams x 400 tokens is ~600 MB of copying per token). Rows are *right-aligned*:
a request's tokens occupy columns ``start[row] .. length``, the columns before are
padding hidden by the attention mask. Joining = copy a prefilled request's KV into a
free row; leaving = move the last row into the hole, so active rows stay ``0..n``.
"""

from __future__ import annotations

import math
import mmap
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer


def _mapped(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed tensor in memory of its own (an anonymous mapping, not the heap).

    At 32 streams the cache is hundreds of MB, replaced one layer at a time when it grows.
    Heap memory freed that way stays in glibc's arena, so the process would go on holding
    the old cache next to the new one; a mapping is returned to the system the moment its
    tensor is dropped. (The price: the new pages are faulted in, ~0.25 s for a whole
    630 MB cache on 2 cores, against ~0.07 s reusing heap memory.)"""
    count = math.prod(shape)
    memory = mmap.mmap(-1, max(count * dtype.itemsize, 1))      # zero-filled by the kernel
    return torch.frombuffer(memory, dtype=dtype, count=count).view(shape)


class _SlotLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """One layer's view of :class:`SlotKVCache` for a single forward pass."""

    def __init__(self, owner: SlotKVCache, index: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.owner = owner
        self.index = index
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.owner
        n, q = key_states.shape[0], key_states.shape[-2]  # (n, H, q, D)
        end = o.length + q
        o.keys[self.index][:n, :, o.length:end] = key_states
        o.values[self.index][:n, :, o.length:end] = value_states
        return o.keys[self.index][:n, :, :end], o.values[self.index][:n, :, :end]

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0


class SlotKVCache:
    """Batch-wide KV storage with per-row start columns (see module docstring)."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 *, rows: int = 8, columns: int = 256) -> None:
        self.num_layers, self.kv_heads, self.head_dim, self.dtype = num_layers, kv_heads, head_dim, dtype
        self.keys = [self._empty(rows, columns) for _ in range(num_layers)]
        self.values = [self._empty(rows, columns) for _ in range(num_layers)]
        self.n = 0                        # active rows, always 0..n-1
        self.length = 0                   # columns written (shared by all rows)
        self.start: list[int] = []        # first real column of each active row
        self._wide: tuple[torch.Tensor, torch.Tensor] | None = None   # see layer()

    def _empty(self, rows: int, columns: int) -> torch.Tensor:
        return _mapped((rows, self.kv_heads, columns, self.head_dim), self.dtype)

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    @property
    def columns(self) -> int:
        return self.keys[0].shape[2]

    def nbytes(self) -> int:
        return 2 * sum(t.numel() * t.element_size() for t in self.keys)

    def _resize(self, rows: int, columns: int, shift: int = 0) -> None:
        """New buffers of the given size; old column c lands at c + shift."""
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = self._empty(rows, columns)
                lo = max(0, -shift)
                hi = min(self.length, columns - shift)
                if self.n and hi > lo:
                    new[: self.n, :, lo + shift: hi + shift] = old[: self.n, :, lo:hi]
                store[i] = new
        self.length += shift
        self.start = [s + shift for s in self.start]

    @staticmethod
    def _size_for(needed: int) -> int:
        """Columns to allocate for ``needed``: rounded up to a multiple of GROW, plus GROW.

        Not doubling: at 32 streams the cache is the largest allocation (0.7 GB in float32
        for 512 columns), and a resize copy every GROW steps costs ~1 ms per step."""
        return -(-needed // SlotKVCache.GROW) * SlotKVCache.GROW + SlotKVCache.GROW

    GROW = 64

    def reserve(self, extra_columns: int) -> None:
        """Make room for ``extra_columns`` more columns, first by dropping all-padding columns."""
        if self.length + extra_columns <= self.columns:
            return
        drop = min(self.start) if self.start else self.length
        needed = self.length - drop + extra_columns
        columns = self.columns if needed <= self.columns else self._size_for(needed)
        # A shift in place would need an overlapping copy; a fresh buffer is simpler and rare.
        self._resize(self.rows, columns, shift=-drop)

    def ensure_rows(self, total: int) -> None:
        """Room for ``total`` running requests (called before admitting a group: one copy)."""
        if total > self.rows:
            self._resize(-(-total // 4) * 4, self.columns)

    def add(self, layer_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Append a prefilled request (per layer ``(1, H, L, D)`` keys/values); return its row."""
        size = layer_kv[0][0].shape[-2]
        if self.n == self.rows:
            self._resize(self.rows + max(4, self.rows // 4), self.columns)
        if size > self.length:
            # The newcomer is longer than the running batch: shift everyone right.
            extra = size - self.length
            cols = self.columns if size + 1 <= self.columns else self._size_for(size + 1)
            self._resize(self.rows, cols, shift=extra)
        row = self.n
        for i, (k, v) in enumerate(layer_kv):
            self.keys[i][row, :, self.length - size: self.length] = k[0]
            self.values[i][row, :, self.length - size: self.length] = v[0]
        self.start.append(self.length - size)
        self.n += 1
        return row

    def remove(self, row: int) -> int | None:
        """Free ``row`` by moving the last row into it; return the moved row's old index."""
        last = self.n - 1
        moved: int | None = None
        if row != last:
            for store in (self.keys, self.values):
                for t in store:
                    t[row, :, : self.length] = t[last, :, : self.length]
            self.start[row] = self.start[last]
            moved = last
        self.start.pop()
        self.n -= 1
        if self.n == 0:
            self.length = 0
        return moved

    def layer(self, index: int, end: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer ``index``, active rows, columns ``:end``, as ``dtype``.

        A cache kept narrower than ``dtype`` (float16 keys and values for float32
        attention) is widened into one reused pair of buffers the size of a layer, not a
        fresh tensor per layer and step (at 32 streams x 400 columns, 0.22 ms a tensor
        against 0.65 ms for ``.to()`` on 2 AVX2 cores)."""
        keys, values = self.keys[index][:self.n, :, :end], self.values[index][:self.n, :, :end]
        if keys.dtype == dtype:
            return keys, values
        shape = self.keys[index].shape
        if self._wide is None or self._wide[0].shape != shape or self._wide[0].dtype != dtype:
            self._wide = (_mapped(tuple(shape), dtype), _mapped(tuple(shape), dtype))
        wide_keys, wide_values = self._wide[0][:self.n, :, :end], self._wide[1][:self.n, :, :end]
        wide_keys.copy_(keys)
        wide_values.copy_(values)
        return wide_keys, wide_values

    def step_mask(self) -> torch.Tensor:
        """Attention mask ``(n, length + 1)`` for one decode step: 1 from each row's start."""
        cols = torch.arange(self.length + 1)
        return (cols[None, :] >= torch.tensor(self.start)[:, None]).long()

    def step_positions(self) -> torch.Tensor:
        """Position ids ``(n, 1)`` of the token each row decodes next."""
        return (self.length - torch.tensor(self.start))[:, None]

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step_mask` and :meth:`step_positions` together."""
        return self.step_mask(), self.step_positions()

    def as_cache(self) -> Cache:
        """A transformers ``Cache`` that writes the next column(s) into this storage."""
        return Cache(layers=[_SlotLayer(self, i) for i in range(self.num_layers)])

    def advance(self, q: int = 1) -> None:
        """Called after a forward pass wrote ``q`` columns."""
        self.length += q
