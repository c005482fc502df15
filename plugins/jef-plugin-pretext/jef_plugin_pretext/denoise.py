"""The ``denoise_views`` augmenter: the corrupted image as the view, the clean image as a fact.

Vincent et al.'s denoising autoencoder [1] learns to reconstruct an input from a corrupted copy of it, so that
its code must capture the dependencies between input dimensions rather than copy them. Their corruption is
*masking noise*: "a fixed number νd of components of x chosen at random are forced to 0" (ν = 10–50 % in
their experiments); additive Gaussian noise is the other usual choice (Vincent et al., JMLR 2010 [2]).

Here, on images in ``[0, 1]``, masking noise zeroes (blacks out) exactly ``round(fraction · H · W)`` pixel
positions of each image, all channels of a position together (one pixel is one input component of a colour
image); Gaussian noise adds ``N(0, sigma²)`` to every value, unclipped. The view is the corrupted image
normalised as the clean one is. Facts: ``clean`` ``[B, C, H, W]``, the clean normalised image (the
reconstruction target), and ``corrupted`` ``[B, 1, H, W]`` bool, where the noise struck (every pixel for
Gaussian noise), for the ``reconstruction`` functional's emphasised variant.

References:
    [1] Vincent, Larochelle, Bengio, Manzagol. Extracting and Composing Robust Features with Denoising
        Autoencoders. ICML 2008.
    [2] Vincent, Larochelle, Lajoie, Bengio, Manzagol. Stacked Denoising Autoencoders. JMLR 11, 2010.
"""

from __future__ import annotations

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from jef.components import RunContext, Views
from jef_plugin_pretext.base import CROP_DRAWS, PretextAugmenter, PretextOptions, full_precision

__all__ = ["DenoiseOptions", "DenoiseViews", "build_denoise_views"]


@attrs.frozen(kw_only=True)
class DenoiseOptions(PretextOptions):
    """Options of ``denoise_views`` (no crop or flip by default, as the paper)."""

    flip_p: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.le(1.0)],
                                metadata={"doc": "probability of a horizontal flip (the paper: none)"})
    noise: str = attrs.field(default="mask", validator=v.in_(("mask", "gaussian")),
                             metadata={"doc": "mask: zero a fraction of the pixels (the paper's masking noise); "
                                              "gaussian: add N(0, sigma^2)"})
    fraction: float = attrs.field(default=0.25, validator=[v.ge(0.0), v.le(1.0)],
                                  metadata={"doc": "masking noise: the fraction ν of pixels zeroed (the paper: "
                                                   "0.1-0.5)"})
    sigma: float = attrs.field(default=0.3, validator=[v.gt(0.0), v.le(10.0)],
                               metadata={"doc": "gaussian noise: its std, in pixel units of [0, 1] images"})


class DenoiseViews(PretextAugmenter):
    """One corrupted view of each image and its clean version.

    Attributes:
        n_views: 1.
        n_global: 1.
        size: Side of the view, of the clean fact and of the evaluation view.
    """

    n_views = n_global = 1

    def __init__(self, options: DenoiseOptions | None = None, **kwargs) -> None:
        super().__init__(options if options is not None else DenoiseOptions(), "denoise_views", **kwargs)

    def extra_repr(self) -> str:
        o = self.options
        noise = f"fraction={o.fraction}" if o.noise == "mask" else f"sigma={o.sigma}"
        return f"{super().extra_repr()}, noise={o.noise}, {noise}"

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Views:
        """The corrupted view of a batch.

        Returns:
            :class:`~jef.components.Views`: one ``[B, C, size, size]`` float32 view, with facts ``clean``
            (``[B, C, size, size]``, normalised) and ``corrupted`` (``[B, 1, size, size]`` bool).
        """
        with torch.no_grad(), full_precision(images):
            x = self.check(images, "forward")
            batch, side = x.shape[0], self.size
            clean = self.crop(x, self.draw(batch, CROP_DRAWS, generator), side)
            device = generator.device if generator is not None else "cpu"
            rows = slice(self.rank * batch, (self.rank + 1) * batch)
            # The noise is drawn for the global batch too, after the crops: W processes draw what one draws.
            if self.options.noise == "mask":
                u = torch.rand(batch * self.world_size, side * side, generator=generator, device=device)[rows]
                count = round(self.options.fraction * side * side)
                # The `count` positions of smallest u: a uniformly random subset of exactly that size.
                chosen = u.argsort(dim=1)[:, :count]
                mask = torch.zeros(batch, side * side, dtype=torch.bool, device=device)
                mask.scatter_(1, chosen, True)
                corrupted = mask.view(batch, 1, side, side).to(x.device)
                noisy = clean.masked_fill(corrupted, 0.0)
            else:
                z = torch.randn(batch * self.world_size, self.channels, side, side, generator=generator,
                                device=device)[rows]
                noisy = clean + self.options.sigma * z.to(x.device)
                corrupted = torch.ones(batch, 1, side, side, dtype=torch.bool, device=x.device)
            return Views([self.normalise(noisy)], {"clean": self.normalise(clean), "corrupted": corrupted})


def build_denoise_views(options: DenoiseOptions, ctx: RunContext) -> DenoiseViews:
    """The ``denoise_views`` augmenter; reads ``ctx.in_channels``, ``ctx.image_size`` (when ``size`` is null) and
    ``ctx.rank``/``ctx.world_size``."""
    return DenoiseViews(options, channels=ctx.in_channels, image_size=ctx.image_size, rank=ctx.rank,
                        world_size=ctx.world_size)
