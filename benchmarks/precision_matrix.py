"""The mixed-precision matrix: every installed method trained in each precision, as a markdown table.

Each run is the method's recipe (objective, views, heads, optimiser) on the
bundled Fashion-MNIST subset (``fashion_mnist_mini``: 10k 28-pixel greyscale
images, no download), with the backbone, batch size and number of optimiser
steps given on the command line, no monitors and no evaluation. SwAV's
queue and frozen prototypes are shortened so that they take part within a
few hundred steps: the queue holds 15 batches (the recipe's 3840 at batch
256) and fills from the first epoch (the recipe: epoch 15), the prototypes
are frozen for a tenth of the steps (the recipe: 313). Every precision starts
from the same seed, so the first loss differs only by the precision.

Columns: the first and last step's loss, whether every step's loss was
finite, optimiser steps per second after ``--warmup`` steps, peak GPU memory
(``torch.cuda.max_memory_allocated``; not measured on a CPU) and, for fp16,
Accelerate's loss scale at the end (it halves at every step whose gradients
overflowed).

Usage (from the repository root)::

    python benchmarks/precision_matrix.py                     # a GPU: resnet18, batch 256, 300 steps
    python benchmarks/precision_matrix.py --cpu --backbone small_cnn --batch-size 64 --steps 10 --warmup 2
    python benchmarks/precision_matrix.py --methods simclr dino --precisions bf16 fp16 --out matrix.md

fp16 needs a GPU: on a CPU its rows say so. A run whose loss goes non-finite
is stopped by jef (``train.on_nonfinite: stop``) and reported in its row.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from jef import hookimpl
from jef.config import resolve
from jef.plugins import Plugins, load_plugins
from jef.testing import temporary_plugin
from jef.run.loop import train

PRECISIONS = ("no", "bf16", "fp16")
BACKBONES: dict[str, dict[str, Any]] = {
    "resnet18": {"name": "resnet18", "small_images": True},
    "small_cnn": {"name": "small_cnn", "width": 32, "first_stride": 1},
}
#: Images in the bundled training split (``fashion_mnist_mini``).
TRAIN_IMAGES = 10_000


@attrs.define
class Row:
    """One (method, precision) run of the matrix."""

    method: str
    precision: str
    first_loss: float | None = None
    final_loss: float | None = None
    finite: str = ""
    steps_per_s: float | None = None
    peak_mib: float | None = None
    loss_scale: float | None = None
    note: str = ""


class StepClock:
    """A run plugin recording each optimiser step's loss and end time, and the fp16 loss scale at the end."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.times: list[float] = []
        self.loss_scale: float | None = None

    @hookimpl
    def jef_step_end(self, run: Any, outputs: Any, terms: dict[str, float]) -> None:
        # The loop has already read the loss as a Python float (a device sync), so the time is the step's end.
        self.times.append(time.perf_counter())
        self.losses.append(float(terms["loss"]))

    @hookimpl
    def jef_run_end(self, run: Any, metrics: dict[str, float]) -> None:
        scaler = getattr(run.accelerator, "scaler", None)
        self.loss_scale = float(scaler.get_scale()) if scaler is not None else None


