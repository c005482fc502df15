"""Throughput of jef's batched ``views`` augmenter against per-image torchvision pipelines, on a CPU or a GPU.

Every pipeline makes the same two views of each image with the same semantics and probabilities,
from uint8 images, ending in normalised float32 tensors stacked into a batch:

* ``jef``: :class:`jef.augment.ViewsAugmenter` on a whole uint8 batch ``[B, C, H, W]``, as configured by
  default (``cpu_backend: auto``: the fused numba kernels when numba is installed, else the eager operations).
* ``jef-eager`` (when numba is installed): the same with ``cpu_backend: torch``, one torch kernel per operation.
* ``tv-tensor``: ``torchvision.transforms.v2`` applied image by image to uint8 tensors ``[C, H, W]``, twice per
  image, then stacked as a ``DataLoader``'s default collate would: what a dataset's ``__getitem__`` does.
* ``tv-pil`` (``--pil``): the same on PIL images, with PIL's blur and solarisation and ``ToImage``/``ToDtype``
  at the end, as lightly's transforms do (they are torchvision's on PIL images plus PIL filters).

Two recipes: ``simclr`` (SimCLR's views: random resized crop with scale (0.08, 1), flip 0.5, colour jitter
(0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale 0.2) and ``byol`` (BYOL's asymmetric views: saturation 0.2, blur
p = (1.0, 0.1) with sigma in (0.1, 2) and a kernel 10% of the view side, solarisation p = (0, 0.2)): blur and
solarisation are the expensive operations. Each size is a (view side, source side) pair: ``32:32`` (CIFAR-like)
and ``224:256`` (ImageNet-like). Sources are seeded uniform random uint8 RGB images (the cost of these
operations does not depend on the content).

Throughput is images per second (views per second / 2), each measurement
timing ``--images`` images (``--batch`` per jef call, the same images one by
one for torchvision) after one warm-up; pipelines are interleaved within each
of ``--repeats`` rounds and the median is reported, with the ratio jef /
per-image of the medians. Everything runs in this one process with
``torch.set_num_threads`` fixed per thread count (the OpenMP pool too), so
both sides use the same cores; a DataLoader with ``W`` workers would give the per-image pipelines at most
``W`` times their single-process rate. With ``--device cuda`` the sources sit on the GPU and jef and
``tv-tensor`` run there (a timing ends with a synchronisation); ``tv-pil``, ``jef-eager``: CPU only.

Usage (from the repository root)::

    python benchmarks/augment_throughput.py                       # defaults, about 2 minutes on 2 cores
    python benchmarks/augment_throughput.py --sizes 32:32 --threads 1 --repeats 9 --pil
    python benchmarks/augment_throughput.py --sizes 224:256 --batch 128 --images 256 --recipes byol
    python benchmarks/augment_throughput.py --device cuda --sizes 224:256 --batch 256 --images 512 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this file is loaded
from environment import load_average, machine  # noqa: E402

RECIPES = ("simclr", "byol")
PIPELINES = ("jef", "jef-eager", "tv-tensor", "tv-pil")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def recipe_options(recipe: str, size: int) -> dict:
    """The ``views`` options of a recipe (both views; BYOL's probabilities per view)."""
    base = dict(size=size, n_global=2, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8,
                brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.2, blur_p=0.0,
                solarize_p=0.0, mean=list(MEAN), std=list(STD))
    if recipe == "byol":
        base.update(saturation=0.2, blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])
    return base


# -- the pipelines -----------------------------------------------------------------------------------------------


def jef_pipeline(recipe: str, size: int, batch: int, backend: str = "auto"
                 ) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """jef's augmenter on the images in chunks of ``batch``; returns the two view batches of the last chunk."""
    from jef.augment import ViewsAugmenter, ViewsOptions

    aug = ViewsAugmenter(ViewsOptions(**recipe_options(recipe, size), cpu_backend=backend), in_channels=3)
    generator = torch.Generator().manual_seed(0)

    def run(images: torch.Tensor) -> list[torch.Tensor]:
        views: list[torch.Tensor] = []
        for chunk in images.split(batch):
            views = aug(chunk, generator)
        return views

    return run


