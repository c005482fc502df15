"""The framework's cost per step: jef's training step against the same step written as a bare PyTorch loop.

For each method, one pipeline is resolved and built with jef (``jef.model.build.build``). Then, on the same
pre-made views (no data loading, no augmentation):

* **jef**: the real loop body, ``jef.run.loop._train_epoch``, under ``accelerator.prepare`` on the CPU: the
  ``jef_train_step`` hook (here a plugin that feeds the fixed views to the model instead of augmenting),
  ``accelerator.backward``, ``jef_after_backward`` hooks, the optimiser and scheduler steps, ``jef_step_end``
  hooks (EMA, queue, prototypes), the non-finite watch, epoch sums and logging every ``train.log_every`` steps.
* **bare**: a plain loop over a copy of the same model, taken before Accelerate saw it: forward,
  ``loss.backward()``, ``optimizer.step()``, ``scheduler.step()``, ``zero_grad``, then the EMA update written out
  with ``torch._foreach_*`` and the stateful components' own update methods called directly (queue push,
  prototype renormalisation, SwAV's prototype freeze): no hooks, no Accelerate, no bookkeeping.

Both start from the same weights, and the script checks that their first losses agree before timing. The model
(backbone, heads and objective modules) is jef's in both, so the difference is the framework around it. Timings
are interleaved (jef, bare, bare, jef, ...) blocks of ``--steps`` steps; the table shows medians of the per-step
times over ``--repeats`` blocks each.

    OMP_NUM_THREADS=2 python benchmarks/step_overhead.py
    python benchmarks/step_overhead.py --methods simclr byol --steps 20 --repeats 9 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import attrs
import torch

from jef import hookimpl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this file is loaded
from environment import load_average, machine  # noqa: E402

# dino_resnet: DINO's ResNet recipe (`method: dino` is the ViT-S/16 setting, with 224 px crops).
DEFAULT_METHODS = ["simclr", "byol", "moco_v2", "swav", "dino_resnet"]
MULTI_CROP = {"n_local": 2, "local_size": 12, "blur_p": 0.0, "solarize_p": 0.0}
#: Per-method settings that make the tiny benchmark model valid (multi-crop for SwAV/DINO, smaller heads).
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "moco_v2": {"functionals": [{"name": "queue_info_nce", "size": 1024}]},
    "swav": {"augmenter": MULTI_CROP, "functionals": [{"name": "sinkhorn", "n_prototypes": 300,
                                                       "freeze_prototypes_steps": 5, "queue_length": 0}]},
    "dino_resnet": {"augmenter": MULTI_CROP,
                    "projector": {"name": "dino_head", "out_dim": 1024, "hidden_dim": 512, "bottleneck_dim": 128}},
}


class FixedViews:
    """A ``jef_train_step`` that feeds the same pre-made views to the model (no augmentation)."""

    def __init__(self) -> None:
        self.first_loss: torch.Tensor | None = None

    @hookimpl(tryfirst=True)
    def jef_train_step(self, run: Any, batch: Any) -> Any:
        _, views, indices = batch
        result = run.model(views, indices)  # a StepResult
        if self.first_loss is None:
            self.first_loss = result.loss.detach().clone()
        return result


class FixedLoader:
    """``steps`` batches of the same views; what ``_train_epoch`` needs of a prepared loader."""

    def __init__(self, views: list[torch.Tensor], indices: torch.Tensor, steps: int) -> None:
        self.batch, self.steps = (views[0], views, indices), steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Any:
        return (self.batch for _ in range(self.steps))


class Bench:
    """One method: a jef run and a bare loop over copies of the same model."""

    def __init__(self, method: str, args: argparse.Namespace, plugins: Any, directory: Path) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState

        from jef.components import RunContext
        from jef.config import merge, resolve
        from jef.run.optim import build_optimizer, lr_lambdas
        from jef.model.build import build, build_data
        from jef.run.state import Run

        settings = {
            "method": method, "seed": 0,
            "data": {"name": "synthetic", "train_size": args.batch_size * 4, "test_size": 8,
                     "image_size": args.image_size, "num_classes": 10},
            "backbone": ({"name": "small_cnn", "width": args.width} if args.backbone == "small_cnn"
                         else {"name": args.backbone, "small_images": True}),
            "train": {"epochs": 1000, "batch_size": args.batch_size, "progress": False, "tensorboard": False,
                      "log_every": args.log_every},
            "eval": {"knn": {"enabled": False}}, "monitors": [],
        }
        pipeline = resolve(merge(settings, METHOD_SETTINGS.get(method, {})), source=f"<{method}>",
                           registry=plugins.registry)
        AcceleratorState._reset_state()
        GradientState._reset_state()
        self.accelerator = Accelerator(cpu=True, step_scheduler_with_optimizer=False)
        ctx = RunContext(seed=0, device="cpu", world_size=1, rank=0, batch_size=args.batch_size,
                         global_batch_size=args.batch_size, epochs=1000, precision="no", run_dir=directory)
        splits = build_data(pipeline, ctx)
        total = 10 ** 7  # the schedules' length: long enough never to end here
        torch.manual_seed(0)
        built = build(pipeline, attrs.evolve(ctx, steps_per_epoch=4, total_steps=total), splits)
        self.pipeline, self.built, self.total = pipeline, built, total
        images = torch.stack([splits.train[i][0] for i in range(args.batch_size)])
        self.views = [v.contiguous() for v in built.augmenter(images, generator=torch.Generator().manual_seed(0))]
        self.indices = torch.arange(args.batch_size)

        # The bare loop's copy, before Accelerate wraps anything.
        self.bare = copy.deepcopy(built.model)
        self.bare_opt = build_optimizer(self.bare, pipeline.train.optimizer, args.batch_size)
        self.bare_sched = torch.optim.lr_scheduler.LambdaLR(
            self.bare_opt, lr_lambdas(self.bare_opt, pipeline.train.scheduler, 4, total))
        self.bare_run = types.SimpleNamespace(step=0, epoch=0, log=lambda metrics: None)
        stateful = [m for m in self.bare.modules() if m is not self.bare and any(
            callable(getattr(type(m), name, None)) for name in ("jef_after_backward", "jef_step_end"))]
        self.after_backward = [m for m in stateful if callable(getattr(type(m), "jef_after_backward", None))]
        self.step_end = [m for m in stateful if callable(getattr(type(m), "jef_step_end", None))]
        for m in stateful:
            if callable(getattr(type(m), "jef_run_start", None)):
                m.jef_run_start(run=self.bare_run)

        optimizer = build_optimizer(built.model, pipeline.train.optimizer, args.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(optimizer, pipeline.train.scheduler,
                                                                            4, total))
        model, optimizer, scheduler = self.accelerator.prepare(built.model, optimizer, scheduler)
        self.run = Run(ctx, pipeline, self.accelerator, model, built.augmenter, optimizer, scheduler, None,
                       torch.Generator().manual_seed(0), built.splits, built.monitors)
        self.fixed = FixedViews()
        self.loader = FixedLoader(self.views, self.indices, args.steps)

    # -- bare PyTorch ---------------------------------------------------------------------------------------

    def _ema(self) -> None:
        """BYOL's cosine momentum schedule and the EMA of parameters, written out (buffers are copied)."""
        target = self.pipeline.target
        if target.name != "ema":
            return
        start, end, step = target.momentum, target.final_momentum, self.bare_run.step
        m = start if target.schedule == "constant" else \
            end - (end - start) * (math.cos(math.pi * min(step, self.total) / self.total) + 1) / 2
        pairs = [(self.bare.backbone, self.bare.target_backbone)]
        if self.bare.target_projector is not None:
            pairs.append((self.bare.projector, self.bare.target_projector))
        with torch.no_grad():
            for online, ema in pairs:
                t_params = list(ema.parameters())
                torch._foreach_mul_(t_params, m)
                torch._foreach_add_(t_params, [p.detach() for p in online.parameters()], alpha=1.0 - m)
                buffers = list(ema.buffers())
                if buffers:
                    torch._foreach_copy_(buffers, list(online.buffers()))

    def bare_step(self) -> torch.Tensor:
        loss, terms, outputs = self.bare(self.views, self.indices)
        loss.backward()
        for m in self.after_backward:  # SwAV's prototype freeze, DINO's last-layer freeze
            m.jef_after_backward(run=self.bare_run)
        self.bare_opt.step()
        self.bare_sched.step()
        self.bare_opt.zero_grad(set_to_none=True)
        self.bare_run.step += 1
        self._ema()
        for m in self.step_end:  # queue push, prototype renormalisation
            m.jef_step_end(run=self.bare_run, outputs=outputs, terms=None)
        return loss.detach()

    def bare_block(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.bare_step()
        return (time.perf_counter() - started) / steps

    # -- jef ------------------------------------------------------------------------------------------------

    def jef_block(self, plugins: Any, hook: Any, bar: Any, logger: Any) -> float:
        from jef.run.loop import _train_epoch

        self.run.batch_in_epoch = 0
        started = time.perf_counter()
        _train_epoch(self.run, self.loader, hook, bar, logger, self.total)
        return (time.perf_counter() - started) / self.loader.steps


def measure(method: str, args: argparse.Namespace, plugins: Any) -> dict[str, Any]:
    from jef.run.log import MetricsLogger
    from jef.run.progress import TrainProgress
    from jef.run.state import run_plugins
    from jef.testing import temporary_plugin

    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(method, args, plugins, Path(tmp))
        built, hook = bench.built, plugins.manager.hook
        logger = MetricsLogger(Path(tmp), enabled=False)
        bar = TrainProgress(method, bench.total, 0, bench.loader.steps, enabled=False)  # the loop's own, silent
        with run_plugins(plugins, [*built.components.values(), *built.monitors]), \
                temporary_plugin(plugins, bench.fixed, name="benchmark-fixed-views"):
            hook.jef_run_start(run=bench.run)
            # Step 1 of both from the same weights and the same global RNG (MoCo's shuffled BN draws from it).
            torch.manual_seed(1)
            bench.loader.steps = 1
            bench.jef_block(plugins, hook, bar, logger)
            torch.manual_seed(1)
            bare_first = bench.bare_step()
            jef_first = bench.fixed.first_loss
            assert jef_first is not None
            torch.testing.assert_close(jef_first, bare_first, rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{method}: step-1 losses differ: {m}")
            bench.loader.steps = args.steps
            bench.jef_block(plugins, hook, bar, logger)  # warm-up
            bench.bare_block(args.steps)
            jef_times, bare_times = [], []
            for repeat in range(args.repeats):  # interleaved, alternating which goes first
                pair = [("jef", lambda: bench.jef_block(plugins, hook, bar, logger)),
                        ("bare", lambda: bench.bare_block(args.steps))]
                for name, block in pair if repeat % 2 == 0 else pair[::-1]:
                    (jef_times if name == "jef" else bare_times).append(block())
        logger.close()
    jef_ms, bare_ms = statistics.median(jef_times) * 1e3, statistics.median(bare_times) * 1e3
    ratios = sorted(j / b for j, b in zip(jef_times, bare_times, strict=True))
    return {"method": method, "jef": jef_ms, "bare": bare_ms, "overhead": 100 * (jef_ms / bare_ms - 1),
            "ratio_lo": 100 * (ratios[0] - 1), "ratio_hi": 100 * (ratios[-1] - 1),
            "first_loss": float(jef_first)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, help="methods to measure")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per side (interleaved)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--backbone", default="small_cnn", help="small_cnn, resnet18, ...")
    parser.add_argument("--width", type=int, default=32, help="small_cnn width")
    parser.add_argument("--log-every", type=int, default=10, help="train.log_every of the jef run")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from jef.plugins import load_plugins

    plugins = load_plugins()
    command = "python benchmarks/step_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = "load average " + load_average()
    rows = [measure(method, args, plugins) for method in args.methods]
    lines = [
        f"Command: `{command.strip()}`",
        f"Date: {datetime.date.today().isoformat()}; machine: {machine()}; torch threads: {args.threads}; "
        f"{load_before} (before), load average {load_average()} (after).",
        f"Model: {args.backbone}{f' width {args.width}' if args.backbone == 'small_cnn' else ''}, batch "
        f"{args.batch_size}, {args.image_size}x{args.image_size} synthetic images, float32; medians of "
        f"{args.repeats} interleaved blocks of {args.steps} steps; jef logs every {args.log_every} steps.",
        "",
        "| method | step-1 loss (both) | bare PyTorch ms/step | jef ms/step | jef overhead | range over blocks |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {r['method']} | {r['first_loss']:.4f} | {r['bare']:.1f} | {r['jef']:.1f} | {r['overhead']:+.1f}% | "
          f"{r['ratio_lo']:+.1f}% … {r['ratio_hi']:+.1f}% |" for r in rows),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
