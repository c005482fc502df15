"""The ``jigsaw_views`` augmenter and its permutation set: Noroozi & Favaro's jigsaw puzzles.

A 3×3 grid of tiles is cut from each image (:mod:`jef_plugin_pretext.tiles`) and shuffled by one permutation of
a fixed set of ``P``; the network sees the 9 tiles (one shared backbone per tile, their "context-free network")
and predicts which permutation of the set shuffled them [1]. The set matters: permutations too close to one
another make the task ambiguous, too easy ones teach little. The paper picks the set greedily, each next
permutation the one farthest, in Hamming distance, from those already chosen (their Algorithm 1). Algorithm 1
as printed sums the distances to the chosen ones (``D̄ = 1ᵀD``: maximal *average* distance); the paper
also reports each set's *minimal* distance, which the max-min choice maximises: :func:`permutation_set` offers
both (``criterion``), max-min by default.

Views: view ``i`` is tile ``perm[i]`` (cells in row-major order), so placing view ``i`` back at cell
``perm[i]`` rebuilds the grid. Fact ``permutation`` ``[B]``: the index into the set.

References:
    [1] Noroozi, Favaro. Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles. ECCV 2016.
        arXiv:1603.09246.
"""

from __future__ import annotations

import functools

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from jef.components import RunContext, Views
from jef_plugin_pretext.base import CROP_DRAWS, PretextAugmenter, crop_range, full_precision
from jef_plugin_pretext.tiles import JITTER_DRAWS, GridOptions, corners, cut, grid_side, normalise_tiles

__all__ = ["JigsawOptions", "JigsawViews", "all_permutations", "build_jigsaw_views", "hamming", "minimal_distance",
           "permutation_set"]


@functools.lru_cache(maxsize=4)
def all_permutations(tiles: int) -> Tensor:
    """Every permutation of ``range(tiles)``, ``[tiles!, tiles]`` uint8, in lexicographic order (itertools')."""
    perms = torch.zeros(1, 0, dtype=torch.uint8)
    for n in range(1, tiles + 1):
        # Those of n items starting with f: f, then those of n - 1 items on the values other than f, in order.
        perms = torch.cat([torch.cat([torch.full((perms.shape[0], 1), f, dtype=torch.uint8),
                                      perms + (perms >= f).to(torch.uint8)], dim=1) for f in range(n)])
    return perms


def hamming(a: Tensor, b: Tensor) -> Tensor:
    """Hamming distances ``[len(a), len(b)]`` between the rows of two permutation tables."""
    return (a[:, None, :] != b[None, :, :]).sum(-1)


def minimal_distance(perms: Tensor) -> int:
    """The smallest Hamming distance between two distinct permutations of a set (``[P, n]``, P >= 2)."""
    d = hamming(perms, perms)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


def permutation_set(count: int, tiles: int = 9, seed: int = 0, criterion: str = "min") -> tuple[Tensor, int]:
    """The greedy permutation set of Noroozi & Favaro's Algorithm 1, deterministic from ``seed``.

    The first permutation is drawn from ``seed``; each next one is, of all ``tiles!`` permutations not yet
    chosen, the one with the largest minimal (``criterion="min"``) or summed (``"mean"``, Algorithm 1 as
    printed) Hamming distance to the chosen ones; ties go to the first in lexicographic order.

    Args:
        count: ``P``, the number of permutations (2 to ``tiles!``).
        tiles: Tiles per puzzle (9 for the 3×3 grid).
        seed: Seed of the first permutation.
        criterion: ``"min"`` or ``"mean"``.

    Returns:
        ``(perms, d_min)``: a ``[P, tiles]`` LongTensor, row ``p`` the tile order of permutation ``p``, and the
        set's minimal Hamming distance.
    """
    perms, distance = _permutation_set(count, tiles, seed, criterion)
    return perms.clone(), distance


@functools.lru_cache(maxsize=16)
def _permutation_set(count: int, tiles: int, seed: int, criterion: str) -> tuple[Tensor, int]:
    # On the CPU whatever the default device: `jef config show` builds components under torch.device("meta"),
    # where the search's tensors would have no values to read.
    with torch.device("cpu"):
        return _search(count, tiles, seed, criterion)


