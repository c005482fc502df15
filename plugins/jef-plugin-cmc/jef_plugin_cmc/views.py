"""The ``cmc_views`` augmenter: one random resized crop and flip per image, split into two channel-group views.

CMC [1] contrasts different *views* of the same scene; on ImageNet (§4.1) they are the ``L`` and ``ab``
channels of one random resized crop, flipped or not, of each image, as in the official code's transform
(``RandomResizedCrop``, ``RandomHorizontalFlip``, ``RGB2Lab``, ``Normalize``). So the crop and flip are drawn
once per image and shared by both views; what differs is the channels. See :mod:`jef_plugin_cmc.colour` for
the L*a*b* maths and for the grey-image views (jef's low/high-pass split).

Like jef's ``views`` augmenter, the crop and flip are drawn for the *global* batch (``world_size · B`` images)
from the generator the loop hands every process in the same state, and each process keeps the rows of its own
images, ``[rank·B, (rank+1)·B)``: ``W`` processes make the views one process makes on the global batch.

References:
    [1] Tian, Krishnan, Isola. Contrastive Multiview Coding. ECCV 2020. arXiv:1906.05849.
"""

from __future__ import annotations

import contextlib

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor, nn

from jef.augment import ops
from jef.augment.params import CROP_TRIES, crop_flip_theta
from jef.components import RunContext
from jef_plugin_cmc.colour import GREY_MEAN, GREY_SCALE, lab_views, low_high_pass, normalise

__all__ = ["CMCViews", "CMCViewsOptions", "build_cmc_views"]

#: Uniforms drawn per image: CROP_TRIES areas, CROP_TRIES log-ratios, the crop centre (2) and the flip.
DRAWS = 2 * CROP_TRIES + 3


def _range(instance: object, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
    if len(value) != 2 or not 0.0 < value[0] <= value[1] or (attribute.name == "scale" and value[1] > 1.0):
        bound = "0 < low <= high <= 1" if attribute.name == "scale" else "0 < low <= high"
        raise ValueError(f"cmc_views: {attribute.name} must be [low, high] with {bound}, got {list(value)}")


@attrs.frozen(kw_only=True)
class CMCViewsOptions:
    """Options of the ``cmc_views`` augmenter (defaults: the official code's ImageNet transform)."""

    size: int | None = attrs.field(default=224, validator=v.optional([v.instance_of(int), v.ge(1), v.le(4096)]),
                                   metadata={"doc": "side of the views; null: the images' side"})
    scale: tuple[float, float] = attrs.field(
        default=(0.2, 1.0), converter=tuple, validator=_range,
        metadata={"doc": "range of the crop's area fraction (the official code's --crop_low 0.2 default for "
                         "AlexNet; 0.08 in its ResNet command)"})
    ratio: tuple[float, float] = attrs.field(default=(3 / 4, 4 / 3), converter=tuple, validator=_range,
                                             metadata={"doc": "range of the crop's aspect ratio"})
    flip_p: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)],
                                metadata={"doc": "probability of a horizontal flip"})
    channels: int | None = attrs.field(default=None, validator=v.optional(v.in_((1, 3))),
                                       metadata={"doc": "input channels, 3 (L | ab) or 1 (low | high pass); "
                                                        "null: the data's"})
    blur_sigma: float = attrs.field(default=1.0, validator=[v.gt(0.0), v.le(100.0)],
                                    metadata={"doc": "grey images only: σ, in pixels of the view, of the low-pass "
                                                     "view's Gaussian blur (jef's choice; the grey scaling "
                                                     "constants were measured at σ = 1 on 28 px views)"})


