"""A method's training step built by jef against a bare forward and backward of its backbone: images per second.

Two settings (``benchmarks/gpu_check.sh`` measures both on a GPU): ``simclr``, SimCLR's recipe on a ResNet-50
(ImageNet stem), two views of ``--image-size`` px; ``dino``, DINO's recipe (ViT-S/16, DINO head with K = 65536),
two global views of ``--image-size`` px and ``--n-local`` of ``--local-size`` px. The pipeline is resolved and
built with jef (``jef.model.build.build``); its views are made once from synthetic images, so data loading and
augmentation are left out of both sides. On the same views:

* **jef step**: the model called as jef's loop calls it, without Accelerate or hooks: ``model(views)`` (forward
  and loss), ``backward``, ``jef_after_backward`` of the components, clipping where the recipe clips, the
  recipe's optimiser and scheduler steps, ``zero_grad``, ``jef_step_end`` of the components (EMA);
* **bare**: a copy of the backbone (before any step), one call per view resolution as jef makes them, the mean
  of its outputs as the loss, ``backward``, ``zero_grad``: the backbone's own work, which every method pays.

``--channels-last`` and ``--compile`` set up jef's model as ``train.channels_last`` and ``train.compile`` do
(:func:`jef.run.layout.apply_layout`: 4-D weights channels-last; the backbone and heads compiled, the objective
and optimiser eager), and the bare backbone the same way (``torch.compile`` of it whole); the views are made
channels-last too. Blocks of ``--steps`` steps alternate between the sides after
``--warmup`` steps each (compilation included); the row gives median times over ``--repeats`` blocks as
images/s (source images, each with all its views) and the ratio.

    python benchmarks/gpu_step.py --method dino --device cuda --precision bf16 --channels-last --batch-size 128
    OMP_NUM_THREADS=1 python benchmarks/gpu_step.py --method simclr --backbone resnet18 --image-size 32 --batch-size 4

``gpu_step.py precision-matrix ARGS`` runs ``precision_matrix.py ARGS`` and adds to each run's note whether
every floating tensor of the model (parameters, buffers: BatchNorm statistics, EMA teachers, queues, centres)
and of the optimiser's state is float32 at the end (mixed precision computes in 16 bits, never stores in them).
It exits 1 when a run was not finite or kept state in another dtype."""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import attrs
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this file is loaded
from timing import bare_backbone_step, build_with_views, interleaved, jef_model_step, timed_block  # noqa: E402

#: The recipe behind each setting and its backbone (``--backbone`` replaces it for SimCLR).
SETTINGS = {"simclr": {"method": "simclr", "backbone": {"name": "resnet50", "small_images": False}},
            "dino": {"method": "dino"}}
#: What a jef step may cost beyond the bare step (the goal: within 10%).
RATIO_GOAL = 1.10


