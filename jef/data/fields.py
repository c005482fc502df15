"""Samples with named fields: one view of a batch whatever its dataset yields.

Image-only datasets yield ``(image, label, index)`` tuples, which stay the common case; a dataset with more
(a caption) yields a mapping ``{"image": ..., "text": ..., "label": ..., "index": ...}``. Code that reads a
batch goes through :func:`as_fields`, so both kinds reach it the same way, and counts images with
:func:`batch_size`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["CORE_FIELDS", "as_fields", "batch_size", "extra_fields"]

#: The fields every sample has, in the order of the image-only tuple.
CORE_FIELDS = ("image", "label", "index")


def as_fields(batch: Any) -> dict[str, Any]:
    """The batch (or sample) as a mapping of its named fields.

    Args:
        batch: A ``(image, label, index)`` tuple or list, or a mapping with at least ``image``.

    Raises:
        TypeError: Neither form; the message says what was found.
    """
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise TypeError(f"a sample mapping needs an 'image' field; it has {sorted(map(str, batch))}")
        fields = dict(batch)
        fields.setdefault("label", None)
        fields.setdefault("index", None)
        return fields
    if isinstance(batch, tuple | list) and len(batch) == len(CORE_FIELDS):
        return dict(zip(CORE_FIELDS, batch, strict=True))
    kind = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, tuple | list) else type(batch).__name__
    raise TypeError(f"expected a sample (image, label, index) or a mapping of named fields, got {kind}")


def extra_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields beyond image, label and index (``text``, ...)."""
    return {name: value for name, value in fields.items() if name not in CORE_FIELDS}


def batch_size(batch: Any) -> int:
    """The number of samples in a batch, read from its images."""
    images = as_fields(batch)["image"]
    return images.shape[0] if isinstance(images, Tensor) else len(images)
