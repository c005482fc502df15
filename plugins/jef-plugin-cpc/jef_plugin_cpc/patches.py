"""The ``patch_grid`` augmenter: one random crop (and flip) per image, cut into a G×G grid of overlapping patches.

CPC on images [1, Sec. 3.3] and CPC v2 [2] encode every patch of a grid of overlapping patches separately (the
papers: 64×64 patches with a 32-pixel stride from a 256×256 crop, a 7×7 grid) and predict the embeddings of the
patches *below* a row from the rows above it. So the augmenter makes ``G²`` views, one per patch, in row-major
order: view ``r·G + c`` is patch ``(r, c)``, the crop's pixels ``[r·stride, r·stride + patch)`` ×
``[c·stride, c·stride + patch)``. The crop side is ``patch + (G − 1)·stride``.

CPC v2's patch augmentation [2, Sec. 4.1] is optional and, here, two of its parts, drawn for each patch on its
own: *colour dropping* (of an RGB patch, two of the three channels chosen at random are replaced by their
normalisation mean, so they read 0 after normalisation) and a *brightness/contrast jitter* (factors uniform in
``[1 − s, 1 + s]``). The paper's other patch augmentations (random flips, elastic deformations, the "AutoAugment"
policies) are not implemented.

Every random number is drawn for the *global* batch (``world_size · B`` images) from the generator the loop hands
every process in the same state, and each process keeps the rows of its own images, ``[rank·B, (rank+1)·B)``:
``W`` processes make the views one process makes on the global batch.

References:
    [1] van den Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding. 2018.
        arXiv:1807.03748.
    [2] Hénaff et al. Data-Efficient Image Recognition with Contrastive Predictive Coding. ICML 2020.
        arXiv:1905.09272.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor, nn

from jef.augment import ops
from jef.augment.options import IMAGENET_MEAN, IMAGENET_STD
from jef.augment.params import CROP_TRIES, crop_flip_theta
from jef.components import RunContext, Views

__all__ = ["PatchGrid", "PatchGridOptions", "build_patch_grid"]

#: Uniforms drawn per image: CROP_TRIES areas, CROP_TRIES log-ratios, the crop centre (2) and the flip.
IMAGE_DRAWS = 2 * CROP_TRIES + 3
#: Uniforms drawn per patch: drop or not, the channel kept, jitter or not, the brightness and contrast factors.
PATCH_DRAWS = 5


def _scale(instance: object, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
    if len(value) != 2 or not 0.0 < value[0] <= value[1] <= 1.0:
        raise ValueError(f"patch_grid: scale must be [low, high] with 0 < low <= high <= 1, got {list(value)}")


def _stats(instance: object, attribute: attrs.Attribute, value: tuple[float, ...] | None) -> None:
    if value is not None and (len(value) not in (1, 3) or (attribute.name == "std" and min(value) <= 0)):
        raise ValueError(f"patch_grid: {attribute.name} must be 1 or 3 values (std > 0), got {list(value)}")


def _floats(value: object) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(x) for x in value)  # type: ignore[union-attr]


@attrs.frozen(kw_only=True)
class PatchGridOptions:
    """Options of ``patch_grid`` (defaults: the papers' geometry, 7×7 patches of 64 px, stride 32, 256 px crop)."""

    grid: int = attrs.field(default=7, validator=[v.instance_of(int), v.ge(2), v.le(32)],
                            metadata={"doc": "G: patches per row and per column (G² views)"})
    patch: int = attrs.field(default=64, validator=[v.instance_of(int), v.ge(1), v.le(1024)],
                             metadata={"doc": "side of a patch, in pixels of the crop"})
    stride: int = attrs.field(default=32, validator=[v.instance_of(int), v.ge(1), v.le(1024)],
                              metadata={"doc": "pixels between neighbouring patches (< patch: they overlap)"})
    scale: tuple[float, float] = attrs.field(
        default=(1.0, 1.0), converter=tuple, validator=_scale,
        metadata={"doc": "range of the square crop's area fraction, resampled to the crop side (a 256 crop of a "
                         "300 px image is [0.73, 0.73]); [1, 1]: the whole image"})
    flip_p: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)],
                                metadata={"doc": "probability of flipping the crop horizontally"})
    colour_drop_p: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.le(1.0)],
                                       metadata={"doc": "CPC v2: probability, per RGB patch, of keeping one "
                                                        "random channel and setting the other two to their mean"})
    jitter_p: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.le(1.0)],
                                  metadata={"doc": "probability, per patch, of a brightness and contrast jitter"})
    jitter: float = attrs.field(default=0.4, validator=[v.ge(0.0), v.lt(1.0)],
                                metadata={"doc": "jitter strength s: factors uniform in [1 - s, 1 + s]"})
    mean: tuple[float, ...] | None = attrs.field(default=None, converter=_floats, validator=_stats,
                                                 metadata={"doc": "channel means; null: ImageNet's"})
    std: tuple[float, ...] | None = attrs.field(default=None, converter=_floats, validator=_stats,
                                                metadata={"doc": "channel stds; null: ImageNet's"})

    @property
    def size(self) -> int:
        """The crop side ``patch + (grid − 1)·stride``."""
        return self.patch + (self.grid - 1) * self.stride

    def __attrs_post_init__(self) -> None:
        if self.stride > self.patch:
            raise ValueError(f"patch_grid: stride {self.stride} > patch {self.patch} leaves pixels out of every "
                             f"patch; make stride <= patch")
        if (self.mean is None) != (self.std is None):
            raise ValueError("patch_grid: give mean and std together (or neither, for ImageNet's)")


