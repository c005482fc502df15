"""Where one method's model step spends its time, jef's against lightly's, operator by operator.

The step-alone runs of ``benchmarks/compare_lightly.py`` (the same pre-made views fed to each side's step) run
here in-process under ``torch.profiler``, each side twice: ``--short`` steps and ``--long`` steps. The difference
of the two profiles, divided by the difference of the step counts, is the cost per step with everything that
happens once (imports, building, the views, Accelerate's set-up) cancelled, without hooking either loop. The
table lists the operators whose self CPU time per step differs most between the sides, and the totals.

    OMP_NUM_THREADS=2 .venv-bench/bin/python benchmarks/profile_step.py --method simsiam --width 32
    OMP_NUM_THREADS=2 .venv-bench/bin/python benchmarks/profile_step.py --method simsiam --width 32 \\
        --jef-override model.backbone_calls=per_view

Profiles are of one process each and carry the profiler's own overhead (a few microseconds per operator, the
same on both sides): read the differences, not the absolute times, and time with compare_lightly.py.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_common import METHODS, run_jef  # noqa: E402
from compare_lightly_side import run_lightly  # noqa: E402
from environment import machine  # noqa: E402

RUNNERS = {"jef": run_jef, "lightly": run_lightly}


def config(args: argparse.Namespace, framework: str, steps: int) -> dict[str, Any]:
    """The step-alone configuration compare_lightly.py gives a worker (its defaults, this script's knobs)."""
    return {"method": args.method, "seed": 0, "framework": framework, "mode": "step", "steps": steps,
            "epochs": 1000, "subset_train": 5_000, "subset_test": 1_000, "batch_size": args.batch_size,
            "width": args.width, "blocks": args.blocks, "stem": args.stem, "image_size": args.image_size,
            "data": "fashion_mnist", "queue": 4096, "probe_epochs": 1, "threads": args.threads, "workers": 0,
            "device": "cpu", "precision": "no", "warmup_steps": 0, "window": 5,
            "jef_override": args.jef_override, "jef_backbone_chunks": 1}


def self_times(cfg: dict[str, Any]) -> tuple[dict[str, float], dict[str, int], float]:
    """Self CPU microseconds and calls per operator over one step-alone run, and its wall seconds."""
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        RUNNERS[cfg["framework"]](cfg)
    wall = time.perf_counter() - started
    times: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    for event in prof.key_averages():
        times[event.key] += event.self_cpu_time_total
        calls[event.key] += event.count
    return times, calls, wall


def per_step(args: argparse.Namespace, framework: str) -> tuple[dict[str, float], dict[str, float], float]:
    """Milliseconds and calls per step and operator: (long run - short run) / (long - short steps), after a run
    of ``--short`` steps that is thrown away (first imports, first-call kernels, allocator growth)."""
    self_times(config(args, framework, args.short))
    short_t, short_c, short_wall = self_times(config(args, framework, args.short))
    long_t, long_c, long_wall = self_times(config(args, framework, args.long))
    n = args.long - args.short
    ops = set(short_t) | set(long_t)
    ms = {op: (long_t.get(op, 0.0) - short_t.get(op, 0.0)) / n / 1000 for op in ops}
    calls = {op: (long_c.get(op, 0) - short_c.get(op, 0)) / n for op in ops}
    return ms, calls, 1000 * (long_wall - short_wall) / n


def table(sides: dict[str, tuple[dict[str, float], dict[str, float], float]], top: int) -> str:
    (jef_ms, jef_calls, jef_wall), (li_ms, li_calls, li_wall) = sides["jef"], sides["lightly"]
    ops = sorted(set(jef_ms) | set(li_ms), key=lambda op: -abs(jef_ms.get(op, 0.0) - li_ms.get(op, 0.0)))
    lines = ["| operator | jef ms/step | lightly ms/step | jef - lightly | jef calls/step | lightly calls/step |",
             "|---|---:|---:|---:|---:|---:|"]
    for op in ops[:top]:
        a, b = jef_ms.get(op, 0.0), li_ms.get(op, 0.0)
        lines.append(f"| `{op}` | {a:.2f} | {b:.2f} | {a - b:+.2f} | {jef_calls.get(op, 0):.1f} | "
                     f"{li_calls.get(op, 0):.1f} |")
    total_j, total_l = sum(jef_ms.values()), sum(li_ms.values())
    lines.append(f"| **all operators (self CPU)** | {total_j:.1f} | {total_l:.1f} | {total_j - total_l:+.1f} | "
                 f"{sum(jef_calls.values()):.0f} | {sum(li_calls.values()):.0f} |")
    lines.append(f"| **wall, profiled** | {jef_wall:.1f} | {li_wall:.1f} | {jef_wall - li_wall:+.1f} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=METHODS, default="simsiam")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--blocks", nargs=4, type=int, default=[1, 1, 1, 1])
    p.add_argument("--stem", choices=["small", "imagenet"], default="imagenet")
    p.add_argument("--image-size", type=int, default=0, help="views of this side (0: the images' 28 px)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--short", type=int, default=5, help="steps of the short run")
    p.add_argument("--long", type=int, default=25, help="steps of the long run")
    p.add_argument("--top", type=int, default=25, help="operators listed")
    p.add_argument("--jef-override", action="append", default=[], metavar="KEY=VALUE",
                   help="a pipeline override of jef's side only, e.g. model.backbone_calls=per_view")
    args = p.parse_args(argv)
    if args.long <= args.short:
        p.error(f"--long ({args.long}) must exceed --short ({args.short})")
    torch.set_num_threads(args.threads)
    sides = {fw: per_step(args, fw) for fw in RUNNERS}
    text = (f"{args.method}, width {args.width}, blocks {args.blocks}, stem {args.stem}, "
            f"{args.image_size or 28} px, batch {args.batch_size}, "
            f"{args.threads} threads, jef overrides {args.jef_override or 'none'}; {machine()}\n\n"
            + table(sides, args.top))
    print(text)
    return text


if __name__ == "__main__":
    main()
