"""The 3×3 grid of tiles that the jigsaw and relative-position tasks cut from an image.

Both papers cut square tiles from a 3×3 grid of cells and leave room between them so that the network cannot
solve the task by matching edges or continuing lines across tile borders: Doersch et al. [1] leave a *gap*
(half the patch side) between neighbouring patches and *jitter* each patch by up to 7 pixels; Noroozi & Favaro
[2] take a random 64-pixel tile inside each 75-pixel cell of a 225-pixel crop (an 11-pixel gap on average, the
jitter the tile's random place in its cell). One geometry covers both: tiles of side ``tile``, ``gap`` pixels
apart, each moved by a whole number of pixels uniform in ``[-jitter, jitter]`` along each axis, from a crop of
side::

    grid = 3·tile + 2·gap + 2·jitter

Cell ``k = 3·row + col`` (row-major) has its tile's top-left corner at
``(jitter + row·(tile + gap) + dy, jitter + col·(tile + gap) + dx)``.

References:
    [1] Doersch, Gupta, Efros. Unsupervised Visual Representation Learning by Context Prediction. ICCV 2015.
        arXiv:1505.05192.
    [2] Noroozi, Favaro. Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles. ECCV 2016.
        arXiv:1603.09246.
"""

from __future__ import annotations

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from jef_plugin_pretext.base import PretextOptions

__all__ = ["GridOptions", "JITTER_DRAWS", "corners", "cut", "grid_side", "normalise_tiles"]

#: Uniforms the jitter takes per image: dy and dx of each of the 9 cells.
JITTER_DRAWS = 18


@attrs.frozen(kw_only=True)
class GridOptions(PretextOptions):
    """Options of the tile grid (defaults: the papers' geometry scaled to 32-pixel images)."""

    tile: int = attrs.field(default=8, validator=[v.instance_of(int), v.ge(1), v.le(1024)],
                            metadata={"doc": "side of a tile, in pixels of the grid crop"})
    gap: int = attrs.field(default=2, validator=[v.instance_of(int), v.ge(0), v.le(1024)],
                           metadata={"doc": "pixels between neighbouring tiles before jitter"})
    jitter: int = attrs.field(default=1, validator=[v.instance_of(int), v.ge(0), v.le(1024)],
                              metadata={"doc": "each tile moves by up to this many pixels along each axis"})
    tile_normalise: bool = attrs.field(default=True, metadata={
        "doc": "normalise each tile's channels to zero mean and unit std on their own (Noroozi & Favaro, against "
               "shortcuts from low-level statistics); false: the dataset mean and std"})


def grid_side(tile: int, gap: int, jitter: int) -> int:
    """Side of the crop a 3×3 grid of ``tile`` tiles with ``gap`` and ``jitter`` is cut from."""
    return 3 * tile + 2 * gap + 2 * jitter


def corners(u: Tensor, tile: int, gap: int, jitter: int) -> tuple[Tensor, Tensor]:
    """Top-left corners ``(top, left)``, each ``[B, 9]`` long, of the 9 cells' tiles from ``[B, 18]`` uniforms."""
    base = jitter + torch.arange(3) * (tile + gap)
    rows, cols = base.repeat_interleave(3), base.repeat(3)  # cell k = 3 * row + col
    steps = 2 * jitter + 1
    shift = (u * steps).long().clamp_(max=steps - 1) - jitter
    return rows + shift[:, :9], cols + shift[:, 9:]


def cut(grid: Tensor, top: Tensor, left: Tensor, tile: int, cells: Tensor | None = None) -> Tensor:
    """The tiles of ``cells`` (``[B, K]`` cell indices; None: all 9 in order) of ``grid`` ``[B, C, G, G]``.

    Returns:
        ``[B, K, C, tile, tile]``.
    """
    if cells is not None:
        top, left = top.gather(1, cells), left.gather(1, cells)
    device = grid.device
    span = torch.arange(tile)
    rows = (top[:, :, None] + span).to(device)[:, :, :, None]  # [B, K, t, 1]
    cols = (left[:, :, None] + span).to(device)[:, :, None, :]  # [B, K, 1, t]
    batch = torch.arange(grid.shape[0], device=device)[:, None, None, None]
    # Advanced indices around a slice: the indexed dimensions come first, the channels last.
    return grid[batch, :, rows, cols].permute(0, 1, 4, 2, 3)


def normalise_tiles(tiles: Tensor, eps: float = 1e-5) -> Tensor:
    """Each tile's channels to zero mean and unit standard deviation over its pixels (``[..., C, t, t]``)."""
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    std = tiles.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (tiles - mean) / (std + eps)
