"""``torchvision``: any ``torchvision.datasets`` class, by name, as uint8 tensors.

Items are converted lazily (PIL image -> uint8 ``[C, H, W]``), so large sets
are not decoded up front. Classes choose their split either with a boolean
``train=`` (MNIST, CIFAR10, FashionMNIST) or a string ``split=`` (STL10,
SVHN); both are driven by ``train_split`` / ``test_split``.

References:
    TorchVision maintainers and contributors. *TorchVision: PyTorch's Computer
    Vision library*, 2016. https://github.com/pytorch/vision
"""

import difflib
import inspect
import pickle
import struct
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from jef.components import DataSplits, RunContext
from jef.data.base import decode_errors, make_splits, pil_to_uint8
from jef.data.image_check import ImageDecodeError


def dataset_classes() -> dict[str, type]:
    """torchvision's dataset classes by name (abstract bases excluded)."""
    import torchvision.datasets as tvd
    from torchvision.datasets import VisionDataset

    out = {}
    for name in dir(tvd):
        obj = getattr(tvd, name)
        if isinstance(obj, type) and issubclass(obj, VisionDataset) and obj is not VisionDataset:
            out[name] = obj
    return out


def resolve_class(name: str, available: dict[str, type] | None = None) -> type:
    """Find a torchvision dataset class by name, case-insensitively when unambiguous.

    Raises:
        ValueError: Unknown name; the message lists the closest names.
    """
    available = dataset_classes() if available is None else available
    if name in available:
        return available[name]
    folded = [n for n in available if n.lower() == name.lower()]
    if len(folded) == 1:
        return available[folded[0]]
    lower = {n.lower(): n for n in available}
    close = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=5, cutoff=0.5)]
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(available))}"
    raise ValueError(f"torchvision dataset: no class named {name!r} in torchvision.datasets; {hint}")


def split_kwargs(cls: type, split: str) -> dict[str, Any]:
    """Keyword arguments that select ``split`` for ``cls``: ``train=bool``, ``split=str`` or nothing.

    Raises:
        ValueError: A ``train=`` class asked for a split other than train/test.
    """
    params = inspect.signature(cls.__init__).parameters
    if "split" in params:
        return {"split": split}
    if "train" in params:
        if split not in ("train", "test"):
            raise ValueError(f"torchvision dataset {cls.__name__}: takes train=True/False, so the split must be "
                             f"'train' or 'test', not {split!r}")
        return {"train": split == "train"}
    return {}


def _channels_of(img: Any) -> int:
    if isinstance(img, Tensor):
        return int(img.shape[0]) if img.ndim == 3 else 1
    return 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3


def _to_uint8(img: Any, channels: int, image_size: int | None) -> Tensor:
    if isinstance(img, Tensor):  # a few datasets hand out tensors already
        from PIL import Image

        array = img.numpy() if img.ndim == 2 else img.permute(1, 2, 0).squeeze(-1).numpy()
        img = Image.fromarray(array.astype(np.uint8))
    return pil_to_uint8(img, channels, image_size)


class TorchvisionImages(Dataset):
    """A torchvision dataset yielding ``(uint8 [C, S, S], label, index)``.

    Args:
        dataset: The torchvision dataset (built without transforms).
        channels: 1 or 3.
        image_size: Side to resize and centre-crop to, or None to keep.
        name: For error messages.
    """

    def __init__(self, dataset: Dataset, channels: int, image_size: int | None, name: str):
        self.dataset, self.channels, self.image_size, self.name = dataset, channels, image_size, name
        self.classes = list(getattr(dataset, "classes", None) or []) or None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        try:  # sets stored as image files (Flowers102, Caltech101, ...) decode them here
            img, target = self.dataset[index][:2]
        except decode_errors() as err:
            raise ImageDecodeError(
                f"torchvision dataset {self.name}: item {index} cannot be read: {type(err).__name__}: {err}; if a "
                "file under the data root is damaged, delete it and download again, or use the image_folder "
                "dataset, which can skip unreadable images") from err
        if target is None:
            label = -1
        else:
            try:
                label = int(target)
            except (TypeError, ValueError) as err:
                raise TypeError(f"torchvision dataset {self.name}: target {target!r} is not a class index; "
                                "jef supports classification-style datasets") from err
        return _to_uint8(img, self.channels, self.image_size), label, int(index)


