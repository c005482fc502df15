"""Batched, per-sample random image augmentation on the training device.

* :mod:`jef.augment.ops` -- pure tensor operations (crop resample, colour,
  blur, solarisation, normalisation), one vectorised kernel each.
* :mod:`jef.augment.params` -- random parameters drawn on the CPU from a generator.
* :mod:`jef.augment.options` -- :class:`ViewsOptions`, the recipe.
* :mod:`jef.augment.views` -- :class:`ViewsAugmenter`, the ``views`` augmenter.
"""

from jef.augment.options import ViewsOptions
from jef.augment.views import ViewsAugmenter, build_views

__all__ = ["ViewsAugmenter", "ViewsOptions", "build_views"]
