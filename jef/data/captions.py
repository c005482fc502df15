"""Image-text datasets: ``image_text`` (captions files) and the bundled ``fashion_mnist_captions``.

A split yields ``{"image": uint8 [C, H, W], "text": str, "label": int, "index": int}`` (label ``-1`` when
unlabelled) and has ``texts`` (every caption, in index order, read without decoding an image), ``classes``
and ``head(n)``. ``image_text`` reads four formats (option ``format``):

* ``csv``: a header row, then one row per sample; columns ``image``, ``caption`` and optionally a label
  (options ``image_column``, ``caption_column``, ``label_column``).
* ``jsonl``: one JSON object per line with the same keys.
* ``coco``: a COCO captions JSON file (``images`` with ``id`` and ``file_name``, ``annotations`` with
  ``image_id`` and ``caption``); one sample per caption, and the split's ``image_ids`` says which captions
  describe the same image, so that retrieval can count each of them as correct.
* ``webdataset``: tar shards (a glob or brace pattern, ``shards-{000..009}.tar``) of ``jpg|png|jpeg`` and
  ``txt`` members sharing a key, read into memory with the ``webdataset`` package.

Image paths are relative to ``root`` when set, else to the captions file's folder (absolute paths are kept);
``csv`` and ``jsonl`` files may be gzip-compressed (``.gz``).

References:
    X. Chen, H. Fang, T.-Y. Lin, R. Vedantam, S. Gupta, P. Dollar, C. L. Zitnick. *Microsoft COCO
    Captions: Data Collection and Evaluation Server*. arXiv:1504.00325, 2015.
    H. Xiao, K. Rasul, R. Vollgraf. *Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
    Learning Algorithms*. arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch.utils.data import Dataset

from jef.components import DataSplits, RunContext
from jef.config.options import doc
from jef.data.base import InMemoryImages, decode_errors, make_splits, pil_to_uint8
from jef.data.bundled.captions import CLASS_NAMES as FASHION_CAPTION_CLASSES
from jef.data.bundled.captions import PROMPT_TEMPLATES as FASHION_PROMPT_TEMPLATES
from jef.data.bundled.captions import load_captions
from jef.data.image_check import ImageDecodeError, try_decode

__all__ = ["FASHION_CAPTION_CLASSES", "FASHION_PROMPT_TEMPLATES", "IMAGE_TEXT_FIELDS",
           "FashionCaptionsOptions", "ImageTextDataset", "ImageTextFiles", "ImageTextOptions",
           "build_fashion_mnist_captions", "build_image_text", "infer_format"]

#: The fields of an image-text sample.
IMAGE_TEXT_FIELDS = ("image", "text", "label", "index")
COCO_PAPER = "Chen et al., Microsoft COCO Captions, arXiv:1504.00325 (2015)"
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "coco", ".tar": "webdataset"}
_IMAGE_KEYS = ("jpg", "png", "jpeg")


class ImageTextDataset(Dataset):
    """Images held in memory as one uint8 tensor, each with a caption and an optional label.

    Args:
        images: uint8 ``[N, C, H, W]`` (``[N, H, W]`` is single-channel); ``texts``: one caption each.
        labels: Integer labels ``[N]``, or None (label ``-1``); ``classes``: names indexed by label, or None.
        image_ids: Which image each sample shows (captions of one image share it), or None.
    """

    def __init__(self, images: Any, texts: Sequence[str], labels: Any | None = None,
                 classes: Sequence[str] | None = None, image_ids: Sequence[Any] | None = None):
        store = InMemoryImages(images, labels, classes)  # its checks: uint8, 4-d, one label per image
        self.images, self.labels, self.classes = store.images, store.labels, store.classes
        self.texts = [str(t) for t in texts]
        self.image_ids = list(image_ids) if image_ids is not None else None
        for name, values in (("texts", self.texts), ("image_ids", self.image_ids)):
            if values is not None and len(values) != len(self.images):
                raise ValueError(f"{len(self.images)} images but {len(values)} {name}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = int(self.labels[index]) if self.labels is not None else -1
        return {"image": self.images[index], "text": self.texts[index], "label": label, "index": int(index)}

    def head(self, n: int | None) -> ImageTextDataset:
        """The first ``n`` samples (all when None), copied so workers are not sent the whole tensor."""
        if n is None or n >= len(self):
            return self
        labels = self.labels[:n].clone() if self.labels is not None else None
        ids = self.image_ids[:n] if self.image_ids is not None else None
        return ImageTextDataset(self.images[:n].clone(), self.texts[:n], labels, self.classes, ids)


class ImageTextFiles(Dataset):
    """Image files decoded on access, each with a caption read from a captions file.

    Paths are a NumPy string array (DataLoader workers share one buffer instead of touching millions of
    Python objects). A file that fails to decode is reported with the captions file and line naming it.

    Args:
        paths: Image files; ``texts``: one caption each; ``labels``: one label each, or None (``-1``).
        channels: 1 or 3; ``image_size``: the output side; ``classes``: names indexed by label, or None.
        where: Each sample's place for messages, ``where.format(line=...)`` (``"captions.csv:{line}"``).
        lines: Each sample's 1-based line (or COCO annotation number) in the captions file.
        image_ids: Which image each sample shows, or None.
    """

    def __init__(self, paths: Sequence[str | Path], texts: Sequence[str], labels: Any | None, channels: int,
                 image_size: int, classes: Sequence[str] | None, *, where: str, lines: Sequence[int],
                 image_ids: Sequence[Any] | None = None):
        self.paths, self.texts = np.array([str(p) for p in paths]), [str(t) for t in texts]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.channels, self.image_size = channels, image_size
        self.classes = list(classes) if classes is not None else None
        self.where, self.lines = where, np.asarray(lines, dtype=np.int64)
        self.image_ids = list(image_ids) if image_ids is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = str(self.paths[index])
        image, reason = try_decode(path, self.channels, self.image_size)
        if image is None:
            raise ImageDecodeError(f"image_text: {self.where.format(line=self.lines[index])}: cannot decode image "
                                   f"{path}: {reason}; replace the file or remove its line")
        label = int(self.labels[index]) if self.labels is not None else -1
        return {"image": image, "text": self.texts[index], "label": label, "index": int(index)}

    def head(self, n: int | None) -> ImageTextFiles:
        """The first ``n`` samples (all when None)."""
        if n is None or n >= len(self):
            return self
        labels = self.labels[:n].copy() if self.labels is not None else None
        ids = self.image_ids[:n] if self.image_ids is not None else None
        return ImageTextFiles(self.paths[:n], self.texts[:n], labels, self.channels, self.image_size, self.classes,
                              where=self.where, lines=self.lines[:n], image_ids=ids)


_subset = attrs.validators.optional(attrs.validators.ge(1))


@attrs.frozen(kw_only=True)
class ImageTextOptions:
    """Options of the ``image_text`` dataset."""

    train: str = attrs.field(metadata=doc(
        "captions file of the training split: .csv, .jsonl, COCO captions .json, or webdataset shards "
        "(a glob or brace pattern such as shards-{000..009}.tar)"))
    test: str | None = attrs.field(default=None, metadata=doc("captions file of the test split, same kinds"))
    format: Literal["csv", "jsonl", "coco", "webdataset"] | None = attrs.field(default=None, metadata=doc(
        "csv | jsonl | coco | webdataset; default: from the file's extension (.csv, .jsonl, .json -> coco, "
        ".tar -> webdataset; .csv.gz and .jsonl.gz too)"))
    root: str | None = attrs.field(default=None, metadata=doc(
        "folder that image paths are relative to; default: the captions file's folder (absolute paths are kept)"))
    channels: int = attrs.field(default=3, validator=attrs.validators.in_([1, 3]),
                                metadata=doc("1 (greyscale) or 3 (RGB); any image mode is converted"))
    image_size: int = attrs.field(default=224, validator=attrs.validators.ge(8), metadata=doc(
        "resize the shorter side to this, then centre-crop a square"))
    image_column: str = attrs.field(default="image", metadata=doc("csv column / jsonl key of the image path"))
    caption_column: str = attrs.field(default="caption", metadata=doc("csv column / jsonl key of the caption"))
    label_column: str | None = attrs.field(default=None, metadata=doc(
        "csv column / jsonl key / webdataset member of the label (an integer or a class name); default: unlabelled"))
    subset_train: int | None = attrs.field(default=None, validator=_subset,
                                           metadata=doc("keep only the first N training samples"))
    subset_test: int | None = attrs.field(default=None, validator=_subset,
                                          metadata=doc("keep only the first N test samples"))


def infer_format(path: str) -> str:
    """The format a captions file's extension implies (``.gz`` looked through); ValueError for others."""
    name = path.lower().removesuffix(".gz")
    for ext, kind in _FORMATS.items():
        if name.endswith(ext):
            return kind
    raise ValueError(f"image_text: cannot tell the format of {path} from its extension (known: "
                     f"{', '.join(f'{e} -> {k}' for e, k in _FORMATS.items())}); set data.format")