def _num_classes(dataset: Dataset) -> int | None:
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and len(values):
            return int(torch.as_tensor(np.asarray(values)).max()) + 1
    return None


@attrs.frozen(kw_only=True)
class TorchvisionOptions:
    """Options of the ``torchvision`` dataset."""

    name_tv: str = attrs.field(default="CIFAR10", metadata={"doc": "torchvision.datasets class name"})
    root: str = attrs.field(default="~/.cache/jef/torchvision", metadata={"doc": "torchvision data root"})
    download: bool = attrs.field(default=False, metadata={"doc": "let torchvision download missing data"})
    train_split: str = attrs.field(default="train", metadata={"doc": "split trained on (e.g. train+unlabeled)"})
    test_split: str | None = attrs.field(default="test", metadata={"doc": "evaluation split; none: no test split"})
    channels: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.in_([1, 3])),
                                       metadata={"doc": "1 or 3; default: as the images are"})
    image_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(8)),
                                         metadata={"doc": "resize + centre-crop to this; default: keep"})
    subset_train: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)),
                                           metadata={"doc": "keep only the first N training images"})
    subset_test: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)),
                                          metadata={"doc": "keep only the first N test images"})


def _instantiate(cls: type, root: str, split: str, download: bool) -> Dataset:
    kwargs = split_kwargs(cls, split)
    if "download" in inspect.signature(cls.__init__).parameters:
        kwargs["download"] = download
    try:
        return cls(root, **kwargs)
    # RuntimeError: torchvision's "Dataset not found or corrupted" and tensors of the wrong size; the others come
    # from truncated or damaged files (pickled CIFAR batches, IDX headers, binary STL10 arrays).
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError, struct.error) as err:
        missing = "set download: true to fetch them" if not download else "check the network and the root directory"
        raise RuntimeError(f"torchvision dataset {cls.__name__}: cannot load split {split!r} from {root}: "
                           f"{type(err).__name__}: {err} (missing files: {missing}; damaged or incomplete ones: "
                           "delete them and download again; or set root to where the data is)") from err


def build_torchvision(options: TorchvisionOptions, ctx: RunContext) -> DataSplits:
    """Build the ``torchvision`` dataset."""
    cls = resolve_class(options.name_tv)
    root = str(Path(options.root).expanduser())
    train_ds = _instantiate(cls, root, options.train_split, options.download)
    test_ds = None
    if options.test_split and split_kwargs(cls, options.test_split):
        test_ds = _instantiate(cls, root, options.test_split, options.download)
    if len(train_ds) == 0:  # type: ignore[arg-type]
        raise ValueError(f"torchvision dataset {cls.__name__}: split {options.train_split!r} in {root} is empty")
    first = train_ds[0][0]
    channels = options.channels or _channels_of(first)
    size = options.image_size
    if size is None:
        height, width = (first.shape[-2:] if isinstance(first, Tensor) else first.size[::-1])
        if height != width:
            raise ValueError(f"torchvision dataset {cls.__name__}: images are {height}x{width}; "
                             "set image_size to resize and centre-crop them to a square")
        size = int(height)
    train = TorchvisionImages(train_ds, channels, size, cls.__name__)
    test = TorchvisionImages(test_ds, channels, size, cls.__name__) if test_ds is not None else None
    return make_splits(train, test, num_classes=_num_classes(train_ds), channels=channels, image_size=size,
                       name=f"torchvision:{cls.__name__}", subset_train=options.subset_train,
                       subset_test=options.subset_test)
