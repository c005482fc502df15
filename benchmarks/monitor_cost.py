"""What the collapse monitor costs a training step, on the model people train on small images.

One SimCLR step (small_cnn width 32, 28 px, the default batch 256; forward, backward, optimiser) is timed on
fixed views, then the ``collapse`` monitor's check on that step's outputs (``jef_step_end`` at a step it checks:
std, effective rank, alignment, uniformity). The monitor checks every ``every`` steps (default 10), so its cost
per step is the check's time / ``every``; the table gives that as a share of the step. Medians of ``--repeats``
interleaved timings.

    OMP_NUM_THREADS=2 python benchmarks/monitor_cost.py
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import command_line, emit, load_average, machine  # noqa: E402
from layout_speed import Variant, build_recipe  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 10], help="check periods to report")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from jef.builtin.monitors import CollapseMonitor, CollapseOptions
    from jef.plugins import load_plugins

    pipeline, model, views = build_recipe("simclr_cnn", args, load_plugins())
    variant = Variant("eager", model, pipeline, args.batch_size)
    indices = torch.arange(args.batch_size)
    monitor = CollapseMonitor(CollapseOptions(every=1))
    run = types.SimpleNamespace(step=1, log=lambda metrics: None, ctx=types.SimpleNamespace(rank=0))
    outputs = variant.model(views, indices).outputs
    steps, checks = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        variant.step(views, indices)
        steps.append(time.perf_counter() - started)
        started = time.perf_counter()
        monitor.jef_step_end(run=run, outputs=outputs, terms={})
        checks.append(time.perf_counter() - started)
    step, check = statistics.median(steps), statistics.median(checks)
    command = command_line("monitor_cost.py", argv)
    lines = [f"`{command}` — {datetime.date.today()}, {machine()}, {args.threads} threads, batch "
             f"{args.batch_size}, load {load_average()}", "",
             f"SimCLR step {step * 1000:.1f} ms; one collapse check {check * 1000:.2f} ms", "",
             "| collapse.every | monitor cost per step | share of the step |", "|---:|---:|---:|"]
    lines += [f"| {every} | {check / every * 1000:.3f} ms | {check / every / step:.2%} |" for every in args.every]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
