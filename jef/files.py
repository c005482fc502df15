"""Writing files atomically: a reader sees the old file or the new one, never a half-written one.

Every module of jef that writes a file (checkpoints, metrics, evaluation results, exports, reports, embeddings)
writes it through :func:`atomic_write`.

File modes: a written file gets the mode a plain ``open(path, "w")`` would give it, ``0o666 & ~umask`` (0644
under the usual umask 022, 0664 under 002), and directories ``0o777 & ~umask`` (0755). ``tempfile.mkstemp``
creates owner-only (0600) files, which made the files of a run directory unreadable to a group that the umask
lets read them; the temporary file is therefore created here with ``os.open(..., O_CREAT | O_EXCL, 0o666)``,
so that the kernel applies the process's umask itself, and the mode it gave is read back (``os.fstat``). Nothing
reads or changes the umask (``os.umask`` can only be read by setting it, which would race with other threads
creating files). A writer that truncates the temporary file (``open(tmp, "wb")``, ``torch.save``) keeps that
mode; one that replaces it with a file of its own (safetensors' ``save_file`` creates an owner-only one) gets
it back with ``chmod``.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Any

__all__ = ["atomic_write"]

#: What the temporary file is opened with: created here and only here (``O_EXCL``), never through a symlink.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _temporary(path: Path) -> tuple[Path, int]:
    """Create an empty ``.NAME.XXXXXXXX.tmp`` next to ``path``: ``(its path, the mode open() gave it)``."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            handle = os.open(tmp, _CREATE, 0o666)
        except FileExistsError:  # another writer's temporary file: draw another name
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(handle).st_mode)  # 0o666 & ~umask, as the kernel applied it
        finally:
            os.close(handle)
    raise FileExistsError(f"{path.parent}: could not create a temporary file for {path.name} (100 names taken)")


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path``; no partial file ever appears.

    Args:
        path: The file to write; missing parent directories are created (mode ``0o777 & ~umask``).
        write: Writes the content to the temporary file it is given, which exists, empty, with the mode a plain
            ``open()`` would give (``0o666 & ~umask``; see the module's docstring).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, mode = _temporary(path)
    try:
        write(tmp)
        if stat.S_IMODE(tmp.stat().st_mode) != mode:  # the writer replaced the file with one of its own
            tmp.chmod(mode)
        _fsync(tmp)  # the bytes are on disk before the name points at them (power loss, not only a crash)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
