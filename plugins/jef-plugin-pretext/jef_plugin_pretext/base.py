"""What the four pretext augmenters share: options, a random resized crop, global-batch draws, normalisation.

Every random number is drawn for the *global* batch (``world_size · B`` images) from the generator the training
loop hands every process in the same state, and each process keeps the rows of its own images,
``[rank·B, (rank+1)·B)``, as jef's ``views`` augmenter does: ``W`` processes make the views (and the facts) one
process makes on the global batch. The draws are made on the generator's device and used on the CPU, where the
crop maps are computed.

The evaluation view is jef's ``views`` augmenter's: the centre square of the image, resized to ``size``
(antialiased when shrinking) and normalised with the same statistics as the training views.
"""

from __future__ import annotations

import contextlib

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor, nn

from jef.augment import ops
from jef.augment.options import ViewsOptions
from jef.augment.params import CROP_TRIES, crop_flip_theta

__all__ = ["CROP_DRAWS", "PretextAugmenter", "PretextOptions", "crop_range", "full_precision"]

#: Uniforms a random resized crop and flip take per image: CROP_TRIES areas and log-ratios, the centre, the flip.
CROP_DRAWS = 2 * CROP_TRIES + 3


def crop_range(instance: object, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
    """Validate a ``[low, high]`` range option (``scale`` at most 1)."""
    if len(value) != 2 or not 0.0 < value[0] <= value[1] or (attribute.name == "scale" and value[1] > 1.0):
        bound = "0 < low <= high <= 1" if attribute.name == "scale" else "0 < low <= high"
        raise ValueError(f"{attribute.name} must be [low, high] with {bound}, got {list(value)}")


def _stats(instance: object, attribute: attrs.Attribute, value: list[float] | None) -> None:
    if value is not None and (len(value) not in (1, 3) or (attribute.name == "std" and min(value) <= 0)):
        raise ValueError(f"{attribute.name} must be null or 1 or 3 values (std > 0), got {value}")


@attrs.frozen(kw_only=True)
class PretextOptions:
    """Options every pretext augmenter has: the crop that comes first, and the normalisation."""

    size: int | None = attrs.field(default=None, validator=v.optional([v.instance_of(int), v.ge(1), v.le(4096)]),
                                   metadata={"doc": "side of the evaluation view (the whole image); null: the "
                                                    "images' side"})
    scale: tuple[float, float] = attrs.field(default=(1.0, 1.0), converter=tuple, validator=crop_range,
                                             metadata={"doc": "range of the random crop's area fraction "
                                                              "([1, 1]: the whole image)"})
    ratio: tuple[float, float] = attrs.field(default=(3 / 4, 4 / 3), converter=tuple, validator=crop_range,
                                             metadata={"doc": "range of the crop's aspect ratio"})
    flip_p: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)],
                                metadata={"doc": "probability of a horizontal flip"})
    mean: list[float] | None = attrs.field(default=None, validator=_stats,
                                           metadata={"doc": "channel means; null: ImageNet's (averaged for grey), "
                                                            "as jef's views augmenter"})
    std: list[float] | None = attrs.field(default=None, validator=_stats,
                                          metadata={"doc": "channel stds; null: ImageNet's (averaged for grey)"})

    def __attrs_post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together (or both null for the defaults)")


class PretextAugmenter(nn.Module):
    """Base of the pretext augmenters: draws for the global batch, crops, normalises, makes the eval view.

    Args:
        options: The augmenter's options (a :class:`PretextOptions`).
        name: The augmenter's registered name, for messages.
        channels: Channels of the images (1 or 3).
        image_size: The images' side, the evaluation side when ``options.size`` is None.
        rank: This process's index.
        world_size: Number of processes.

    Attributes:
        size: Side of :meth:`eval_view`'s output.
    """

    n_views = 1
    n_global = 1

    def __init__(self, options: PretextOptions, name: str, *, channels: int = 3, image_size: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"{name}: rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if channels not in (1, 3):
            raise ValueError(f"{name}: supports 1- or 3-channel images, got channels={channels}")
        size = options.size if options.size is not None else image_size
        if size is None:
            raise ValueError(f"{name}: size is null and the images' size is unknown; set size")
        self.options = attrs.evolve(options, size=size)
        self.name, self.size, self.channels, self.rank, self.world_size = name, size, channels, rank, world_size
        stats = ViewsOptions(mean=options.mean, std=options.std).channel_stats(channels)
        self.mean, self.std = (torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1) for s in stats)

    def extra_repr(self) -> str:
        shard = f", rank={self.rank}, world_size={self.world_size}" if self.world_size > 1 else ""
        return f"n_views={self.n_views}, size={self.size}, channels={self.channels}{shard}"

    def draw(self, batch: int, columns: int, generator: torch.Generator | None) -> Tensor:
        """``[batch, columns]`` uniforms of this process's rows, drawn for the global batch (on the CPU)."""
        device = generator.device if generator is not None else "cpu"
        u = torch.rand(batch * self.world_size, columns, generator=generator, device=device).cpu()
        return u[self.rank * batch:(self.rank + 1) * batch]

    def crop(self, x: Tensor, u: Tensor, side: int) -> Tensor:
        """Random resized crops (with flips) of ``x`` at ``side``, from ``CROP_DRAWS`` uniforms per image.

        Returns ``[B, C, side, side]`` float32 in ``[0, 1]``.
        """
        o = self.options
        theta = crop_flip_theta(u[:, :CROP_TRIES], u[:, CROP_TRIES:2 * CROP_TRIES],
                                u[:, 2 * CROP_TRIES:2 * CROP_TRIES + 2], u[:, CROP_DRAWS - 1] < o.flip_p,
                                aspect=x.shape[-1] / x.shape[-2], scale=o.scale, ratio=o.ratio)
        out = ops.crop_resample(x, theta.unsqueeze(0), side)
        return out if out.dtype == torch.float32 else out.float()

    def normalise(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel."""
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def check(self, images: Tensor, what: str) -> Tensor:
        """The images checked (``[B, channels, H, W]``, uint8 or float)."""
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(f"{self.name}.{what}: expected images [B, {self.channels}, H, W] (it was built for "
                             f"{self.channels}-channel images), got shape {tuple(images.shape)}")
        return ops.check_images(images, who=f"{self.name} ({what})")

    def eval_view(self, images: Tensor) -> Tensor:
        """The whole images, deterministic: the centre square resized to ``size`` (antialiased when shrinking),
        normalised: what the backbone is evaluated on (kNN, linear probe, export).

        Args:
            images: ``[B, C, H, W]`` uint8 or float in ``[0, 1]``.

        Returns:
            ``[B, C, size, size]`` float32 on ``images``' device.
        """
        with torch.no_grad(), full_precision(images):
            x = ops.to_float(self.check(images, "eval_view"), who=f"{self.name} (eval_view)")
            return self.normalise(self.resize(x, self.size))

    @staticmethod
    def resize(x: Tensor, side: int) -> Tensor:
        """The centre square of float images ``x`` resized to ``side`` (jef's views augmenter's eval view)."""
        h, w = x.shape[-2:]
        square = min(h, w)
        if h != w:
            top, left = (h - square) // 2, (w - square) // 2
            x = x[..., top:top + square, left:left + square]
        if square != side:
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                              antialias=square > side).clamp_(0.0, 1.0)
        return x


def full_precision(images: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off: views are made in float32 under a mixed-precision step (mixed precision starts at the
    backbone)."""
    if images.device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(images.device.type, enabled=False)
    return contextlib.nullcontext()
