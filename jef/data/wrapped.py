"""Any map-style ``Dataset`` as jef's data: what ``jef.run(pipeline, dataset=...)`` trains on.

jef's datasets yield ``(uint8 [C, H, W] image, label, index)`` (:class:`jef.components.DataSplits`); a user's
dataset more often yields ``(image, label)`` with a float tensor in ``[0, 1]`` (torchvision's ``ToTensor``) or a
PIL image. :class:`AdaptedDataset` converts each sample as it is read, so nothing is copied up front.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from jef.components import DataSplits

__all__ = ["AdaptedDataset", "as_image", "splits_from_datasets"]


def as_image(image: Any, where: str) -> Tensor:
    """A sample's image as a uint8 ``[C, H, W]`` tensor.

    Accepts a uint8 tensor, a float tensor in ``[0, 1]`` (scaled by 255 and rounded), a ``[H, W]`` tensor (one
    channel) or a PIL image.

    Raises:
        TypeError: Anything else, naming ``where`` (the dataset and sample).
        ValueError: A float image outside ``[0, 1]`` or an image that is not square.
    """
    if not isinstance(image, Tensor):
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover -- torchvision depends on Pillow
            Image = None  # noqa: N806
        if Image is None or not isinstance(image, Image.Image):
            raise TypeError(f"{where}: expected the image as a tensor or a PIL image, got {type(image).__name__}")
        from torchvision.transforms.functional import pil_to_tensor

        image = pil_to_tensor(image)
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3:
        raise ValueError(f"{where}: expected an image [C, H, W] (or [H, W]), got shape {tuple(image.shape)}")
    if image.is_floating_point():
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 1:
            raise ValueError(f"{where}: a float image must lie in [0, 1] (torchvision's ToTensor), got values in "
                             f"[{low:.3g}, {high:.3g}]; drop the Normalize transform: jef's augmenter normalises")
        image = (image * 255).round().to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise ValueError(f"{where}: expected a uint8 or float image, got {image.dtype}")
    if image.shape[1] != image.shape[2]:
        raise ValueError(f"{where}: jef trains on square images, got {image.shape[1]}x{image.shape[2]}; resize or "
                         f"crop them square in the dataset (e.g. torchvision's CenterCrop)")
    return image


class AdaptedDataset(Dataset):
    """A map-style dataset whose samples are converted to jef's ``(uint8 image, label, index)``.

    Samples may be ``(image, label)``, ``(image, label, anything)``, a bare image (unlabelled: label -1) or a
    mapping with ``image`` and ``label``. Labels may be ints or 0-d tensors; None means unlabelled.

    Args:
        dataset: The user's dataset (``__len__`` and ``__getitem__``).
        name: How it is named in errors (``dataset``, ``test_dataset``).
    """

    def __init__(self, dataset: Any, name: str) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"jef.run({name}=...): expected a map-style dataset (with __len__ and __getitem__), got "
                            f"{type(dataset).__name__}")
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        sample, where = self.dataset[index], f"jef.run({self.name}=...), sample {index}"
        if isinstance(sample, Mapping):
            image, label = sample.get("image"), sample.get("label")
        elif isinstance(sample, tuple | list):
            if len(sample) < 2:
                raise TypeError(f"{where}: expected (image, label), got a {type(sample).__name__} of {len(sample)}")
            image, label = sample[0], sample[1]
        else:
            image, label = sample, None
        label = -1 if label is None else int(label)
        return as_image(image, where), label, index


def splits_from_datasets(train: Any, test: Any = None, *, num_classes: int | None = None,
                         name: str = "python datasets") -> DataSplits:
    """:class:`~jef.components.DataSplits` over a training dataset and an optional test dataset.

    The channels and image size are read from the first training sample. The classes are ``num_classes``, else
    the length of the dataset's ``classes`` attribute (torchvision's datasets have one), else one more than the
    largest label of the test split (or the training split when there is no test split), read once.

    Raises:
        TypeError, ValueError: A sample jef cannot read (see :func:`as_image`), or an empty training dataset.
    """
    adapted = AdaptedDataset(train, "dataset")
    if len(adapted) == 0:
        raise ValueError("jef.run(dataset=...): the training dataset is empty")
    first, _, _ = adapted[0]
    tested = AdaptedDataset(test, "test_dataset") if test is not None else None
    if num_classes is None and getattr(train, "classes", None) is not None:
        num_classes = len(train.classes)
    if num_classes is None:
        scanned = tested if tested is not None else adapted
        labels = [scanned[i][1] for i in range(len(scanned))]
        num_classes = max(labels) + 1 if max(labels, default=-1) >= 0 else None
    return DataSplits(train=adapted, test=tested, num_classes=num_classes, channels=first.shape[0],
                      image_size=first.shape[1], name=name)