def _torchvision_transforms(recipe: str, size: int, pil: bool) -> list[Callable]:
    """One torchvision v2 transform per view, the same semantics as :func:`recipe_options`."""
    from PIL import ImageFilter, ImageOps
    from torchvision.transforms import v2

    o = recipe_options(recipe, size)
    kernel = max(3, int(size * 0.1))
    kernel += 1 - kernel % 2  # jef's blur_kernel_size: odd, 10% of the side, at least 3

    def pil_blur(image):  # lightly's GaussianBlur: PIL's filter with a random radius (sigma)
        sigma = float(torch.empty(1).uniform_(0.1, 2.0))
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))

    def pil_solarize(image):  # lightly's RandomSolarization: PIL's ImageOps.solarize at 128
        return ImageOps.solarize(image, threshold=128)

    per_view = []
    for view in range(2):
        blur_p = o["blur_p"][view] if isinstance(o["blur_p"], list) else o["blur_p"]
        solarize_p = o["solarize_p"][view] if isinstance(o["solarize_p"], list) else o["solarize_p"]
        steps = [
            v2.RandomResizedCrop(size, scale=o["scale"], ratio=o["ratio"], antialias=True),
            v2.RandomHorizontalFlip(o["flip_p"]),
            v2.RandomApply([v2.ColorJitter(o["brightness"], o["contrast"], o["saturation"], o["hue"])],
                           p=o["jitter_p"]),
            v2.RandomGrayscale(o["grayscale_p"]),
        ]
        if blur_p > 0:
            blur = v2.Lambda(pil_blur) if pil else v2.GaussianBlur(kernel, sigma=(0.1, 2.0))
            steps.append(v2.RandomApply([blur], p=blur_p))
        if solarize_p > 0:
            steps.append(v2.RandomApply([v2.Lambda(pil_solarize)], p=solarize_p) if pil
                         else v2.RandomSolarize(threshold=128, p=solarize_p))
        if pil:
            steps.append(v2.ToImage())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
        per_view.append(v2.Compose(steps))
    return per_view


def per_image_pipeline(recipe: str, size: int, batch: int, pil: bool) -> Callable[[torch.Tensor], list]:
    """torchvision's transforms image by image, two views each, collated per ``batch`` as a DataLoader would."""
    from torch.utils.data import default_collate

    first, second = _torchvision_transforms(recipe, size, pil)

    def run(images: torch.Tensor | list) -> list[torch.Tensor]:
        views: list[torch.Tensor] = []
        for start in range(0, len(images), batch):
            samples = [(first(image), second(image)) for image in images[start:start + batch]]
            views = default_collate(samples)
        return views

    return run


# -- measuring ---------------------------------------------------------------------------------------------------


def check_views(views: Sequence[torch.Tensor], count: int, size: int) -> None:
    """Both pipelines must hand back the same thing: two float32 ``[count, 3, size, size]`` batches."""
    shapes = [(tuple(v.shape), v.dtype) for v in views]
    expected = [((count, 3, size, size), torch.float32)] * 2
    if shapes != expected:
        raise RuntimeError(f"a pipeline returned {shapes}, expected {expected}")


def measure(args: argparse.Namespace) -> list[dict]:
    """Every (size, recipe, threads) cell: median images/s of each pipeline, interleaved repeats."""
    from PIL import Image

    rows = []
    pipelines = [p for p in PIPELINES if (p != "tv-pil" or args.pil) and (p != "jef-eager" or eager_timed(args))]
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # a timing ends when the GPU is done
    for size, source in args.sizes:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.images, 3, source, source), dtype=torch.uint8, generator=g)
        cpu_images, images = images, images.to(device)
        pil_images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in cpu_images] if args.pil else []
        tail = (len(images) - 1) % args.batch + 1
        for recipe in args.recipes:
            runs = {"jef": (jef_pipeline(recipe, size, args.batch), images),
                    "jef-eager": (jef_pipeline(recipe, size, args.batch, backend="torch"), images),
                    "tv-tensor": (per_image_pipeline(recipe, size, args.batch, pil=False), images),
                    "tv-pil": (per_image_pipeline(recipe, size, args.batch, pil=True), pil_images)}
            for threads in args.threads:
                torch.set_num_threads(threads)
                torch.manual_seed(0)
                times: dict[str, list[float]] = {name: [] for name in pipelines}
                for name in pipelines:  # warm-up, and a check that every pipeline makes the same shapes
                    run, data = runs[name]
                    check_views(run(data[:args.batch]), min(args.batch, len(images)), size)
                for _ in range(args.repeats):
                    for name in pipelines:
                        run, data = runs[name]
                        sync()
                        start = time.perf_counter()
                        views = run(data)
                        sync()
                        times[name].append(time.perf_counter() - start)
                        check_views(views, tail, size)
                rate = {name: args.images / statistics.median(t) for name, t in times.items()}
                row = dict(size=size, source=source, recipe=recipe, threads=threads, rate=rate,
                           spread={name: (min(t), max(t)) for name, t in times.items()})
                rows.append(row)
                print(f"# {size}px from {source}px, {recipe}, {threads} thread(s): "
                      + ", ".join(f"{n} {r:.0f}/s" for n, r in rate.items()), file=sys.stderr, flush=True)
    return rows


