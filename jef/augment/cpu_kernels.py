"""Fused CPU kernels of the ``views`` augmenter, compiled by numba when it is installed.

On a CPU the eager operations of :mod:`jef.augment.ops` make one pass over
memory per elementary operation: a hue rotation is some forty passes over
the image, and at 224 px that arithmetic, not per-image overhead, is where
the time goes. These kernels run the crop, the colour chain (jitter in each
sample's order, then grayscale) and solarisation with normalisation as one
loop over each image's pixels, with the same arithmetic as the eager
operations (equal to a few float32 ulps; the tests hold them to it), and
the blur as a direct separable convolution over contiguous lines. Chunks of
images run in parallel on a pool of threads (:func:`map_chunks`).

numba is optional (``pip install 'jef[numba]'``): without it the augmenter
runs the eager operations, with the same results. The first call compiles
the kernels (seconds) and caches them on disk for later processes.
"""

import functools
import importlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from jef.augment import ops

__all__ = ["available", "blur", "colour", "compiled", "crop_resample", "finish", "map_chunks"]

INSTALL_HINT = "pip install 'jef[numba]'"


@functools.cache
def _import() -> ModuleType | None:
    try:
        importlib.import_module("numba")
    except ImportError:
        return None
    return importlib.import_module("jef.augment._numba_kernels")


def available() -> bool:
    """Whether numba is installed, so that the fused kernels can run."""
    return _import() is not None


def compiled() -> ModuleType:
    """The compiled kernels' module.

    Raises:
        ImportError: If numba is not installed.
    """
    module = _import()
    if module is None:
        raise ImportError(f"the fused CPU kernels need numba, which is not installed: {INSTALL_HINT}, or set "
                          "the views option cpu_backend: torch")
    return module


#: This process's pool and its key (process id, threads); a new thread count or a forked process makes a new one.
_pool: tuple[tuple[int, int], ThreadPoolExecutor] | None = None


def map_chunks(work: Callable[[int, int], None], spans: Sequence[tuple[int, int]]) -> None:
    """Run ``work(start, stop)`` for every span, on as many threads as torch uses (``torch.get_num_threads()``).

    The kernels release the GIL, so chunks of images run in parallel. The
    pool belongs to this process (a forked ``DataLoader`` worker makes its
    own) and is reused while the thread count stays. The first error of a
    chunk is raised once every chunk has finished.
    """
    threads = torch.get_num_threads()
    if threads <= 1 or len(spans) <= 1:
        for start, stop in spans:
            work(start, stop)
        return
    global _pool
    key = (os.getpid(), threads)
    if _pool is None or _pool[0] != key:
        if _pool is not None and _pool[0][0] == key[0]:
            _pool[1].shutdown(wait=False)  # this process's pool of the old size (a forked copy has no threads)
        _pool = (key, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jef-views"))
    futures = [_pool[1].submit(work, start, stop) for start, stop in spans]
    wait(futures)
    for future in futures:
        future.result()


def crop_resample(images: Tensor, theta: Tensor, size: int) -> Tensor:
    """:func:`jef.augment.ops.crop_resample` on the CPU, fused: one pass per output plane.

    Args:
        images: ``[B, C, H, W]`` uint8 (0..255) or float32 (``[0, 1]``) CPU images.
        theta: ``[V, B, 2, 3]`` axis-aligned crop-and-flip maps.
        size: Side of the square outputs.

    Returns:
        ``[V * B, C, size, size]`` float32 in ``[0, 1]``, view-major.
    """
    ops.check_axis_aligned(theta)
    n_views, batch = theta.shape[:2]
    out = torch.empty(n_views * batch, images.shape[1], size, size)
    scale = np.float32(1.0 / 255.0 if images.dtype == torch.uint8 else 1.0)  # float32 arithmetic, as the eager op
    compiled().crop_resample(images.contiguous().numpy(), theta.reshape(-1, 2, 3).float().contiguous().numpy(),
                            scale, out.numpy())
    return out


def colour(images: Tensor, factors: Tensor, order: Tensor, jitter: Tensor, gray: Tensor, *,
           saturation: bool, hue: bool) -> Tensor:
    """Colour jitter then grayscale, per sample, in place on contiguous float32 CPU ``images`` ``[N, C, H, W]``.

    Args:
        images: The views, in ``[0, 1]``.
        factors: ``[N, 4]`` brightness, contrast, saturation factors and hue shift.
        order: ``[N, 4]`` the order in which sample ``n`` applies the four operations.
        jitter: ``[N]`` bool, the samples jittered.
        gray: ``[N]`` bool, the samples turned to grayscale (RGB only).
        saturation: Whether the saturation operation runs (RGB images).
        hue: Whether the hue operation runs (RGB images, a non-zero hue range).

    Returns:
        ``images``.
    """
    n, channels = images.shape[:2]
    compiled().colour(images.view(n, channels, -1).numpy(), factors.float().contiguous().numpy(),
                     order.long().contiguous().numpy(), jitter.contiguous().numpy(),
                     (gray if channels == 3 else torch.zeros_like(gray)).contiguous().numpy(), saturation, hue)
    return images


def blur(images: Tensor, kernels: Tensor, apply: Tensor) -> Tensor:
    """:func:`jef.augment.ops.gaussian_blur` of the samples of ``apply``, in place on contiguous float32 CPU images.

    Args:
        images: ``[N, C, H, W]`` views.
        kernels: ``[N, k]`` normalised 1-D kernels, odd ``k``.
        apply: ``[N]`` bool, the samples blurred (the others are left as they are).

    Returns:
        ``images``.
    """
    replicate = kernels.shape[1] // 2 >= min(images.shape[-2:])  # too small to reflect, as the eager operation
    compiled().blur(images.numpy(), kernels.float().contiguous().numpy(), apply.contiguous().numpy(), replicate)
    return images


def finish(views: Tensor, solarize: Tensor, threshold: float, mean: Tensor, std: Tensor, out: Tensor) -> Tensor:
    """Solarise (``x >= threshold -> 1 - x``) the samples of ``solarize``, normalise, and write into ``out``.

    Args:
        views: ``[V * b, C, S, S]`` contiguous float32 views, view-major.
        solarize: ``[V * b]`` bool.
        threshold: Solarisation threshold.
        mean: ``[C]`` float32 channel means (zeros to skip normalisation).
        std: ``[C]`` float32 channel stds (ones to skip normalisation).
        out: ``[V, b, C, S, S]`` destination, each ``[S, S]`` plane contiguous (a slice of the batch's output).

    Returns:
        ``out``.
    """
    n, channels = views.shape[:2]
    flat = out.view(*out.shape[:-2], -1)  # view, never a copy: raises if a plane is not contiguous
    compiled().finish(views.view(n, channels, -1).numpy(), solarize.contiguous().numpy(), np.float32(threshold),
                     mean.contiguous().numpy(), std.contiguous().numpy(), flat.numpy())
    return out
