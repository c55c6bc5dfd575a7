"""The embedded generation engine: iteration-level (continuous) batching in one thread.

One background thread owns the model. Each loop iteration it (1) drops cancelled
requests, (2) admits waiting requests — each is prefilled alone, samples its first
token, and its KV joins the running batch's :class:`SlotKVCache` — and (3) runs one
decode step for every running request in a single forward pass. A request therefore
joins at the next step without waiting for the others, and a finished or cancelled
one leaves at once. Text reaches the asyncio side through ``call_soon_threadsafe``
(the ``AsyncTextIteratorStreamer`` pattern).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from model.lm.api import (
    DONE,
    ContextOverflowError,
    EngineClosedError,
    FinishReason,
    InvalidRequestError,
    Message,
    QueueItem,
    SamplingParams,
    Usage,
    _Done,
    check_messages,
    make_queue,
)
from model.lm.kvcache import SlotKVCache
from model.lm.loader import LoadedModel, load_model, trim_heap
from model.lm.prefix import KV, PrefixCache
from model.lm.text import IncrementalDecoder, StopMatcher
from model.threads import pin_torch_threads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Engine limits (defaults written out)."""

    max_batch: int = 64            # requests decoded together; more wait in the queue
    context: int | None = None     # context window in tokens; None = the model's, capped at 8192
    kv_rows: int = 4               # initial KV-cache rows (grows by doubling)
    kv_columns: int = 256          # initial KV-cache columns (grows by doubling)
    prefill_tokens: int = 2048     # padded prompt tokens per prefill pass; more wait a step
    prefix_cache_mb: int = 64      # KV of recent prompt prefixes kept for reuse; 0 = off
    kv_dtype: str | None = None    # keys and values kept as: None = the weights' float type;
                                   # "float16"/"bfloat16" halve the cache (lean forward only)

    def __post_init__(self) -> None:
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {sorted(d for d in KV_DTYPES if d)}, "
                             f"not {self.kv_dtype!r}")