def fused_available() -> bool:
    """Whether jef's augmenter runs its fused numba kernels here (then its eager ops are timed too)."""
    from jef.augment import cpu_kernels

    return cpu_kernels.available()


def eager_timed(args: argparse.Namespace) -> bool:
    """Whether ``jef-eager`` is timed: on a CPU with numba (on a GPU jef runs its eager ops anyway)."""
    return args.device == "cpu" and fused_available()


def backend_line(args: argparse.Namespace) -> str:
    """What ``cpu_backend: auto`` runs on this machine, or the GPU both sides run on."""
    if args.device == "cuda":
        return f"Device: {torch.cuda.get_device_name()}: jef and torchvision (uint8 tensors) on the GPU"
    if not fused_available():
        return "jef: eager torch operations (numba not installed)"
    import numba

    return f"jef: fused numba kernels (numba {numba.__version__}); jef eager: `cpu_backend: torch`"


def table(rows: list[dict], args: argparse.Namespace, started: str, load_before: str) -> str:
    """The markdown report: header lines then one row per cell."""
    pil = args.pil
    eager = eager_timed(args)
    lines = [
        f"Command: `{shlex.join(['python', *sys.argv])}`  ",
        f"Date: {started}  ",
        f"Machine: {machine()}  ",
        f"Load average (1/5/15 min): {load_before} before, {load_average()} after  ",
        f"Threads: `torch.set_num_threads` per row (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); "
        f"{args.images} images per timing, jef batch {args.batch}, median of {args.repeats} interleaved repeats  ",
        backend_line(args),
        "",
        "| view px | source px | recipe | threads | jef img/s |" + (" jef eager img/s |" if eager else "")
        + " torchvision tensor img/s | jef ÷ tensor |" + (" torchvision PIL img/s | jef ÷ PIL |" if pil else ""),
        "|---:|---:|---|---:|---:|" + ("---:|" if eager else "") + "---:|---:|" + ("---:|---:|" if pil else ""),
    ]
    for r in rows:
        rate = r["rate"]
        line = (f"| {r['size']} | {r['source']} | {r['recipe']} | {r['threads']} | {rate['jef']:,.0f} | "
                + (f"{rate['jef-eager']:,.0f} | " if eager else "")
                + f"{rate['tv-tensor']:,.0f} | {rate['jef'] / rate['tv-tensor']:.1f}× |")
        if pil:
            line += f" {rate['tv-pil']:,.0f} | {rate['jef'] / rate['tv-pil']:.1f}× |"
        lines.append(line)
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    """``VIEW:SOURCE`` (or ``VIEW``: the source the same) -> (view side, source side)."""
    view, _, source = text.partition(":")
    try:
        return int(view), int(source or view)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VIEW:SOURCE sides such as 224:256, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(32, 32), (224, 256)],
                        help="view:source sides (default: 32:32 224:256)")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch threads (default: 1 2)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per jef call and per collated batch (default: 256 at <= 64 px, else 64)")
    parser.add_argument("--images", type=int, default=None,
                        help="images per timing (default: 2 batches at <= 64 px, 1 batch else)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timings per cell; the median is kept")
    parser.add_argument("--pil", action="store_true", help="also time the per-image pipeline on PIL images")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the sources and views live")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.device == "cuda" and (args.pil or not torch.cuda.is_available()):
        parser.error("--device cuda needs a CUDA device, and --pil (PIL images are on the CPU) does not apply")
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_before = load_average()
    reports = []
    for size_pair in args.sizes:  # the defaults depend on the size, so each size is its own run of cells
        cell = argparse.Namespace(**vars(args))
        cell.sizes = [size_pair]
        cell.batch = args.batch or (256 if size_pair[0] <= 64 else 64)
        cell.images = args.images or (2 * cell.batch if size_pair[0] <= 64 else cell.batch)
        reports.append((cell, measure(cell)))
    text = "\n\n".join(table(rows, cell, started, load_before) for cell, rows in reports)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
