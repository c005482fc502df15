"""Options of the ``views`` augmenter.

No ``from __future__ import annotations`` here: jef's config layer reads the
real types from ``attrs.fields(ViewsOptions)``.

Defaults are the SimCLR CIFAR-10 recipe (Chen et al., arXiv:2002.05709, app.
A and B.9): crop scale (0.08, 1), flip 0.5, colour jitter with p = 0.8 and
strength s = 0.5 (0.4, 0.4, 0.4, 0.1), grayscale 0.2, and no blur, which
SimCLR drops on 32 px images. BYOL's asymmetric views (Grill et al.,
arXiv:2006.07733, app. B) are ``blur_p: [1.0, 0.1]``, ``solarize_p: [0.0,
0.2]``, ``saturation: 0.2`` and otherwise these defaults; SwAV's
multi-crop (Caron et al., arXiv:2006.09882) adds ``n_local`` small views.
"""

from typing import Literal

import attrs
from attrs import validators as v

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PER_VIEW", "ViewsOptions"]

#: ImageNet channel statistics, the usual normalisation of SimCLR/BYOL code.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Options that take one probability per view.
PER_VIEW = ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p")


def _fail(attribute: attrs.Attribute, message: str, value: object) -> None:
    # The (message, attribute, bound, value) shape of attrs' own errors lets jef's
    # config layer point at the offending key.
    raise ValueError(f"'{attribute.name}' must be {message}", attribute, None, value)


def _probability(_: object, attribute: attrs.Attribute, value: float | list[float]) -> None:
    values = value if isinstance(value, list) else [value]
    if not values:
        _fail(attribute, "a probability or a non-empty list of probabilities (one per view)", value)
    for p in values:
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            _fail(attribute, f"a probability in [0, 1] or a list of them, got {p!r}", value)