def _search(count: int, tiles: int, seed: int, criterion: str) -> tuple[Tensor, int]:
    if criterion not in ("min", "mean"):
        raise ValueError(f"permutation_set: criterion must be 'min' or 'mean', got {criterion!r}")
    pool = all_permutations(tiles)
    if not 2 <= count <= pool.shape[0]:
        raise ValueError(f"permutation_set: count must be in [2, {pool.shape[0]}] for {tiles} tiles, got {count}")
    columns = pool.t().contiguous()  # one contiguous row per tile position: 9 passes over 9! bytes per step
    differs = torch.empty(pool.shape[0], dtype=torch.bool)

    def distances(index: int) -> Tensor:  # Hamming distance of every permutation to permutation `index`
        d = torch.zeros(pool.shape[0], dtype=torch.int32)
        for position, value in enumerate(pool[index].tolist()):
            torch.ne(columns[position], value, out=differs)
            d.add_(differs)
        return d

    first = int(torch.randint(pool.shape[0], (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    score = distances(first)  # to the chosen ones: their minimum, or their sum
    for _ in range(count - 1):
        score[chosen[-1]] = -1  # a chosen one is never chosen again (a distance is never negative)
        nxt = int(score.argmax())  # argmax returns the first of ties
        chosen.append(nxt)
        d = distances(nxt)
        score = torch.minimum(score, d) if criterion == "min" else score + d
        score[chosen] = -1
    perms = pool[chosen].long()
    return perms, minimal_distance(perms)


@attrs.frozen(kw_only=True)
class JigsawOptions(GridOptions):
    """Options of ``jigsaw_views``."""

    scale: tuple[float, float] = attrs.field(default=(0.6, 1.0), converter=tuple, validator=crop_range,
                                             metadata={"doc": "range of the random crop's area fraction (the "
                                                              "paper: a 225-pixel crop of a 256-pixel image)"})
    permutations: int = attrs.field(default=100, validator=[v.instance_of(int), v.ge(2), v.le(362880)],
                                    metadata={"doc": "P, the size of the permutation set (the paper: 1000); the "
                                                     "classifier's classes"})
    permutation_seed: int = attrs.field(default=0, validator=v.instance_of(int),
                                        metadata={"doc": "seed of the set's first permutation"})
    criterion: str = attrs.field(default="min", validator=v.in_(("min", "mean")),
                                 metadata={"doc": "greedy choice: max of the minimal (min) or of the summed (mean, "
                                                  "Algorithm 1 as printed) Hamming distance"})


class JigsawViews(PretextAugmenter):
    """Nine shuffled tiles of each image and the index of the permutation that shuffled them.

    Args:
        options: The options.
        channels, image_size, rank, world_size: As :class:`~jef_plugin_pretext.base.PretextAugmenter`.

    Attributes:
        n_views: 9 (tiles, in shuffled order).
        n_global: 9.
        grid: Side of the crop the tiles are cut from.
        perms: ``[P, 9]`` the permutation set.
        min_distance: The set's minimal Hamming distance.
        classes: ``P``.
    """

    n_views = n_global = 9

    def __init__(self, options: JigsawOptions | None = None, **kwargs) -> None:
        super().__init__(options if options is not None else JigsawOptions(), "jigsaw_views", **kwargs)
        o = self.options
        self.grid = grid_side(o.tile, o.gap, o.jitter)
        self.perms, self.min_distance = permutation_set(o.permutations, 9, o.permutation_seed, o.criterion)
        self.classes = o.permutations

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tile={self.options.tile}, grid={self.grid}, permutations={self.classes}"

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Views:
        """The shuffled tiles of a batch.

        Returns:
            :class:`~jef.components.Views`: 9 ``[B, C, tile, tile]`` float32 views (view ``i`` is cell
            ``perms[p][i]`` of the grid), fact ``permutation`` ``[B]`` (``p``).
        """
        with torch.no_grad(), full_precision(images):
            x = self.check(images, "forward")
            o = self.options
            u = self.draw(x.shape[0], CROP_DRAWS + JITTER_DRAWS + 1, generator)
            grid = self.crop(x, u[:, :CROP_DRAWS], self.grid)
            top, left = corners(u[:, CROP_DRAWS:CROP_DRAWS + JITTER_DRAWS], o.tile, o.gap, o.jitter)
            p = (u[:, -1] * self.classes).long().clamp_(max=self.classes - 1)
            tiles = cut(grid, top, left, o.tile, cells=self.perms[p])  # already in shuffled order
            tiles = normalise_tiles(tiles) if o.tile_normalise else self.normalise(tiles.flatten(0, 1)).view_as(tiles)
            return Views(list(tiles.unbind(1)), {"permutation": p.to(x.device)})


def build_jigsaw_views(options: JigsawOptions, ctx: RunContext) -> JigsawViews:
    """The ``jigsaw_views`` augmenter; reads ``ctx.in_channels``, ``ctx.image_size`` (when ``size`` is null) and
    ``ctx.rank``/``ctx.world_size``."""
    return JigsawViews(options, channels=ctx.in_channels, image_size=ctx.image_size, rank=ctx.rank,
                       world_size=ctx.world_size)
