"""The ``pirl_views`` augmenter: an augmented image and the 9 shuffled jigsaw tiles of another crop of it.

PIRL [1] (§3, §4.1) compares an image ``I`` with its jigsaw transform ``I^t``: a second random crop of ``I``
divided into a 3×3 grid, one tile cut from each cell at a random offset (jitter), the 9 tiles shuffled by a
random permutation. As the official code (VISSL's ``ImgPilToPatchesAndImage`` + ``ImgPatchesFromTensor``) this
augmenter makes

* view 0: a random resized crop of the image (area ``scale``, default ``[0.08, 1]``) at ``size``, flipped,
  colour-jittered and greyed as SimCLR's views (jef's ``views`` augmenter does it);
* views 1..9: a second random resized crop (area ``jigsaw_scale``, default ``[0.6, 1]``) at ``grid`` pixels
  (255 in the paper), put through the same colour pipeline, cut into 3×3 cells of ``grid / 3`` (85) pixels,
  a ``tile`` (64) pixel square from each cell at a uniform integer offset in ``[0, grid/3 − tile]`` (the
  official ``patch_jitter`` 21), then shuffled: view ``1 + j`` is the tile of cell ``permutation[j]``
  (row-major cells), a uniformly random permutation per image (PIRL uses all 9!, not a fixed set).

The views carry the facts ``permutation`` ``[B, 9]`` and ``offsets`` ``[B, 9, 2]`` (row, column of each cell's
tile, in cell order), for tests and diagnostics; the objective needs neither.

Like jef's ``views`` augmenter, every random number is drawn for the *global* batch (``world_size · B``
images) from the generator every process holds in the same state, and each process keeps the rows of its own
images ``[rank·B, (rank+1)·B)``: ``W`` processes make the views one process makes on the global batch.

References:
    [1] Misra, van der Maaten. Self-Supervised Learning of Pretext-Invariant Representations. CVPR 2020.
        arXiv:1912.01991.
"""

from __future__ import annotations

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef.augment.options import ViewsOptions
from jef.augment.views import ViewsAugmenter
from jef.components import RunContext, Views

__all__ = ["GRID", "PIRLViews", "PIRLViewsOptions", "build_pirl_views"]

#: Tiles per image: the 3×3 grid of the jigsaw task.
GRID = 3
TILES = GRID * GRID


