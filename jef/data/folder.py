"""``image_folder``: a directory of images, labelled by subdirectory or unlabelled.

Unlabelled data is the normal case for self-supervised learning, so a flat
folder of images is a first-class dataset here (labels ``-1``). Images are
decoded lazily with PIL, converted to greyscale or RGB, and resized
(shorter side) and centre-cropped to a square of ``image_size``.
"""

import os
import warnings
from pathlib import Path

import attrs
import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from jef.components import DataSplits, RunContext
from jef.data.base import IMAGE_EXTENSIONS, make_splits, pil_to_uint8


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _images_under(directory: Path) -> list[Path]:
    """Image files anywhere under ``directory``, sorted so that runs agree."""
    found = []
    for parent, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # skip .git, .ipynb_checkpoints, ...
        found += [Path(parent, f) for f in files if _is_image(Path(parent, f))]
    return sorted(found)


def scan_folder(root: Path, labels: str) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """List a folder's images and, when labelled, their classes.

    Args:
        root: The folder.
        labels: ``"folders"`` (each subdirectory is a class), ``"none"``
            (every image under ``root``, unlabelled) or ``"auto"`` (folders when
            some subdirectory holds images, else none).

    Returns:
        ``(paths, labels, class_names)``; the last two are None when unlabelled.

    Raises:
        FileNotFoundError: ``root`` is not a directory, or holds no images.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"image_folder: {root} is not a directory")
    exts = " ".join(IMAGE_EXTENSIONS)
    if labels == "none":
        paths = _images_under(root)
        if not paths:
            raise FileNotFoundError(f"image_folder: no images found under {root} (looked for {exts})")
        return paths, None, None
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = {d.name: _images_under(d) for d in subdirs}
    per_class = {name: files for name, files in per_class.items() if files}
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    if not per_class:
        if labels == "folders":
            raise FileNotFoundError(
                f"image_folder: labels: folders needs one subdirectory of images per class in {root}, "
                f"found none with images ({exts}); use labels: none for a flat folder")
        if not loose:
            raise FileNotFoundError(f"image_folder: no images found in {root} or its subdirectories "
                                    f"(looked for {exts})")
        return loose, None, None
    if loose:
        warnings.warn(f"image_folder: {len(loose)} images directly in {root} are ignored because its "
                      "subdirectories are used as classes; set labels: none to use every image unlabelled",
                      stacklevel=3)
    classes = sorted(per_class)
    paths, targets = [], []
    for index, name in enumerate(classes):
        paths += per_class[name]
        targets += [index] * len(per_class[name])
    return paths, targets, classes


class FolderImages(Dataset):
    """Image files decoded on access into uint8 ``[channels, size, size]``.

    Paths are kept in a NumPy string array rather than a list: DataLoader
    workers then share one buffer instead of touching (and copying) millions
    of Python objects' reference counts.

    Args:
        paths: Image files.
        labels: Label per file, or None (unlabelled, label ``-1``).
        channels: 1 or 3.
        image_size: Output side.
        classes: Class names, indexed by label.
    """

    def __init__(self, paths: list[Path], labels: list[int] | np.ndarray | None, channels: int, image_size: int,
                 classes: list[str] | None = None):
        self.paths = np.array([str(p) for p in paths])
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.channels, self.image_size, self.classes = channels, image_size, classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        from PIL import Image, UnidentifiedImageError

        path = str(self.paths[index])
        try:
            with Image.open(path) as img:
                image = pil_to_uint8(img, self.channels, self.image_size)
        except (OSError, UnidentifiedImageError) as err:
            raise OSError(f"image_folder: cannot read image {path}: {err}; delete or replace the file") from err
        label = int(self.labels[index]) if self.labels is not None else -1
        return image, label, int(index)


def split_fraction(labels: np.ndarray | None, n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split of ``n`` items, stratified by label when labelled.

    Returns:
        ``(train_positions, test_positions)``, each sorted.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    test = [rng.permutation(g)[: int(round(fraction * len(g)))] for g in groups]
    test_idx = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(n), test_idx), test_idx


@attrs.frozen(kw_only=True)
class FolderOptions:
    """Options of the ``image_folder`` dataset."""

    root: str = attrs.field(metadata={"doc": "folder of images (subfolders = classes, or flat = unlabelled)"})
    labels: str = attrs.field(default="auto", validator=attrs.validators.in_(["auto", "folders", "none"]),
                              metadata={"doc": "auto | folders (subdirectory = class) | none (unlabelled)"})
    image_size: int = attrs.field(default=64, validator=attrs.validators.ge(8),
                                  metadata={"doc": "resize the shorter side to this, then centre-crop a square"})
    channels: int = attrs.field(default=3, validator=attrs.validators.in_([1, 3]),
                                metadata={"doc": "1 (greyscale) or 3 (RGB)"})
    test_root: str | None = attrs.field(default=None, metadata={"doc": "separate folder of test images"})
    test_fraction: float = attrs.field(
        default=0.0, validator=[attrs.validators.ge(0.0), attrs.validators.lt(1.0)],
        metadata={"doc": "hold out this fraction of root as the test split (seeded, stratified)"})
    seed: int = attrs.field(default=0, metadata={"doc": "seed of the test_fraction split"})
    subset_train: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)),
                                           metadata={"doc": "keep only the first N training images"})
    subset_test: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)),
                                          metadata={"doc": "keep only the first N test images"})


def build_image_folder(options: FolderOptions, ctx: RunContext) -> DataSplits:
    """Build the ``image_folder`` dataset."""
    if options.test_root and options.test_fraction > 0:
        raise ValueError("image_folder: set test_root or test_fraction, not both")
    root = Path(options.root).expanduser()
    paths, targets, classes = scan_folder(root, options.labels)
    labels = None if targets is None else np.asarray(targets, dtype=np.int64)
    size, channels = options.image_size, options.channels
    test = None
    if options.test_root:
        test_dir = Path(options.test_root).expanduser()
        test_paths, test_targets, test_classes = scan_folder(test_dir, "none" if classes is None else "folders")
        test_labels = None
        if classes is not None:
            unknown = sorted(set(test_classes or []) - set(classes))
            if unknown:
                raise ValueError(f"image_folder: test classes {unknown} in {test_dir} are not among the "
                                 f"training classes of {root}: {classes}")
            test_labels = [classes.index(test_classes[t]) for t in test_targets]  # type: ignore[index]
        test = FolderImages(test_paths, test_labels, channels, size, classes)
    elif options.test_fraction > 0:
        train_pos, test_pos = split_fraction(labels, len(paths), options.test_fraction, options.seed)
        if len(train_pos) == 0:
            raise ValueError(f"image_folder: test_fraction {options.test_fraction} leaves no training images "
                             f"of the {len(paths)} in {root}; lower it")
        test = FolderImages([paths[i] for i in test_pos], None if labels is None else labels[test_pos],
                            channels, size, classes)
        paths = [paths[i] for i in train_pos]
        labels = None if labels is None else labels[train_pos]
    train = FolderImages(paths, labels, channels, size, classes)
    return make_splits(train, test, num_classes=None if classes is None else len(classes), channels=channels,
                       image_size=size, name=f"image_folder:{root.name}",
                       subset_train=options.subset_train, subset_test=options.subset_test)
