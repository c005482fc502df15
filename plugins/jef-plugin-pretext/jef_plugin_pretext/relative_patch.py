"""The ``relative_patch_views`` augmenter: Doersch et al.'s context prediction.

From a 3×3 grid of patches (:mod:`jef_plugin_pretext.tiles`: a gap between patches and a random jitter of each,
so that edges and lines do not give the answer away) the network sees the centre patch and one of its 8
neighbours, each through the same backbone, and predicts where the neighbour sits [1]. Positions are numbered
row-major around the centre::

    0 1 2
    3 · 4
    5 6 7

Views ``[centre, neighbour]`` (``[B, C, tile, tile]`` each), fact ``position`` ``[B]`` in 0..7, uniform.

The paper also fights chromatic aberration (a lens artefact that tells where a patch was in the photo) by
projecting colours towards green-magenta or dropping colour channels; jef leaves that out (it matters for
photographs from a lens, not for the small datasets jef trains on); per-patch normalisation
(``tile_normalise``, default true) removes brightness and contrast cues.

References:
    [1] Doersch, Gupta, Efros. Unsupervised Visual Representation Learning by Context Prediction. ICCV 2015.
        arXiv:1505.05192.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from jef.components import RunContext, Views
from jef_plugin_pretext.base import CROP_DRAWS, PretextAugmenter, crop_range, full_precision
from jef_plugin_pretext.tiles import JITTER_DRAWS, GridOptions, corners, cut, grid_side, normalise_tiles

__all__ = ["NEIGHBOURS", "RelativePatchOptions", "RelativePatchViews", "build_relative_patch_views"]

#: Cell (row-major in the 3×3 grid) of each position 0..7; the centre is cell 4.
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)


@attrs.frozen(kw_only=True)
class RelativePatchOptions(GridOptions):
    """Options of ``relative_patch_views`` (the paper: 96-px patches, a 48-px gap, jitter up to 7 px)."""

    scale: tuple[float, float] = attrs.field(default=(0.6, 1.0), converter=tuple, validator=crop_range,
                                             metadata={"doc": "range of the random crop's area fraction"})


class RelativePatchViews(PretextAugmenter):
    """The centre patch and one neighbour of each image, and the neighbour's position.

    Attributes:
        n_views: 2 (centre, neighbour).
        n_global: 2.
        grid: Side of the crop the patches are cut from.
        classes: 8.
    """

    n_views = n_global = 2
    classes = 8

    def __init__(self, options: RelativePatchOptions | None = None, **kwargs) -> None:
        super().__init__(options if options is not None else RelativePatchOptions(), "relative_patch_views",
                         **kwargs)
        o = self.options
        self.grid = grid_side(o.tile, o.gap, o.jitter)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tile={self.options.tile}, grid={self.grid}"

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Views:
        """The centre and neighbour patches of a batch.

        Returns:
            :class:`~jef.components.Views`: ``[centre, neighbour]``, each ``[B, C, tile, tile]`` float32, with
            fact ``position`` ``[B]`` in 0..7.
        """
        with torch.no_grad(), full_precision(images):
            x = self.check(images, "forward")
            o = self.options
            u = self.draw(x.shape[0], CROP_DRAWS + JITTER_DRAWS + 1, generator)
            grid = self.crop(x, u[:, :CROP_DRAWS], self.grid)
            top, left = corners(u[:, CROP_DRAWS:CROP_DRAWS + JITTER_DRAWS], o.tile, o.gap, o.jitter)
            position = (u[:, -1] * 8).long().clamp_(max=7)
            cells = torch.stack([torch.full_like(position, 4), torch.tensor(NEIGHBOURS)[position]], dim=1)
            tiles = cut(grid, top, left, o.tile, cells=cells)
            tiles = normalise_tiles(tiles) if o.tile_normalise else self.normalise(tiles.flatten(0, 1)).view_as(tiles)
            return Views(list(tiles.unbind(1)), {"position": position.to(x.device)})


def build_relative_patch_views(options: RelativePatchOptions, ctx: RunContext) -> RelativePatchViews:
    """The ``relative_patch_views`` augmenter; reads ``ctx.in_channels``, ``ctx.image_size`` (when ``size`` is
    null) and ``ctx.rank``/``ctx.world_size``."""
    return RelativePatchViews(options, channels=ctx.in_channels, image_size=ctx.image_size, rank=ctx.rank,
                              world_size=ctx.world_size)