def _range(instance: object, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
    if len(value) != 2 or not 0.0 < value[0] <= value[1] or (attribute.name != "ratio" and value[1] > 1.0):
        bound = "0 < low <= high" + ("" if attribute.name == "ratio" else " <= 1")
        raise ValueError(f"pirl_views: {attribute.name} must be [low, high] with {bound}, got {list(value)}")


def _side(doc: str, default: int | None) -> object:
    return attrs.field(default=default, validator=v.optional([v.instance_of(int), v.ge(1), v.le(4096)]),
                       metadata={"doc": doc})


@attrs.frozen(kw_only=True)
class PIRLViewsOptions:
    """Options of the ``pirl_views`` augmenter (defaults: the official VISSL ImageNet transform)."""

    size: int | None = _side("side of view 0, the image; null: the images' side", 224)
    grid: int | None = _side("side of the jigsaw crop cut into 3×3 cells (a multiple of 3); null: "
                             "3·round(size·85/224), the paper's 255 : 224", 255)
    tile: int | None = _side("side of each tile, at most grid/3; null: round(cell·64/85), the paper's 64 : 85", 64)
    scale: tuple[float, float] = attrs.field(default=(0.08, 1.0), converter=tuple, validator=_range,
                                             metadata={"doc": "area range of view 0's crop (crop_scale_image)"})
    jigsaw_scale: tuple[float, float] = attrs.field(
        default=(0.6, 1.0), converter=tuple, validator=_range,
        metadata={"doc": "area range of the jigsaw crop (VISSL's crop_scale_patches)"})
    ratio: tuple[float, float] = attrs.field(default=(3 / 4, 4 / 3), converter=tuple, validator=_range,
                                             metadata={"doc": "aspect-ratio range of both crops"})
    flip_p: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)],
                                metadata={"doc": "horizontal flip probability (of the image, and of the jigsaw crop)"})
    jitter_p: float = attrs.field(default=0.8, validator=[v.ge(0.0), v.le(1.0)],
                                  metadata={"doc": "colour-jitter probability"})
    jitter: tuple[float, float, float, float] = attrs.field(
        default=(0.4, 0.4, 0.4, 0.2), converter=tuple,
        validator=v.deep_iterable(v.and_(v.instance_of((int, float)), v.ge(0.0)), v.instance_of(tuple)),
        metadata={"doc": "brightness, contrast, saturation, hue strengths (VISSL's ColorJitter 0.4, 0.4, 0.4, "
                         "0.2); saturation and hue act on RGB only"})
    grayscale_p: float = attrs.field(default=0.2, validator=[v.ge(0.0), v.le(1.0)],
                                     metadata={"doc": "grayscale probability (RGB only)"})
    normalize: bool = attrs.field(default=True, metadata={"doc": "normalise by mean and std (ImageNet's)"})

    def __attrs_post_init__(self) -> None:
        if len(self.jitter) != 4 or self.jitter[3] > 0.5:
            raise ValueError(f"pirl_views: jitter must be [brightness, contrast, saturation, hue] with hue <= 0.5, "
                             f"got {list(self.jitter)}")
        if self.grid is not None and self.grid % GRID:
            raise ValueError(f"pirl_views: grid must be a multiple of 3 (a 3×3 grid of equal cells), got {self.grid}")
        if self.grid is not None and self.tile is not None and self.tile > self.grid // GRID:
            raise ValueError(f"pirl_views: tile={self.tile} does not fit in the {self.grid // GRID}-pixel cells of "
                             f"grid={self.grid}; set tile <= grid / 3")