def _range(low_min: float, high_max: float | None = None, *, open_low: bool = True):  # noqa: ANN202
    def check(_: object, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
        if len(value) != 2:
            _fail(attribute, "a pair (low, high)", value)
        low, high = value
        if not low <= high or (low <= low_min if open_low else low < low_min) or \
                (high_max is not None and high > high_max):
            bound = f"{'>' if open_low else '>='} {low_min}" + (f" and high <= {high_max}" if high_max else "")
            _fail(attribute, f"a pair (low, high) with low <= high, low {bound}, got {list(value)}", value)
    return check


def _stats(_: object, attribute: attrs.Attribute, value: list[float] | None) -> None:
    if value is None:
        return
    if len(value) not in (1, 3):
        _fail(attribute, f"a list of 1 or 3 values (one per channel), got {len(value)}", value)
    if attribute.name == "std" and any(s <= 0 for s in value):
        _fail(attribute, "positive", value)


def _field(default: object, doc: str, validator: object = None) -> object:
    return attrs.field(default=default, validator=validator, metadata={"doc": doc})


@attrs.frozen(kw_only=True)
class ViewsOptions:
    """Options of the ``views`` augmenter (SimCLR defaults; see the module docstring).

    Per-view probabilities (``flip_p``, ``jitter_p``, ``grayscale_p``,
    ``blur_p``, ``solarize_p``) are a number for every view, or a list with one
    value per global view, in which case the local views take the **last**
    value; a list of ``n_global + 1`` values gives the global views theirs and
    every local view the last (DINO's blur: ``[1.0, 0.1, 0.5]``); a list of
    ``n_global + n_local`` values sets every view.
    """

    n_global: int = _field(2, "global views (size `size`); they come first", v.ge(1))
    n_local: int = _field(0, "local multi-crop views (size `local_size`, SwAV)", v.ge(0))
    size: int | None = _field(None, "side of the global views, in pixels; null: the data's image size",
                              v.optional(v.ge(1)))
    local_size: int | None = _field(None, "side of the local views; null: round(size * 96 / 224) as in SwAV",
                                    v.optional(v.ge(1)))
    scale: tuple[float, float] = _field((0.08, 1.0), "area range of global crops, as a fraction of the image",
                                        _range(0.0, 1.0))
    local_scale: tuple[float, float] = _field((0.05, 0.4), "area range of local crops (DINO's (0.05, 0.4))",
                                              _range(0.0, 1.0))
    ratio: tuple[float, float] = _field((3 / 4, 4 / 3), "aspect-ratio (width / height) range of crops",
                                        _range(0.0))
    flip_p: float | list[float] = _field(0.5, "horizontal flip probability (number or one per view)", _probability)
    jitter_p: float | list[float] = _field(0.8, "colour-jitter probability (number or one per view)", _probability)
    brightness: float = _field(0.4, "brightness jitter: factor in [max(0, 1 - b), 1 + b]", v.ge(0.0))
    contrast: float = _field(0.4, "contrast jitter: factor in [max(0, 1 - c), 1 + c]", v.ge(0.0))
    saturation: float = _field(0.4, "saturation jitter (RGB only): factor in [max(0, 1 - s), 1 + s]", v.ge(0.0))
    hue: float = _field(0.1, "hue jitter (RGB only): shift in [-h, h] turns", [v.ge(0.0), v.le(0.5)])
    jitter_random_order: bool = _field(True, "apply the four jitter operations in a random order per sample")
    grayscale_p: float | list[float] = _field(0.2, "grayscale probability, RGB only (number or one per view)",
                                              _probability)
    blur_p: float | list[float] = _field(0.0, "Gaussian blur probability (number or one per view)", _probability)
    blur_sigma: tuple[float, float] = _field((0.1, 2.0), "blur standard deviation range, in pixels", _range(0.0))
    blur_kernel: float = _field(0.1, "blur kernel side as a fraction of the view side (odd, >= 3)",
                                [v.gt(0.0), v.le(1.0)])
    solarize_p: float | list[float] = _field(0.0, "solarisation probability (number or one per view)",
                                             _probability)
    solarize_threshold: float = _field(0.5, "solarisation inverts pixels >= this value", [v.ge(0.0), v.le(1.0)])
    normalize: bool = _field(True, "normalise views by mean and std")
    cpu_backend: Literal["auto", "numba", "torch"] = _field(
        "auto", "CPU implementation: numba (fused kernels, `pip install 'jef[numba]'`), torch (eager ops), "
        "auto (numba when installed); same views either way", v.in_(("auto", "numba", "torch")))
    mean: list[float] | None = _field(None, "channel means (1 or 3 values); null: ImageNet's, averaged for 1 channel",
                                      _stats)
    std: list[float] | None = _field(None, "channel stds (1 or 3 values); null: ImageNet's, averaged for 1 channel",
                                     _stats)

    def __attrs_post_init__(self) -> None:
        n_views = self.n_global + self.n_local
        for name in PER_VIEW:
            value = getattr(self, name)
            lengths = {self.n_global, n_views} | ({self.n_global + 1} if self.n_local else set())
            if isinstance(value, list) and len(value) not in lengths:
                allowed = f"{self.n_global} values (one per global view)" + \
                    (f", {self.n_global + 1} (the global views', then one for every local view) or {n_views} "
                     f"(one per view)" if self.n_local else "")
                raise ValueError(f"'{name}' must be a number or a list of {allowed}, "
                                 f"got {len(value)} values {value!r}", attrs.fields_dict(ViewsOptions)[name],
                                 None, value)
        if (self.mean is None) != (self.std is None):
            raise ValueError("'mean' and 'std' must be given together (or both null for the defaults)",
                             attrs.fields_dict(ViewsOptions)["mean" if self.mean is None else "std"], None,
                             self.mean)

    @property
    def resolved_local_size(self) -> int:
        """``local_size``, or SwAV's 96/224 of ``size`` when null."""
        return self.local_size if self.local_size is not None else max(1, round(self.size * 96 / 224))

    def per_view(self, name: str) -> list[float]:
        """The probability option ``name`` as one float per view (globals then locals)."""
        value = getattr(self, name)
        if not isinstance(value, list):
            return [float(value)] * (self.n_global + self.n_local)
        if len(value) == self.n_global:
            value = list(value) + [value[-1]] * self.n_local
        elif len(value) == self.n_global + 1:  # one value shared by every local view
            value = list(value[:-1]) + [value[-1]] * self.n_local
        return [float(p) for p in value]

    def channel_stats(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) for ``channels``-channel images, each of length 1 or ``channels``.

        Raises:
            ValueError: If 3 statistics are given for single-channel images.
        """
        if self.mean is None or self.std is None:
            if channels == 3:
                return IMAGENET_MEAN, IMAGENET_STD
            return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
        for name, stats in (("mean", self.mean), ("std", self.std)):
            if len(stats) not in (1, channels):
                raise ValueError(f"views augmenter: '{name}' has {len(stats)} values but the images have "
                                 f"{channels} channel(s); give 1 or {channels}")
        return tuple(self.mean), tuple(self.std)
