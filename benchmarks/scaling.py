"""How a training step's time and memory grow: batch size, image size, views, queue size and processes.

Each configuration trains in a fresh process with jef's real loop (``jef.run.loop.train``: synthetic images in
memory, the DataLoader, the batched augmenter, forward, backward, optimiser, EMA/queue updates; no monitors, no
loggers, no evaluation). A plugin stamps the time at every ``jef_step_end`` and reads the process's resident
memory when the run starts (everything built, data in memory) and its peak at the end. A step's time is the
median interval between stamps after ``--warmup`` steps; its memory is the peak minus the resident memory at
the start (what training adds: activations, gradients, optimiser state, queues).

Each axis changes one thing from the first row of its table and compares the growth with the growth of the work
(images × pixels through the backbone, or what the axis should cost); a row whose time or memory grows more than
25 % faster than that is flagged. Processes run on one machine with gloo, one torch thread each, against one
process with as many threads, at the same global batch.

    OMP_NUM_THREADS=2 python benchmarks/scaling.py
    python benchmarks/scaling.py --axes batch queue --steps 8
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import command_line, emit, load_average, machine  # noqa: E402
from memory import host_peak_mib, resident_mib  # noqa: E402

MODEL = {"backbone": {"name": "small_cnn", "width": 32}}
#: Each axis: (label, the method and settings of each row, the work of each row relative to the first).
AXES: dict[str, list[tuple[str, dict[str, Any], float]]] = {
    "batch": [(f"batch {b}", {"method": "simclr", "batch": b}, b / 64) for b in (64, 128, 256, 512)],
    "image size": [(f"{s} px", {"method": "simclr", "batch": 64, "image_size": s}, (s / 28) ** 2)
                   for s in (28, 56, 112)],
    # SwAV's multi-crop: 2 global views of 28 px and n local ones of 12 px; the work is the pixels of all views.
    "views": [(f"2+{n}", {"method": "swav", "batch": 64, "augmenter": {"n_local": n, "local_size": 12}},
               (2 * 28 ** 2 + n * 12 ** 2) / (2 * 28 ** 2)) for n in (0, 6, 10)],
    # MoCo v2's queue: the backbone's work stays; the logits against the queue grow with it.
    "queue": [(f"queue {k}", {"method": "moco_v2", "batch": 128, "functionals": [{"name": "queue_info_nce",
                                                                                 "size": k}]}, 1.0)
              for k in (4096, 16384, 65536)],
    # The same global batch of 256 on 1 process (all threads) or 2 (one thread each): the ideal is equal time.
    "processes": [(f"{p} process{'es' if p > 1 else ''}", {"method": "simclr", "batch": 256 // p, "processes": p},
                   1.0) for p in (1, 2)],
}
SLACK = 1.25


class Stamps:
    """A jef plugin: the resident memory when the run starts and the time of every step's end."""

    def __init__(self) -> None:
        self.start_mib, self.stamps = 0.0, []

    def hooks(self) -> Any:
        from jef.hookspecs import hookimpl

        stamps = self

        class Hooks:
            @hookimpl
            def jef_run_start(self, run: Any) -> None:
                stamps.start_mib = resident_mib()

            @hookimpl
            def jef_step_end(self, run: Any, outputs: Any, terms: Any) -> None:
                stamps.stamps.append(time.perf_counter())

        return Hooks()


def pipeline_of(row: dict[str, Any], steps: int) -> dict[str, Any]:
    size, batch = row.get("image_size", 28), row["batch"]
    data = {"method": row["method"], **MODEL, "seed": 0, "monitors": [], "loggers": [],
            "data": {"name": "synthetic", "train_size": batch * row.get("processes", 1) * (steps + 1), "test_size": 8,
                     "image_size": size,
                     "num_classes": 10},
            "augmenter": {"size": size, **row.get("augmenter", {})},
            "train": {"batch_size": batch, "epochs": 1, "max_steps": steps, "progress": False,
                      "tensorboard": False, "num_workers": 0, "checkpoint_every": 10 ** 6},
            "eval": {"knn": {"enabled": False}, "linear": {"enabled": False}}}
    if "functionals" in row:
        data["functionals"] = row["functionals"]
    return data


