"""The data set shipped inside jef: a stratified 12k-image subset of Fashion-MNIST.

``fashion_mnist_mini.npz`` holds 10,000 training and 2,000 test images
(1,000 and 200 per class) drawn with a fixed seed from the real Fashion-MNIST
files, so ``jef train`` works offline out of the box. :mod:`jef.data.bundled.build`
rebuilds that file from the original IDX files; ``python -m jef.data.bundled`` runs it.

The archive is an ordinary ``.npz`` (read with :func:`numpy.load`) whose
members are LZMA-compressed: about 15% smaller than ``np.savez_compressed``.

Fashion-MNIST is © Zalando SE, MIT licence (see ``LICENSE`` here).

References:
    H. Xiao, K. Rasul, R. Vollgraf. *Fashion-MNIST: a Novel Image Dataset for
    Benchmarking Machine Learning Algorithms*. arXiv:1708.07747, 2017.
"""

from __future__ import annotations

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
