"""Fashion-MNIST: the bundled ``fashion_mnist_mini`` subset and the full ``fashion_mnist`` set.

Fashion-MNIST is 70,000 28x28 greyscale images of Zalando articles in 10
classes, a drop-in replacement for MNIST that is harder to solve.

References:
    H. Xiao, K. Rasul, R. Vollgraf. *Fashion-MNIST: a Novel Image Dataset for
    Benchmarking Machine Learning Algorithms*. arXiv:1708.07747, 2017.
"""

from pathlib import Path

import attrs
import numpy as np

from jef.components import DataSplits, RunContext
from jef.data.base import InMemoryImages, make_splits
from jef.data.bundled import DEBIAN_DIR, load_bundle
from jef.data.idx import labels_from_idx, read_idx

#: Class names, indexed by label (from the Fashion-MNIST README).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
PAPER = "Xiao, Rasul & Vollgraf, Fashion-MNIST, arXiv:1708.07747 (2017)"
_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_HOW_TO_GET = ("get it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs to "
               f"{DEBIAN_DIR}) or `torchvision.datasets.FashionMNIST(ROOT, download=True)` "
               "(then set root: ROOT)")


def _file_in(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def candidate_dirs(root: str | Path | None) -> list[Path]:
    """Directories searched for the IDX files, in order.

    ``root`` itself, torchvision's layout ``root/FashionMNIST/raw``, then the
    Debian package's location.
    """
    dirs = []
    if root is not None:
        root = Path(root).expanduser()
        dirs += [root, root / "FashionMNIST" / "raw"]
    dirs.append(DEBIAN_DIR)
    return dirs


def find_fashion_files(root: str | Path | None = None) -> dict[str, Path]:
    """Locate the four Fashion-MNIST IDX files (gzip or raw).

    Returns:
        ``{"train_images", "train_labels", "test_images", "test_labels"}`` -> path,
        all from the first directory that has every file.

    Raises:
        FileNotFoundError: No searched directory has all four; the message
            lists the directories and how to get the data.
    """
    searched = candidate_dirs(root)
    for directory in searched:
        found = {}
        for split, (images, labels) in _STEMS.items():
            found[f"{split}_images"] = _file_in(directory, images)
            found[f"{split}_labels"] = _file_in(directory, labels)
        if all(found.values()):
            return found  # type: ignore[return-value]
    looked = ", ".join(str(d) for d in searched)
    raise FileNotFoundError(
        f"fashion_mnist: the IDX files ({', '.join(s + '[.gz]' for pair in _STEMS.values() for s in pair)}) "
        f"were not found; looked in: {looked}. {_HOW_TO_GET}. "
        "The bundled 12k-image subset `fashion_mnist_mini` needs no download.")


def load_fashion_split(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split as ``(images uint8 [N, 28, 28], labels int64 [N])``."""
    x = read_idx(files[f"{split}_images"])
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"fashion_mnist: {files[f'{split}_images']} holds {x.dtype} {x.shape}, "
                         "expected uint8 [N, 28, 28]")
    y = labels_from_idx(read_idx(files[f"{split}_labels"]), len(x), str(files[f"{split}_labels"]))
    return x, y


_subset = attrs.validators.optional(attrs.validators.ge(1))


@attrs.frozen(kw_only=True)
class FashionMiniOptions:
    """Options of ``fashion_mnist_mini``."""

    subset_train: int | None = attrs.field(default=None, validator=_subset,
                                           metadata={"doc": "keep only the first N of the 10,000 training images"})
    subset_test: int | None = attrs.field(default=None, validator=_subset,
                                          metadata={"doc": "keep only the first N of the 2,000 test images"})


@attrs.frozen(kw_only=True)
class FashionOptions:
    """Options of ``fashion_mnist``."""

    root: str | None = attrs.field(
        default=None, metadata={"doc": "directory of the IDX files (or torchvision root); default: Debian location"})
    subset_train: int | None = attrs.field(default=None, validator=_subset,
                                           metadata={"doc": "keep only the first N training images"})
    subset_test: int | None = attrs.field(default=None, validator=_subset,
                                          metadata={"doc": "keep only the first N test images"})


def build_fashion_mnist_mini(options: FashionMiniOptions, ctx: RunContext) -> DataSplits:
    """Build the bundled stratified subset (10 x 1,000 train, 10 x 200 test).

    Prefixes are class-balanced, so ``subset_train: 1000`` keeps 100 per class.
    """
    arrays = load_bundle()
    train = InMemoryImages(arrays["x_train"], arrays["y_train"], FASHION_MNIST_CLASSES)
    test = InMemoryImages(arrays["x_test"], arrays["y_test"], FASHION_MNIST_CLASSES)
    return make_splits(train, test, num_classes=10, channels=1, image_size=28, name="fashion_mnist_mini",
                       subset_train=options.subset_train, subset_test=options.subset_test)


def build_fashion_mnist(options: FashionOptions, ctx: RunContext) -> DataSplits:
    """Build the full Fashion-MNIST (60,000 train, 10,000 test) from local IDX files."""
    files = find_fashion_files(options.root)
    splits = {}
    for split in ("train", "test"):
        x, y = load_fashion_split(files, split)
        splits[split] = InMemoryImages(x, y, FASHION_MNIST_CLASSES)
    return make_splits(splits["train"], splits["test"], num_classes=10, channels=1, image_size=28,
                       name="fashion_mnist", subset_train=options.subset_train, subset_test=options.subset_test)