KV_DTYPES = {None: None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class EngineStats:
    """Counters the tests and the benchmark read (written by the engine thread only)."""

    steps: int = 0                 # batched decode steps
    prefills: int = 0
    tokens: int = 0                # tokens sampled, all requests
    finished: dict[str, int] = field(default_factory=dict)


def leave_cores_to_engine() -> None:
    """Keep the calling thread's torch work on one thread, so the engine's is the only
    OpenMP team of workers in the process (see :mod:`model.threads`).

    For a thread that runs no large torch work after it: the thread that loads the server's
    bot, ``deskmate model serve``, the benchmark. Call it before the thread's first parallel op.
    """
    pin_torch_threads(1)


class _Request:
    """Engine-side state of one generation (touched by the engine thread after submit)."""

    def __init__(self, messages: list[Message], params: SamplingParams, usage: Usage,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.messages = messages
        self.params = params
        self.usage = usage
        self.loop = loop
        self.queue: asyncio.Queue[QueueItem] = make_queue()
        self.cancelled = False      # set from the loop side; read by the thread at each step
        self.done = False
        self.steps = 0              # decode steps this request took part in
        self.generated = 0
        self.max_new = params.max_tokens
        self.last_token = 0
        self.row = -1
        self.prompt_ids: list[int] | None = None
        self.submitted = time.perf_counter()
        self.generator: torch.Generator | None = None
        self.decoder: IncrementalDecoder | None = None
        self.stopper = StopMatcher(params.stop)

    def send(self, item: QueueItem) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:        # the consumer's loop is closed: nobody is listening
            self.cancelled = True


class Engine:
    """Continuous-batching text generation on the local CPU (see module docstring)."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.loaded = loaded
        self.name = loaded.name
        self.config = config or EngineConfig()
        self.model = loaded.model
        self.lean = loaded.lean                  # LeanLlama, or None: transformers' forward
        self.tokenizer = loaded.tokenizer
        mc = self.model.config
        self.context = min(self.config.context or mc.max_position_embeddings, 8192)
        eos = {self.tokenizer.eos_token_id}
        gen_eos = self.model.generation_config.eos_token_id
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = {int(i) for i in eos if i is not None}
        head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        kv_dtype = KV_DTYPES[self.config.kv_dtype] or self.model.dtype
        if kv_dtype != self.model.dtype and self.lean is None:
            raise ValueError(f"kv_dtype={self.config.kv_dtype} needs the engine's own forward "
                             f"(Llama models); {type(self.model).__name__} keeps {self.model.dtype}")
        self.kv = SlotKVCache(mc.num_hidden_layers, mc.num_key_value_heads, head_dim, kv_dtype,
                              rows=self.config.kv_rows, columns=self.config.kv_columns)
        self.stats = EngineStats()
        # Reusing prefixes needs a forward that can continue from cached KV (the lean one).
        self.prefixes = (PrefixCache(self.config.prefix_cache_mb * 2**20, dtype=kv_dtype)
                         if self.lean is not None and self.config.prefix_cache_mb > 0 else None)
        self._pending: deque[_Request] = deque()
        self._active: list[_Request] = []        # index == KV row
        # Taken off _pending this step and not yet in _active (engine thread only): if the
        # prefill raises, _run must still end them, and they are in neither list.
        self._admitting: list[_Request] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="deskmate-lm", daemon=True)
        self._thread.start()
        # A daemon thread killed inside a torch op at interpreter exit aborts the process
        # ("terminate called without an active exception"); stop it cleanly first.
        atexit.register(self.close, 2.0)

    @classmethod
    def load(cls, source: str | None = None, *, cache: str | None = None, dtype: str = "float32",
             threads: int | None = None, config: EngineConfig | None = None) -> Engine:
        """Load a model (see :func:`model.lm.loader.load_model`) and start an engine on it."""
        return cls(load_model(source, cache=cache, dtype=dtype, threads=threads), config)

    # ---- asyncio side -------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        return len(self._active)

    @property
    def waiting_count(self) -> int:
        return len(self._pending)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt length of ``messages`` with the chat template (blocking; cheap)."""
        return len(self.encode_chat(check_messages(messages)))

    def encode_chat(self, messages: list[Message]) -> list[int]:
        """Prompt token ids of ``messages`` with the model's chat template (blocking).

        A template that refuses the messages (its ``raise_exception``: "roles must alternate")
        or a tokenizer that fails on them is the caller's error: :class:`InvalidRequestError`,
        which the HTTP edge answers with 400."""
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        except Exception as exc:  # noqa: BLE001 - jinja2.TemplateError and whatever a tokenizer raises
            raise InvalidRequestError(f"the chat template refused the messages: {exc}") from exc

    def submit(self, messages: Sequence[Message], params: SamplingParams,
               usage: Usage | None = None) -> _Request:
        """Queue a request; must be called on the event loop that will consume it."""
        req = _Request(check_messages(messages), params.validate(), usage or Usage(),
                       asyncio.get_running_loop())
        with self._cv:
            if self._closed:
                raise EngineClosedError("engine is closed")
            self._pending.append(req)
            self._cv.notify()
        return req

    def cancel(self, req: _Request) -> None:
        """Ask the engine thread to drop ``req`` at its next step."""
        req.cancelled = True
        with self._cv:
            self._cv.notify()

    async def stream(self, messages: Sequence[Message], *, max_tokens: int = 256,
                     temperature: float = 0.0, top_p: float = 1.0, stop: Sequence[str] = (),
                     seed: int | None = None, usage: Usage | None = None,
                     ignore_eos: bool = False) -> AsyncIterator[str]:
        """Text deltas of the assistant's reply to ``messages`` (see :class:`ChatModel`)."""
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                stop=tuple(stop), seed=seed, ignore_eos=ignore_eos)
        req = self.submit(messages, params, usage)
        try:
            while True:
                item = await req.queue.get()
                if isinstance(item, _Done):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            # Consumer gone early (break, aclose, task.cancel): free the slot.
            if not req.done:
                self.cancel(req)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still running end with :class:`EngineClosedError`."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    # ---- engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        # This thread's own OpenMP team runs the model (see model.threads).
        pin_torch_threads(self.loaded.threads)
        try:
            with torch.inference_mode():
                while self._iterate():
                    pass
            error: BaseException = EngineClosedError("engine closed")
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
            log.exception("language-model engine crashed")
            error = EngineClosedError(f"engine crashed: {exc!r}")
            error.__cause__ = exc
        with self._cv:
            self._closed = True
            waiting = list(self._pending) + self._admitting + self._active
            self._pending.clear()
        for req in waiting:
            self._finish(req, "error", error)

    def _iterate(self) -> bool:
        with self._cv:
            while not self._pending and not self._active and not self._closed:
                self._cv.wait()
            if self._closed:
                return False
            room = self.config.max_batch - len(self._active)
            candidates = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            self._admitting = candidates
        for req in [r for r in self._active if r.cancelled]:
            self._remove(req, "cancelled")
        admitted, rest = self._admit(candidates)
        if rest:
            with self._cv:
                self._pending.extendleft(reversed(rest))
        self._admitting = admitted
        computed = self._prefill(admitted) if admitted else 0
        self._admitting = []
        if self._active:
            self._decode_step()
        if computed >= 512:
            # glibc keeps freed prefill activations in this thread's malloc arena; without
            # this the RSS stays hundreds of MB above what the engine uses. 10-25 ms, small
            # next to such a prefill. (The KV cache's own buffers are memory mappings,
            # returned when dropped: model.lm.kvcache.)
            trim_heap()
        return True

    def _admit(self, candidates: list[_Request]) -> tuple[list[_Request], list[_Request]]:
        """Tokenise newcomers and take as many as fit one prefill of ``prefill_tokens``
        (padded); the rest wait for the next step so running streams are not stalled long."""
        admitted: list[_Request] = []
        longest = 0
        for i, req in enumerate(candidates):
            if req.cancelled:
                self._finish(req, "cancelled")
                continue
            if req.prompt_ids is None:
                try:
                    req.prompt_ids = self.encode_chat(req.messages)
                    if len(req.prompt_ids) >= self.context:
                        raise ContextOverflowError(len(req.prompt_ids), self.context)
                except Exception as exc:  # noqa: BLE001 - report to this request only
                    self._finish(req, "error", exc)
                    continue
            size = max(longest, len(req.prompt_ids))
            if admitted and size * (len(admitted) + 1) > self.config.prefill_tokens:
                return admitted, candidates[i:]
            longest = size
            admitted.append(req)
        return admitted, []

    def _prefill(self, reqs: list[_Request]) -> int:
        """Prefill the newcomers and sample their first tokens; their KV joins the batch.
        Return how many prompt tokens were computed (not taken from the prefix cache).

        A prompt that starts with a cached prefix (:mod:`model.lm.prefix`) prefills only
        the rest, on its own; the others share one left-padded forward pass."""
        for req in reqs:
            assert req.prompt_ids is not None
            req.usage.prompt_tokens = len(req.prompt_ids)
            req.max_new = min(req.params.max_tokens, self.context - len(req.prompt_ids))
            req.decoder = IncrementalDecoder(
                lambda t: self.tokenizer.decode(t, skip_special_tokens=True))
            if req.params.temperature > 0:
                req.generator = torch.Generator().manual_seed(
                    req.params.seed if req.params.seed is not None else random.getrandbits(63))
        done: list[tuple[_Request, torch.Tensor, list[KV]]] = []    # (request, logits (V,), its KV)
        cold = []
        computed = 0                                                # prompt tokens prefilled now
        for req in reqs:
            hit = self.prefixes.lookup(req.prompt_ids or []) if self.prefixes is not None else None
            computed += len(req.prompt_ids or ()) - (hit[0] if hit else 0)
            if hit is None:
                cold.append(req)
            else:
                done.append(self._prefill_after(req, *hit))
        if cold:
            done += self._prefill_together(cold)
        self.stats.prefills += 1
        tokens = self._sample(torch.stack([logits for _, logits, _ in done]), [r for r, _, _ in done])
        self.kv.ensure_rows(len(self._active) + len(done))
        for (req, _, layers), token in zip(done, tokens, strict=True):
            if self.prefixes is not None:
                self.prefixes.store(req.prompt_ids or [], layers)
            if self._emit(req, token):
                continue
            req.row = self.kv.add(layers)
            self._active.append(req)
        return computed

    def _prefill_after(self, req: _Request, cached: int, past: list[KV]
                       ) -> tuple[_Request, torch.Tensor, list[KV]]:
        """Prefill what follows a cached prefix of ``cached`` tokens."""
        assert req.prompt_ids is not None and self.lean is not None
        ids = torch.tensor([req.prompt_ids[cached:]])
        positions = torch.arange(cached, len(req.prompt_ids))[None]
        logits, layers = self.lean.prefill(ids, positions, None, past=past)
        req.usage.cached_tokens = cached
        return req, logits[0], layers

    def _prefill_together(self, reqs: list[_Request]) -> list[tuple[_Request, torch.Tensor, list[KV]]]:
        """One left-padded forward pass over several prompts."""
        lengths = [len(r.prompt_ids or ()) for r in reqs]
        width = max(lengths)
        ids = torch.full((len(reqs), width), min(self.eos_ids), dtype=torch.long)   # (B, T)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for b, req in enumerate(reqs):
            ids[b, width - lengths[b]:] = torch.tensor(req.prompt_ids or [])   # left padding
            mask[b, width - lengths[b]:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        padded = len(set(lengths)) > 1
        if self.lean is not None:
            logits, layers = self.lean.prefill(ids, positions, mask if padded else None)
        else:
            cache = DynamicCache(config=self.model.config)
            out = self.model(input_ids=ids, attention_mask=mask if padded else None,
                             position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1]
            layers = [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr]
            del out, cache
        return [(req, logits[b], [(k[b:b + 1, :, width - lengths[b]:], v[b:b + 1, :, width - lengths[b]:])
                                  for k, v in layers])
                for b, req in enumerate(reqs)]

    def _decode_step(self) -> None:
        active = self._active
        self.kv.reserve(1)
        positions = self.kv.step_positions()
        ids = torch.tensor([[r.last_token] for r in active])                    # (n, 1)
        if self.lean is not None:
            # Rows that all start at column 0 need no mask (the common one-stream case).
            mask = self.kv.step_mask().bool() if any(self.kv.start) else None
            logits = self.lean.decode(ids, positions, self.kv, mask)
        else:
            logits = self.model(input_ids=ids, attention_mask=self.kv.step_mask(), position_ids=positions,
                                cache=self.kv.as_cache(), use_cache=True).logits[:, -1]
        self.kv.advance(1)
        tokens = self._sample(logits, active)                                     # (n, V) -> n
        self.stats.steps += 1
        finished = []
        for req, token in zip(active, tokens, strict=True):
            req.steps += 1
            req.usage.steps = req.steps
            if self._emit(req, token):
                finished.append(req)
        for req in finished:
            self._remove(req, None)

    def _sample(self, logits: torch.Tensor, reqs: Sequence[_Request]) -> list[int]:
        tokens: list[int] = logits.argmax(-1).tolist()
        for i, req in enumerate(reqs):
            p = req.params
            if p.temperature <= 0:
                continue
            probs = torch.softmax(logits[i].float() / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(0) - sorted_p < p.top_p
                probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
            tokens[i] = int(torch.multinomial(probs, 1, generator=req.generator))
        self.stats.tokens += len(tokens)
        return tokens

    def _emit(self, req: _Request, token: int) -> bool:
        """Record ``token`` for ``req``, send any text; return True when the request is done."""
        req.generated += 1
        req.last_token = token
        assert req.decoder is not None
        ended: FinishReason | None = None
        if token in self.eos_ids and not req.params.ignore_eos:
            delta, ended = req.decoder.flush(), "stop"
        else:
            delta = req.decoder.push(token)
            if req.generated >= req.max_new:
                delta, ended = delta + req.decoder.flush(), "length"
        text, stopped = req.stopper.feed(delta)
        if stopped:
            ended = "stop"
        elif ended is not None:
            text += req.stopper.flush()
        if text:
            if req.usage.ttft_s is None:
                req.usage.ttft_s = time.perf_counter() - req.submitted
            req.send(text)
        req.usage.completion_tokens = req.generated
        if ended is not None:
            self._finish(req, ended)
            return True
        return False

    def _remove(self, req: _Request, reason: FinishReason | None) -> None:
        moved = self.kv.remove(req.row)
        if moved is not None:
            self._active[req.row] = self._active[moved]
            self._active[req.row].row = req.row
        self._active.pop()
        if reason is not None:
            self._finish(req, reason)

    def _finish(self, req: _Request, reason: FinishReason, error: BaseException | None = None) -> None:
        if req.done:
            return
        req.done = True
        req.usage.finish_reason = reason
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        req.send(_Done(error) if error is not None else DONE)

    def __repr__(self) -> str:
        return f"Engine({self.name!r}, active={self.active_count}, waiting={self.waiting_count})"

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "context": self.context, "dtype": self.loaded.dtype,
                "kv_cache_mb": self.kv.nbytes() / 2**20, "threads": self.loaded.threads,
                "prefix_cache_mb": (self.prefixes.nbytes / 2**20) if self.prefixes is not None else None}
