"""Bad input in data sets: unreadable, truncated, empty, oddly coded, tiny and elongated images.

Every file here is made with PIL (or by damaging what PIL wrote) in ``tmp_path``.
"""

import io
import math
import re
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jef.data.image_check as image_check
from jef.components import RunContext
from jef.data.base import pil_to_uint8
from jef.data.folder import SKIPPED_NAME, FolderOptions, UnreadableImageError, build_image_folder

CTX = RunContext()


def _save(path: Path, size=(20, 16), mode="RGB", value=None, seed=0, **save) -> Path:
    """A random (or constant ``value``) image of ``size`` (width, height) saved at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        bands = len(Image.new(mode, (1, 1)).getbands())
        shape = (size[1], size[0]) if bands == 1 else (size[1], size[0], bands)
        img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).convert(mode)
    else:
        img = Image.new(mode, size, value)
    img.save(path, **save)
    return path


def _good(directory: Path, n: int, start: int = 0, **kwargs) -> list[Path]:
    return [_save(directory / f"{i:03d}.png", seed=i, **kwargs) for i in range(start, start + n)]


def _truncated(path: Path, fmt: str = "JPEG") -> Path:
    """A file with a valid header whose pixel data stops halfway: it opens, but cannot be decoded."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _unreadable(directory: Path) -> dict[str, str]:
    """Files with image extensions that are not images: name -> the reason jef gives."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "empty.jpg").write_bytes(b"")
    (directory / "notes.jpg").write_text("a text file with an image's name")
    (directory / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return {"empty.jpg": "empty file", "notes.jpg": "not an image PIL can identify",
            "noise.png": "not an image PIL can identify"}


def _skipped(run_dir: Path) -> dict[str, str]:
    lines = (run_dir / SKIPPED_NAME).read_text(encoding="utf-8").splitlines()
    return {Path(name).name: reason for name, _, reason in (line.partition("\t") for line in lines)}


# --- files that are not images: the header check when the dataset is built ---------------------


def test_unreadable_files_are_skipped_counted_and_listed(tmp_path):
    _good(tmp_path / "photos", 5)
    expected = _unreadable(tmp_path / "photos")
    ctx = RunContext(run_dir=tmp_path / "run")
    with pytest.warns(UserWarning, match=r"skipped 3 of 8 files under root .*photos that are not readable") as got:
        splits = build_image_folder(FolderOptions(root=str(tmp_path / "photos"), image_size=8), ctx)
    message = str(got[0].message)
    assert all(name in message for name in expected) and "empty file" in message
    assert str(tmp_path / "run" / SKIPPED_NAME) in message and "on_bad_image: error" in message
    assert len(splits.train) == 5 and [Path(p).name for p in splits.train.paths] == [f"{i:03d}.png" for i in range(5)]
    assert _skipped(tmp_path / "run") == expected
    assert not list((tmp_path / "run").glob(".*.tmp"))  # written atomically: no temporary file left


def test_warning_names_a_few_and_the_list_holds_all(tmp_path):
    _good(tmp_path / "photos", 2)
    for i in range(8):
        (tmp_path / "photos" / f"bad{i}.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 8 of 10") as got:
        build_image_folder(FolderOptions(root=str(tmp_path / "photos"), image_size=8),
                           RunContext(run_dir=tmp_path / "run"))
    assert "bad4.jpg" in str(got[0].message) and "bad5.jpg" not in str(got[0].message)
    assert "and 3 more" in str(got[0].message)
    assert sorted(_skipped(tmp_path / "run")) == [f"bad{i}.jpg" for i in range(8)]


def test_error_mode_names_the_files_and_the_option(tmp_path):
    _good(tmp_path / "photos", 3)
    _unreadable(tmp_path / "photos")
    with pytest.raises(UnreadableImageError, match="3 of 6 files under root .* are not readable images") as got:
        build_image_folder(FolderOptions(root=str(tmp_path / "photos"), on_bad_image="error"),
                           RunContext(run_dir=tmp_path / "run"))
    assert "notes.jpg (not an image PIL can identify)" in str(got.value)
    assert "set on_bad_image: skip" in str(got.value) and "delete or replace them" in str(got.value)
    assert len(_skipped(tmp_path / "run")) == 3  # the full list is written in error mode too


def test_a_file_without_read_permission_is_skipped(tmp_path, monkeypatch):
    _good(tmp_path / "photos", 2)
    locked = _save(tmp_path / "photos" / "locked.png")
    real_open = Image.open

    def open_as_another_user(path, *args, **kwargs):  # chmod 0 does not stop root, who runs some CI
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_as_another_user)
    with pytest.warns(UserWarning, match=r"locked.png \(permission denied\)"):
        splits = build_image_folder(FolderOptions(root=str(tmp_path / "photos"), image_size=8), CTX)
    assert len(splits.train) == 2


def test_an_image_over_pils_pixel_limit_is_skipped_with_the_setting_to_change(tmp_path, monkeypatch):
    _good(tmp_path / "photos", 2, size=(8, 8))
    _save(tmp_path / "photos" / "huge.png", size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40x40 is over twice that: DecompressionBombError
    with pytest.warns(UserWarning, match=r"huge.png \(Image size \(1600 pixels\) exceeds .*raise "
                                         r"PIL.Image.MAX_IMAGE_PIXELS to read it\)"):
        splits = build_image_folder(FolderOptions(root=str(tmp_path / "photos"), image_size=8), CTX)
    assert len(splits.train) == 2


def test_only_unreadable_files_is_an_error(tmp_path):
    _unreadable(tmp_path / "photos")
    with pytest.warns(UserWarning, match="skipped 3 of 3"), \
            pytest.raises(UnreadableImageError, match=r"none of the image files in root .*photos is a readable image"):
        build_image_folder(FolderOptions(root=str(tmp_path / "photos")), CTX)


def test_check_images_false_defers_everything_to_decoding(tmp_path):
    _good(tmp_path / "photos", 2)
    (tmp_path / "photos" / "empty.jpg").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no header check: nothing to warn about yet
        splits = build_image_folder(FolderOptions(root=str(tmp_path / "photos"), image_size=8,
                                                  check_images=False), CTX)
    assert len(splits.train) == 3
    with pytest.warns(UserWarning, match=r"skipped .*empty.jpg, which cannot be decoded \(empty file\)"):
        image, _, index = splits.train[2]  # empty.jpg sorts last: the next readable image is the first
    assert index == 0 and torch.equal(image, splits.train[0][0])


# --- files that open but cannot be decoded: the loader ----------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_replaced_by_the_next_readable_one(tmp_path, fmt):
    for i in range(4):
        _save(tmp_path / "photos" / f"{i}.png", seed=i)
    broken = _truncated(tmp_path / "photos" / f"1b.{fmt.lower()}", fmt)  # sorts between 1.png and 2.png
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the header is fine: the build does not complain
        splits = build_image_folder(FolderOptions(root=str(tmp_path / "photos"), image_size=8),
                                    RunContext(run_dir=run_dir))
    train = splits.train
    assert len(train) == 5 and Path(train.paths[2]) == broken
    with pytest.warns(UserWarning, match=rf"skipped {broken}, which cannot be decoded \(OSError: image file is trunc"):
        image, label, index = train[2]
    assert index == 3 and label == -1 and torch.equal(image, image_check.decode_image(str(train.paths[3]), 3, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file and process: the second time is silent
        again = train[2]
    assert again[2] == 3 and torch.equal(again[0], image)
    listed = _skipped(run_dir)
    assert list(listed) == [broken.name]
    assert listed[broken.name].startswith("OSError: image file is truncated")
    assert listed[broken.name].endswith("(found while decoding)")


def test_the_last_image_wraps_around_and_labels_follow_the_image(tmp_path):
    _good(tmp_path / "cats", 2)
    _good(tmp_path / "dogs", 1)
    _truncated(tmp_path / "dogs" / "zz.jpg")
    splits = build_image_folder(FolderOptions(root=str(tmp_path), image_size=8), CTX)
    with pytest.warns(UserWarning, match="zz.jpg"):
        image, label, index = splits.train[3]
    assert (label, index) == (0, 0) and torch.equal(image, splits.train[0][0])


def test_truncated_image_in_error_mode_names_the_file(tmp_path):
    _good(tmp_path / "photos", 2)
    broken = _truncated(tmp_path / "photos" / "cut.jpg")
    splits = build_image_folder(FolderOptions(root=str(tmp_path / "photos"), image_size=8, on_bad_image="error"),
                                CTX)
    with pytest.raises(UnreadableImageError, match=rf"cannot decode image {broken}: OSError: image file is trunc"
                                                   r".*set on_bad_image: skip"):
        splits.train[2]


def test_no_decodable_image_at_all_is_an_error(tmp_path):
    for i in range(3):
        _truncated(tmp_path / "photos" / f"{i}.jpg")
    splits = build_image_folder(FolderOptions(root=str(tmp_path / "photos")), CTX)
    with pytest.warns(UserWarning), pytest.raises(UnreadableImageError, match="none of the 3 images can be decoded"):
        splits.train[1]


def test_a_training_run_goes_on_past_bad_files_and_reports_them(tmp_path, one_thread):
    from jef.testing import tiny_run

    _good(tmp_path / "photos", 31, size=(20, 20))
    expected = _unreadable(tmp_path / "photos")
    broken = _truncated(tmp_path / "photos" / "010b.jpg")  # 32 readable headers: two batches of 16 use all
    with pytest.warns(UserWarning) as got:
        result = tiny_run({"data": {"name": "image_folder", "root": str(tmp_path / "photos"), "image_size": 16}},
                          steps=2, run_dir=tmp_path / "run")
    messages = [str(w.message) for w in got]
    assert any("skipped 3 of 35 files" in m for m in messages)
    assert any(f"skipped {broken}, which cannot be decoded" in m for m in messages)
    assert math.isfinite(result.metrics["loss"])
    listed = _skipped(tmp_path / "run")
    assert set(listed) == {*expected, broken.name} and "found while decoding" in listed[broken.name]


def test_processes_split_the_check_and_agree(tmp_path, monkeypatch):
    """Two processes, played one after the other: each checks half the files, the exchange gives both all findings.

    (The same with two real gloo processes passes too, but spawning them costs ~20 s on a 2-core CI machine.)
    """
    import torch.distributed as tdist

    from jef import dist

    _good(tmp_path / "photos", 6)
    _unreadable(tmp_path / "photos")
    sent, probed = {}, {0: [], 1: []}
    original = image_check._probe
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    outcomes = {}
    for round_ in ("send", "receive"):
        for rank in (1, 0):
            monkeypatch.setattr(dist, "rank", lambda rank=rank: rank)

            def counted(paths, min_side, rank=rank):
                probed[rank].extend(paths)
                return original(paths, min_side)

            def exchange(gathered, mine, rank=rank):
                sent[rank] = mine
                gathered[:] = [sent.get(r, ({}, [])) for r in range(2)]

            monkeypatch.setattr(image_check, "_probe", counted)
            monkeypatch.setattr(tdist, "all_gather_object", exchange)
            with warnings.catch_warnings(record=True) as got:
                warnings.simplefilter("always")
                splits = build_image_folder(FolderOptions(root=str(tmp_path / "photos"), image_size=8),
                                            RunContext(rank=rank, world_size=2, run_dir=tmp_path / f"run{rank}"))
            outcomes[round_, rank] = ([Path(p).name for p in splits.train.paths],
                                      any("not readable images" in str(w.message) for w in got))
    assert len(probed[0]) == 2 * 5 and len(probed[1]) == 2 * 4  # 9 files: 5 and 4 per round
    assert not set(probed[0]) & set(probed[1])
    kept = [f"{i:03d}.png" for i in range(6)]
    assert outcomes["receive", 0] == (kept, True) and outcomes["receive", 1] == (kept, False)  # rank 0 warns
    assert len(_skipped(tmp_path / "run0")) == 3 and not (tmp_path / "run1").exists()  # and writes the list


# --- empty folders -----------------------------------------------------------------------------


def test_empty_and_unreadable_class_folders_are_not_classes(tmp_path):
    _good(tmp_path / "cats", 2)
    _good(tmp_path / "dogs", 2)
    (tmp_path / "empty_class").mkdir()
    _unreadable(tmp_path / "broken_class")
    with pytest.warns(UserWarning) as got:
        splits = build_image_folder(FolderOptions(root=str(tmp_path), image_size=8), CTX)
    messages = " | ".join(str(w.message) for w in got)
    assert "without images are not classes: empty_class" in messages
    assert "without a readable image are not classes: broken_class" in messages
    assert splits.num_classes == 2 and splits.train.classes == ["cats", "dogs"]
    assert [splits.train[i][1] for i in range(4)] == [0, 0, 1, 1]  # renumbered after the dropped class


def test_empty_roots_name_the_option_and_the_path(tmp_path):
    _good(tmp_path / "train" / "cats", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"no images found in {tmp_path / 'empty'} or its"):
        build_image_folder(FolderOptions(root=str(tmp_path / "empty")), CTX)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'absent'} is not a directory \(data.root: no such "
                                                rf"folder: {tmp_path / 'absent'}\); set data.root to a folder"):
        build_image_folder(FolderOptions(root=str(tmp_path / "absent")), CTX)
    image = tmp_path / "train" / "cats" / "000.png"
    with pytest.raises(FileNotFoundError, match=rf"{image} is not a directory \(data.root: names a file, not a fo"):
        build_image_folder(FolderOptions(root=str(image)), CTX)
    with pytest.raises(FileNotFoundError, match=rf"test_root {tmp_path / 'empty'}.*test_root needs subdirectories"):
        build_image_folder(FolderOptions(root=str(tmp_path / "train"), test_root=str(tmp_path / "empty")), CTX)
    _good(tmp_path / "flat", 2)
    with pytest.raises(FileNotFoundError, match=rf"no images found under test_root {tmp_path / 'empty'}"):
        build_image_folder(FolderOptions(root=str(tmp_path / "flat"), test_root=str(tmp_path / "empty")), CTX)
    with pytest.raises(FileNotFoundError, match=rf"test_root {tmp_path / 'absent'} is not a directory \(data.test_"):
        build_image_folder(FolderOptions(root=str(tmp_path / "flat"), test_root=str(tmp_path / "absent")), CTX)
    _unreadable(tmp_path / "bad_test")
    with pytest.warns(UserWarning, match="skipped 3 of 5 files under root .* and test_root"), \
            pytest.raises(UnreadableImageError, match="none of the image files in test_root .*bad_test"):
        build_image_folder(FolderOptions(root=str(tmp_path / "flat"), test_root=str(tmp_path / "bad_test"),
                                         image_size=8), CTX)


# --- colour modes ------------------------------------------------------------------------------


def _palette(transparent: bool) -> Image.Image:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    if transparent:
        img.info["transparency"] = 1
    return img


def _lab(rgb) -> Image.Image:
    from PIL import ImageCms

    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    return ImageCms.applyTransform(Image.new("RGB", (4, 4), rgb), to_lab)


# (image, expected RGB of every pixel); greyscale is the ITU-R 601-2 luma of it.
MODES = {
    "1": (Image.new("1", (4, 4), 1), (255, 255, 255)),
    "L": (Image.new("L", (4, 4), 100), (100, 100, 100)),
    "LA opaque": (Image.new("LA", (4, 4), (100, 255)), (100, 100, 100)),
    "LA transparent": (Image.new("LA", (4, 4), (100, 0)), (0, 0, 0)),
    "P": (_palette(False), (10, 20, 30)),
    "P transparent": (_palette(True), (0, 0, 0)),
    "PA transparent": (Image.new("PA", (4, 4), (1, 0)), (0, 0, 0)),
    "RGBA opaque": (Image.new("RGBA", (4, 4), (200, 100, 50, 255)), (200, 100, 50)),
    "RGBA half": (Image.new("RGBA", (4, 4), (200, 100, 50, 128)), (100, 50, 25)),
    "CMYK": (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
    "YCbCr": (Image.new("YCbCr", (4, 4), (128, 128, 128)), (128, 128, 128)),
    "I;16 max": (Image.new("I;16", (4, 4), 65535), (255, 255, 255)),
    "I;16 half": (Image.new("I;16", (4, 4), 32896), (128, 128, 128)),
    "I 16-bit": (Image.new("I", (4, 4), 25700), (100, 100, 100)),
    "I 8-bit": (Image.new("I", (4, 4), 200), (200, 200, 200)),
    "F unit": (Image.new("F", (4, 4), 0.5), (128, 128, 128)),
    "F large": (Image.new("F", (4, 4), 300.0), (255, 255, 255)),
    "LAB": (_lab((200, 30, 30)), (200, 30, 30)),
}


@pytest.mark.parametrize("name", list(MODES))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_colour_mode_becomes_the_configured_channels(name, channels):
    img, rgb = MODES[name]
    out = pil_to_uint8(img, channels, 8)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (channels, 8, 8)
    want = torch.tensor(rgb if channels == 3 else [round((rgb[0] * 299 + rgb[1] * 587 + rgb[2] * 114) / 1000)])
    tolerance = 3 if name == "LAB" else 1  # LAB goes through littleCMS; the rest is PIL's integer maths
    assert (out.int() - want.view(-1, 1, 1)).abs().max() <= tolerance, (name, out[:, 0, 0].tolist())


@pytest.mark.parametrize(("name", "mode", "value", "fmt", "rgb"), [
    ("grey16.png", "I;16", 65535, "PNG", (255, 255, 255)),
    ("cmyk.jpg", "CMYK", (0, 255, 255, 0), "JPEG", (255, 0, 0)),
    ("alpha.png", "RGBA", (200, 100, 50, 0), "PNG", (0, 0, 0)),
    ("grey_alpha.png", "LA", (90, 255), "PNG", (90, 90, 90)),
    ("float.tif", "F", 1.0, "TIFF", (255, 255, 255)),
])
def test_odd_modes_from_files(tmp_path, name, mode, value, fmt, rgb):
    _save(tmp_path / "photos" / name, size=(12, 12), mode=mode, value=value, format=fmt)
    splits = build_image_folder(FolderOptions(root=str(tmp_path / "photos"), image_size=8), CTX)
    image = splits.train[0][0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 8, 8)
    assert (image.int() - torch.tensor(rgb).view(3, 1, 1)).abs().max() <= 2, image[:, 0, 0].tolist()


# --- sizes -------------------------------------------------------------------------------------


def test_tiny_and_elongated_images_are_upscaled_with_a_warning(tmp_path):
    sizes = {"a_1x1.png": (1, 1), "b_1x500.png": (1, 500), "c_500x1.png": (500, 1), "d_3x2.png": (3, 2),
             "e_40x40.png": (40, 40)}
    for name, size in sizes.items():
        _save(tmp_path / "photos" / name, size=size)
    Image.new("RGB", (1, 1), (7, 8, 9)).save(tmp_path / "photos" / "a_1x1.png")
    with pytest.warns(UserWarning, match=r"4 of 5 images are smaller than image_size 16 .* upscaled: "
                                         r".*a_1x1.png \(1x1\), .*b_1x500.png \(1x500\)"):
        splits = build_image_folder(FolderOptions(root=str(tmp_path / "photos"), image_size=16), CTX)
    for i in range(5):
        image = splits.train[i][0]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 16, 16)
    assert torch.equal(splits.train[0][0], torch.tensor([7, 8, 9], dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16))


# --- IDX and torchvision files ------------------------------------------------------------------


def test_idx_damaged_gzip_no_images_and_labels_out_of_range(tmp_path):
    import gzip

    from jef.data.idx import IdxFormatError, IdxOptions, build_idx, read_idx, write_idx

    data = bytearray(write_idx(tmp_path / "x.gz", np.arange(4000, dtype=np.int32)).read_bytes())
    data[40:60] = bytes(range(7, 27))  # damaged deflate data: zlib.error, which is no OSError
    (tmp_path / "damaged.gz").write_bytes(bytes(data))
    with pytest.raises(IdxFormatError, match="damaged.gz: corrupt gzip stream .*download the file again"):
        read_idx(tmp_path / "damaged.gz")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(bytes(range(256)) * 40)[:100])
    with pytest.raises(IdxFormatError, match="cut.gz: corrupt gzip stream"):
        read_idx(tmp_path / "cut.gz")
    write_idx(tmp_path / "none.idx", np.zeros((0, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="none.idx: the file holds no images"):
        build_idx(IdxOptions(images=str(tmp_path / "none.idx")), CTX)
    write_idx(tmp_path / "img.idx", np.zeros((3, 8, 8), dtype=np.uint8))
    write_idx(tmp_path / "lab.idx", np.array([0, 1, 7], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"lab.idx range over \[0, 7\], outside the 5 classes \[0, 4\]"):
        build_idx(IdxOptions(images=str(tmp_path / "img.idx"), labels=str(tmp_path / "lab.idx"), num_classes=5), CTX)
    write_idx(tmp_path / "neg.idx", np.array([0, -1, 2], dtype=np.int8))
    with pytest.raises(ValueError, match=r"range over \[-1, 2\]"):
        build_idx(IdxOptions(images=str(tmp_path / "img.idx"), labels=str(tmp_path / "neg.idx")), CTX)


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_torchvision_damaged_files_say_what_to_do(tmp_path, damage):
    pytest.importorskip("torchvision")
    from jef.data.idx import write_idx
    from jef.data.tvision import TorchvisionOptions, build_torchvision

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.zeros((n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.zeros(n, dtype=np.uint8))
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:3000] if damage == "truncated" else b"")
    with pytest.raises(RuntimeError, match=rf"FashionMNIST: cannot load split 'train' from {tmp_path}: .*damaged or "
                                           "incomplete ones: delete them and download again"):
        build_torchvision(TorchvisionOptions(name_tv="FashionMNIST", root=str(tmp_path)), CTX)


def test_torchvision_image_that_cannot_be_decoded_names_the_item():
    pytest.importorskip("torchvision")
    from jef.data.tvision import TorchvisionImages

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise OSError("image file is truncated")

    with pytest.raises(OSError, match="torchvision dataset Flowers: item 0 cannot be read: OSError: image file is "
                                      "truncated; if a file under the data root is damaged"):
        TorchvisionImages(Broken(), 3, 8, "Flowers")[0]


# --- the messages docs/troubleshooting.md shows ----------------------------------------------------


def _documented(key: str, actual: str) -> None:
    """A ``text`` block of docs/troubleshooting.md containing ``key`` shows ``actual`` (``...`` matches anything).

    The rule of ``assert_documented`` in tests/test_docs.py, for the messages of this file.
    """
    page = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
    shown = [textwrap.dedent(block).strip() for block in re.findall(r"```text\n(.*?)```", page.read_text(), re.S)
             if key in block]
    assert shown, f"docs/troubleshooting.md no longer shows a message containing {key!r}"
    patterns = [r"[\s\S]*?".join(re.escape(piece) for piece in text.split("...")) for text in shown]
    assert any(re.search(p, actual) for p in patterns), f"documented:\n{shown}\nreal:\n{actual}"


def test_the_messages_are_as_documented(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png, "PNG")
    Path("photos").mkdir()
    for i in range(1000):
        Path(f"photos/{i:04d}.png").write_bytes(png.getvalue())
    Path("photos/empty.jpg").write_bytes(b"")
    Path("photos/notes.jpg").write_text("not an image")
    ctx = RunContext(run_dir=Path("runs/photos"))
    with pytest.warns(UserWarning) as got:
        splits = build_image_folder(FolderOptions(root="photos"), ctx)
    _documented("that are not readable images", f"UserWarning: {got[0].message}")
    with pytest.raises(UnreadableImageError) as error:
        build_image_folder(FolderOptions(root="photos", on_bad_image="error"), ctx)
    _documented("are not readable images: ", str(error.value))

    cut = _truncated(Path("photos/cut.jpg"))
    splits = build_image_folder(FolderOptions(root="photos", check_images=False), ctx)
    with pytest.warns(UserWarning) as got:
        splits.train[list(splits.train.paths).index(str(cut))]
    _documented("which cannot be decoded", f"UserWarning: {got[0].message}")

    for name in ("empty.jpg", "notes.jpg", "cut.jpg", "0000.png", "0001.png", "0002.png"):
        Path("photos", name).unlink()
    for name in ("icon.png", "tiny1.png", "tiny2.png"):
        Image.new("RGB", (16, 16)).save(Path("photos", name))
    with pytest.warns(UserWarning) as got:
        build_image_folder(FolderOptions(root="photos"), ctx)
    _documented("are upscaled", "\n".join(f"UserWarning: {w.message}" for w in got))
