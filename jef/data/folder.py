"""``image_folder``: a directory of images, labelled by subdirectory or unlabelled.

Unlabelled data is the normal case for self-supervised learning, so a flat
folder of images is a first-class dataset here (labels ``-1``). Images are
decoded lazily with PIL, converted to greyscale or RGB, and resized
(shorter side) and centre-cropped to a square of ``image_size``.

A long run must not die on one bad file among a million, and its user must
learn which files were left out. With ``on_bad_image: skip`` (the default)
files that are not readable images are dropped when the dataset is built
(``check_images`` opens every file's header) and files that fail later, while
decoding (truncated ones pass the header check), are replaced by the next
readable image; both are warned about and listed in the run directory's
``skipped_images.txt``. With ``on_bad_image: error`` either is an error.

Symbolic links are followed, each real file counted once, never in a loop and
never from one class folder into another (:mod:`jef.data.walk` says what a link
means); links left out, dangling ones included, are warned about and listed in
``skipped_images.txt`` too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from jef.components import DataSplits, RunContext
from jef.data.base import IMAGE_EXTENSIONS, make_splits
from jef.data.image_check import (  # noqa: F401 -- SKIPPED_NAME and UnreadableImageError are public here too
    SHOWN_IN_MESSAGES,
    SKIPPED_NAME,
    ImageDecodeError,
    UnreadableImageError,
    check_images,
    listing,
    record_skipped,
    try_decode,
)
from jef.data.walk import Walk, is_image_name


def _is_image(path: Path) -> bool:
    return is_image_name(path.name) and path.is_file()


def scan_folder(root: Path, labels: str, *, what: str = "root",
                left_out: dict[str, str] | None = None) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """List a folder's images (by extension; nothing is opened) and, when labelled, their classes.

    A subdirectory without images is not a class: it is ignored, with a
    warning when other subdirectories are classes. Symbolic links are
    followed as :mod:`jef.data.walk` says: each real file once, never a loop,
    never into another class's folder.

    Args:
        root: The folder.
        labels: ``"folders"`` (each subdirectory is a class), ``"none"``
            (every image under ``root``, unlabelled) or ``"auto"`` (folders when
            some subdirectory holds images, else none).
        what: The option that named ``root`` (``root``, ``test_root``); messages name it (``data.root``).
        left_out: Filled with ``{path: reason}`` of the links not followed and the second paths to a file.

    Returns:
        ``(paths, labels, class_names)``; the last two are None when unlabelled.

    Raises:
        FileNotFoundError: ``root`` is not a directory, or holds no images.
    """
    where = f"{what} {root}" if what != "root" else str(root)
    if not root.is_dir():
        absolute = Path(os.path.abspath(root))
        state = f"names a file, not a folder: {absolute}" if root.exists() else f"no such folder: {absolute}"
        raise FileNotFoundError(f"image_folder: {where} is not a directory (data.{what}: {state}); set data.{what} "
                                "to a folder of images")
    exts = " ".join(IMAGE_EXTENSIONS)
    walk = Walk.of(root)
    try:
        if labels == "none":
            paths = walk.images(root)
            if not paths:
                raise FileNotFoundError(f"image_folder: no images found under {where} (looked for {exts})")
            return paths, None, None
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        folders = {d.name: walk.class_folder(d) for d in subdirs}  # all first: links may not reach another class
        per_class = {d.name: walk.images(d, folders[d.name]) for d in subdirs if folders[d.name] is not None}
        empty = [name for name, files in per_class.items() if not files]
        per_class = {name: files for name, files in per_class.items() if files}
        loose = sorted(p for p in root.iterdir() if _is_image(p)) if per_class else walk.images(root, recursive=False)
    finally:
        if left_out is not None:
            left_out.update(walk.left_out)
    if not per_class:
        if labels == "folders":
            fix = ("the training root's subdirectories are classes, so test_root needs subdirectories of the "
                   "same classes" if what == "test_root" else "use labels: none for a flat folder")
            raise FileNotFoundError(
                f"image_folder: labels: folders needs one subdirectory of images per class in {where}, "
                f"found none with images ({exts}); {fix}")
        if not loose:
            raise FileNotFoundError(f"image_folder: no images found in {where} or its subdirectories "
                                    f"(looked for {exts})")
        return loose, None, None
    if loose:
        warnings.warn(f"image_folder: {len(loose)} images directly in {root} are ignored because its "
                      "subdirectories are used as classes; set labels: none to use every image unlabelled",
                      stacklevel=3)
    if empty:
        warnings.warn(f"image_folder: subdirectories of {root} without images are not classes: {listing(empty)}",
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

    A file that cannot be decoded raises :class:`ImageDecodeError` (an
    :class:`UnreadableImageError` that the command line shows as one line, from
    a DataLoader worker too) when ``on_bad_image`` is ``"error"``. With ``"skip"`` the item is the next
    readable one instead (its image, label and index, so a batch keeps its
    shape and the choice is deterministic); each process warns once per file
    and remembers it, and the file is added to ``skipped``.

    Args:
        paths: Image files.
        labels: Label per file, or None (unlabelled, label ``-1``).
        channels: 1 or 3.
        image_size: Output side.
        classes: Class names, indexed by label.
        on_bad_image: ``"skip"`` or ``"error"``.
        skipped: File to append skipped files to (``path<TAB>reason``), or None.
    """

    def __init__(self, paths: Sequence[Path | str], labels: list[int] | np.ndarray | None, channels: int,
                 image_size: int, classes: list[str] | None = None, *, on_bad_image: str = "skip",
                 skipped: Path | None = None):
        self.paths = np.array([str(p) for p in paths])
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.channels, self.image_size, self.classes = channels, image_size, classes
        self.on_bad_image, self.skipped = on_bad_image, skipped
        self.unreadable: dict[int, str] = {}  # per process: positions that failed, never decoded again

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            if position in self.unreadable:
                continue
            path = str(self.paths[position])
            image, reason = try_decode(path, self.channels, self.image_size)
            if image is None:
                if self.on_bad_image == "error":
                    raise ImageDecodeError(f"image_folder: cannot decode image {path}: {reason} (data.on_bad_image: "
                                           "error stops at the first); delete or replace the file, or set "
                                           "on_bad_image: skip to train without it")
                self._skip(position, path, reason)
                continue
            label = int(self.labels[position]) if self.labels is not None else -1
            return image, label, position
        raise ImageDecodeError(f"image_folder: none of the {len(self)} images can be decoded (the first: "
                               f"{self.paths[0]}: {self.unreadable.get(0)}); check the folder's files")

    def _skip(self, position: int, path: str, reason: str) -> None:
        self.unreadable[position] = reason
        warnings.warn(f"image_folder: skipped {path}, which cannot be decoded ({reason}); the next readable "
                      "image is used in its place", stacklevel=3)
        if self.skipped is not None:
            line = f"{path}\t{reason} (found while decoding)\n".encode()
            try:
                # One O_APPEND write per line: loader workers and processes append without interleaving.
                fd = os.open(self.skipped, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError as err:
                warnings.warn(f"image_folder: cannot add {path} to {self.skipped}: {err}", stacklevel=3)


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
    image_size: int = attrs.field(
        default=64, validator=attrs.validators.ge(8),
        metadata={"doc": "resize the shorter side to this (smaller images are upscaled), then centre-crop a square"})
    channels: int = attrs.field(default=3, validator=attrs.validators.in_([1, 3]),
                                metadata={"doc": "1 (greyscale) or 3 (RGB); any image mode is converted"})
    test_root: str | None = attrs.field(default=None, metadata={"doc": "separate folder of test images"})
    test_fraction: float = attrs.field(
        default=0.0, validator=[attrs.validators.ge(0.0), attrs.validators.lt(1.0)],
        metadata={"doc": "hold out this fraction of root as the test split (seeded, stratified)"})
    seed: int = attrs.field(default=0, metadata={"doc": "seed of the test_fraction split"})
    subset_train: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)),
                                           metadata={"doc": "keep only the first N training images"})
    subset_test: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)),
                                          metadata={"doc": "keep only the first N test images"})
    on_bad_image: str = attrs.field(
        default="skip", validator=attrs.validators.in_(["skip", "error"]),
        metadata={"doc": "skip (warn, list in skipped_images.txt, go on) | error: files that are not readable images"})
    check_images: bool = attrs.field(
        default=True, metadata={"doc": "open every file's header when building, to drop unreadable files up front"})


