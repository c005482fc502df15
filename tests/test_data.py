"""Tests of jef's datasets (jef.data, jef.builtin.datasets)."""

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from jef.components import DataSplits, RunContext
from jef.data.base import InMemoryImages
from jef.data.bundled import DEBIAN_DIR
from jef.data.fashion import FashionMiniOptions, FashionOptions, build_fashion_mnist, build_fashion_mnist_mini
from jef.data.fields import as_fields
from jef.data.folder import FolderOptions, build_image_folder
from jef.data.idx import IdxFormatError, IdxOptions, build_idx, parse_idx, read_idx, write_idx
from jef.data.synthetic import SyntheticOptions, build_synthetic

CTX = RunContext()


def _check_item(item, channels: int, size: int) -> None:
    fields = as_fields(item)
    image, label, index = fields["image"], fields["label"], fields["index"]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (channels, size, size)
    assert isinstance(label, int) and isinstance(index, int)


def _tiny_fashion_raw(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """Fashion-MNIST-like raw IDX files in torchvision's layout ``root/FashionMNIST/raw``."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return root


# --- bundled fashion_mnist_mini -----------------------------------------------------------------


def test_the_bundle_rebuilds_byte_for_byte_from_idx_files(tmp_path):
    from jef.data.bundled import load_bundle
    from jef.data.bundled.build import build_bundle

    raw = _tiny_fashion_raw(tmp_path / "src") / "FashionMNIST" / "raw"
    first = build_bundle(raw, tmp_path / "a.npz", train_per_class=2, test_per_class=1)
    second = build_bundle(raw, tmp_path / "b.npz", train_per_class=2, test_per_class=1)
    assert first.read_bytes() == second.read_bytes()
    arrays = load_bundle(first)
    assert arrays["x_train"].shape == (20, 28, 28) and arrays["x_test"].shape == (10, 28, 28)
    assert np.bincount(arrays["y_train"]).tolist() == [2] * 10


def test_bundled_sizes_shapes_and_balance():
    splits = build_fashion_mnist_mini(FashionMiniOptions(), CTX)
    assert isinstance(splits, DataSplits) and splits.labelled
    assert (splits.num_classes, splits.channels, splits.image_size) == (10, 1, 28)
    assert len(splits.train) == 10_000 and len(splits.test) == 2_000
    for split, per_class in ((splits.train, 1000), (splits.test, 200)):
        assert split.images.dtype == torch.uint8 and tuple(split.images.shape[1:]) == (1, 28, 28)
        assert torch.bincount(split.labels, minlength=10).tolist() == [per_class] * 10
    _check_item(splits.train[5], 1, 28)
    assert splits.train[5][2] == 5 and splits.train.classes[9] == "Ankle boot"
    assert splits.train.images.float().std() > 50  # real images, not zeros


def test_bundled_subset_keeps_balanced_prefix():
    splits = build_fashion_mnist_mini(FashionMiniOptions(subset_train=100, subset_test=20), CTX)
    assert len(splits.train) == 100 and len(splits.test) == 20
    assert torch.bincount(splits.train.labels, minlength=10).tolist() == [10] * 10
    assert splits.train.images.untyped_storage().nbytes() == 100 * 28 * 28  # a compact copy, not a view


# --- IDX ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_errors(tmp_path):
    with pytest.raises(IdxFormatError, match="bad IDX magic"):
        parse_idx(b"\x12\x34\x08\x01" + b"\x00" * 8, "bad.idx")
    good = np.arange(10, dtype=np.uint8)
    data = gzip.decompress(write_idx(tmp_path / "g.gz", good).read_bytes())
    with pytest.raises(IdxFormatError, match="truncated"):
        parse_idx(data[:-1])
    with pytest.raises(IdxFormatError, match="trailing"):
        parse_idx(data + b"\x00")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8bnot gzip at all")
    with pytest.raises(IdxFormatError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")


def test_idx_reads_into_one_writable_buffer_that_the_images_keep(tmp_path):
    array = np.arange(6 * 8 * 8, dtype=np.uint8).reshape(6, 8, 8)
    for name in ("raw.idx", "packed.gz"):
        back = read_idx(write_idx(tmp_path / name, array))
        assert back.flags.writeable  # InMemoryImages then takes it without a copy of the whole set
        np.testing.assert_array_equal(back, array)
        images = InMemoryImages(back)
        assert np.shares_memory(images.images.numpy(), back)


def test_idx_gzip_whose_trailer_does_not_give_the_size(tmp_path):
    array = np.arange(300, dtype=np.int16).reshape(3, 100)
    data = gzip.decompress(write_idx(tmp_path / "a.gz", array).read_bytes())
    # Two gzip members (ISIZE is the last one's size) and a trailer that lies: the reader still gets every byte.
    (tmp_path / "members.gz").write_bytes(gzip.compress(data[:50]) + gzip.compress(data[50:]))
    np.testing.assert_array_equal(read_idx(tmp_path / "members.gz"), array)
    lying = bytearray(gzip.compress(data))
    lying[-4:] = (10).to_bytes(4, "little")  # a wrong ISIZE fails gzip's own check, as a damaged file should
    (tmp_path / "lying.gz").write_bytes(bytes(lying))
    with pytest.raises(IdxFormatError, match="lying.gz: corrupt gzip stream"):
        read_idx(tmp_path / "lying.gz")
    (tmp_path / "short.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(IdxFormatError, match="short.gz: corrupt gzip stream"):
        read_idx(tmp_path / "short.gz")


def test_idx_dataset(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "img.gz", rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    write_idx(tmp_path / "lab.gz", np.arange(12, dtype=np.uint8) % 4)
    splits = build_idx(IdxOptions(images=str(tmp_path / "img.gz"), labels=str(tmp_path / "lab.gz"),
                                  test_images=str(tmp_path / "img.gz"), subset_test=5), CTX)
    assert (splits.num_classes, splits.channels, splits.image_size) == (4, 3, 8)
    assert len(splits.train) == 12 and len(splits.test) == 5 and splits.test[0][1] == -1
    _check_item(splits.train[3], 3, 8)
    with pytest.raises(FileNotFoundError, match="missing.gz"):
        build_idx(IdxOptions(images=str(tmp_path / "missing.gz")), CTX)


# --- Fashion-MNIST (full) -----------------------------------------------------------------------


@pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(), reason="no Debian Fashion-MNIST")
def test_fashion_mnist_debian():
    splits = build_fashion_mnist(FashionOptions(subset_test=100), CTX)
    assert len(splits.train) == 60_000 and len(splits.test) == 100
    assert torch.bincount(splits.train.labels).tolist() == [6000] * 10
    _check_item(splits.train[0], 1, 28)


def test_fashion_mnist_torchvision_layout_and_missing(tmp_path, monkeypatch):
    splits = build_fashion_mnist(FashionOptions(root=str(_tiny_fashion_raw(tmp_path / "tv"))), CTX)
    assert len(splits.train) == 20 and len(splits.test) == 10  # found root/FashionMNIST/raw, not Debian's
    monkeypatch.setattr("jef.data.fashion.DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        build_fashion_mnist(FashionOptions(root=str(tmp_path / "empty")), CTX)
    assert "nowhere" in str(err.value) and "FashionMNIST/raw" in str(err.value)


# --- image_folder -------------------------------------------------------------------------------


def _write_pngs(directory: Path, n: int, size: tuple[int, int], mode: str = "RGB") -> None:
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(directory)))
    for i in range(n):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(directory / f"{i}.png")


def test_image_folder_labelled(tmp_path):
    _write_pngs(tmp_path / "cats", 3, (40, 30))
    _write_pngs(tmp_path / "dogs" / "nested", 2, (20, 24), mode="L")
    (tmp_path / "notes.txt").write_text("not an image")
    _write_pngs(tmp_path / "loose", 1, (8, 8))
    (tmp_path / "loose" / "0.png").rename(tmp_path / "loose.png")
    (tmp_path / "loose").rmdir()  # an empty subdirectory is no class (tests/test_bad_images.py)
    with pytest.warns(UserWarning, match="1 images directly in"):
        splits = build_image_folder(FolderOptions(root=str(tmp_path), image_size=16), CTX)
    assert splits.num_classes == 2 and splits.train.classes == ["cats", "dogs"] and splits.test is None
    assert [splits.train[i][1] for i in range(5)] == [0, 0, 0, 1, 1]
    _check_item(splits.train[4], 3, 16)
    (tmp_path / "loose.png").unlink()
    grey = build_image_folder(FolderOptions(root=str(tmp_path), image_size=16, channels=1, test_fraction=0.4), CTX)
    assert len(grey.train) == 3 and len(grey.test) == 2  # stratified: one of each class held out
    assert sorted(grey.test[i][1] for i in range(2)) == [0, 1]
    _check_item(grey.test[0], 1, 16)


def test_image_folder_unlabelled_and_test_root(tmp_path):
    _write_pngs(tmp_path / "flat", 4, (32, 32))
    _write_pngs(tmp_path / "held_out", 2, (50, 20))
    splits = build_image_folder(FolderOptions(root=str(tmp_path / "flat"), image_size=8,
                                              test_root=str(tmp_path / "held_out")), CTX)
    assert not splits.labelled and len(splits.train) == 4 and len(splits.test) == 2
    assert {splits.train[i][1] for i in range(4)} == {-1}
    _check_item(splits.test[1], 3, 8)
    with pytest.raises(FileNotFoundError, match="labels: none"):
        build_image_folder(FolderOptions(root=str(tmp_path / "flat"), labels="folders"), CTX)


def test_image_folder_empty(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no images found.*\.png"):
        build_image_folder(FolderOptions(root=str(tmp_path / "empty")), CTX)
    with pytest.raises(FileNotFoundError, match=r"absent is not a directory \(data\.root: no such folder"):
        build_image_folder(FolderOptions(root=str(tmp_path / "absent")), CTX)


# --- synthetic ----------------------------------------------------------------------------------


def test_synthetic_deterministic_and_labels():
    options = SyntheticOptions(num_classes=5, train_size=50, test_size=20, image_size=16, seed=3)
    a, b = build_synthetic(options, CTX), build_synthetic(options, CTX)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    c = build_synthetic(SyntheticOptions(num_classes=5, train_size=50, test_size=20, image_size=16, seed=4), CTX)
    assert not torch.equal(a.train.images, c.train.images)
    assert torch.bincount(a.train.labels).tolist() == [10] * 5 and int(a.test.labels.max()) < 5
    assert (a.num_classes, a.channels, a.image_size) == (5, 3, 16)
    _check_item(a.train[0], 3, 16)
    grey = build_synthetic(SyntheticOptions(channels=1, train_size=10, test_size=0, image_size=8), CTX)
    assert grey.test is None and tuple(grey.train.images.shape) == (10, 1, 8, 8)


# --- torchvision --------------------------------------------------------------------------------


def test_torchvision_resolution_and_splits():
    pytest.importorskip("torchvision")
    from jef.data.tvision import resolve_class, split_kwargs

    with pytest.raises(ValueError, match="CIFAR10"):
        resolve_class("CIFAR11")
    assert resolve_class("cifar10").__name__ == "CIFAR10"
    assert split_kwargs(resolve_class("CIFAR10"), "test") == {"train": False}
    assert split_kwargs(resolve_class("STL10"), "train+unlabeled") == {"split": "train+unlabeled"}
    with pytest.raises(ValueError, match="'train' or 'test'"):
        split_kwargs(resolve_class("MNIST"), "extra")


def test_torchvision_builds_offline(tmp_path):
    pytest.importorskip("torchvision")
    from jef.data.tvision import TorchvisionOptions, build_torchvision

    root = _tiny_fashion_raw(tmp_path)
    splits = build_torchvision(TorchvisionOptions(name_tv="FashionMNIST", root=str(root), image_size=16), CTX)
    assert (len(splits.train), len(splits.test), splits.num_classes, splits.channels) == (20, 10, 10, 1)
    _check_item(splits.train[1], 1, 16)
    assert splits.train[1][1] == 1
    with pytest.raises(RuntimeError, match="download: true"):
        build_torchvision(TorchvisionOptions(name_tv="CIFAR10", root=str(tmp_path / "none")), CTX)


# --- registration -------------------------------------------------------------------------------


def test_every_registered_dataset_builds(tmp_path):
    from jef.builtin.datasets import jef_register_datasets

    table = {}

    def register(name, factory, *, options, description="", paper=""):
        assert description
        table[name] = (factory, options)

    jef_register_datasets(register)
    assert set(table) == {"fashion_mnist_mini", "fashion_mnist", "idx", "torchvision", "image_folder", "synthetic",
                          "image_text", "fashion_mnist_captions"}
    root = _tiny_fashion_raw(tmp_path / "fm")
    raw = root / "FashionMNIST" / "raw"
    _write_pngs(tmp_path / "imgs", 2, (10, 10))
    captions = tmp_path / "captions.csv"
    pngs = sorted((tmp_path / "imgs").glob("*.png"))
    captions.write_text("image,caption\n" + "".join(f"{p},a picture\n" for p in pngs), encoding="utf-8")
    kwargs = {"fashion_mnist_mini": {"subset_train": 10, "subset_test": 10},
              "fashion_mnist": {"root": str(root)},
              "idx": {"images": str(raw / "train-images-idx3-ubyte")},
              "torchvision": {"name_tv": "FashionMNIST", "root": str(root)},
              "image_folder": {"root": str(tmp_path / "imgs"), "image_size": 8},
              "synthetic": {"train_size": 10, "test_size": 10, "image_size": 8},
              "image_text": {"train": str(captions), "image_size": 8},
              "fashion_mnist_captions": {"subset_train": 10, "subset_test": 10}}
    for name, (factory, options_cls) in table.items():
        if name == "torchvision":
            pytest.importorskip("torchvision")
        splits = factory(options_cls(**kwargs[name]), CTX)
        assert isinstance(splits, DataSplits), name
        _check_item(splits.train[0], splits.channels, splits.image_size)
        # DataLoader workers receive the splits pickled.
        clone = pickle.loads(pickle.dumps(splits.train))
        assert torch.equal(as_fields(clone[0])["image"], as_fields(splits.train[0])["image"]), name
