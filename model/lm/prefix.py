"""Reusing the keys and values of prompt prefixes the engine has already computed.

Every conversation of one shop starts with the same system message (persona, policy),
so most of a prompt's prefill is work the engine did a moment ago for someone else.
After a prefill the engine stores the prompt's keys and values here, cut to whole
blocks of ``block`` tokens; a later prompt that starts with the same blocks reuses the
longest such prefix and prefills only the rest (vLLM's automatic prefix caching works
the same way, on its paged cache). A prompt is looked up by a chain of block hashes and
the tokens of a hit are compared, so a hash collision can never return another
prompt's state. Least recently used entries go first when the byte budget is full.

Only the engine's thread touches it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

KV = tuple[torch.Tensor, torch.Tensor]   # one layer's keys and values, (1, heads, tokens, dim)


@dataclass
class _Entry:
    ids: list[int]                 # the cached tokens (a whole number of blocks)
    layers: list[KV]
    nbytes: int
    keys: list[int] = field(default_factory=list)   # block-chain keys that point here


@dataclass
class PrefixStats:
    lookups: int = 0
    hits: int = 0
    tokens: int = 0                # prompt tokens whose prefill was skipped


class PrefixCache:
    """Block-aligned prompt prefixes and their KV (see module docstring)."""

    def __init__(self, capacity_bytes: int, block: int = 32, dtype: torch.dtype | None = None) -> None:
        if block < 1:
            raise ValueError("block must be at least 1 token")
        self.capacity = capacity_bytes
        self.block = block
        self.dtype = dtype             # kept as (None: as given); lookups return this type
        self.stats = PrefixStats()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()   # id -> entry, oldest first
        self._blocks: dict[int, tuple[int, int]] = {}              # chain key -> (entry id, tokens)
        self._next_id = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _chain(self, ids: list[int], blocks: int) -> list[int]:
        keys, key = [], 0
        for i in range(blocks):
            key = hash((key, tuple(ids[i * self.block:(i + 1) * self.block])))
            keys.append(key)
        return keys

    def lookup(self, ids: list[int]) -> tuple[int, list[KV]] | None:
        """The longest cached prefix of ``ids`` that leaves at least one token to prefill:
        (its length, per-layer views of its keys and values), or None."""
        self.stats.lookups += 1
        best: tuple[int, int] | None = None
        for key in self._chain(ids, (len(ids) - 1) // self.block):
            found = self._blocks.get(key)
            if found is None:
                break
            best = found
        if best is None:
            return None
        entry_id, n = best
        entry = self._entries[entry_id]
        if entry.ids[:n] != ids[:n]:          # a hash collision: never serve another prompt's state
            return None
        self._entries.move_to_end(entry_id)
        self.stats.hits += 1
        self.stats.tokens += n
        return n, [(k[:, :, :n], v[:, :, :n]) for k, v in entry.layers]

    def store(self, ids: list[int], layers: list[KV]) -> None:
        """Keep the whole blocks of a prefilled prompt (``layers``: its per-layer keys and
        values, (1, heads, len(ids), dim)) unless they are cached already."""
        blocks = len(ids) // self.block
        if blocks == 0 or self.capacity <= 0:
            return
        keys = self._chain(ids, blocks)
        if keys[-1] in self._blocks:           # this prefix is cached already (maybe longer)
            self._entries.move_to_end(self._blocks[keys[-1]][0])
            return
        n = blocks * self.block
        dtype = self.dtype or layers[0][0].dtype
        copies = [(k[:, :, :n].to(dtype, copy=True), v[:, :, :n].to(dtype, copy=True)) for k, v in layers]
        nbytes = sum(k.numel() * k.element_size() * 2 for k, _ in copies)
        if nbytes > self.capacity:
            return
        while self.nbytes + nbytes > self.capacity:
            self._evict()
        entry = _Entry(ids[:n], copies, nbytes)
        entry_id, self._next_id = self._next_id, self._next_id + 1
        self._entries[entry_id] = entry
        self.nbytes += nbytes
        for i, key in enumerate(keys):
            # A shorter prefix that another entry also holds now points here: the newest copy
            # is the one least likely to be evicted next.
            old = self._blocks.get(key)
            if old is not None:
                self._entries[old[0]].keys.remove(key)
            self._blocks[key] = (entry_id, (i + 1) * self.block)
            entry.keys.append(key)

    def _evict(self) -> None:
        _, entry = self._entries.popitem(last=False)
        for key in entry.keys:
            del self._blocks[key]
        self.nbytes -= entry.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self._blocks.clear()
        self.nbytes = 0
