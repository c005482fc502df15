"""Dataset building blocks shared by jef's dataset factories.

Every split yields ``(image, label, index)`` with ``image`` a uint8 tensor
``[C, H, W]``: augmentation happens later, batched on the device, so loading
only decodes. Data held in memory is one uint8 tensor ``[N, C, H, W]`` that
items index into, which is fast and pickles cheaply to DataLoader workers.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from jef.components import DataSplits

#: Extensions PIL can decode that image folders are searched for (lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class InMemoryImages(Dataset):
    """Images held as one uint8 tensor, with optional integer labels.

    Args:
        images: uint8 array or tensor ``[N, C, H, W]`` (``[N, H, W]`` is read
            as single-channel).
        labels: Integer labels ``[N]``, or None when unlabelled (items then
            carry label ``-1``).
        classes: Class names, indexed by label, or None.
    """

    def __init__(self, images: Any, labels: Any | None = None, classes: Sequence[str] | None = None):
        if not isinstance(images, Tensor):
            images = np.asarray(images)
            # Arrays parsed straight from file bytes are read-only; torch needs its own writable copy.
            images = torch.from_numpy(images if images.flags.writeable else images.copy())
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"InMemoryImages needs uint8 images [N, C, H, W]; "
                             f"got {images.dtype} {tuple(images.shape)}")
        self.images = images.contiguous()
        self.labels: Tensor | None = None
        if labels is not None:
            self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
            if len(self.labels) != len(self.images):
                raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        label = int(self.labels[index]) if self.labels is not None else -1
        return self.images[index], label, int(index)

    def head(self, n: int | None) -> InMemoryImages:
        """The first ``n`` items (all when ``n`` is None), as a compact copy.

        Cloning matters: a slice view would pickle the whole parent storage
        to every DataLoader worker.
        """
        if n is None or n >= len(self):
            return self
        labels = self.labels[:n].clone() if self.labels is not None else None
        return InMemoryImages(self.images[:n].clone(), labels, self.classes)


def head(dataset: Dataset, n: int | None) -> Dataset:
    """The first ``n`` items of any split; indices stay valid because they start at 0."""
    if n is None:
        return dataset
    if callable(getattr(dataset, "head", None)):  # its own compact copy (InMemoryImages, image-text splits)
        return dataset.head(n)
    if n >= len(dataset):  # type: ignore[arg-type]
        return dataset
    subset = Subset(dataset, range(n))
    subset.classes = getattr(dataset, "classes", None)  # type: ignore[attr-defined]
    return subset


def make_splits(train: Dataset, test: Dataset | None, *, num_classes: int | None, channels: int,
                image_size: int, name: str, subset_train: int | None = None,
                subset_test: int | None = None) -> DataSplits:
    """Wrap splits into :class:`~jef.components.DataSplits`, keeping the first ``subset_*`` items."""
    train = head(train, subset_train)
    test = head(test, subset_test) if test is not None else None
    return DataSplits(train=train, test=test, num_classes=num_classes, channels=channels,
                      image_size=image_size, name=name)


def decode_errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for an image file it cannot read or decode.

    ``OSError`` covers missing permissions, truncated data and
    ``UnidentifiedImageError`` (not an image); fuzzing PNG, JPEG, GIF, TIFF,
    WebP, BMP and PPM files also gave ``SyntaxError`` (broken PNG chunks),
    ``ValueError`` (malformed PPM headers) and ``DecompressionBombError`` (a
    damaged header announcing a huge image; not an ``OSError``). ``EOFError``
    and ``struct.error`` come from the readers of short headers.
    """
    from PIL import Image

    return OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError


class ImageModeError(ValueError):
    """A decoded image whose colour mode jef cannot convert to greyscale or RGB."""


#: Colour modes with an alpha channel (premultiplied ``La``/``RGBa`` included).
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _high_depth_to_8bit(img: Any) -> Any:
    """An ``L`` image from a 16-bit, 32-bit integer or float greyscale image.

    PIL's own ``convert("L")`` clips these values at 255, which turns almost
    every 16-bit image white; here they are scaled instead: ``I;16*`` images by
    ``1/257`` (65535 -> 255), ``I`` images the same way unless all values fit
    in 8 bits, and ``F`` images by 255 when their values lie in ``[0, 1]``
    (clipped to ``[0, 255]`` otherwise; NaN becomes 0).
    """
    from PIL import Image

    values = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
    else:
        values = values.astype(np.int64).clip(0, 65535)
        if img.mode.startswith("I;16") or (values.size and values.max() > 255):
            values = values / 257.0
    return Image.fromarray(np.round(values).clip(0, 255).astype(np.uint8), "L")


def pil_to_uint8(img: Any, channels: int, image_size: int | None) -> Tensor:
    """Convert a PIL image to a uint8 tensor ``[channels, S, S]``.

    Any colour mode becomes greyscale or RGB: transparent pixels (alpha
    channels, transparent palette entries) are composited onto black, 16-bit
    and float greyscale is scaled to 8 bits (see :func:`_high_depth_to_8bit`),
    CMYK, YCbCr, HSV and LAB are converted to RGB, and RGB images become
    greyscale with ITU-R 601-2 luma (PIL's ``L``).

    With ``image_size`` the shorter side is resized to it and the centre
    cropped (the usual evaluation resize); images smaller than that are
    upscaled (bicubic), so even a 1x1 or 1x500 image gives a full square.
    Without ``image_size`` only the colour mode is converted and the image
    keeps its size.

    Args:
        img: A ``PIL.Image.Image``.
        channels: 1 (greyscale, ``L``) or 3 (``RGB``).
        image_size: Side of the output, or None to keep the image's size.

    Raises:
        ImageModeError: A colour mode PIL cannot convert (named in the message).
    """
    from PIL import Image, ImageOps

    mode = "L" if channels == 1 else "RGB"
    source = img.mode
    try:
        if img.mode.startswith("I") or img.mode == "F":
            img = _high_depth_to_8bit(img)
        if img.mode == "LAB":  # PIL's convert() has no LAB -> RGB; littleCMS does
            from PIL import ImageCms

            lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                                  "LAB", "RGB")
            img = ImageCms.applyTransform(img, lab_to_srgb)
        if img.mode == "La":  # premultiplied alpha: PIL converts it to LA only
            img = img.convert("LA")
        if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
            # Transparent pixels become black whatever colour they hide, in both greyscale and RGB.
            img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img.convert("RGBA"))
        if img.mode != mode:
            img = img.convert(mode)
    except (ValueError, ImportError) as err:  # "conversion from X to Y not supported"; ImageCms missing
        raise ImageModeError(f"cannot convert a {source} image to {mode}: {err}") from err
    if image_size is not None and img.size != (image_size, image_size):
        img = ImageOps.fit(img, (image_size, image_size), method=Image.Resampling.BICUBIC)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