def train_one(row: dict[str, Any], steps: int, warmup: int) -> dict[str, float]:
    """Train one configuration in this process; its step time and memory."""
    from jef.config import resolve
    from jef.plugins import load_plugins
    from jef.run.loop import train

    stamps = Stamps()
    plugins = load_plugins(extra=(("scaling", stamps.hooks()),))
    pipeline = resolve(pipeline_of(row, steps), source="<scaling>", registry=plugins.registry)
    with tempfile.TemporaryDirectory() as run_dir:
        train(pipeline, run_dir=run_dir, plugins=plugins, cpu=True)
    intervals = [b - a for a, b in zip(stamps.stamps[warmup:-1], stamps.stamps[warmup + 1:], strict=True)]
    peak = host_peak_mib()
    return {"ms": 1000 * statistics.median(intervals), "added_mib": peak - stamps.start_mib}


def _rank_job(rank: int, row: dict[str, Any], steps: int, warmup: int) -> dict[str, float]:
    import torch

    # What a launcher sets; Accelerate then joins the process group run_in_processes made.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(row["processes"]),
                      LOCAL_WORLD_SIZE=str(row["processes"]), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    return train_one(row, steps, warmup)


def measure_here(row: dict[str, Any], steps: int, warmup: int, threads: int) -> dict[str, float]:
    import functools

    import torch

    processes = row.get("processes", 1)
    if processes == 1:
        torch.set_num_threads(threads)
        return train_one(row, steps, warmup)
    from jef.testing import run_in_processes

    results = run_in_processes(functools.partial(_rank_job, row=row, steps=steps, warmup=warmup), processes)
    # The slowest rank sets the step; memory is per process.
    return {"ms": max(r["ms"] for r in results), "added_mib": max(r["added_mib"] for r in results)}


def measure(row: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """One configuration in a fresh process: its own peak memory, no state from the rows before."""
    job = json.dumps({"row": row, "steps": args.steps, "warmup": args.warmup, "threads": args.threads})
    done = subprocess.run([sys.executable, __file__, "--one", job], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scaling.py: the row {row} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(axis: str, rows: list[tuple[str, dict[str, Any], float]], results: list[list[dict[str, float]]]) -> list[str]:
    lines = [f"\n**{axis}**\n", "| setting | ms / step | added MiB | time growth | memory growth | work growth | |",
             "|---|---:|---:|---:|---:|---:|---|"]
    first_ms = statistics.median(r["ms"] for r in results[0])
    first_mib = statistics.median(r["added_mib"] for r in results[0])
    for (label, _, work), repeats in zip(rows, results, strict=True):
        ms = statistics.median(r["ms"] for r in repeats)
        mib = statistics.median(r["added_mib"] for r in repeats)
        time_growth, memory_growth = ms / first_ms, mib / first_mib if first_mib > 0 else float("nan")
        flags = [what for what, growth in (("time", time_growth), ("memory", memory_growth))
                 if growth > SLACK * work]
        flag = f"grows faster than the work: {', '.join(flags)}" if flags else ""
        lines.append(f"| {label} | {ms:.1f} | {mib:.0f} | {time_growth:.2f}x | {memory_growth:.2f}x | "
                     f"{work:.2f}x | {flag} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--axes", nargs="+", choices=AXES, default=list(AXES))
    parser.add_argument("--steps", type=int, default=10, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the step time")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (interleaved across settings)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of a one-process run")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one configuration, JSON
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if args.one:
        job = json.loads(args.one)
        print(json.dumps(measure_here(job["row"], job["steps"], job["warmup"], job["threads"])))
        return 0
    if args.steps <= args.warmup + 1:
        parser.error(f"--steps ({args.steps}) must exceed --warmup + 1 ({args.warmup + 1})")
    command = command_line("scaling.py", argv)
    lines = [f"`{command}` — {datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}, {args.threads} threads, "
             f"SimCLR/SwAV/MoCo v2 on small_cnn width 32, load {load_average()} at the start"]
    for axis in args.axes:
        rows = AXES[axis]
        results: list[list[dict[str, float]]] = [[] for _ in rows]
        for repeat in range(args.repeats):  # interleaved: each repeat runs every row, the order rotating
            order = list(range(len(rows)))
            order = order[repeat % len(rows):] + order[:repeat % len(rows)]
            for i in order:
                results[i].append(measure(rows[i][1], args))
                print(f"  {axis}: {rows[i][0]}: {results[i][-1]}", file=sys.stderr, flush=True)
        lines += table(axis, rows, results)
    lines.append(f"\nload {load_average()} at the end")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
