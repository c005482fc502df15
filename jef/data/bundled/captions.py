"""Captions of the bundled Fashion-MNIST subset: generate, write and read ``fashion_mnist_captions.jsonl.gz``.

Every image of ``fashion_mnist_mini.npz`` gets one short English caption, built from a template, a name
for its class (the class name or a synonym) and attribute words measured on the image itself:

* tone: the mean grey level of the garment's pixels (those above :data:`INK`): dark, grey or light;
* width: the garment's bounding-box width against its class's median: narrow or wide (none at the median,
  so shoes, which fill the 28 columns, get none);
* texture: the spread of the garment's grey levels: plain (low) or patterned (high), none in between.

Templates, names and which attributes a caption mentions are drawn with NumPy ``default_rng(SEED)``, so the
captions vary (hundreds of distinct strings per class) while the class name or one of its synonyms
(:data:`SYNONYMS`) is always in the text. All measurements are integer arithmetic, so the file does not
depend on floating-point rounding.

``python -m jef.data.bundled.captions [--out PATH]`` rebuilds the shipped file byte for byte (gzip with
``mtime=0`` and no file name, JSON with sorted keys); see ``README.md`` here.

References:
    H. Xiao, K. Rasul, R. Vollgraf. *Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
    Learning Algorithms*. arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np

from jef.data.bundled import BUNDLED_PATH, load_bundle

__all__ = ["CAPTIONS_PATH", "CAPTION_TEMPLATES", "CLASS_NAMES", "PROMPT_TEMPLATES", "SYNONYMS", "build_captions",
           "caption_records", "load_captions", "write_captions"]

#: Where the bundled captions file lives.
CAPTIONS_PATH = Path(__file__).with_name("fashion_mnist_captions.jsonl.gz")
#: Seed of the shipped file.
SEED = 0
#: Readable Fashion-MNIST class names, indexed by label.
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")
#: Names a caption may use for each class; the first is the class name, drawn half of the time.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "tee", "t-shirt top"),
    "trouser": ("trouser", "pair of trousers", "pair of pants"),
    "pullover": ("pullover", "sweater", "jumper"),
    "dress": ("dress", "frock"),
    "coat": ("coat", "jacket"),
    "sandal": ("sandal", "strappy sandal"),
    "shirt": ("shirt", "button-up shirt", "blouse"),
    "sneaker": ("sneaker", "trainer", "running shoe"),
    "bag": ("bag", "handbag", "purse"),
    "ankle boot": ("ankle boot", "boot", "short boot"),
}
#: Caption templates: ``{a_adj_name}`` is "a dark wide coat", ``{a_name}`` "a coat", ``{adj}`` "dark and wide".
CAPTION_TEMPLATES = (
    "a photo of {a_adj_name}.",
    "{a_name}, {adj}, on a black background",
    "a greyscale photo of {a_adj_name}.",
    "a low-resolution photo of {a_name}.",
    "{a_adj_name} on a black background",
    "a centred product photo of {a_adj_name}",
    "{a_adj_name}, seen from the front",
    "a small picture of {a_name} that looks {adj}",
)
#: Zero-shot prompts (one ``{}`` for the class name); each is the class-name form of a caption template.
PROMPT_TEMPLATES = ("a photo of a {}.", "a greyscale photo of a {}.", "a low-resolution photo of a {}.",
                    "a {} on a black background")
#: Grey level above which a pixel belongs to the garment (the background is 0 with faint noise).
INK = 32
#: Mean garment grey level below which it is "dark", and from which it is "light".
DARK, LIGHT = 130, 180
#: Standard deviation of the garment's grey levels below which it is "plain", and from which "patterned".
PLAIN, PATTERNED = 38, 50


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def attributes(images: np.ndarray, labels: np.ndarray) -> list[dict[str, str]]:
    """The attribute words of each image (``tone`` always; ``width`` and ``texture`` when clear-cut).

    Args:
        images: uint8 ``[N, 28, 28]``.
        labels: ``[N]`` labels; widths are compared within a class.
    """
    x = images.astype(np.int64)
    ink = x > INK
    count = np.maximum(ink.sum(axis=(1, 2)), 1)
    mean = (x * ink).sum(axis=(1, 2)) // count
    # Variance times count, compared with threshold**2 * count: exact integers, no rounding to depend on.
    spread = (((x - mean[:, None, None]) ** 2) * ink).sum(axis=(1, 2))
    width = ink.any(axis=1).sum(axis=1)
    median = {c: np.median(width[labels == c]) for c in np.unique(labels)}
    words = []
    for i in range(len(x)):
        found = {"tone": "dark" if mean[i] < DARK else "light" if mean[i] >= LIGHT else "grey"}
        if width[i] < median[labels[i]]:
            found["width"] = "narrow"
        elif width[i] > median[labels[i]]:
            found["width"] = "wide"
        if spread[i] < PLAIN ** 2 * count[i]:
            found["texture"] = "plain"
        elif spread[i] >= PATTERNED ** 2 * count[i]:
            found["texture"] = "patterned"
        words.append(found)
    return words


def _caption(label: int, found: dict[str, str], rng: np.random.Generator) -> str:
    synonyms = SYNONYMS[CLASS_NAMES[label]]
    # The class name half of the time, so that prompts with it match captions often; else any synonym.
    name = synonyms[0] if rng.random() < 0.5 or len(synonyms) == 1 else synonyms[int(rng.integers(1, len(synonyms)))]
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    # Each attribute is mentioned with probability 1/2, at least one; English order: size, colour, pattern.
    keys = [k for k in ("width", "tone", "texture") if k in found]
    chosen = [k for k, keep in zip(keys, rng.random(len(keys)) < 0.5, strict=True) if keep] or ["tone"]
    adjectives = [found[k] for k in chosen]
    return template.format(a_adj_name=_article(" ".join([*adjectives, name])), a_name=_article(name),
                           adj=" and ".join(adjectives))


def caption_records(arrays: dict[str, np.ndarray] | None = None, *, seed: int = SEED) -> list[dict[str, object]]:
    """One record ``{"split", "index", "label", "caption"}`` per bundled image, train then test.

    Args:
        arrays: The bundled arrays (:func:`jef.data.bundled.load_bundle`); read when None.
        seed: Seed of the template and synonym draws.
    """
    arrays = load_bundle(BUNDLED_PATH) if arrays is None else arrays
    rng = np.random.default_rng(seed)
    records: list[dict[str, object]] = []
    for split in ("train", "test"):
        labels = arrays[f"y_{split}"].astype(np.int64)
        for index, (label, found) in enumerate(zip(labels, attributes(arrays[f"x_{split}"], labels), strict=True)):
            records.append({"split": split, "index": index, "label": int(label),
                            "caption": _caption(int(label), found, rng)})
    return records


def write_captions(records: list[dict[str, object]], out: str | Path = CAPTIONS_PATH) -> Path:
    """Write records as gzip-compressed JSON lines, deterministically, replacing ``out`` atomically."""
    from jef.files import atomic_write

    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=True) + "\n" for r in records).encode("ascii")
    buffer = io.BytesIO()
    # No file name and mtime 0 in the gzip header: the bytes depend only on the text (and zlib's version).
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as handle:
        handle.write(text)
    out = Path(out)

    def write(tmp: Path) -> None:
        tmp.write_bytes(buffer.getvalue())  # mode 0o666 & ~umask, as atomic_write gives every file

    atomic_write(out, write)
    return out


def build_captions(out: str | Path = CAPTIONS_PATH, *, seed: int = SEED) -> Path:
    """Generate the captions of the bundled images and write them to ``out``."""
    return write_captions(caption_records(seed=seed), out)


def load_captions(path: str | Path = CAPTIONS_PATH) -> dict[str, list[str]]:
    """The bundled captions, ``{"train": [...], "test": [...]}`` in image order.

    Raises:
        FileNotFoundError: The file is missing; rebuild it with ``python -m jef.data.bundled.captions``.
        ValueError: A record out of order (the file does not match the images).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fashion_mnist_captions: bundled file {path} is missing; rebuild it with "
                                "`python -m jef.data.bundled.captions`")
    captions: dict[str, list[str]] = {"train": [], "test": []}
    with gzip.open(path, "rt", encoding="ascii") as handle:
        for line_number, line in enumerate(handle, start=1):
            record = json.loads(line)
            split = captions[record["split"]]
            if record["index"] != len(split):
                raise ValueError(f"fashion_mnist_captions: {path}:{line_number}: {record['split']} index "
                                 f"{record['index']}, expected {len(split)}; rebuild the file with "
                                 "`python -m jef.data.bundled.captions`")
            split.append(record["caption"])
    return captions


def main(argv: list[str] | None = None) -> int:
    """Rebuild the captions file and print its size and SHA-256."""
    parser = argparse.ArgumentParser(prog="python -m jef.data.bundled.captions",
                                     description="Rebuild the bundled Fashion-MNIST captions file.")
    parser.add_argument("--out", default=str(CAPTIONS_PATH), help="file to write (default: the bundled one)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the draws (default: %(default)s)")
    args = parser.parse_args(argv)
    path = build_captions(args.out, seed=args.seed)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