class CMCViews(nn.Module):
    """Two views of each image from its channel groups, after one shared random resized crop and flip.

    RGB input gives view 0 = ``L`` (1 channel) and view 1 = ``ab`` (2 channels); grey input view 0 = a Gaussian
    blur and view 1 = the residual (1 channel each). Both are scaled to about ``[−1, 1]``
    (:mod:`jef_plugin_cmc.colour`).

    Args:
        options: The options (``size`` and ``channels`` resolved, or given here).
        channels: Input channels when ``options.channels`` is None.
        image_size: The view side when ``options.size`` is None.
        rank: This process's index.
        world_size: Number of processes.

    Attributes:
        n_views: 2.
        n_global: 2 (both views are whole crops; neither is a local view).
        n_local: 0.
        size: Side of the views and of :meth:`eval_view`'s output.
        channels: Input channels (1 or 3).
        view_channels: Channels of view 0 and view 1: ``(1, 2)`` for RGB, ``(1, 1)`` for grey. An encoder of a
            view takes that many input channels.
    """

    n_views = 2
    n_global = 2
    n_local = 0

    def __init__(self, options: CMCViewsOptions | None = None, *, channels: int | None = None,
                 image_size: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        o = options if options is not None else CMCViewsOptions()
        if not 0 <= rank < world_size:
            raise ValueError(f"cmc_views: rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        size = o.size if o.size is not None else image_size
        channels = o.channels if o.channels is not None else channels
        if size is None:
            raise ValueError("cmc_views: size is null and the images' size is unknown; set size")
        if channels not in (1, 3):
            raise ValueError(f"cmc_views: makes its views from RGB (3 channels: L | ab) or grey (1 channel: low | "
                             f"high pass) images, got channels={channels}; set cmc_views' channels to 1 or 3")
        self.options = attrs.evolve(o, size=size, channels=channels)
        self.size, self.channels, self.rank, self.world_size = size, channels, rank, world_size
        self.view_channels: tuple[int, int] = (1, 2) if channels == 3 else (1, 1)

    def extra_repr(self) -> str:
        shard = f", rank={self.rank}, world_size={self.world_size}" if self.world_size > 1 else ""
        return f"size={self.size}, channels={self.channels}, view_channels={self.view_channels}{shard}"

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """The two views of a batch.

        Args:
            images: ``[B, C, H, W]``, ``C`` the augmenter's ``channels``, uint8 in 0..255 or float in ``[0, 1]``.
            generator: Source of the crops and flips (the same state on every process); None: the global RNG.

        Returns:
            ``[view0 [B, c0, size, size], view1 [B, c1, size, size]]`` float32 on ``images``' device,
            ``(c0, c1) = view_channels``.
        """
        with torch.no_grad(), _full_precision(images):
            x = self._check(images, "forward")
            theta = self.draw(x.shape[0], x.shape[-1] / x.shape[-2], generator)
            crops = ops.crop_resample(x, theta, self.size)  # one crop per image, shared by both views
            return self.split(crops.float() if crops.dtype != torch.float32 else crops)

    def draw(self, batch: int, aspect: float, generator: torch.Generator | None) -> Tensor:
        """Crop-and-flip maps ``[1, batch, 2, 3]`` of this process's images, drawn for the global batch (CPU)."""
        o = self.options
        device = generator.device if generator is not None else "cpu"
        u = torch.rand(batch * self.world_size, DRAWS, generator=generator, device=device).cpu()
        theta = crop_flip_theta(u[:, :CROP_TRIES], u[:, CROP_TRIES:2 * CROP_TRIES],
                                u[:, 2 * CROP_TRIES:2 * CROP_TRIES + 2], u[:, -1] < o.flip_p,
                                aspect=aspect, scale=o.scale, ratio=o.ratio)
        return theta[self.rank * batch:(self.rank + 1) * batch].unsqueeze(0)

    def split(self, x: Tensor) -> list[Tensor]:
        """The two scaled channel-group views of float images ``[B, C, H, W]`` in ``[0, 1]`` (no crop)."""
        if self.channels == 3:
            return list(lab_views(x))
        low, high = low_high_pass(x, self.options.blur_sigma)
        return [normalise(low, GREY_MEAN[:1], GREY_SCALE[:1]), normalise(high, GREY_MEAN[1:], GREY_SCALE[1:])]

    def eval_views(self, images: Tensor) -> list[Tensor]:
        """Both views of the whole images, deterministic: the centre square (the whole of jef's square images)
        resized to ``size`` (antialiased when shrinking), then split as in training."""
        with torch.no_grad(), _full_precision(images):
            x = ops.to_float(self._check(images, "eval_view"), who="cmc_views (eval_view)")
            h, w = x.shape[-2:]
            side = min(h, w)
            if h != w:
                top, left = (h - side) // 2, (w - side) // 2
                x = x[..., top:top + side, left:left + side]
            if side != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                  antialias=side > self.size).clamp_(0.0, 1.0)
            return self.split(x)

    def eval_view(self, images: Tensor) -> Tensor:
        """View 0 (``L``, or the low-pass view) of the whole images: what the online encoder is evaluated on."""
        return self.eval_views(images)[0]

    def _check(self, images: Tensor, what: str) -> Tensor:
        if images.dim() != 4 or images.shape[1] != self.channels:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"cmc_views.{what}: expected images [B, {self.channels}, H, W] (the augmenter was "
                             f"built for {self.channels}-channel images: RGB for L | ab, grey for low | high pass), "
                             f"got shape {got}")
        return ops.check_images(images, who=f"cmc_views ({what})")


def _full_precision(images: Tensor) -> contextlib.AbstractContextManager:
    # Views stay float32 under a mixed-precision step: the colour maths (a 2.4 power, a cube root) would lose
    # its precision in half, and mixed precision starts at the backbone.
    if images.device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(images.device.type, enabled=False)
    return contextlib.nullcontext()


def build_cmc_views(options: CMCViewsOptions, ctx: RunContext) -> CMCViews:
    """The ``cmc_views`` augmenter; reads ``ctx.in_channels`` (when ``channels`` is null), ``ctx.image_size``
    (when ``size`` is null) and ``ctx.rank``/``ctx.world_size`` (its rows of the global batch's crops)."""
    return CMCViews(options, channels=ctx.in_channels, image_size=ctx.image_size, rank=ctx.rank,
                    world_size=ctx.world_size)