class _Rows:
    """What a loader read: per sample its image (a path, or a tensor for webdataset), caption, raw label
    (an int, a class name or None), line and, for COCO, image id."""

    def __init__(self) -> None:
        self.images, self.texts, self.labels, self.lines, self.image_ids = [], [], [], [], []

    def add(self, image: Any, text: str, label: Any, line: int) -> None:
        self.images.append(image)
        self.texts.append(text)
        self.labels.append(label)
        self.lines.append(line)


def _open_text(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"image_text: no such captions file: {path}; set data.train / data.test to an "
                                "existing file")
    if path.stat().st_size == 0:
        raise ValueError(f"image_text: {path} is empty; it needs one sample per line")
    # utf-8-sig: spreadsheet programs start CSV files with a byte-order mark.
    return (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8-sig", newline="")


def _caption(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"image_text: {where}: empty or missing caption ({key!r} is {value!r}); write a caption "
                         "or remove the line")
    return value.strip()


def _columns(options: ImageTextOptions) -> list[tuple[str, str]]:
    """The columns (keys) to read, each with the option that names it."""
    named = [(options.image_column, "image_column"), (options.caption_column, "caption_column"),
             (options.label_column, "label_column")]
    return [(column, option) for column, option in named if column]


def _csv_records(path: Path, handle: Any, options: ImageTextOptions) -> Iterator[tuple[int, Any]]:
    reader, header = csv.reader(handle, strict=True), None
    while True:
        line = reader.line_num + 1  # the record's first line (a quoted caption may span lines)
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise ValueError(f"image_text: {path}:{line}: malformed CSV ({err}); quote fields that hold "
                             "commas, quotes or line breaks") from err
        if header is None:
            header = row
            missing = [(column, option) for column, option in _columns(options) if column not in header]
            if missing:
                raise ValueError(f"image_text: {path}:1: no column {missing[0][0]!r} in the header (columns: "
                                 f"{', '.join(header)}); rename the column or set data.{missing[0][1]}")
        elif row and len(row) != len(header):
            raise ValueError(f"image_text: {path}:{line}: {len(row)} fields, but the header has {len(header)}; "
                             "quote fields that hold commas")
        elif row:
            yield line, dict(zip(header, row, strict=True))


def _jsonl_records(path: Path, handle: Any, options: ImageTextOptions) -> Iterator[tuple[int, Any]]:
    for line, text in enumerate(handle, start=1):
        if text.strip():
            try:
                yield line, json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"image_text: {path}:{line}: not valid JSON ({err.msg}, column {err.colno}); "
                                 "write one JSON object per line") from err