def _drop(found: tuple[list[Path], list[int] | None, list[str] | None], bad: dict[str, str],
          ) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """A listing without the ``bad`` files; a class left with no file is no longer a class."""
    paths, targets, classes = found
    keep = [i for i, p in enumerate(paths) if str(p) not in bad]
    paths = [paths[i] for i in keep]
    if targets is None or classes is None:
        return paths, None, None
    targets = [targets[i] for i in keep]
    used = sorted(set(targets))
    if len(used) < len(classes):
        gone = [classes[i] for i in sorted(set(range(len(classes))) - set(used))]
        warnings.warn(f"image_folder: class folders without a readable image are not classes: {listing(gone)}",
                      stacklevel=3)
        renumber = {old: new for new, old in enumerate(used)}
        targets, classes = [renumber[t] for t in targets], [classes[i] for i in used]
    return paths, targets, classes


def _report_left_out(left_out: dict[str, str], listings: dict[str, tuple[Path, tuple]], ctx: RunContext) -> None:
    """Warn about the links not followed (and second paths to a file) and add them to the skipped-files list."""
    if not left_out or ctx.rank != 0:
        return
    record = ctx.run_dir / SKIPPED_NAME if ctx.run_dir is not None else None
    record_skipped(record, left_out)
    roots = " and ".join(f"{what} {root}" for what, (root, _) in listings.items())
    named = [f"{p} ({left_out[p]})" for p in sorted(left_out)]
    where = f"; all are listed in {record}" if record is not None else ""
    warnings.warn(f"image_folder: left out {len(left_out)} paths under {roots} (symbolic links not followed, "
                  f"second paths to a file, folders that cannot be listed): {listing(named)}{where}", stacklevel=3)


