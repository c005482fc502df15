"""``train.cpu_malloc``: how the C library's allocator treats a CPU run's large tensors.

glibc's ``malloc`` gives every block above its mmap threshold (at most 32 MiB) its own mapping and unmaps it when
the block is freed. A training step allocates and frees the same large activations at every step, so on a CPU each
of them comes back as fresh pages that the kernel faults in and zeroes one 4 KiB page at a time: ResNet-18 at
64 px, batch 256, two views in one backbone call of 512 images, spends about 30 % of its step on it (0.5 million
page faults a step; docs/benchmarks.md). ``reuse`` turns the mappings off and keeps freed memory in the process
(``M_MMAP_MAX`` = 0, and a 2 GiB trim threshold: the heap shrinks only when that much is free at its top), so the
next step reuses the same pages; the run's peak resident memory grows by what the heap cannot pack as tightly as
separate mappings. After the run the process gets glibc's default limits back (mappings allowed, a 128 KiB trim
threshold) and returns its freed memory to the system (``malloc_trim``); glibc's own adjustment of its mmap
threshold, which any ``mallopt`` of these settings turns off, stays off for the rest of the process.

Only glibc (Linux) has these knobs, and only a CPU run's tensors live in host memory: elsewhere, and on a GPU,
both settings do the same, nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
from collections.abc import Iterator

import torch

__all__ = ["cpu_malloc"]

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB, the most it can say


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _set(libc: ctypes.CDLL, parameter: int, value: int) -> None:
    if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) != 1:
        raise OSError(f"glibc mallopt({parameter}, {value}) refused the setting")


@contextlib.contextmanager
def cpu_malloc(mode: str, device: torch.device | str) -> Iterator[bool]:
    """Apply ``train.cpu_malloc`` for the duration of a run; yields whether the allocator was changed.

    Args:
        mode: ``"reuse"`` (keep freed memory in the process) or ``"system"`` (the C library's defaults).
        device: The run's device: only a CPU run is changed.

    Raises:
        ValueError: An unknown mode.
    """
    if mode not in ("reuse", "system"):
        raise ValueError(f"train.cpu_malloc must be 'reuse' or 'system', got {mode!r}")
    libc = _glibc() if mode == "reuse" and torch.device(device).type == "cpu" else None
    if libc is None:
        yield False
        return
    _set(libc, _M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    _set(libc, _M_MMAP_MAX, 0)
    try:
        yield True
    finally:
        _set(libc, _M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        _set(libc, _M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(ctypes.c_size_t(0))
