"""How the model is run, measured: eager, ``train.channels_last``, ``train.compile``, both, and per-view calls.

For each recipe, one pipeline is resolved and built with jef (``jef.model.build.build``) and its views are made
once from synthetic images (no data loading, no augmentation in the timings). Each variant trains its own copy of
the same model, starting from the same weights, with the recipe's optimiser:

* **eager**: the model as ``jef train`` runs it by default (one backbone call per view resolution);
* **channels_last**, **compile**, **compile + channels_last**: :func:`jef.run.layout.apply_layout` with the
  options set, as ``train.channels_last`` / ``train.compile`` do;
* **per-view calls**: eager with ``model.backbone_calls: per_view``: the backbone called once per view (B
  images) instead of once per resolution (2B), as lightly's examples do. This changes BatchNorm's statistics
  (per view instead of over both views), so it is an explicit option and no recipe's default.

A step is the forward (both branches and the objective), ``backward``, the optimiser step and ``zero_grad`` (EMA
and queue updates are left out: they do not change with the layout). Compile's first steps are a warm-up outside
the timings. Blocks of ``--steps`` steps are interleaved across the variants (the order rotates each repeat); the
table gives the median time per step and its ratio to eager.

    OMP_NUM_THREADS=2 python benchmarks/layout_speed.py
    python benchmarks/layout_speed.py --recipes simclr_cnn --batch-size 256 --repeats 7
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import command_line, emit, load_average, machine  # noqa: E402

#: Recipes measured: a method and the backbone and data that make it a model people train on small images.
#: The model people train on small images: small_cnn at width 32, 28 px.
CNN32 = {"backbone": {"name": "small_cnn", "width": 32}, "image_size": 28}
RECIPES: dict[str, dict[str, Any]] = {
    **{f"{method}_cnn": {"method": method, **CNN32}
       for method in ("simclr", "moco_v2", "byol", "simsiam", "barlowtwins", "vicreg", "swav", "dino_resnet")},
    "simclr_resnet18": {"method": "simclr", "backbone": {"name": "resnet18", "small_images": True},
                        "image_size": 32},
    "dino_vit_tiny": {"method": "dino", "backbone": {"name": "vit", "preset": "tiny", "depth": 4, "patch_size": 4},
                      "image_size": 32, "augmenter": {"size": 32, "n_local": 2, "local_size": 16},
                      "projector": {"name": "dino_head", "out_dim": 1024, "hidden_dim": 256, "bottleneck_dim": 64}},
}
#: What runs when no --recipes are given: two CNN methods, ResNet-18 and a ViT.
DEFAULT_RECIPES = ("simclr_cnn", "byol_cnn", "simclr_resnet18", "dino_vit_tiny")
VARIANTS = ("eager", "channels_last", "compile", "compile + channels_last", "per-view calls")


class Variant:
    """One way of running one model: a copy of it, its optimiser, and a timed step."""

    def __init__(self, name: str, model: Any, pipeline: Any, batch: int) -> None:
        from jef.run.layout import apply_layout
        from jef.run.optim import build_optimizer

        self.name, self.model = name, copy.deepcopy(model)
        options = attrs.evolve(pipeline.train, channels_last="channels_last" in name, compile="compile" in name)
        apply_layout(self.model, options)
        if name == "per-view calls":
            self.model.backbone_calls = "per_view"  # what model.backbone_calls: per_view builds
        self.optimizer = build_optimizer(self.model, pipeline.train.optimizer, batch)

    def step(self, views: list[torch.Tensor], indices: torch.Tensor) -> float:
        loss = self.model(views, indices).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def block(self, views: list[torch.Tensor], indices: torch.Tensor, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.step(views, indices)
        return (time.perf_counter() - started) / steps


def build_recipe(name: str, args: argparse.Namespace, plugins: Any) -> tuple[Any, Any, list[torch.Tensor]]:
    from jef.components import RunContext
    from jef.config import merge, resolve
    from jef.model.build import build, build_data

    recipe = dict(RECIPES[name])
    size = recipe.pop("image_size")
    settings = merge({"seed": 0, "data": {"name": "synthetic", "train_size": args.batch_size, "test_size": 8,
                                          "image_size": size, "num_classes": 10},
                      "train": {"batch_size": args.batch_size, "epochs": 100, "progress": False,
                                "tensorboard": False},
                      "eval": {"knn": {"enabled": False}}, "monitors": [], "loggers": []}, recipe)
    pipeline = resolve(settings, source=f"<{name}>", registry=plugins.registry)
    ctx = RunContext(seed=0, device="cpu", world_size=1, rank=0, batch_size=args.batch_size,
                     global_batch_size=args.batch_size, epochs=100, precision="no")
    splits = build_data(pipeline, ctx)
    torch.manual_seed(0)
    built = build(pipeline, attrs.evolve(ctx, steps_per_epoch=1, total_steps=10 ** 6), splits)
    images = torch.stack([splits.train[i][0] for i in range(args.batch_size)])
    views = [v.contiguous() for v in built.augmenter(images, generator=torch.Generator().manual_seed(0))]
    return pipeline, built.model, views


def measure(name: str, args: argparse.Namespace, plugins: Any) -> list[tuple[str, float, float]]:
    pipeline, model, views = build_recipe(name, args, plugins)
    indices = torch.arange(args.batch_size)
    variants = [Variant(v, model, pipeline, args.batch_size) for v in args.variants]
    losses = {}
    for variant in variants:  # the same weights and random draws (drop-path): the same first loss, to rounding
        torch.manual_seed(0)
        losses[variant.name] = variant.step(views, indices)
    for variant in variants if args.warmup else []:  # warm-up (compilation) outside the timings
        variant.block(views, indices, args.warmup)
    times: dict[str, list[float]] = {variant.name: [] for variant in variants}
    for repeat in range(args.repeats):
        shift = repeat % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            times[variant.name].append(variant.block(views, indices, args.steps))
    eager = statistics.median(times[variants[0].name])
    print(f"  {name}: first losses {', '.join(f'{k} {v:.5f}' for k, v in losses.items())}", file=sys.stderr)
    return [(v.name, statistics.median(times[v.name]), eager / statistics.median(times[v.name])) for v in variants]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(DEFAULT_RECIPES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="the first is the reference of the ratios (default: eager)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compilation)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from jef.plugins import load_plugins

    plugins = load_plugins()
    command = command_line("layout_speed.py", argv)
    lines = [f"`{command}` — {datetime.date.today()}, {machine()}, {args.threads} threads, batch "
             f"{args.batch_size}, load {load_average()} at the start", "",
             "| recipe | variant | ms / step | speed vs eager |", "|---|---|---:|---:|"]
    for name in args.recipes:
        for variant, seconds, ratio in measure(name, args, plugins):
            lines.append(f"| {name} | {variant} | {seconds * 1000:.1f} | {ratio:.2f}x |")
            print(lines[-1], file=sys.stderr, flush=True)  # a run cut short keeps the recipes it finished
    lines.append(f"\nload {load_average()} at the end")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