def _load_table(path: Path, options: ImageTextOptions, records: Any) -> _Rows:
    """Samples from the records of a CSV or JSON-lines file (``records`` reads them)."""
    rows = _Rows()
    with _open_text(path) as handle:
        for line, record in records(path, handle, options):
            where = f"{path}:{line}"
            if not isinstance(record, dict):
                raise ValueError(f"image_text: {where}: expected a JSON object, got {type(record).__name__}")
            for key, option in _columns(options):
                if key not in record:
                    raise ValueError(f"image_text: {where}: no key {key!r} (keys: {', '.join(record)}); add it or "
                                     f"set data.{option}")
            image = record[options.image_column]
            if not isinstance(image, str) or not image:
                raise ValueError(f"image_text: {where}: {options.image_column!r} must be an image path, got {image!r}")
            rows.add(image, _caption(record[options.caption_column], where, options.caption_column),
                     record[options.label_column] if options.label_column else None, line)
    if not rows.texts:
        raise ValueError(f"image_text: {path} holds no samples (only a header or blank lines); add one per line")
    return rows


def _load_coco(path: Path, options: ImageTextOptions) -> _Rows:
    with _open_text(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"image_text: {path}:{err.lineno}: not valid JSON ({err.msg}); a COCO captions file "
                             "is one JSON object") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations"), list):
        raise ValueError(f"image_text: {path}: a COCO captions file needs lists 'images' and 'annotations' "
                         "(or set data.format for another kind of JSON)")
    files: dict[Any, str] = {}
    for k, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise ValueError(f"image_text: {path}: images[{k}] needs 'id' and 'file_name', got {image!r}")
        files[image["id"]] = image["file_name"]
    per_image: dict[Any, list[tuple[int, str]]] = {i: [] for i in files}
    for k, note in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}]"
        if not isinstance(note, dict) or "image_id" not in note or "caption" not in note:
            raise ValueError(f"image_text: {where} needs 'image_id' and 'caption', got {note!r}")
        if note["image_id"] not in files:
            raise ValueError(f"image_text: {where}: image_id {note['image_id']!r} is not in 'images'")
        per_image[note["image_id"]].append((k, _caption(note["caption"], where, "caption")))
    rows = _Rows()
    # Grouped by image, in the order of 'images': the captions of one image are neighbours.
    for image_id, notes in per_image.items():
        for k, text in notes:
            rows.add(files[image_id], text, None, k)
            rows.image_ids.append(image_id)
    if not rows.texts:
        raise ValueError(f"image_text: {path} has no annotations; a COCO captions file lists one per caption")
    return rows