def _check_listings(listings: dict[str, tuple[Path, tuple]], options: FolderOptions,
                    ctx: RunContext) -> dict[str, str]:
    """Header-check every listed file; warn (skip) or raise (error); write the list; return the bad files."""
    paths = [str(p) for _, (paths, _, _) in listings.values() for p in paths]
    bad, small = check_images(paths, min_side=options.image_size, progress=ctx.rank == 0)
    record = ctx.run_dir / SKIPPED_NAME if ctx.run_dir is not None else None
    if ctx.rank == 0:
        record_skipped(record, bad)
    roots = " and ".join(f"{what} {root}" for what, (root, _) in listings.items())
    if bad:
        named = [f"{p} ({bad[p]})" for p in sorted(bad)]
        where = f"; all are listed in {record}" if record is not None else ""
        if options.on_bad_image == "error":
            raise UnreadableImageError(
                f"image_folder: {len(bad)} of {len(paths)} files under {roots} are not readable images: "
                f"{listing(named)}{where}; delete or replace them, or set on_bad_image: skip to train without them")
        if ctx.rank == 0:
            warnings.warn(f"image_folder: skipped {len(bad)} of {len(paths)} files under {roots} that are not "
                          f"readable images: {listing(named)}{where} (on_bad_image: error stops instead)",
                          stacklevel=3)
    if small and ctx.rank == 0:
        examples = [f"{p} ({w}x{h})" for p, w, h in small]
        warnings.warn(f"image_folder: {len(small)} of {len(paths) - len(bad)} images are smaller than image_size "
                      f"{options.image_size} on their shorter side and are upscaled: {listing(examples)}",
                      stacklevel=3)
    return bad


def build_image_folder(options: FolderOptions, ctx: RunContext) -> DataSplits:
    """Build the ``image_folder`` dataset."""
    if options.test_root and options.test_fraction > 0:
        raise ValueError("image_folder: set test_root or test_fraction, not both")
    root = Path(options.root).expanduser()
    left_out: dict[str, str] = {}
    listings: dict[str, tuple[Path, tuple]] = {"root": (root, scan_folder(root, options.labels, left_out=left_out))}
    test_dir = Path(options.test_root).expanduser() if options.test_root else None
    if test_dir is not None:
        test_labels_mode = "none" if listings["root"][1][2] is None else "folders"
        listings["test_root"] = (test_dir, scan_folder(test_dir, test_labels_mode, what="test_root",
                                                       left_out=left_out))
    _report_left_out(left_out, listings, ctx)
    bad = _check_listings(listings, options, ctx) if options.check_images else {}
    paths, targets, classes = _drop(listings["root"][1], bad)
    if not paths:
        raise UnreadableImageError(f"image_folder: none of the image files in root {root} is a readable image "
                                   f"(see the files listed above); check that the folder holds images")
    labels = None if targets is None else np.asarray(targets, dtype=np.int64)
    size, channels = options.image_size, options.channels
    record = ctx.run_dir / SKIPPED_NAME if ctx.run_dir is not None else None
    kwargs = {"on_bad_image": options.on_bad_image, "skipped": record}
    test = None
    if test_dir is not None:
        test_paths, test_targets, test_classes = _drop(listings["test_root"][1], bad)
        if not test_paths:
            raise UnreadableImageError(f"image_folder: none of the image files in test_root {test_dir} is a "
                                       "readable image (see the files listed above)")
        test_labels = None
        if classes is not None:
            unknown = sorted(set(test_classes or []) - set(classes))
            if unknown:
                raise ValueError(f"image_folder: test classes {unknown} in {test_dir} are not among the "
                                 f"training classes of {root}: {classes}")
            test_labels = [classes.index(test_classes[t]) for t in test_targets]  # type: ignore[index]
        test = FolderImages(test_paths, test_labels, channels, size, classes, **kwargs)
    elif options.test_fraction > 0:
        train_pos, test_pos = split_fraction(labels, len(paths), options.test_fraction, options.seed)
        if len(train_pos) == 0:
            raise ValueError(f"image_folder: test_fraction {options.test_fraction} leaves no training images "
                             f"of the {len(paths)} in {root}; lower it")
        test = FolderImages([paths[i] for i in test_pos], None if labels is None else labels[test_pos],
                            channels, size, classes, **kwargs)
        paths = [paths[i] for i in train_pos]
        labels = None if labels is None else labels[train_pos]
    train = FolderImages(paths, labels, channels, size, classes, **kwargs)
    return make_splits(train, test, num_classes=None if classes is None else len(classes), channels=channels,
                       image_size=size, name=f"image_folder:{root.name}",
                       subset_train=options.subset_train, subset_test=options.subset_test)
