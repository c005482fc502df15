"""Shared argument checks and precision handling of :mod:`jef.functional`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

#: Floor on the norm when normalising. It is applied in float32 (or float64):
#: torch's default 1e-12 underflows to 0 in float16, turning a zero
#: embedding into NaN (the failure mode of lightly #1259).
NORM_EPS = 1e-8

REDUCTIONS = ("mean", "sum", "none")


def check_embeddings(fn: str, name: str, x: Tensor) -> None:
    """Require a floating ``[N, d]`` tensor with ``N >= 1``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{fn}: {name} must be a 2-D [N, d] tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {x.dtype}")


def check_same_shape(fn: str, a: Tensor, b: Tensor, names: tuple[str, str] = ("a", "b")) -> None:
    """Require two ``[N, d]`` tensors of identical shape (paired samples)."""
    check_embeddings(fn, names[0], a)
    check_embeddings(fn, names[1], b)
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: {names[0]} and {names[1]} must have the same shape [N, d] (sample n of one is paired "
            f"with sample n of the other), got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_same_dim(fn: str, a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    """Require two ``[*, d]`` tensors of the same embedding width (compared all-against-all)."""
    check_embeddings(fn, names[0], a)
    check_embeddings(fn, names[1], b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{fn}: {names[0]} and {names[1]} must have the same embedding width d, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_temperature(fn: str, temperature: float) -> float:
    """Require a positive finite temperature and return it as a float."""
    value = float(temperature)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{fn}: temperature must be a positive finite number, got {temperature!r}")
    return value


def check_reduction(fn: str, reduction: str) -> None:
    """Require one of :data:`REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce(values: Tensor, reduction: str) -> Tensor:
    """Apply ``"mean"``, ``"sum"`` or ``"none"`` to per-sample values."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 to float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def normalize(x: Tensor) -> Tensor:
    """ℓ2-normalise the rows of ``x`` (public as :func:`jef.functional.l2_normalize`).

    Computed in at least float32, so float16/bfloat16 inputs give float32
    unit rows, with the norm floored at :data:`NORM_EPS` (an all-zero row
    stays zero instead of becoming NaN). Use it wherever an embedding is
    normalised under mixed precision: ``F.normalize`` on a float16 tensor
    applies its floor in float16, where 1e-12 is 0.
    """
    return F.normalize(upcast(x), dim=-1, eps=NORM_EPS)


@contextlib.contextmanager
def full_precision(x: Tensor) -> Iterator[None]:
    """Disable autocast on ``x``'s device.

    Under mixed precision the upcast inputs would be cast back to half for
    the matrix products; losses are cheap, so they run in float32 instead.
    """
    try:
        manager = torch.autocast(device_type=x.device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        manager = contextlib.nullcontext()
    with manager:
        yield


def indices_out_of_range(indices: Tensor, size: int) -> tuple[int, int] | None:
    """``(min, max)`` of integer ``indices`` when one lies outside ``[0, size)``, else None; never waits for a GPU.

    On the CPU the test runs in C++ (``torch._assert_async``) and values are read only when it fails. On an
    accelerator the check is left to the indexing that follows (a device-side assert): testing here would make
    the host wait for the device at every step.
    """
    if indices.device.type != "cpu" or not indices.numel():
        return None
    try:
        torch._assert_async(((indices >= 0) & (indices < size)).all())
    except RuntimeError:
        return int(indices.min()), int(indices.max())
    return None