def method_pipeline(plugins: Plugins, method: str, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """The overrides of ``method``'s recipe for one run of the matrix."""
    recipe = plugins.registry.get("method", method).factory
    pipeline: dict[str, Any] = {
        "method": method,
        "seed": args.seed,
        "data": {"name": "fashion_mnist_mini"},
        "backbone": BACKBONES[args.backbone],
        "monitors": [],
        "eval": {"knn": {"enabled": False}},
        "train": {"precision": precision, "batch_size": args.batch_size, "max_steps": args.steps,
                  "epochs": 10_000, "checkpoint_every": 10_000, "progress": False, "tensorboard": False,
                  "log_every": args.steps, "num_workers": args.workers},
    }
    functionals = copy.deepcopy(list(recipe.get("functionals") or []))
    for slot in functionals:
        if slot.get("name") == "sinkhorn":
            # Queue in use within the run, whole batches only; prototypes frozen for a tenth of it.
            slot.update(queue_start_epoch=0, freeze_prototypes_steps=args.steps // 10,
                        queue_length=15 * args.batch_size)
    if any(slot.get("name") == "sinkhorn" for slot in functionals):
        pipeline["functionals"] = functionals
    return pipeline


def run_one(plugins: Plugins, method: str, precision: str, args: argparse.Namespace) -> Row:
    """Train one (method, precision) cell and measure it."""
    row = Row(method, precision)
    on_gpu = not args.cpu and torch.cuda.is_available()
    if precision == "fp16" and not on_gpu:
        row.note = "skipped: fp16 needs a GPU"
        return row
    if precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        row.note = "skipped: this GPU has no bfloat16"
        return row
    pipeline = resolve(method_pipeline(plugins, method, precision, args), source=f"<{method} {precision}>",
                       registry=plugins.registry)
    clock = StepClock()
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="jef-precision-") as run_dir, \
            temporary_plugin(plugins, clock, name=f"precision-matrix-clock-{method}-{precision}"):
        try:
            train(pipeline, run_dir=run_dir, plugins=plugins, cpu=not on_gpu)
        except FloatingPointError as error:  # jef stopped the run: the row says where and why
            row.note = str(error).splitlines()[0]
    if on_gpu:
        row.peak_mib = torch.cuda.max_memory_allocated() / 2**20
    if clock.losses:
        row.first_loss, row.final_loss = clock.losses[0], clock.losses[-1]
    complete = len(clock.losses) == args.steps and not row.note
    finite = complete and all(math.isfinite(x) for x in clock.losses)
    row.finite = "yes" if finite else f"no ({len(clock.losses)} finite steps)"
    # Steps warm+1 .. n, timed from the end of step warm (the first step has no start time).
    warm = max(1, min(args.warmup, len(clock.times) - 1))
    if len(clock.times) > warm:
        row.steps_per_s = (len(clock.times) - warm) / (clock.times[-1] - clock.times[warm - 1])
    row.loss_scale = clock.loss_scale if precision == "fp16" else None
    return row


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: Sequence[Row]) -> str:
    """The matrix as a markdown table."""
    columns = ["method", "precision", "first loss", "final loss", "finite", "steps/s", "peak GPU MiB",
               "fp16 loss scale", "note"]
    lines = ["| " + " | ".join(columns) + " |", "|---|---|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        cells = [r.method, r.precision, _number(r.first_loss, ".4f"), _number(r.final_loss, ".4f"), r.finite or "—",
                 _number(r.steps_per_s, ".2f"), _number(r.peak_mib, ".0f"), _number(r.loss_scale, ".0f"), r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_name() -> str:
    """The processor's model name (Linux), else what :mod:`platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "CPU"


def header(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """Where and how the matrix was measured."""
    on_gpu = not args.cpu and torch.cuda.is_available()
    device = torch.cuda.get_device_name() if on_gpu else f"{cpu_name()}, {torch.get_num_threads()} threads"
    command = " ".join(["python benchmarks/precision_matrix.py", *map(shlex.quote, argv)])
    return (f"`{command}` — {datetime.date.today().isoformat()}, {device}, torch {torch.__version__}; "
            f"{args.backbone}, batch {args.batch_size}, {args.steps} steps on fashion_mnist_mini")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="methods to run (default: every installed one)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="train.precision values (default: no bf16 fp16)")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per run (default 300)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="first steps left out of steps/s, at least 1 (default 10)")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet18", help="default resnet18")
    parser.add_argument("--batch-size", type=int, default=256, help="per-process batch (default 256)")
    parser.add_argument("--workers", type=int, default=0, help="data-loader workers (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    parser.add_argument("--out", type=Path, help="also write the table (with its header line) to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> list[Row]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.steps < 1 or not 1 <= args.batch_size <= TRAIN_IMAGES:
        raise SystemExit(f"--steps must be >= 1 and --batch-size in [1, {TRAIN_IMAGES}] (the bundled training split)")
    plugins = load_plugins()
    known = plugins.registry.names("method")
    methods = args.methods or known
    unknown = sorted(set(methods) - set(known))
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; installed: {', '.join(known)}")
    rows = []
    for method in methods:
        for precision in args.precisions:
            rows.append(run_one(plugins, method, precision, args))
            row = rows[-1]
            print(f"{method} {precision}: final loss {_number(row.final_loss, '.4f')}, finite {row.finite or '—'} "
                  f"{row.note}", file=sys.stderr, flush=True)
    text = f"{header(args, argv)}\n\n{table(rows)}\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
