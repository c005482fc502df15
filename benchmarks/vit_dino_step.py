"""A ViT-S/16 DINO training step against a bare forward and backward of the same ViT-S/16: images per second.

The ``dino`` recipe (the paper's ViT-S/16 setting) is resolved and built with jef (``jef.model.build.build``) at
224 px, with ``--n-local`` local views of 96 px; its views are made once from synthetic images, so data loading
and augmentation are left out of both sides. Then, on the same views:

* **DINO step**: jef's model and components, called as jef's loop calls them, without Accelerate or hooks: the
  student (ViT-S/16 and the DINO head, K = 65536) on every view, the EMA teacher on the global views, the
  centring and the cross-entropy over the view pairs, ``backward``, the head's ``jef_after_backward`` (past the
  frozen first epoch, so the last layer trains), total gradient norm clipped at 3, AdamW with the weight-decay
  schedule, the scheduler step, ``zero_grad``, the EMA update (``jef_step_end``).
* **bare**: a copy of the same ViT-S/16 (taken before any step) on the same views, one call per resolution as
  jef makes them, the mean of its outputs as the loss, ``backward``, ``zero_grad``: the backbone's own work, which
  every method pays.

Blocks of ``--steps`` steps alternate between the two (DINO first in even repeats, bare first in odd ones) after
one warm-up block each; the table gives the median time per step of each over ``--repeats`` blocks, images per
second (source images: each makes 2 global and ``--n-local`` local views), the ratio of the medians and the range
of the per-block ratios.

    OMP_NUM_THREADS=2 python benchmarks/vit_dino_step.py
    python benchmarks/vit_dino_step.py --device cuda --batch-size 64 --n-local 10 --precision bf16 --threads 8
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import math
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this file is loaded
from environment import load_average, machine  # noqa: E402
from timing import bare_backbone_step, build_with_views, interleaved, jef_model_step, timed_block  # noqa: E402


def _has(obj: Any, hook: str) -> bool:
    return obj is not None and callable(getattr(type(obj), hook, None))


class Bench:
    """The DINO model built by jef, a copy of its backbone, the fixed views and the two steps."""

    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        from jef.config import resolve
        from jef.plugins import load_plugins
        from jef.run.optim import build_optimizer, lr_lambdas

        plugins = load_plugins()
        self.device = torch.device(args.device)
        batch = args.batch_size
        settings = {
            "method": "dino", "seed": 0,
            "data": {"name": "synthetic", "train_size": batch, "test_size": 2, "image_size": args.image_size,
                     "num_classes": 10},
            "augmenter": {"n_local": args.n_local, "size": args.image_size, "local_size": args.local_size},
            "train": {"batch_size": batch, "precision": args.precision},
            "eval": {"knn": {"enabled": False}}, "monitors": [],
        }
        pipeline = resolve(settings, source="<vit_dino_step>", registry=plugins.registry)
        total = 10 ** 7
        built, views = build_with_views(pipeline, batch=batch, device=args.device, precision=args.precision,
                                        run_dir=directory)
        self.views = [v.contiguous().to(self.device) for v in views]
        self.model = built.model.to(self.device).train()
        self.bare = copy.deepcopy(self.model.backbone)  # the same ViT-S/16, before any step
        self.optimizer = build_optimizer(self.model, pipeline.train.optimizer, batch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambdas(self.optimizer, pipeline.train.scheduler, 1, total))
        self.clip = pipeline.train.clip_grad_norm
        # Epoch 1: past the recipe's frozen first epoch, so the head's last layer trains as in the rest of a run.
        self.run = types.SimpleNamespace(step=0, epoch=1, log=lambda metrics: None)
        components = [c for c in built.components.values() if c is not None]
        for c in components:
            if _has(c, "jef_run_start"):
                c.jef_run_start(run=self.run)
        self.after_backward = [c for c in components if _has(c, "jef_after_backward")]
        self.step_end = [c for c in components if _has(c, "jef_step_end")]
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                         else contextlib.nullcontext())
        self.pipeline = pipeline
        self.backbone_params = sum(p.numel() for p in self.model.backbone.parameters())
        self.head_params = sum(p.numel() for p in self.model.projector.parameters())

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def dino_step(self) -> torch.Tensor:
        return jef_model_step(self, self.model, self.autocast)

    def bare_step(self) -> torch.Tensor:
        return bare_backbone_step(self.bare, self.views, self.bare, self.device, self.autocast)

    def block(self, step: Any, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        return timed_block(step, steps, self.device)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, Path(tmp))
        first = float(bench.dino_step())
        if not math.isfinite(first):
            raise SystemExit(f"the first DINO step's loss is {first}")
        bench.block(bench.dino_step, args.steps)  # warm-up
        bench.block(bench.bare_step, args.steps)
        dino, bare, low, high = interleaved(bench.dino_step, bench.bare_step, repeats=args.repeats,
                                            steps=args.steps, device=bench.device)
        last = float(bench.dino_step())
    return {"dino": dino, "bare": bare, "ratio_lo": low, "ratio_hi": high, "first_loss": first, "last_loss": last,
            "backbone_params": bench.backbone_params, "head_params": bench.head_params,
            "peak_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if bench.device.type == "cuda" else None}


def table(args: argparse.Namespace, r: dict[str, Any], command: str, load_before: str) -> str:
    batch, device = args.batch_size, args.device
    if device == "cuda":
        device = f"cuda ({torch.cuda.get_device_name()}, peak {r['peak_mib']:.0f} MiB)"
    ratio = r["dino"] / r["bare"]
    return "\n".join([
        f"Command: `{command.strip()}`",
        f"Date: {datetime.date.today().isoformat()}; machine: {machine()}; device: {device}; torch threads: "
        f"{torch.get_num_threads()}; {load_before} (before), load average {load_average()} (after).",
        f"Model: ViT-S/16 ({r['backbone_params'] / 1e6:.1f} M parameters), DINO head K = 65536 "
        f"({r['head_params'] / 1e6:.1f} M); batch {batch}, each image 2 views of {args.image_size} px and "
        f"{args.n_local} of {args.local_size} px; precision {args.precision}; medians of {args.repeats} "
        f"interleaved blocks of {args.steps} steps. DINO loss {r['first_loss']:.4f} at the first step, "
        f"{r['last_loss']:.4f} at the last.",
        "",
        "| step | ms/step | images/s | time vs bare | range over blocks |",
        "|---|---:|---:|---:|---:|",
        f"| bare ViT-S/16 forward + backward | {1e3 * r['bare']:.0f} | {batch / r['bare']:.2f} | 1.00 | |",
        f"| DINO step (jef) | {1e3 * r['dino']:.0f} | {batch / r['dino']:.2f} | {ratio:.2f} | "
        f"{r['ratio_lo']:.2f} … {r['ratio_hi']:.2f} |",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument("--n-local", type=int, default=4, help="local views per image (the recipe: 10)")
    parser.add_argument("--image-size", type=int, default=224, help="side of the global views")
    parser.add_argument("--local-size", type=int, default=96, help="side of the local views")
    parser.add_argument("--precision", choices=["no", "bf16"], default="no", help="bf16: autocast on both sides")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per side (interleaved)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.image_size % 16 or args.local_size % 16:
        raise SystemExit("--image-size and --local-size must be multiples of the patch size, 16")
    torch.set_num_threads(args.threads)
    command = "python benchmarks/vit_dino_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = "load average " + load_average()
    text = table(args, measure(args), command, load_before)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
