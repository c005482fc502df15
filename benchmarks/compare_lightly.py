"""jef against lightly on identical work: Fashion-MNIST, one ResNet-style backbone, eight methods.

For each method and seed, jef and lightly each train in a fresh subprocess (so that each process's peak RSS is
its own) with the same backbone (built from the same seed, so the same initial weights), heads of the same
shapes, the same loss (scaled to jef's recipe), the same optimiser, learning-rate schedule, epochs, batch and
seed. Every hyper-parameter of both sides is read from jef's resolved pipeline (the method's recipe plus this
script's overrides), so the two cannot drift apart. Each side augments the way it does in practice:

* jef: ``jef.run.loop.train`` (the real loop) with its batched augmenter on the training device;
* lightly: its torchvision/PIL transforms (``SimCLRTransform`` etc., parameters copied from jef's views) in a
  ``DataLoader`` with worker processes, its heads (``lightly.models.modules``), losses (``lightly.loss``),
  momentum utilities and LARS (``lightly.utils``), in a plain loop as its examples write it.

Reported per method and framework: end-to-end training images/s (median over windows of steps after a
warm-up), peak memory (max RSS of the training process on a CPU; ``torch.cuda.max_memory_allocated`` on a GPU),
kNN top-1 (InstDisc protocol: cosine, k=200, exp(sim/0.1)) and linear-probe top-1 on frozen backbone features
extracted the same way for both, and the model step alone: the same pre-made views fed to each side's step
(forward, loss, backward, optimiser, EMA/queue updates), ms per step, interleaved repeats, medians.

Run from the repository root in the benchmark environment (``make bench`` builds ``.venv-bench``)::

    OMP_NUM_THREADS=2 .venv-bench/bin/python benchmarks/compare_lightly.py --methods simclr byol --seeds 0 1

``--help`` lists the protocol's knobs. References: lightly (https://github.com/lightly-ai/lightly); the kNN
protocol of Wu et al., InstDisc, arXiv:1805.01978.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this file is loaded
from compare_common import FRAMEWORKS, METHODS, run_jef  # noqa: E402
from compare_lightly_side import run_lightly  # noqa: E402
from environment import machine  # noqa: E402

# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------

def _worker(cfg_path: str, out_path: str) -> None:
    cfg = json.loads(Path(cfg_path).read_text())
    torch.set_num_threads(cfg["threads"])
    result = (run_jef if cfg["framework"] == "jef" else run_lightly)(cfg)
    Path(out_path).write_text(json.dumps(result))


def spawn(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one framework's job in a fresh process (its own peak memory); returns its result dict."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = Path(tmp) / "cfg.json", Path(tmp) / "out.json"
        cfg_path.write_text(json.dumps(cfg))
        env = {**os.environ, "OMP_NUM_THREADS": str(cfg["threads"]), "MKL_NUM_THREADS": str(cfg["threads"])}
        proc = subprocess.run([sys.executable, __file__, "--_worker", str(cfg_path), str(out_path)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cfg['framework']} {cfg['method']} ({cfg['mode']}) failed:\n{proc.stderr[-4000:]}")
        return json.loads(out_path.read_text())


def lightly_version() -> str:
    try:
        import lightly

        return lightly.__version__
    except ImportError:
        return "not installed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps", type=int, default=0, help="stop training after this many steps (0: all epochs)")
    p.add_argument("--subset-train", type=int, default=5_000, help="training images (also the kNN bank)")
    p.add_argument("--subset-test", type=int, default=10_000, help="test images scored by kNN and the probe")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=int, default=8, help="backbone width (64 with --blocks 2 2 2 2: ResNet-18)")
    p.add_argument("--blocks", nargs=4, type=int, default=[1, 1, 1, 1], help="basic blocks per stage")
    p.add_argument("--stem", choices=["small", "imagenet"], default="small",
                   help="backbone stem: 3x3 stride 1 (28 px views) or ResNet's 7x7 stride 2 + max-pool (224 px)")
    p.add_argument("--image-size", type=int, default=0,
                   help="side of the views, resized from the 28 px uint8 images in memory (0: 28)")
    p.add_argument("--data", choices=["fashion_mnist", "fashion_mnist_mini"], default="fashion_mnist",
                   help="fashion_mnist_mini: the 10k training images bundled with jef (no IDX files needed)")
    p.add_argument("--queue", type=int, default=4096, help="MoCo v2 queue length")
    p.add_argument("--probe-epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each training process")
    p.add_argument("--workers", type=int, default=2, help="lightly's DataLoader workers")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["no", "bf16"], default="no")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the timings")
    p.add_argument("--window", type=int, default=5, help="steps per throughput window")
    p.add_argument("--step-steps", type=int, default=30, help="steps of each model-step-alone run (0: skip)")
    p.add_argument("--step-repeats", type=int, default=3, help="interleaved model-step-alone runs per framework")
    p.add_argument("--no-train", action="store_true", help="only the model-step-alone runs (no training, no scores)")
    p.add_argument("--jef-override", action="append", default=[], metavar="KEY=VALUE",
                   help="a jef pipeline override for jef's runs only (repeatable), e.g. target.shuffle_bn=false: "
                        "for ablations, no longer identical work")
    p.add_argument("--jef-backbone-chunks", type=int, default=1, metavar="N",
                   help="jef's backbone splits each call into N (2: one view at a time, as lightly calls it); "
                        "an ablation")
    p.add_argument("--out", default="compare_lightly.json", help="raw results (JSON)")
    p.add_argument("--from-json", metavar="PATH", help="print the tables of an earlier run's raw results and exit")
    p.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _fmt(x: float, spec: str = ".1f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _ratio(a: float, b: float) -> str:
    """``a / b`` as ``1.23x``; a dash where either is missing (no training runs: no end-to-end ratio)."""
    r = a / b if b else math.nan
    return "—" if math.isnan(r) else f"{r:.2f}x"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args._worker:
        _worker(*args._worker)
        return {}
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        done = report["results"]
        args.methods = [m for m in METHODS if any(r["method"] == m for r in done)]
        args.frameworks = [f for f in FRAMEWORKS if any(r["framework"] == f for r in done)]
        print(markdown(report, args))
        return report
    base = {k: getattr(args, k) for k in ("epochs", "steps", "subset_train", "subset_test", "batch_size", "width",
                                           "blocks", "stem", "image_size", "data", "queue", "probe_epochs",
                                           "threads", "workers", "device", "precision", "warmup_steps", "window",
                                           "jef_override", "jef_backbone_chunks")}
    command = " ".join([f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}", Path(sys.executable).name,
                        *sys.argv])
    header = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(), "lightly": lightly_version(), "load_before": os.getloadavg(),
              "protocol": base}
    results: list[dict[str, Any]] = []
    report = {"header": header, "results": results, "complete": False}

    def record(cfg: dict[str, Any]) -> None:
        results.append({**cfg, **spawn(cfg)})
        _write_json(Path(args.out), report)  # after every run: a failure later loses nothing measured

    for method in args.methods:
        for i, seed in enumerate([] if args.no_train else args.seeds):
            order = args.frameworks if i % 2 == 0 else args.frameworks[::-1]  # alternate who goes first
            for fw in order:
                cfg = {**base, "method": method, "seed": seed, "framework": fw, "mode": "train"}
                print(f"[compare_lightly] train {method} seed {seed} {fw} ...", file=sys.stderr, flush=True)
                record(cfg)
        if args.step_steps:
            for r in range(args.step_repeats):
                for fw in (args.frameworks if r % 2 == 0 else args.frameworks[::-1]):
                    cfg = {**base, "method": method, "seed": args.seeds[0], "framework": fw, "mode": "step",
                           "steps": args.step_steps + args.warmup_steps, "epochs": 1000}
                    print(f"[compare_lightly] step-alone {method} {fw} run {r} ...", file=sys.stderr, flush=True)
                    record(cfg)
    header["load_after"] = os.getloadavg()
    report["complete"] = True
    _write_json(Path(args.out), report)
    print(markdown(report, args))
    return report


def _write_json(path: Path, report: dict[str, Any]) -> None:
    """Replace ``path`` atomically (a temp file renamed over it), so a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    h = report["header"]
    lines = [f"Command: `{h['command']}`", "",
             f"Date: {h['date']}; machine: {h['machine']}; lightly {h['lightly']}; load average before "
             f"{h['load_before'][0]:.2f}, after {h.get('load_after', [math.nan])[0]:.2f}"
             f"{'' if report.get('complete', True) else ' (incomplete run)'}.", "",
             "| method | framework | e2e images/s | step alone ms | peak MiB | kNN top-1 (per seed) | "
             "linear top-1 (per seed) | final loss |",
             "|---|---|---:|---:|---:|---|---|---:|"]
    summary = {}
    for method in args.methods:
        for fw in args.frameworks:
            train = [r for r in report["results"] if r["method"] == method and r["framework"] == fw
                     and r["mode"] == "train"]
            step = [r for r in report["results"] if r["method"] == method and r["framework"] == fw
                    and r["mode"] == "step"]
            ips = statistics.median(r["images_per_s"] for r in train) if train else float("nan")
            ms = statistics.median(r["ms_per_step"] for r in step) if step else float("nan")
            mem = max(r["peak_mib"] for r in train) if train else float("nan")
            step_mem = statistics.median(r["peak_mib"] for r in step) if step else float("nan")
            summary[(method, fw)] = (ips, ms, step_mem)
            knn = " / ".join(f"{100 * r['knn_top1']:.1f}" for r in train)
            lin = " / ".join(f"{100 * r['linear_top1']:.1f}" for r in train)
            loss = " / ".join(f"{r['final_loss']:.3f}" for r in train)
            lines.append(f"| {method} | {fw} | {_fmt(ips, '.0f')} | {_fmt(ms)} | {_fmt(mem, '.0f')} | {knn} | "
                         f"{lin} | {loss} |")
    if set(args.frameworks) == set(FRAMEWORKS):
        lines += ["", "| method | e2e jef / lightly | step alone lightly ms / jef ms | step-alone peak jef / lightly |",
                  "|---|---:|---:|---:|"]
        for method in args.methods:
            (ji, jm, jp), (li, lm, lp) = summary[(method, "jef")], summary[(method, "lightly")]
            lines.append(f"| {method} | {_ratio(ji, li)} | {_ratio(lm, jm)} | {_ratio(jp, lp)} |")
    return "\n".join(lines + memory_phases(report, args))


