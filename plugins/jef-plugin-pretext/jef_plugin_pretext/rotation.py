"""The ``rotation_views`` augmenter: RotNet's images rotated by k·90°, the rotation class as a fact.

Gidaris, Singh & Komodakis [1] train a network to recognise which of the four rotations, 0°, 90°, 180° or 270°,
was applied to an image: to tell them apart it must find the objects in the image and their canonical
orientation. A rotation by a multiple of 90° is exact (a transpose and flips of the pixel grid), so no
low-level artefact gives the class away.

Two ways to feed it, option ``all_rotations``:

* false (the default): one view per image, rotated by ``k·90°`` with ``k`` uniform in 0..3, fact
  ``rotation`` ``[B]`` = ``k``. Each image is seen once per step, as in every other jef method.
* true: the paper's way (their Sec. 3 and code feed all four rotations of each image in one batch): four views,
  view ``j`` the image rotated by ``j·90°``, fact ``rotation`` ``[B, 4]`` = ``(0, 1, 2, 3)``. Train it with
  ``pretext_classifier``'s ``per_view: true`` (each view classified on its own).

Rotations are counter-clockwise (:func:`torch.rot90` with ``k``): ``rot90(view, -k)`` gives the crop back.

References:
    [1] Gidaris, Singh, Komodakis. Unsupervised Representation Learning by Predicting Image Rotations.
        ICLR 2018. arXiv:1803.07728.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from jef.components import RunContext, Views
from jef_plugin_pretext.base import CROP_DRAWS, PretextAugmenter, PretextOptions, crop_range, full_precision

__all__ = ["RotationOptions", "RotationViews", "build_rotation_views", "rotate"]


@attrs.frozen(kw_only=True)
class RotationOptions(PretextOptions):
    """Options of ``rotation_views`` (crop and flip: the light augmentation of the paper's CIFAR-10 code)."""

    scale: tuple[float, float] = attrs.field(default=(0.6, 1.0), converter=tuple,
                                             validator=crop_range,
                                             metadata={"doc": "range of the random crop's area fraction"})
    all_rotations: bool = attrs.field(default=False, metadata={
        "doc": "four views per image, one per rotation (the paper's batches; fact [B, 4], classifier per_view: "
               "true); false: one view with a random rotation (fact [B])"})


def rotate(x: Tensor, k: Tensor) -> Tensor:
    """Each image ``x[i]`` rotated by ``k[i]·90°`` counter-clockwise (``k`` a CPU LongTensor in 0..3)."""
    out = torch.empty_like(x)
    for quarter in range(4):
        rows = (k == quarter).nonzero().squeeze(1)
        if rows.numel():
            rows = rows.to(x.device)
            out.index_copy_(0, rows, torch.rot90(x.index_select(0, rows), quarter, dims=(-2, -1)))
    return out


class RotationViews(PretextAugmenter):
    """Rotated crops of each image and their rotation classes.

    Args:
        options: The options.
        channels: Image channels.
        image_size: The images' side (the view side when ``options.size`` is None).
        rank: This process's index.
        world_size: Number of processes.

    Attributes:
        n_views: 1, or 4 with ``all_rotations``.
        n_global: ``n_views`` (every view is a whole crop).
        size: Side of the views and of the evaluation view.
        classes: 4.
    """

    classes = 4

    def __init__(self, options: RotationOptions | None = None, **kwargs) -> None:
        super().__init__(options if options is not None else RotationOptions(), "rotation_views", **kwargs)
        self.n_views = self.n_global = 4 if self.options.all_rotations else 1

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Views:
        """The rotated views of a batch.

        Returns:
            :class:`~jef.components.Views`: ``n_views`` ``[B, C, size, size]`` float32 normalised views on the
            images' device, with fact ``rotation``: ``[B]`` (or ``[B, 4]`` with ``all_rotations``) LongTensor.
        """
        with torch.no_grad(), full_precision(images):
            x = self.check(images, "forward")
            batch = x.shape[0]
            u = self.draw(batch, CROP_DRAWS + 1, generator)
            crops = self.normalise(self.crop(x, u, self.size))
            if self.options.all_rotations:
                views = [torch.rot90(crops, j, dims=(-2, -1)).contiguous() for j in range(4)]
                k = torch.arange(4).expand(batch, 4).contiguous()
            else:
                k = (u[:, CROP_DRAWS] * 4).long().clamp_(max=3)
                views = [rotate(crops, k)]
            return Views(views, {"rotation": k.to(x.device)})


def build_rotation_views(options: RotationOptions, ctx: RunContext) -> RotationViews:
    """The ``rotation_views`` augmenter; reads ``ctx.in_channels``, ``ctx.image_size`` (when ``size`` is null) and
    ``ctx.rank``/``ctx.world_size`` (its rows of the global batch's draws)."""
    return RotationViews(options, channels=ctx.in_channels, image_size=ctx.image_size, rank=ctx.rank,
                         world_size=ctx.world_size)