def _load_webdataset(pattern: str, options: ImageTextOptions) -> _Rows:
    try:
        import webdataset
    except ImportError as err:
        raise ImportError("image_text: format webdataset needs the webdataset package: "
                          "pip install 'jef[webdataset]'") from err
    from braceexpand import braceexpand  # a dependency of webdataset
    from PIL import Image

    shards = sorted({p for part in braceexpand(pattern) for p in glob.glob(os.path.expanduser(part))})
    if not shards:
        raise FileNotFoundError(f"image_text: no webdataset shards match {pattern}; check data.train / data.test")
    rows = _Rows()
    for shard in shards:
        samples = webdataset.WebDataset([shard], shardshuffle=False, empty_check=False)
        for number, sample in enumerate(samples, start=1):
            where = f"{shard}: sample {number} (key {sample.get('__key__')!r})"
            key = next((k for k in _IMAGE_KEYS if k in sample), None)
            if key is None or "txt" not in sample:
                raise ValueError(f"image_text: {where} needs an image ({'|'.join(_IMAGE_KEYS)}) and a txt member, "
                                 f"has {', '.join(k for k in sample if not k.startswith('__'))}")
            try:
                with Image.open(io.BytesIO(sample[key])) as img:
                    img.load()
                    image = pil_to_uint8(img, options.channels, options.image_size)
            except decode_errors() as err:  # ImageModeError is a ValueError
                raise ImageDecodeError(f"image_text: {where}: cannot decode {key}: {err}; replace it") from err
            label = sample.get(options.label_column) if options.label_column else None
            rows.add(image, _caption(sample["txt"].decode("utf-8"), where, "txt"),
                     label.decode("utf-8") if isinstance(label, bytes) else label, number)
    if not rows.texts:
        raise ValueError(f"image_text: the shards {pattern} hold no samples")
    return rows


def _resolve(rows: _Rows, path: Path, options: ImageTextOptions, where: str) -> list[str]:
    """Image paths made absolute, each checked to exist (a missing one is named with its line)."""
    base = Path(options.root).expanduser() if options.root else path.parent
    resolved = []
    for image, line in zip(rows.images, rows.lines, strict=True):
        full = Path(image).expanduser()
        full = full if full.is_absolute() else base / full
        if not full.is_file():
            raise FileNotFoundError(f"image_text: {where.format(line=line)}: image {full} does not exist; fix the "
                                    f"path (relative paths start at {base}; set data.root to change that)")
        resolved.append(str(full))
    return resolved


def _labels(raw: list[Any], where: str, state: dict[str, Any]) -> np.ndarray | None:
    """Integer labels from raw values: all integers, or all class names (empty: -1, unlabelled).

    ``state`` carries the training split's kind and class names, so the test split's map to the same indices.
    """
    if all(value is None for value in raw):
        return None
    values = ["" if v is None else str(v).strip() for v in raw]
    bad = [v for v in values if not re.fullmatch(r"(-?\d+)?", v)]
    if not state.setdefault("names", bool(bad)):
        bad = bad or [v for v in values if v and int(v) < -1]
        if bad:
            raise ValueError(f"image_text: {where}: labels must be integers >= 0 like the training split's (or "
                             f"empty/-1: unlabelled), got {bad[0]!r}")
        return np.array([int(v) if v else -1 for v in values], dtype=np.int64)
    index = {name: i for i, name in enumerate(state.setdefault("classes", sorted({v for v in values if v})))}
    unknown = sorted({v for v in values if v and v not in index})
    if unknown:
        raise ValueError(f"image_text: {where}: labels {', '.join(unknown[:5])} are not training classes "
                         f"({', '.join(list(index)[:10])}); fix them or leave them empty (unlabelled)")
    return np.array([index[v] if v else -1 for v in values], dtype=np.int64)


