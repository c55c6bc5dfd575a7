"""Output files of the command line: checked before the work, replaced whole after it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bot.errors import ConfigError


def check_out(path: Path, flag: str) -> None:
    """Refuse an output file that cannot be written, naming it, before any work is done."""
    if path.is_dir():
        raise ConfigError(flag, f"{path} is a folder; name a file")
    if not path.parent.is_dir():
        raise ConfigError(flag, f"{path.parent}: no such folder")


@contextlib.contextmanager
def replaced(path: Path) -> Iterator[TextIO]:
    """A text file to write in place of ``path``: written beside it and renamed over it
    when the block ends without an error, so a full disk, a failure half-way or a Ctrl-C
    leaves the previous file whole, never half of the new one."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        # mkstemp makes the file private; these are read like any file the user saves
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["check_out", "replaced"]