class PatchGrid(nn.Module):
    """``G²`` patch views of one random crop per image, row-major, with the grid side as a fact.

    Args:
        options: The options.
        channels: Channels of the images (1 or 3).
        rank: This process's index.
        world_size: Number of processes.

    Attributes:
        n_views: ``G²``.
        n_global: ``G²``: every patch is a view of the same kind (none is a local crop of multi-crop).
        size: The crop side, and the side of :meth:`eval_view`'s whole images.
        grid: ``G``.
    """

    def __init__(self, options: PatchGridOptions | None = None, *, channels: int = 3, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__()
        o = options if options is not None else PatchGridOptions()
        if not 0 <= rank < world_size:
            raise ValueError(f"patch_grid: rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if channels not in (1, 3):
            raise ValueError(f"patch_grid: images must have 1 or 3 channels, got {channels}")
        mean, std = (o.mean, o.std) if o.mean is not None else (
            (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)))
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise ValueError(f"patch_grid: mean/std have {len(mean)}/{len(std)} values for {channels}-channel "
                             f"images; give 1 or {channels}")
        self.options, self.channels, self.rank, self.world_size = o, channels, rank, world_size
        self.grid, self.size = o.grid, o.size
        self.n_views = self.n_global = o.grid * o.grid
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:
        o = self.options
        shard = f", rank={self.rank}, world_size={self.world_size}" if self.world_size > 1 else ""
        return f"grid={o.grid}, patch={o.patch}, stride={o.stride}, size={self.size}{shard}"

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Views:
        """The patch views of a batch.

        Args:
            images: ``[B, C, H, W]`` uint8 in 0..255 or float in ``[0, 1]``.
            generator: Source of every draw (the same state on every process); None: the global RNG.

        Returns:
            :class:`~jef.components.Views`: ``G²`` float32 views ``[B, C, patch, patch]``, row-major, on
            ``images``' device; ``facts["grid"]`` is ``[B, 2]`` long, ``(G, G)`` per sample.
        """
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            x = self._check(images, "forward")
            u_image, u_patch = self.draw(x.shape[0], generator)
            o = self.options
            theta = crop_flip_theta(u_image[:, :CROP_TRIES], u_image[:, CROP_TRIES:2 * CROP_TRIES],
                                    u_image[:, 2 * CROP_TRIES:2 * CROP_TRIES + 2], u_image[:, -1] < o.flip_p,
                                    aspect=x.shape[-1] / x.shape[-2], scale=o.scale, ratio=(1.0, 1.0))
            crops = ops.crop_resample(x, theta.unsqueeze(0), self.size).float()
            patches = self.cut(crops)  # [B, G², C, p, p] in [0, 1]
            patches = self.augment(patches, u_patch.to(patches.device))
            views = self.normalise(patches.flatten(0, 1)).unflatten(0, patches.shape[:2])
            grid = torch.full((x.shape[0], 2), self.grid, dtype=torch.long, device=x.device)
            return Views(list(views.unbind(1)), {"grid": grid})

    def draw(self, batch: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """This process's uniforms ``[B, IMAGE_DRAWS]`` and ``[B, G², PATCH_DRAWS]``, drawn for the global batch (CPU).

        Every draw is made whatever the options, so that changing a probability changes no other number.
        """
        device = generator.device if generator is not None else "cpu"
        total = batch * self.world_size
        u_image = torch.rand(total, IMAGE_DRAWS, generator=generator, device=device).cpu()
        u_patch = torch.rand(total, self.n_views, PATCH_DRAWS, generator=generator, device=device).cpu()
        rows = slice(self.rank * batch, (self.rank + 1) * batch)
        return u_image[rows], u_patch[rows]

    def cut(self, crops: Tensor) -> Tensor:
        """The ``[B, G², C, patch, patch]`` patches of ``[B, C, size, size]`` crops, row-major."""
        p, s = self.options.patch, self.options.stride
        tiles = crops.unfold(2, p, s).unfold(3, p, s)  # [B, C, G, G, p, p]
        return tiles.permute(0, 2, 3, 1, 4, 5).reshape(crops.shape[0], self.n_views, crops.shape[1], p, p)

    def augment(self, patches: Tensor, u: Tensor) -> Tensor:
        """CPC v2's per-patch jitter, then colour dropping, of ``[B, G², C, p, p]`` patches in ``[0, 1]``."""
        o = self.options
        b, n = patches.shape[:2]
        flat = patches.flatten(0, 1)
        u = u.reshape(b * n, PATCH_DRAWS)
        if o.jitter_p > 0:
            jitter = (u[:, 2] < o.jitter_p).to(flat.dtype)
            brightness = 1.0 + jitter * o.jitter * (2.0 * u[:, 3] - 1.0)
            contrast = 1.0 + jitter * o.jitter * (2.0 * u[:, 4] - 1.0)  # factor 1 leaves a patch as it is
            flat = ops.adjust_contrast(ops.adjust_brightness(flat, brightness), contrast)
        if o.colour_drop_p > 0 and self.channels == 3:  # one channel has nothing to drop
            keep = (u[:, 1] * 3).long().clamp_(max=2)
            dropped = (u[:, 0] < o.colour_drop_p).view(-1, 1) & (torch.arange(3, device=u.device) != keep.view(-1, 1))
            mean = self.mean.expand(3).view(1, 3, 1, 1)
            flat = torch.where(dropped.view(-1, 3, 1, 1), mean, flat)
        return flat.view_as(patches)

    def normalise(self, x: Tensor) -> Tensor:
        """``(x − mean) / std`` per channel."""
        return ops.normalize(x, self.mean, self.std)

    def eval_view(self, images: Tensor) -> Tensor:
        """The whole image, deterministic: its centre square resized to ``size`` (antialiased when shrinking),
        normalised. The backbone is evaluated on whole images, not on pooled patch features (see the docs)."""
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            x = ops.to_float(self._check(images, "eval_view"), who="patch_grid (eval_view)")
            h, w = x.shape[-2:]
            side = min(h, w)
            if h != w:
                top, left = (h - side) // 2, (w - side) // 2
                x = x[..., top:top + side, left:left + side]
            if side != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                  antialias=side > self.size).clamp_(0.0, 1.0)
            return self.normalise(x)

    def _check(self, images: Tensor, what: str) -> Tensor:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != self.channels:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"patch_grid.{what}: expected images [B, {self.channels}, H, W] (it was built for "
                             f"{self.channels}-channel images), got shape {got}")
        return ops.check_images(images, who=f"patch_grid ({what})")


def build_patch_grid(options: PatchGridOptions, ctx: RunContext) -> PatchGrid:
    """The ``patch_grid`` augmenter; reads ``ctx.in_channels`` and ``ctx.rank``/``ctx.world_size``."""
    return PatchGrid(options, channels=ctx.in_channels, rank=ctx.rank, world_size=ctx.world_size)
