"""Rebuild ``fashion_mnist_mini.npz`` from the original Fashion-MNIST IDX files, byte for byte.

Apart from :mod:`jef.data.bundled` (which only reads the archive) because it reads the IDX files with
:mod:`jef.data.fashion`, which itself loads the bundle.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from jef.data.bundled import BUNDLED_PATH, DEBIAN_DIR, SEED, TEST_PER_CLASS, TRAIN_PER_CLASS, stratified_order
from jef.data.fashion import find_fashion_files, load_fashion_split

__all__ = ["build_bundle"]


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