class Bench:
    """The built model, a copy of its backbone, the fixed views and the two steps."""

    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        from jef.config import resolve
        from jef.plugins import load_plugins
        from jef.run.optim import build_optimizer, lr_lambdas

        plugins = load_plugins()
        self.device = torch.device(args.device)
        batch = args.batch_size
        settings: dict[str, Any] = {
            **copy.deepcopy(SETTINGS[args.method]), "seed": 0,
            "data": {"name": "synthetic", "train_size": batch, "test_size": 2, "image_size": args.image_size,
                     "num_classes": 10}, "augmenter": {"size": args.image_size},
            "train": {"batch_size": batch, "precision": args.precision}, "eval": {"knn": {"enabled": False}},
            "monitors": []}
        if args.method == "dino":
            settings["augmenter"] |= {"n_local": args.n_local, "local_size": args.local_size}
            recipe = plugins.registry.get("method", "dino").factory["augmenter"]
            for key in ("blur_p", "solarize_p"):  # per-view lists: the global views' and, with local ones, theirs
                settings["augmenter"][key] = recipe[key][:2 + (args.n_local > 0)]
        elif args.backbone:
            settings["backbone"] = {"name": args.backbone, "small_images": args.image_size <= 64}
        pipeline = resolve(settings, source=f"<gpu_step {args.method}>", registry=plugins.registry)
        total = 10 ** 7
        # On the device: there jef's augmenter runs its torch ops (no numba compilation on the CPU first).
        built, views = build_with_views(pipeline, batch=batch, device=args.device, precision=args.precision,
                                        run_dir=directory, augment_on=args.device)
        # The views too: an NCHW view fed to a channels-last model is converted at every call.
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        self.views = [v.to(self.device).contiguous(memory_format=fmt) for v in views]
        self.model = built.model.to(self.device).train()
        self.bare_model = copy.deepcopy(self.model.backbone)  # the same backbone, before any step
        if args.channels_last:
            self.bare_model.to(memory_format=torch.channels_last)
        # jef's side as train.channels_last / train.compile run it (jef.run.layout: the networks compiled).
        from jef.run.layout import apply_layout

        apply_layout(self.model, attrs.evolve(pipeline.train, channels_last=args.channels_last,
                                              compile=args.compile and args.compile_backend == "inductor"))
        self.forward, self.bare_forward, self.compile_note = self.model, self.bare_model, ""
        if args.compile:
            if args.compile_backend != "inductor":  # another backend: the networks, as apply_layout picks them
                for name in ("backbone", "projector", "predictor", "target_backbone", "target_projector"):
                    part = getattr(self.model, name, None)
                    if isinstance(part, torch.nn.Module) and any(True for _ in part.parameters()):
                        part.compile(backend=args.compile_backend)
            self.bare_forward = torch.compile(self.bare_model, backend=args.compile_backend)
        self.optimizer = build_optimizer(self.model, pipeline.train.optimizer, batch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambdas(self.optimizer, pipeline.train.scheduler, 1, total))
        self.clip = pipeline.train.clip_grad_norm
        # Epoch 1: past DINO's frozen first epoch, so the head's last layer trains as in the rest of a run.
        self.run = types.SimpleNamespace(step=0, epoch=1, log=lambda metrics: None)
        def having(hook: str) -> list[Any]:  # the built components that implement a run hook
            return [c for c in built.components.values() if c is not None and callable(getattr(type(c), hook, None))]

        for c in having("jef_run_start"):
            c.jef_run_start(run=self.run)
        self.after_backward, self.step_end = having("jef_after_backward"), having("jef_step_end")
        bf16 = args.precision == "bf16"  # autocast on both sides, as train.precision: bf16 does
        self._autocast = (lambda: torch.autocast(args.device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self._sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)  # timings end there

    def compile_modules(self, error: Exception, backend: str) -> None:
        """The whole forward failed to compile: compile each of the model's sub-modules instead, and say why."""
        torch._dynamo.reset()
        self.forward = self.model
        for module in self.model.children():  # backbone, heads, the EMA target's copies
            if any(True for _ in module.parameters()):
                module.compile(backend=backend)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        self.compile_note = f"whole forward failed to compile ({first[:120]}); its sub-modules compiled instead"

    def jef_step(self) -> torch.Tensor:
        return jef_model_step(self, self.forward, self._autocast())

    def bare_step(self) -> torch.Tensor:
        return bare_backbone_step(self.bare_forward, self.views, self.bare_model, self.device, self._autocast())

    def block(self, step: Any, steps: int) -> float:  # seconds per step over ``steps`` steps
        return timed_block(step, steps, self.device)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up then interleaved blocks of both sides; medians, the ratio's range and the losses."""
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, Path(tmp))
        started = time.perf_counter()
        try:
            first = float(bench.jef_step())  # the compilation of the jef side happens here
        except Exception as error:  # noqa: BLE001 - a model dynamo cannot trace whole still gets measured
            if not args.compile:
                raise
            bench.compile_modules(error, args.compile_backend)
            print(f"gpu_step: {bench.compile_note}", file=sys.stderr)
            first = float(bench.jef_step())
        if not math.isfinite(first):
            raise SystemExit(f"the first jef step's loss is {first}")
        bench.block(bench.jef_step, max(1, args.warmup - 1))
        bench.block(bench.bare_step, max(1, args.warmup))  # its compilation happens here
        warm_s = time.perf_counter() - started
        jef, bare, low, high = interleaved(bench.jef_step, bench.bare_step, repeats=args.repeats,
                                           steps=args.steps, device=bench.device)
        last = float(bench.jef_step())
    return {"jef": jef, "bare": bare, "ratio_lo": low, "ratio_hi": high, "first_loss": first, "last_loss": last,
            "warm_s": warm_s,
            "note": bench.compile_note,
            "peak_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if bench.device.type == "cuda" else None}


def describe(args: argparse.Namespace) -> str:
    """The setting in a few words: model, views, precision, memory format, compilation."""
    model, views = ("DINO ViT-S/16", f"2x{args.image_size}+{args.n_local}x{args.local_size} px") if (
        args.method == "dino") else (f"SimCLR {args.backbone or 'resnet50'}", f"2x{args.image_size} px")
    flags = [args.precision, "channels-last" if args.channels_last else "NCHW",
             f"compile ({args.compile_backend})" if args.compile else "eager"]
    return f"{model} | {views}, batch {args.batch_size} | {', '.join(flags)}"


def row(args: argparse.Namespace, r: dict[str, Any]) -> str:
    """One markdown row: the setting, both sides' images/s, the ratio and whether the goals are met."""
    batch, ratio = args.batch_size, r["jef"] / r["bare"]
    goals = [f"ratio <= {RATIO_GOAL:.2f}: {'met' if ratio <= RATIO_GOAL else 'NOT met'}"]
    if args.method == "dino" and args.image_size == 224 and args.device == "cuda":
        goals.append(f">= 1,750 img/s: {'met' if batch / r['jef'] >= 1750 else 'NOT met'}")
    peak = "—" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
    return (f"| {describe(args)} | {batch / r['bare']:,.1f} | {batch / r['jef']:,.1f} | {ratio:.3f} "
            f"({r['ratio_lo']:.2f} … {r['ratio_hi']:.2f}) | {r['first_loss']:.3f} → {r['last_loss']:.3f} | "
            f"{peak} | {r['warm_s']:.0f} | {'; '.join(goals + ([r['note']] if r['note'] else []))} |")


HEADER = ("| model | views | precision, format, compile | bare img/s | jef img/s | jef time ÷ bare (range) | loss "
          "first → last | peak MiB | warm-up s | goals, notes |\n|---|---|---|---:|---:|---:|---|---:|---:|---|")


def state_dtypes(run: Any) -> str:
    """``state float32`` or what is not: the model's floating parameters and buffers, the optimiser's state."""
    model = run.accelerator.unwrap_model(run.model)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for index, state in run.optimizer.state_dict()["state"].items():
        tensors += [(f"optimizer[{index}].{key}", t) for key, t in state.items() if torch.is_tensor(t)]
    bad = [f"{name} {t.dtype}" for name, t in tensors if t.is_floating_point() and t.dtype != torch.float32]
    return "state float32" if not bad else f"state NOT float32 ({len(bad)}: {', '.join(bad[:3])})"


def precision_matrix(argv: list[str]) -> int:
    """``precision_matrix.main(argv)`` with :func:`state_dtypes` of every run in its note column."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module, however this file is loaded
    import precision_matrix as pm

    from jef import hookimpl
    from jef.config.validate import ConfigError

    found: list[str] = []

    class StateClock(pm.StepClock):
        @hookimpl
        def jef_run_end(self, run: Any, metrics: dict[str, float]) -> None:
            super().jef_run_end(run, metrics)
            found.append(state_dtypes(run))

    original = pm.run_one
    def run_one(*args: Any) -> Any:
        before = len(found)
        try:
            row = original(*args)
        except Exception as error:  # noqa: BLE001 - one method that cannot train this way ends its row only
            # A ConfigError: the matrix's one backbone and data do not fit the method (text towers, token maskers).
            kind = "not run (the matrix's backbone/data do not fit)" if isinstance(error, ConfigError) else "error"
            return pm.Row(args[1], args[2], note=f"{kind}: {(str(error).splitlines() or [repr(error)])[0][:200]}")
        if len(found) > before:  # the run reached its end (a skipped cell has no run)
            row.note = "; ".join(filter(None, [row.note, found[-1]]))
        return row

    pm.StepClock, pm.run_one = StateClock, run_one  # main() looks both up in the module when it runs
    rows = pm.main(argv)
    bad = [r for r in rows if not r.note.startswith(("skipped", "not run")) and (r.finite != "yes" or "NOT" in r.note)]
    print(f"gpu_step: {len(rows) - len(bad)} of {len(rows)} cells finite with float32 state, skipped or not run "
          f"({sum(r.note.startswith('not run') for r in rows)} not run); failed: "
          + ("; ".join(f"{r.method} {r.precision} ({r.finite}; {r.note})" for r in bad) or "none"), file=sys.stderr)
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(SETTINGS), default="simclr")
    parser.add_argument("--backbone", choices=["resnet18", "resnet50"], help="SimCLR's (default resnet50)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="source images per step")
    parser.add_argument("--image-size", type=int, default=224, help="side of the (global) views")
    parser.add_argument("--n-local", type=int, default=10, help="DINO's local views per image (the recipe: 10)")
    parser.add_argument("--local-size", type=int, default=96, help="side of DINO's local views")
    parser.add_argument("--precision", choices=["no", "bf16"], default="no", help="bf16: autocast on both sides")
    parser.add_argument("--channels-last", action="store_true", help="models and views in channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the jef forward and the bare backbone")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (default inductor)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side first (default 3)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per side, interleaved (default 3)")
    parser.add_argument("--header", action="store_true", help="print the table's header line first")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["precision-matrix"]:
        return precision_matrix(argv[1:])
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    line = row(args, measure(args))
    print(f"{HEADER}\n{line}" if args.header else line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
