"""Image-text data: the ``image_text`` formats, their error messages, and the bundled ``fashion_mnist_captions``."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import pickle
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from jef.data.base import head
from jef.data.bundled.captions import CAPTIONS_PATH, SYNONYMS, caption_records, load_captions, write_captions
from jef.data.captions import (
    FASHION_CAPTION_CLASSES,
    FashionCaptionsOptions,
    ImageTextDataset,
    ImageTextFiles,
    ImageTextOptions,
    build_fashion_mnist_captions,
    build_image_text,
    infer_format,
)
from jef.data.image_check import ImageDecodeError

#: SHA-256 of the shipped captions file, written with zlib 1.2.13 (another zlib may compress differently).
CAPTIONS_SHA256 = "18fe2923c976de3f12eed8d4cc90152de9e568093cd0a9394ff236b7fe12f230"
FIELDS = ("image", "text", "label", "index")
CAPTIONS = ["a red square", "a blue square, with a border", "a green square"]


def _png(path: Path, value: int, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, 7)).save(path)
    return path


def _images(tmp_path: Path) -> list[str]:
    return [_png(tmp_path / "img" / f"{i}.png", 40 * i).relative_to(tmp_path).as_posix() for i in range(3)]


def _options(train: Path | str, **kwargs) -> ImageTextOptions:
    return ImageTextOptions(train=str(train), image_size=8, **kwargs)


def _check_samples(split, texts, labels=None):
    assert split.texts == texts
    assert len(split) == len(texts)
    for i in range(len(split)):
        sample = split[i]
        assert tuple(sample) == FIELDS
        assert sample["image"].dtype == torch.uint8 and tuple(sample["image"].shape) == (3, 8, 8)
        assert sample["text"] == texts[i] and sample["index"] == i
        assert sample["label"] == (labels[i] if labels is not None else -1)


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_csv_with_labels_named_by_class(tmp_path):
    images = _images(tmp_path)
    path = _write_csv(tmp_path / "train.csv", [["image", "caption", "kind"],
                                               *[[p, c, k] for p, c, k in zip(images, CAPTIONS, "bab", strict=True)]])
    splits = build_image_text(_options(path, label_column="kind"), None)
    _check_samples(splits.train, CAPTIONS, [1, 0, 1])
    assert splits.fields == FIELDS and splits.class_names == ("a", "b") and splits.num_classes == 2
    assert splits.train.classes == ["a", "b"] and splits.test is None
    # Distinct pixels per file: image i is the file of row i, resized, not a cached one.
    assert splits.train[0]["image"][0, 0, 0] == 0 and splits.train[2]["image"][0, 0, 0] == 80


def test_jsonl_with_root_and_test_split(tmp_path):
    images = _images(tmp_path)
    captions = tmp_path / "meta"
    captions.mkdir()
    lines = [json.dumps({"image": p, "caption": c, "label": i})
             for i, (p, c) in enumerate(zip(images, CAPTIONS, strict=True))]
    (captions / "train.jsonl").write_text("\n".join(lines) + "\n\n")  # a blank last line is allowed
    (captions / "test.jsonl").write_text(lines[0] + "\n")
    splits = build_image_text(_options(captions / "train.jsonl", test=str(captions / "test.jsonl"),
                                       root=str(tmp_path), label_column="label", subset_train=2), None)
    _check_samples(splits.train, CAPTIONS[:2], [0, 1])
    _check_samples(splits.test, CAPTIONS[:1], [0])
    assert splits.num_classes == 3 and splits.class_names is None
    assert isinstance(splits.train, ImageTextFiles)  # make_splits kept the split's own head, not a Subset
    batch = next(iter(DataLoader(splits.train, batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 3, 8, 8) and batch["text"] == CAPTIONS[:2]
    assert batch["label"].tolist() == [0, 1] and batch["index"].tolist() == [0, 1]
    clone = pickle.loads(pickle.dumps(splits.train))  # DataLoader workers receive the split pickled
    assert torch.equal(clone[1]["image"], splits.train[1]["image"]) and clone.texts == splits.train.texts


def test_gzipped_csv_with_integer_labels_and_shared_images(tmp_path):
    images = _images(tmp_path)
    text = io.StringIO()
    csv.writer(text).writerows([["image", "caption", "y"], *zip([images[0], images[1], images[0]], CAPTIONS,
                                                                   ["4", "", "1"], strict=True)])
    (tmp_path / "train.csv.gz").write_bytes(gzip.compress(text.getvalue().encode()))
    splits = build_image_text(_options(tmp_path / "train.csv.gz", label_column="y"), None)
    _check_samples(splits.train, CAPTIONS, [4, -1, 1])
    assert splits.num_classes == 5 and splits.class_names is None
    assert splits.train.image_ids == [0, 1, 0]  # rows naming one file show one image


def test_coco_gives_one_sample_per_caption_with_image_ids(tmp_path):
    images = _images(tmp_path)
    coco = {"images": [{"id": 7, "file_name": images[0]}, {"id": 3, "file_name": images[1]}],
            "annotations": [{"image_id": 3, "caption": "b one"}, {"image_id": 7, "caption": "a one "},
                            {"image_id": 3, "caption": "b two"}, {"image_id": 7, "caption": "a two"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    splits = build_image_text(_options(tmp_path / "captions.json"), None)
    _check_samples(splits.train, ["a one", "a two", "b one", "b two"])
    assert splits.train.image_ids == [7, 7, 3, 3]
    assert torch.equal(splits.train[0]["image"], splits.train[1]["image"])
    assert splits.num_classes is None
    assert head(splits.train, 3).image_ids == [7, 7, 3]


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _encoded(value: int, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), (value, value, value)).save(buffer, kind)
    return buffer.getvalue()


def test_webdataset_shards_read_into_memory(tmp_path):
    pytest.importorskip("webdataset")
    _tar(tmp_path / "shard-000.tar", {"s0.png": _encoded(10), "s0.txt": CAPTIONS[0].encode(), "s0.cls": b"2",
                                      "s1.jpg": _encoded(200, "JPEG"), "s1.txt": CAPTIONS[1].encode(),
                                      "s1.cls": b"0"})
    _tar(tmp_path / "shard-001.tar", {"s2.jpeg": _encoded(90, "JPEG"), "s2.txt": CAPTIONS[2].encode(),
                                      "s2.cls": b"1"})
    splits = build_image_text(_options(tmp_path / "shard-{000..001}.tar", label_column="cls"), None)
    assert isinstance(splits.train, ImageTextDataset)
    _check_samples(splits.train, CAPTIONS, [2, 0, 1])
    assert splits.train[0]["image"][0, 0, 0] == 10
    assert len(build_image_text(_options(tmp_path / "shard-*.tar"), None).train) == 3


def test_webdataset_missing_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "webdataset", None)
    with pytest.raises(ImportError, match=r"pip install 'jef\[webdataset\]'"):
        build_image_text(_options(tmp_path / "shard.tar"), None)


def test_format_is_inferred_from_the_extension():
    assert [infer_format(p) for p in ("a.csv", "a.jsonl.gz", "a.json", "s-{0..3}.tar")] == [
        "csv", "jsonl", "coco", "webdataset"]
    with pytest.raises(ValueError, match="a.txt.*set data.format"):
        infer_format("a.txt")


@pytest.mark.parametrize(("content", "message"), [
    ("image,caption\nimg/0.png,fine\nimg/1.png,too,many\n", r"train.csv:3: 3 fields, but the header has 2"),
    ('image,caption\nimg/0.png,"never closed\n', r"train.csv:2: malformed CSV"),
    ("image,text\nimg/0.png,x\n", r"train.csv:1: no column 'caption'.*columns: image, text.*data.caption_column"),
    ("image,caption\nimg/0.png,  \n", r"train.csv:2: empty or missing caption"),
    ("image,caption\n", r"train.csv holds no samples"),
    ("", r"train.csv is empty"),
], ids=["fields", "quote", "column", "empty-caption", "no-rows", "empty-file"])
def test_csv_errors_name_the_file_and_line(tmp_path, content, message):
    _images(tmp_path)
    (tmp_path / "train.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        build_image_text(_options(tmp_path / "train.csv"), None)


@pytest.mark.parametrize(("content", "message"), [
    ('{"image": "img/0.png", "caption": "ok"}\n{"image": "img/1.png", "caption": \n', r"train.jsonl:2: not valid JSON"),
    ('{"image": "img/0.png"}\n', r"train.jsonl:1: no key 'caption'.*data.caption_column"),
    ('["img/0.png", "x"]\n', r"train.jsonl:1: expected a JSON object"),
    ('\n{"image": "img/0.png", "caption": ""}\n', r"train.jsonl:2: empty or missing caption"),
], ids=["json", "key", "not-object", "empty-caption"])
def test_jsonl_errors_name_the_file_and_line(tmp_path, content, message):
    _images(tmp_path)
    (tmp_path / "train.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        build_image_text(_options(tmp_path / "train.jsonl"), None)


def test_a_missing_image_names_the_captions_line_and_the_path(tmp_path):
    _images(tmp_path)
    path = _write_csv(tmp_path / "train.csv", [["image", "caption"], ["img/0.png", "a"], ["img/gone.png", "b"]])
    with pytest.raises(FileNotFoundError, match=r"train.csv:3: image .*img/gone.png does not exist.*data.root"):
        build_image_text(_options(path), None)


def test_an_undecodable_image_names_the_captions_line_and_the_path(tmp_path):
    _images(tmp_path)
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    path = _write_csv(tmp_path / "train.csv", [["image", "caption"], ["img/0.png", "a"], ["img/bad.png", "b"]])
    split = build_image_text(_options(path), None).train
    assert split.texts == ["a", "b"]  # texts need no decoding
    with pytest.raises(ImageDecodeError, match=r"train.csv:3: cannot decode image .*img/bad.png"):
        split[1]


def test_a_missing_coco_image_names_its_annotation(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "nowhere.png"}], "annotations": [{"image_id": 1, "caption": "x"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    with pytest.raises(FileNotFoundError, match=r"captions.json: annotations\[0\]: image .*nowhere.png"):
        build_image_text(_options(tmp_path / "captions.json"), None)


def test_the_datasets_are_registered_with_documented_options():
    from jef.components import describe_options
    from jef.plugins import load_plugins

    names = load_plugins().registry.names("dataset")
    assert {"image_text", "fashion_mnist_captions"} <= set(names)
    rows = {row["name"]: row for row in describe_options(ImageTextOptions)}
    assert ".json -> coco" in rows["format"]["doc"] and rows["image_size"]["default"] == 224
    assert all(row["doc"] for row in rows.values())


def test_test_labels_must_be_training_classes(tmp_path):
    images = _images(tmp_path)
    train = _write_csv(tmp_path / "train.csv", [["image", "caption", "y"], [images[0], "a", "cat"]])
    test = _write_csv(tmp_path / "test.csv", [["image", "caption", "y"], [images[1], "b", "dog"]])
    with pytest.raises(ValueError, match=r"test.csv: labels dog are not training classes"):
        build_image_text(_options(train, test=str(test), label_column="y"), None)


@pytest.fixture(scope="module")
def fashion():
    return build_fashion_mnist_captions(FashionCaptionsOptions(), None)


def test_bundled_captions_dataset(fashion):
    assert (len(fashion.train), len(fashion.test)) == (10_000, 2_000)
    assert fashion.fields == FIELDS and fashion.num_classes == 10 and fashion.channels == 1
    assert fashion.class_names == FASHION_CAPTION_CLASSES and fashion.class_names[9] == "ankle boot"
    assert fashion.prompt_templates and all(t.count("{}") == 1 for t in fashion.prompt_templates)
    sample = fashion.train[5]
    assert tuple(sample) == FIELDS and tuple(sample["image"].shape) == (1, 28, 28)
    assert sample["text"] == fashion.train.texts[5] and sample["index"] == 5
    small = head(fashion.train, 20)
    assert isinstance(small, ImageTextDataset) and small.texts == fashion.train.texts[:20]
    clone = pickle.loads(pickle.dumps(small))
    assert torch.equal(clone[3]["image"], small[3]["image"]) and clone[3]["label"] == small[3]["label"]
    assert build_fashion_mnist_captions(FashionCaptionsOptions(subset_train=30), None).train.texts == \
        fashion.train.texts[:30]


def test_bundled_captions_name_their_class_and_vary(fashion):
    per_class = defaultdict(set)
    for split in (fashion.train, fashion.test):
        for text, label in zip(split.texts, split.labels.tolist(), strict=True):
            assert any(name in text for name in SYNONYMS[FASHION_CAPTION_CLASSES[label]]), text
            per_class[label].add(text)
    assert all(len(texts) >= 100 for texts in per_class.values()), {k: len(v) for k, v in per_class.items()}
    # Every zero-shot prompt is the frame of some captions: prompts speak the captions' language.
    for template in fashion.prompt_templates:
        before, after = template.split("{}")
        assert any(t.startswith(before) and t.endswith(after) for t in fashion.train.texts), template


def test_the_build_script_reproduces_the_shipped_file(fashion, tmp_path):
    assert hashlib.sha256(CAPTIONS_PATH.read_bytes()).hexdigest() == CAPTIONS_SHA256
    assert CAPTIONS_PATH.stat().st_size < 200_000
    # The module fixture's images, so that the bundle is decompressed once.
    arrays = {f"{k}_{s}": v for s, split in (("train", fashion.train), ("test", fashion.test))
              for k, v in (("x", split.images[:, 0].numpy()), ("y", split.labels.numpy().astype(np.uint8)))}
    out = write_captions(caption_records(arrays), tmp_path / "captions.jsonl.gz")
    assert out.read_bytes() == CAPTIONS_PATH.read_bytes()
    assert load_captions(out)["test"] == fashion.test.texts