class PIRLViews(nn.Module):
    """View 0: the augmented image; views 1..9: the shuffled jigsaw tiles of a second crop (PIRL's ``I^t``).

    Args:
        options: The options (sides resolved here when null).
        image_size: The images' side, for ``size: null``.
        rank: This process's index.
        world_size: Number of processes.

    Attributes:
        n_views: 10.
        n_global: 1 (view 0; the tiles are local views, which get no target).
        n_local: 9.
        size: Side of view 0 and of :meth:`eval_view`'s output.
        grid, cell, tile: Sides of the jigsaw crop, of its cells and of the tiles; ``jitter = cell − tile``.
    """

    n_views = 1 + TILES
    n_global = 1
    n_local = TILES

    def __init__(self, options: PIRLViewsOptions | None = None, *, image_size: int | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__()
        o = options if options is not None else PIRLViewsOptions()
        if not 0 <= rank < world_size:
            raise ValueError(f"pirl_views: rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        size = o.size if o.size is not None else image_size
        if size is None:
            raise ValueError("pirl_views: size is null and the images' size is unknown; set size")
        grid = o.grid if o.grid is not None else GRID * max(1, round(size * 85 / 224))
        cell = grid // GRID
        tile = o.tile if o.tile is not None else max(1, round(cell * 64 / 85))
        self.options = o = attrs.evolve(o, size=size, grid=grid, tile=tile)  # re-validated: grid and tile fit
        self.size, self.grid, self.cell, self.tile, self.jitter = size, grid, cell, tile, cell - tile
        self.rank, self.world_size = rank, world_size
        b, c, s, h = o.jitter
        # The image and the jigsaw crop are jef's global and local view: one crop of each per image, each with
        # its own flip, jitter and grayscale draw, drawn for the global batch and sharded by the same rule.
        self.views = ViewsAugmenter(ViewsOptions(
            n_global=1, n_local=1, size=size, local_size=grid, scale=o.scale, local_scale=o.jigsaw_scale,
            ratio=o.ratio, flip_p=o.flip_p, jitter_p=o.jitter_p, brightness=b, contrast=c, saturation=s, hue=h,
            grayscale_p=o.grayscale_p, blur_p=0.0, normalize=o.normalize), rank=rank, world_size=world_size)

    def extra_repr(self) -> str:
        shard = f", rank={self.rank}, world_size={self.world_size}" if self.world_size > 1 else ""
        return f"size={self.size}, grid={self.grid}, tile={self.tile}, jitter={self.jitter}{shard}"

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Views:
        """The image view and the 9 shuffled tiles of a batch.

        Args:
            images: ``[B, C, H, W]``, uint8 in 0..255 or float in ``[0, 1]``.
            generator: Source of every random number (the same state on every process); None: the global RNG.

        Returns:
            :class:`~jef.components.Views`: ``[B, C, size, size]`` then 9 × ``[B, C, tile, tile]``, float32 on
            ``images``' device, with facts ``permutation`` ``[B, 9]`` and ``offsets`` ``[B, 9, 2]`` (CPU, long).
        """
        image, crop = self.views(images, generator=generator)
        permutation, offsets = self.draw(images.shape[0], generator)
        tiles = self.cut(crop, offsets)  # [B, 9, C, t, t] in cell order
        shuffled = tiles[torch.arange(tiles.shape[0]).unsqueeze(1), permutation.to(tiles.device)]
        return Views([image, *shuffled.unbind(dim=1)], {"permutation": permutation, "offsets": offsets})

    def draw(self, batch: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """This process's rows of the global batch's permutations ``[B, 9]`` and tile offsets ``[B, 9, 2]``."""
        device = generator.device if generator is not None else "cpu"
        u = torch.rand(batch * self.world_size, 3 * TILES, generator=generator, device=device).cpu()
        rows = slice(self.rank * batch, (self.rank + 1) * batch)
        # argsort of 9 uniforms: each of the 9! orders equally likely (ties have probability 0).
        permutation = u[rows, :TILES].argsort(dim=1)
        offsets = (u[rows, TILES:] * (self.jitter + 1)).long().clamp_(max=self.jitter).view(batch, TILES, 2)
        return permutation, offsets

    def cut(self, crop: Tensor, offsets: Tensor) -> Tensor:
        """The tiles ``[B, 9, C, tile, tile]`` of crops ``[B, C, grid, grid]``, cell ``k = 3·row + col`` at
        ``(row·cell + offsets[:, k, 0], col·cell + offsets[:, k, 1])``."""
        cells = torch.arange(TILES)
        corner = torch.stack([cells // GRID, cells % GRID], dim=1) * self.cell + offsets  # [B, 9, 2]
        span = torch.arange(self.tile)
        rows = (corner[..., 0, None] + span).to(crop.device)  # [B, 9, t]
        cols = (corner[..., 1, None] + span).to(crop.device)
        batch = torch.arange(crop.shape[0], device=crop.device).view(-1, 1, 1, 1)
        # Advanced indices around a slice: the result is [B, 9, t, t, C].
        return crop[batch, :, rows[..., :, None], cols[..., None, :]].permute(0, 1, 4, 2, 3)

    def eval_view(self, images: Tensor) -> Tensor:
        """The whole image (centre square) at ``size``, normalised: what evaluation embeds (view 0's kind)."""
        return self.views.eval_view(images)


def build_pirl_views(options: PIRLViewsOptions, ctx: RunContext) -> PIRLViews:
    """The ``pirl_views`` augmenter; reads ``ctx.image_size`` (for ``size: null``) and ``ctx.rank`` /
    ``ctx.world_size`` (its rows of the global batch's random numbers)."""
    return PIRLViews(options, image_size=ctx.image_size, rank=ctx.rank, world_size=ctx.world_size)