def _load_split(file: str, options: ImageTextOptions, state: dict[str, Any]) -> Dataset:
    kind = options.format or infer_format(file)
    if kind == "webdataset":
        rows = _load_webdataset(file, options)
    else:
        path = Path(file).expanduser()
        records = {"csv": _csv_records, "jsonl": _jsonl_records}.get(kind)
        rows = _load_table(path, options, records) if records else _load_coco(path, options)
    labels = _labels(rows.labels, file, state)
    if labels is not None:
        state["max_label"] = max(state.get("max_label", -1), int(labels.max()))
    if kind == "webdataset":
        return ImageTextDataset(torch.stack(rows.images), rows.texts, labels, state.get("classes"))
    # Braces escaped: the file name goes into a format string of the line.
    where = file.replace("{", "{{").replace("}", "}}") + (": annotations[{line}]" if rows.image_ids else ":{line}")
    paths = _resolve(rows, Path(file).expanduser(), options, where)
    if not rows.image_ids:
        # Rows naming the same file show the same image: its id is the first such row's index.
        first: dict[str, int] = {}
        rows.image_ids = [first.setdefault(p, i) for i, p in enumerate(paths)]
    return ImageTextFiles(paths, rows.texts, labels, options.channels, options.image_size, state.get("classes"),
                          where=where, lines=rows.lines, image_ids=rows.image_ids)


def build_image_text(options: ImageTextOptions, ctx: RunContext) -> DataSplits:
    """Build image-caption splits from captions files (see the module docstring for the formats)."""
    state: dict[str, Any] = {}
    train = _load_split(options.train, options, state)
    test = _load_split(options.test, options, state) if options.test else None
    classes = state.get("classes")
    num_classes = len(classes) if classes else (state["max_label"] + 1 if state.get("max_label", -1) >= 0 else None)
    splits = make_splits(train, test, num_classes=num_classes, channels=options.channels,
                         image_size=options.image_size, name="image_text", subset_train=options.subset_train,
                         subset_test=options.subset_test)
    return attrs.evolve(splits, fields=IMAGE_TEXT_FIELDS, class_names=tuple(classes) if classes else None)


@attrs.frozen(kw_only=True)
class FashionCaptionsOptions:
    """Options of ``fashion_mnist_captions``."""

    subset_train: int | None = attrs.field(default=None, validator=_subset,
                                           metadata=doc("keep only the first N of the 10,000 training images"))
    subset_test: int | None = attrs.field(default=None, validator=_subset,
                                          metadata=doc("keep only the first N of the 2,000 test images"))


def build_fashion_mnist_captions(options: FashionCaptionsOptions, ctx: RunContext) -> DataSplits:
    """The bundled Fashion-MNIST subset (10k train / 2k test, 28x28 grey) with one generated caption each.

    Captions come from ``jef/data/bundled/fashion_mnist_captions.jsonl.gz`` (:mod:`jef.data.bundled.captions`
    made them from the images); prefixes stay class-balanced, like ``fashion_mnist_mini``'s.
    """
    from jef.data.bundled import load_bundle

    arrays, captions = load_bundle(), load_captions()
    if [len(captions[s]) for s in ("train", "test")] != [len(arrays[f"x_{s}"]) for s in ("train", "test")]:
        raise ValueError("fashion_mnist_captions: the bundled captions do not match the images; rebuild them with "
                         "`python -m jef.data.bundled.captions`")
    splits = {s: ImageTextDataset(arrays[f"x_{s}"], captions[s], arrays[f"y_{s}"], FASHION_CAPTION_CLASSES)
              for s in ("train", "test")}
    result = make_splits(splits["train"], splits["test"], num_classes=10, channels=1, image_size=28,
                         name="fashion_mnist_captions", subset_train=options.subset_train,
                         subset_test=options.subset_test)
    return attrs.evolve(result, fields=IMAGE_TEXT_FIELDS, class_names=FASHION_CAPTION_CLASSES,
                        prompt_templates=FASHION_PROMPT_TEMPLATES)
