"""Writing files atomically: a reader sees the old file or the new one, never a half-written one.

Every module of jef that writes a file (checkpoints, metrics, evaluation results, exports, reports) writes it
through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write"]


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path``; no partial file ever appears."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(tmp))
        _fsync(tmp)  # the bytes are on disk before the name points at them (power loss, not only a crash)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)


def _fsync(path: str | Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError:  # directories cannot be fsync'ed on some systems (Windows); the rename is still atomic
        if not Path(path).is_dir():
            raise
    finally:
        os.close(handle)
