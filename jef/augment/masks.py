"""Per-sample token masks on a patch grid: the maths behind the built-in maskers (``jef.builtin.maskers``).

Every function draws masks for ``n`` samples from one generator (the run's, on the CPU) and returns bool
tensors ``[n, rows * cols]`` in row-major grid order, True = masked. A masker calls them for the *global*
batch and keeps its process's rows, so W processes draw what one draws. The random numbers each sample
consumes do not depend on what was drawn before it, only on its position in the batch.

References:
    [1] He et al., Masked Autoencoders Are Scalable Vision Learners (MAE), CVPR 2022, arXiv:2111.06377.
    [2] Bao, Dong, Piao, Wei, BEiT: BERT Pre-Training of Image Transformers, ICLR 2022, arXiv:2106.08254.
    [3] Assran et al., Self-Supervised Learning from Images with a Joint-Embedding Predictive
        Architecture (I-JEPA), CVPR 2023, arXiv:2301.08243.
    [4] Baevski, Babu, Hsu, Auli, Efficient Self-supervised Learning with Contextualized Target
        Representations for Vision, Speech and Language (data2vec 2.0), ICML 2023, arXiv:2212.07525.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["block_masks", "inverse_block_masks", "multi_block_masks", "random_masks"]

#: Block placements tried per sample by :func:`block_masks`: 10 per block (as BEiT) for up to 30 blocks. Drawn
#: up front, so every sample consumes the same random numbers.
BLOCK_TRIES = 300


def random_masks(n: int, grid: tuple[int, int], count: int, generator: torch.Generator | None = None) -> Tensor:
    """Exactly ``count`` masked patches per sample, uniformly at random (MAE's masking [1]).

    Args:
        n: Samples.
        grid: Patch grid ``(rows, cols)``.
        count: Masked patches per sample, ``0 <= count < rows * cols``.
        generator: Source of the random numbers.
    """
    tokens = grid[0] * grid[1]
    noise = torch.rand(n, tokens, generator=generator)
    masked = noise.argsort(dim=1)[:, :count]  # MAE: the patches with the lowest noise are removed
    return torch.zeros(n, tokens, dtype=torch.bool).scatter_(1, masked, True)


def block_masks(n: int, grid: tuple[int, int], count: int, *, min_block: int = 16, max_block: int | None = None,
                aspect: tuple[float, float] = (0.3, 1 / 0.3), generator: torch.Generator | None = None) -> Tensor:
    """BEiT's block-wise masking [2]: rectangles added until about ``count`` patches are masked.

    Each block tries up to 10 times: an area uniform between ``min_block`` and the budget
    ``min(max_block, count - masked)`` patches, a log-uniform aspect ratio in ``aspect``, a uniform place on the
    grid; it is kept when it masks at least one new patch without passing ``count``. A block that finds no place
    in 10 tries (or the ``BLOCK_TRIES / 10``-th block) ends the sample, short of ``count``, as in BEiT.

    Args:
        n: Samples.
        grid: Patch grid ``(rows, cols)``.
        count: The patches to mask per sample (BEiT: 75 of 196; data2vec: 60 %).
        min_block: The smallest rectangle, in patches.
        max_block: The largest rectangle, in patches (None: ``count``).
        aspect: The range of the rectangles' height/width.
        generator: Source of the random numbers.
    """
    rows, cols = grid
    draws = torch.rand(n, BLOCK_TRIES // 10, 10, 4, generator=generator, dtype=torch.float64).numpy()
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    largest = count if max_block is None else max_block
    out = np.zeros((n, rows, cols), dtype=bool)
    for i in range(n):
        mask, masked = out[i], 0
        for tries in draws[i]:  # one block: up to 10 tries, as BEiT; a block that finds no place ends the sample
            budget = min(largest, count - masked)
            if budget <= 0:
                break
            placed = 0
            for u_area, u_aspect, u_top, u_left in tries:
                # Between min_block and the budget, in either order: the last blocks may be smaller (as BEiT).
                area = min_block + u_area * (budget - min_block)
                ratio = math.exp(log_low + u_aspect * (log_high - log_low))
                h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
                if not (0 < h <= rows and 0 < w <= cols):
                    continue
                top, left = int(u_top * (rows - h + 1)), int(u_left * (cols - w + 1))
                placed = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < placed <= budget:
                    mask[top:top + h, left:left + w] = True
                    masked += placed
                    break
                placed = 0
            if placed == 0:
                break
    return torch.from_numpy(out.reshape(n, rows * cols))


def block_size(grid: tuple[int, int], scale: float, aspect: float) -> tuple[int, int]:
    """I-JEPA's block of ``scale`` of the grid with height/width ``aspect``, within the grid [3]."""
    area = grid[0] * grid[1] * scale
    h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    return max(1, min(h, grid[0])), max(1, min(w, grid[1]))


def multi_block_masks(n: int, grid: tuple[int, int], *, n_targets: int = 4,
                      target_scale: tuple[float, float] = (0.15, 0.2), target_aspect: tuple[float, float] = (0.75, 1.5),
                      context_scale: tuple[float, float] = (0.85, 1.0), context_aspect: tuple[float, float] = (1.0, 1.0),
                      min_keep: int = 4, generator: torch.Generator | None = None) -> tuple[Tensor, list[Tensor]]:
    """I-JEPA's multi-block masks [3]: one context block and ``n_targets`` target blocks, context minus targets.

    As I-JEPA's mask collator, one target block size and one context block size are drawn for the whole batch
    (scale and aspect uniform in their ranges), so every target block of a batch has the same number of
    patches; each sample places its blocks uniformly. The context is the context block less every target
    block; a sample whose context keeps fewer than ``min_keep`` patches draws its context again (up to 20
    times, then keeps its best). Every context is then cut to the batch's smallest, keeping its first
    patches in grid order (the collator's truncation), so that the encoder sees the same number per sample.

    Returns:
        ``(hidden, targets)``: ``hidden [n, T]`` True outside the kept context, and one ``[n, T]`` mask per
        target block.
    """
    rows, cols = grid
    sizes = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    target_hw = block_size(grid, _between(sizes[0], target_scale), _between(sizes[1], target_aspect))
    context_hw = block_size(grid, _between(sizes[2], context_scale), _between(sizes[3], context_aspect))
    tries = 20
    places = torch.rand(n, n_targets + tries, 2, generator=generator, dtype=torch.float64).numpy()
    targets = np.zeros((n_targets, n, rows, cols), dtype=bool)
    context = np.zeros((n, rows, cols), dtype=bool)
    for i in range(n):
        for k in range(n_targets):
            _place(targets[k, i], target_hw, places[i, k])
        free = ~targets[:, i].any(axis=0)
        best = None
        for attempt in range(tries):
            block = np.zeros((rows, cols), dtype=bool)
            _place(block, context_hw, places[i, n_targets + attempt])
            kept = block & free
            if best is None or kept.sum() > best.sum():
                best = kept
            if kept.sum() >= min_keep:
                best = kept
                break
        context[i] = best
    context = context.reshape(n, rows * cols)
    keep = int(context.sum(axis=1).min())
    if keep == 0:
        raise ValueError(f"multi_block masker: a sample's context keeps no patch on a {rows}x{cols} grid "
                         f"(targets {target_hw[0]}x{target_hw[1]} x{n_targets}, context {context_hw[0]}x"
                         f"{context_hw[1]}); use fewer or smaller targets (n_targets, target_scale) or a finer grid")
    # The first `keep` kept patches of each row, in grid order.
    context &= np.cumsum(context, axis=1) <= keep
    return torch.from_numpy(~context), [torch.from_numpy(t.reshape(n, rows * cols)) for t in targets]


def inverse_block_masks(n: int, grid: tuple[int, int], count: int, *, block: int = 3, adjust: float = 0.07,
                        generator: torch.Generator | None = None) -> Tensor:
    """data2vec 2.0's inverse block masking [4]: square blocks are *kept*, the rest masked, ``count`` per sample.

    ``(T - count) / block² · (1 + adjust)`` block centres are drawn per sample without replacement; the union of
    the ``block × block`` squares around them (clipped at the border) is what the student sees. Every sample
    then keeps exactly ``T - count`` patches, as data2vec 2.0's ``require_same_masks``: surplus visible patches
    are masked at random, a deficit is filled with random masked ones.

    Args:
        n: Samples.
        grid: Patch grid ``(rows, cols)``.
        count: Masked patches per sample, ``0 <= count < T``.
        block: Side of the kept squares (odd).
        adjust: The extra share of centres that makes up for overlapping squares.
        generator: Source of the random numbers.
    """
    rows, cols = grid
    tokens = rows * cols
    keep = tokens - count
    centres = min(tokens, max(1, round(keep / block ** 2 * (1 + adjust))))
    noise = torch.rand(n, tokens, generator=generator)
    tie_break = torch.rand(n, tokens, generator=generator)
    seeds = torch.zeros(n, tokens).scatter_(1, noise.argsort(dim=1)[:, :centres], 1.0)
    visible = F.max_pool2d(seeds.view(n, 1, rows, cols), block, stride=1, padding=block // 2).view(n, tokens) > 0
    # Visible patches first (in random order), then masked ones: the first `keep` are what the student sees.
    order = (visible.float() + 0.5 * tie_break).argsort(dim=1, descending=True)[:, :keep]
    return torch.ones(n, tokens, dtype=torch.bool).scatter_(1, order, False)


def _between(u: float, bounds: tuple[float, float]) -> float:
    return bounds[0] + u * (bounds[1] - bounds[0])


def _place(mask: np.ndarray, hw: tuple[int, int], u: np.ndarray) -> None:
    """Set an ``h × w`` rectangle at a uniform position (``u`` two uniforms) of ``mask``."""
    h, w = hw
    top, left = int(u[0] * (mask.shape[0] - h + 1)), int(u[1] * (mask.shape[1] - w + 1))
    mask[top:top + h, left:left + w] = True