PHASES = ("start", "setup", "loop_start", "loop_end")


def memory_phases(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The peak host memory of each worker split by phase (medians over its runs): what the imports, the
    benchmark's set-up, the loop's own set-up (model, data set, first batch) and the steps each added."""
    rows = [r for r in report["results"] if set(PHASES) <= set(r.get("memory", {}))]
    if not rows:
        return []  # raw results from before the harness recorded phases
    lines = ["", "Peak host memory (MiB) by phase: the imports; the benchmark's arrays and jef's pipeline; the "
             "loop's own set-up (model, optimiser, jef's data set, the first batch); the steps. Page faults: the "
             "loop's minor faults per step, the first steps included.", "",
             "| method | framework | run | imports | + set-up | + loop set-up | + steps | peak | page faults / step |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for method in args.methods:
        for fw in args.frameworks:
            for mode in ("train", "step"):
                steps_of = [r for r in rows if (r["method"], r["framework"], r["mode"]) == (method, fw, mode)]
                runs = [r["memory"] for r in steps_of]
                if not runs:
                    continue
                peak = [statistics.median(m[p]["peak_mib"] for m in runs) for p in PHASES]
                added = [peak[0]] + [b - a for a, b in zip(peak, peak[1:], strict=False)]
                faults = [(m["loop_end"]["minor_faults"] - m["loop_start"]["minor_faults"]) / max(r["steps"], 1)
                          for m, r in zip(runs, steps_of, strict=True) if "minor_faults" in m["loop_end"]]
                fault_rate = statistics.median(faults) if faults else math.nan
                lines.append(f"| {method} | {fw} | {mode} | " + " | ".join(f"{x:.0f}" for x in added)
                             + f" | {peak[-1]:.0f} | {_fmt(fault_rate, '.0f')} |")
    return lines


if __name__ == "__main__":
    main()
