"""Symbolic links in an ``image_folder``: loops, links out of a class folder, dangling links, shared stores.

Every tree is made of real links in ``tmp_path``. Each test runs under :func:`_deadline`, so a walk that loops
fails the test in seconds instead of hanging the suite.
"""

import os
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jef.components import RunContext
from jef.data.folder import SKIPPED_NAME, FolderOptions, build_image_folder

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symbolic links")


@contextmanager
def _deadline(seconds: int = 20):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"image_folder took more than {seconds} s: the walk loops")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _images(directory: Path, n: int, value: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = np.random.default_rng(value * 100 + i).integers(0, 256, (10, 10, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"{i:02d}.png")
        paths.append(directory / f"{i:02d}.png")
    return paths


def _build(root: Path, run_dir: Path, **options):
    with _deadline(), warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        splits = build_image_folder(FolderOptions(root=str(root), image_size=8, **options), RunContext(run_dir=run_dir))
    return splits, [str(w.message) for w in got]


def _skipped(run_dir: Path) -> dict[str, str]:
    lines = (run_dir / SKIPPED_NAME).read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines)


@pytest.mark.parametrize("labels", ["auto", "none"])
def test_a_link_to_its_own_folder_is_not_followed(tmp_path, labels):
    _images(tmp_path / "photos", 8)
    os.symlink(".", tmp_path / "photos" / "self")
    splits, messages = _build(tmp_path / "photos", tmp_path / "run", labels=labels)
    assert len(splits.train) == 8 and splits.num_classes is None  # was 320 samples of a class named "self"
    assert sorted(Path(p).name for p in splits.train.paths) == [f"{i:02d}.png" for i in range(8)]
    listed = _skipped(tmp_path / "run")
    assert list(listed) == [str(tmp_path / "photos" / "self")] and "a loop" in listed[str(tmp_path / "photos" / "self")]
    assert any("left out 1 paths" in m and "self" in m for m in messages)


def test_two_links_to_the_root_end_and_count_each_file_once(tmp_path):
    _images(tmp_path / "photos", 8)
    os.symlink(".", tmp_path / "photos" / "a")
    os.symlink(".", tmp_path / "photos" / "b")  # used to hang: a/b/a/b/... is a tree of 2^depth paths
    splits, _ = _build(tmp_path / "photos", tmp_path / "run", labels="none")
    assert len(splits.train) == 8
    assert set(_skipped(tmp_path / "run")) == {str(tmp_path / "photos" / "a"), str(tmp_path / "photos" / "b")}


def test_a_link_up_from_a_class_folder_does_not_mislabel(tmp_path):
    _images(tmp_path / "root" / "cats", 3, value=1)
    _images(tmp_path / "root" / "dogs", 4, value=2)
    os.symlink("..", tmp_path / "root" / "cats" / "up")  # cats/up/dogs/* would be labelled cats
    os.symlink("../dogs", tmp_path / "root" / "cats" / "friends")  # another class's folder
    os.symlink("../dogs/00.png", tmp_path / "root" / "cats" / "borrowed.png")  # another class's file
    splits, _ = _build(tmp_path / "root", tmp_path / "run")
    assert splits.train.classes == ["cats", "dogs"]
    by_class = {name: sorted(Path(p).relative_to(tmp_path / "root").as_posix()
                             for p, label in zip(splits.train.paths, splits.train.labels, strict=True)
                             if label == index)
                for index, name in enumerate(splits.train.classes)}
    assert by_class == {"cats": ["cats/00.png", "cats/01.png", "cats/02.png"],
                        "dogs": [f"dogs/{i:02d}.png" for i in range(4)]}
    listed = _skipped(tmp_path / "run")
    assert set(listed) == {str(tmp_path / "root" / "cats" / name) for name in ("up", "friends", "borrowed.png")}
    assert "a loop" in listed[str(tmp_path / "root" / "cats" / "up")]
    assert "another label" in listed[str(tmp_path / "root" / "cats" / "friends")]


def test_dangling_links_are_listed_as_skipped(tmp_path):
    _images(tmp_path / "photos", 3)
    os.symlink(tmp_path / "gone.jpg", tmp_path / "photos" / "moved.jpg")
    os.symlink(tmp_path / "gone_folder", tmp_path / "photos" / "old_batch")
    splits, messages = _build(tmp_path / "photos", tmp_path / "run", labels="none")
    assert len(splits.train) == 3
    listed = _skipped(tmp_path / "run")
    assert listed == {str(tmp_path / "photos" / "moved.jpg"): f"dangling symbolic link to {tmp_path / 'gone.jpg'}",
                      str(tmp_path / "photos" / "old_batch"): f"dangling symbolic link to {tmp_path / 'gone_folder'}"}
    assert any("left out 2 paths" in m and "moved.jpg" in m for m in messages)


def test_links_to_a_shared_store_are_followed_and_each_file_counts_once(tmp_path):
    store = _images(tmp_path / "store" / "cats", 3, value=1) + _images(tmp_path / "store" / "more", 2, value=3)
    root = tmp_path / "root"
    os.makedirs(root / "dogs")
    os.symlink(tmp_path / "store" / "cats", root / "cats")  # a class folder that is a link
    for i, path in enumerate(store[3:]):  # a class made of file links
        os.symlink(path, root / "dogs" / f"d{i}.png")
    os.symlink(store[3], root / "dogs" / "x_again.png")  # the same file a second time
    os.symlink(tmp_path / "store" / "more", root / "dogs" / "batch")  # and a folder holding them
    splits, _ = _build(root, tmp_path / "run")
    assert splits.train.classes == ["cats", "dogs"] and len(splits.train) == 5
    assert sorted(Path(p).name for p in splits.train.paths) == ["00.png", "01.png", "02.png", "d0.png", "d1.png"]
    listed = _skipped(tmp_path / "run")
    assert set(listed) == {str(root / "dogs" / "x_again.png"), str(root / "dogs" / "batch" / "00.png"),
                           str(root / "dogs" / "batch" / "01.png")}
    assert all("each file counts once" in reason for reason in listed.values())


def test_a_class_folder_linked_to_another_class_is_not_a_class(tmp_path):
    _images(tmp_path / "root" / "cats", 2)
    os.symlink("cats", tmp_path / "root" / "kittens")
    splits, _ = _build(tmp_path / "root", tmp_path / "run")
    assert splits.train.classes == ["cats"] and len(splits.train) == 2
    assert list(_skipped(tmp_path / "run")) == [str(tmp_path / "root" / "kittens")]
