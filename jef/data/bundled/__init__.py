"""The data set shipped inside jef: a stratified 12k-image subset of Fashion-MNIST.

``fashion_mnist_mini.npz`` holds 10,000 training and 2,000 test images
(1,000 and 200 per class) drawn with a fixed seed from the real Fashion-MNIST
files, so ``jef train`` works offline out of the box. This module rebuilds
that file from the original IDX files; ``python -m jef.data.bundled`` runs it.

The archive is an ordinary ``.npz`` (read with :func:`numpy.load`) whose
members are LZMA-compressed: about 15% smaller than ``np.savez_compressed``.

Fashion-MNIST is © Zalando SE, MIT licence (see ``LICENSE`` here).

References:
    H. Xiao, K. Rasul, R. Vollgraf. *Fashion-MNIST: a Novel Image Dataset for
    Benchmarking Machine Learning Algorithms*. arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

#: Where the bundled archive lives.
BUNDLED_PATH = Path(__file__).with_name("fashion_mnist_mini.npz")
#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Parameters of the shipped file.
SEED = 0
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200


def stratified_order(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``per_class`` random indices of every class, in an order whose prefixes are balanced.

    Item ``k`` belongs to round ``k // num_classes``; every round holds each
    class once, in random order. So the first ``n`` items of the result (what
    ``subset_train`` keeps) contain every class ``n / num_classes`` times,
    give or take one.

    Args:
        labels: Labels of the full split.
        per_class: Samples to draw from each class.
        rng: Source of randomness.

    Returns:
        Indices into ``labels``, ``per_class * num_classes`` of them.
    """
    classes = np.unique(labels)
    picks = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} samples, fewer than the {per_class} requested")
        picks.append(rng.choice(members, size=per_class, replace=False))
    rounds = np.stack(picks, axis=1)  # [per_class, num_classes]: row r = the r-th pick of each class
    rounds = rng.permuted(rounds, axis=1)
    return rounds.reshape(-1)


def build_bundle(source_dir: str | Path = DEBIAN_DIR, out: str | Path = BUNDLED_PATH, *, seed: int = SEED,
                 train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS) -> Path:
    """Write the bundled archive from the original Fashion-MNIST IDX files.

    Args:
        source_dir: Directory holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        out: Archive to write.
        seed: Seed of the stratified draw.
        train_per_class: Training images per class.
        test_per_class: Test images per class.

    Returns:
        The path written. Members: ``x_train`` uint8 ``[N, 28, 28]``, ``y_train``
        uint8 ``[N]``, ``x_test``, ``y_test``, and ``train_source_index`` /
        ``test_source_index`` (int32 positions in the original files).
    """
    from jef.data.fashion import find_fashion_files, load_fashion_split

    files = find_fashion_files(source_dir)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        x, y = load_fashion_split(files, split)
        order = stratified_order(y, per_class, rng)
        arrays[f"x_{split}"] = np.ascontiguousarray(x[order])
        arrays[f"y_{split}"] = y[order].astype(np.uint8)
        arrays[f"{split}_source_index"] = order.astype(np.int32)
    out = Path(out)
    # ZIP_LZMA members are read transparently by np.load (zipfile decodes them).
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_LZMA) as archive:
        for name, array in arrays.items():
            # A fixed timestamp keeps rebuilds byte-identical.
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA
            with archive.open(info, "w") as handle:
                np.lib.format.write_array(handle, array, allow_pickle=False)
    return out


def load_bundle(path: str | Path = BUNDLED_PATH) -> dict[str, np.ndarray]:
    """Read the bundled archive into a dict of arrays.

    Raises:
        FileNotFoundError: The archive is missing (a source checkout without
            it): rebuild it with ``python -m jef.data.bundled``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"fashion_mnist_mini: bundled file {path} is missing; rebuild it with `python -m jef.data.bundled` "
            f"(needs the Fashion-MNIST IDX files, e.g. `apt-get install dataset-fashion-mnist`)")
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
