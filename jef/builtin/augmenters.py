"""Built-in augmenters: ``views``, batched SimCLR/BYOL/multi-crop views (see :mod:`jef.augment`)."""


from jef.augment import ViewsAugmenter, ViewsOptions, build_views
from jef.hookspecs import Register, hookimpl

__all__ = ["ViewsAugmenter", "ViewsOptions", "build_views", "jef_register_augmenters"]


@hookimpl
def jef_register_augmenters(register: Register) -> None:
    """Register the ``views`` augmenter."""
    register(
        "views", build_views, options=ViewsOptions,
        description="batched per-sample random views on the device: resized crop + flip, colour jitter, "
                    "grayscale, blur, solarisation, multi-crop, per-view probabilities",
        paper="[1] Chen et al., SimCLR, 2020, arXiv:2002.05709; [2] Grill et al., BYOL, 2020, "
              "arXiv:2006.07733; [3] Caron et al., SwAV multi-crop, 2020, arXiv:2006.09882",
    )
