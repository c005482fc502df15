"""jef against lightly on identical work: Fashion-MNIST, one ResNet-style backbone, eight methods.

For each method and seed, jef and lightly each train in a fresh subprocess (so that each process's peak RSS is
its own) with the same backbone (built from the same seed, so the same initial weights), heads of the same
shapes, the same loss (scaled to jef's recipe), the same optimiser, learning-rate schedule, epochs, batch and
seed. Every hyper-parameter of both sides is read from jef's resolved pipeline (the method's recipe plus this
script's overrides), so the two cannot drift apart. Each side augments the way it does in practice:

* jef: ``jef.train.train`` (the real loop) with its batched augmenter on the training device;
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
import copy
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("simclr", "moco_v2", "byol", "simsiam", "barlowtwins", "vicreg", "swav", "dino")
FRAMEWORKS = ("jef", "lightly")


# --------------------------------------------------------------------------------------------------------------
# The shared backbone
# --------------------------------------------------------------------------------------------------------------

class _Block(nn.Module):
    """ResNet basic block (He et al., arXiv:1512.03385): two 3x3 convs, BN, identity or 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.short(x), inplace=True)


class BenchResNet(nn.Module):
    """A narrow ResNet-18 layout with the small-image stem: 3x3 stride-1 conv, no max-pool, stages of width
    ``w, 2w, 4w, 8w`` (strides 1, 2, 2, 2), global average pooling; ``out_dim = 8w``.

    ``width=64, blocks=(2, 2, 2, 2)`` is ResNet-18's CIFAR variant; the script's defaults (width 8, one block per
    stage) make a method's run a few minutes on two CPU cores.
    """

    def __init__(self, in_channels: int = 1, width: int = 8, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(_Block(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


def make_backbone(cfg: dict[str, Any]) -> BenchResNet:
    """The backbone both frameworks train, with weights drawn from ``cfg['seed']`` alone (same start for both)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + cfg["seed"])
        return BenchResNet(1, cfg["width"], tuple(cfg["blocks"]))


# --------------------------------------------------------------------------------------------------------------
# The protocol: one jef pipeline per method; lightly reads its settings from it
# --------------------------------------------------------------------------------------------------------------

class _JefBench:
    """A jef plugin: registers the shared backbone and stamps the time of every optimiser step."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg, self.stamps, self.backbone = cfg, [], None
        self.fixed_views: list[Tensor] | None = None

    def _build(self, options: Any, ctx: Any) -> nn.Module:
        self.backbone = make_backbone(self.cfg)
        return self.backbone

    def _hooks(self):  # noqa: ANN202 - hookimpl-decorated bound functions, made lazily (jef imported late)
        from jef.hookspecs import hookimpl

        bench = self

        class Hooks:
            @hookimpl
            def jef_register_backbones(self, register) -> None:  # noqa: ANN001
                register("bench_resnet", bench._build, description="compare_lightly's narrow ResNet")

            @hookimpl
            def jef_step_end(self, run, outputs, terms) -> None:  # noqa: ANN001
                if run.accelerator.device.type == "cuda":
                    torch.cuda.synchronize()
                bench.stamps.append(time.perf_counter())

            @hookimpl(tryfirst=True)
            def jef_train_step(self, run, batch):  # noqa: ANN001, ANN201
                if bench.fixed_views is None:
                    return None  # the default step: jef's augmenter on the batch
                loss, terms, outputs = run.model(bench.fixed_views, batch[2])
                return {"loss": loss, "terms": terms, "outputs": outputs}

        return Hooks()


# --------------------------------------------------------------------------------------------------------------
# Data and evaluation (identical for both)
# --------------------------------------------------------------------------------------------------------------

def load_arrays(cfg: dict[str, Any]) -> dict[str, Tensor]:
    from jef.data.fashion import find_fashion_files, load_fashion_split

    files = find_fashion_files(None)
    out = {}
    for split, n in (("train", cfg["subset_train"]), ("test", cfg["subset_test"])):
        x, y = load_fashion_split(files, split)
        out[f"x_{split}"], out[f"y_{split}"] = torch.from_numpy(x[:n].copy()), torch.from_numpy(y[:n].copy())
    return out


def normalisation(pipeline) -> tuple[float, float]:
    mean, std = pipeline.augmenter.options.channel_stats(1)
    return float(mean[0]), float(std[0])


def evaluate(backbone: nn.Module, arrays: dict[str, Tensor], pipeline, cfg: dict[str, Any],
             device: torch.device) -> dict[str, float]:
    """kNN (k=200, T=0.1) and linear-probe top-1 of frozen features: centre view (the whole 28x28 image),
    scaled to [0, 1] and normalised as the training views; the training subset is the bank / probe set."""
    from jef.evaluate import knn_top1, linear_probe
    from jef.options import LinearProbeOptions

    mean, std = normalisation(pipeline)
    backbone.eval()
    feats = {}
    with torch.no_grad():
        for split in ("train", "test"):
            chunks = [backbone(((x[:, None].float() / 255 - mean) / std).to(device)).float()
                      for x in arrays[f"x_{split}"].split(512)]
            feats[split] = torch.cat(chunks)
    ytr, yte = arrays["y_train"].to(device), arrays["y_test"].to(device)
    knn = knn_top1(feats["train"], ytr, feats["test"], yte, num_classes=10, k=200, temperature=0.1)
    probe = linear_probe(feats["train"], ytr, feats["test"], yte, num_classes=10,
                         options=LinearProbeOptions(epochs=cfg["probe_epochs"]), seed=cfg["seed"])
    return {"knn_top1": knn, "linear_top1": probe.top1}


def window_rates(stamps: list[float], batch: int, warmup: int, window: int) -> list[float]:
    """Images/s over consecutive windows of ``window`` steps, the first ``warmup`` steps left out."""
    s = stamps[warmup:]
    return [window * batch / (s[i + window] - s[i]) for i in range(0, len(s) - window, window)]


def step_intervals(stamps: list[float], warmup: int) -> list[float]:
    s = stamps[warmup:]
    return [b - a for a, b in zip(s[:-1], s[1:], strict=True)]


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def fixed_views(pipeline, arrays: dict[str, Tensor], cfg: dict[str, Any], device: torch.device) -> list[Tensor]:
    """One batch's views, made once by jef's augmenter from a fixed seed: the same tensors on both sides."""
    from jef.augment.views import ViewsAugmenter

    aug = ViewsAugmenter(pipeline.augmenter.options, in_channels=1, image_size=28)
    images = arrays["x_train"][:cfg["batch_size"], None]
    return [v.to(device) for v in aug(images, generator=torch.Generator().manual_seed(cfg["seed"]))]


# --------------------------------------------------------------------------------------------------------------
# jef worker
# --------------------------------------------------------------------------------------------------------------

def run_jef(cfg: dict[str, Any]) -> dict[str, Any]:
    from jef.config import resolve
    from jef.plugins import load_plugins
    from jef.train import train

    bench = _JefBench(cfg)
    plugins = load_plugins(extra=(("compare_lightly", bench._hooks()),))
    pipeline = _resolve(cfg, plugins, resolve)
    device = _device(cfg)
    arrays = load_arrays(cfg)
    if cfg["mode"] == "step":
        bench.fixed_views = fixed_views(pipeline, arrays, cfg, device)
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        metrics = train(pipeline, run_dir=run_dir, plugins=plugins, cpu=device.type == "cpu")
        wall = time.perf_counter() - t0
    result = _timings(bench.stamps, cfg, wall, device)
    result["final_loss"] = float(metrics.get("loss", float("nan")))
    if cfg["mode"] == "train":
        result.update(evaluate(bench.backbone, arrays, pipeline, cfg, device))
    return result


def _resolve(cfg: dict[str, Any], plugins, resolve):  # noqa: ANN001, ANN202
    method = cfg["method"]
    user: dict[str, Any] = {
        "method": method, "seed": cfg["seed"],
        "data": {"name": "fashion_mnist", "subset_train": cfg["subset_train"], "subset_test": 1},
        "backbone": {"name": "bench_resnet"},
        "monitors": [],  # lightly has none; jef's default collapse monitor is left out for identical work
        "train": {"epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "progress": False,
                  "tensorboard": False, "num_workers": 0, "log_every": 1_000_000,
                  "checkpoint_every": 1_000_000, "precision": cfg["precision"]},
        "eval": {"knn": {"enabled": False}},
    }
    pipeline = resolve(user, [], registry=plugins.registry)
    overrides = []
    warmup = pipeline.train.scheduler.warmup_epochs
    if warmup:  # the recipes' warm-up is meant for 100 epochs: keep its fraction of the run
        overrides.append(f"train.scheduler.warmup_epochs={warmup * cfg['epochs'] / 100}")
    if method == "swav":  # prototypes frozen for one epoch (the paper's choice); no queue (lightly's example has none)
        overrides += [f"functionals.0.freeze_prototypes_steps={cfg['subset_train'] // cfg['batch_size']}",
                      "functionals.0.queue_length=0"]
    if method == "dino":  # lightly's DINOLoss warms the teacher temperature up in epochs; jef's recipe: none
        overrides.append("functionals.0.warmup_teacher_temperature_epochs=0")
    if method == "moco_v2":
        overrides.append(f"functionals.0.size={cfg['queue']}")
    if cfg.get("steps"):
        overrides.append(f"train.max_steps={cfg['steps']}")
    return resolve(user, overrides, registry=plugins.registry) if overrides else pipeline


def _device(cfg: dict[str, Any]) -> torch.device:
    return torch.device("cuda" if cfg["device"] == "cuda" else "cpu")


def _timings(stamps: list[float], cfg: dict[str, Any], wall: float, device: torch.device) -> dict[str, Any]:
    warm = min(cfg["warmup_steps"], max(len(stamps) - 2, 0))
    rates = window_rates(stamps, cfg["batch_size"], warm, cfg["window"])
    steps = step_intervals(stamps, warm)
    return {"steps": len(stamps), "wall_s": wall, "images_per_s": statistics.median(rates) if rates else
            (cfg["batch_size"] / statistics.median(steps) if steps else float("nan")),
            "window_rates": rates, "ms_per_step": 1000 * statistics.median(steps) if steps else float("nan"),
            "peak_mib": peak_memory_mib(device)}


# --------------------------------------------------------------------------------------------------------------
# lightly worker
# --------------------------------------------------------------------------------------------------------------

def lightly_transform(pipeline):  # noqa: ANN201
    """lightly's transform for the method, with jef's view parameters (colour jitter strength 1 and jef's
    factors, so brightness etc. mean the same on both sides)."""
    import lightly.transforms as T

    o, method = pipeline.augmenter.options, pipeline.method.name
    size = o.size or 28  # null: the data's side (Fashion-MNIST: 28)
    local = o.local_size or max(1, round(size * 96 / 224))  # jef's default local side
    mean, std = normalisation(pipeline)
    norm = {"mean": [mean], "std": [std]}
    common = dict(cj_prob=o.per_view("jitter_p")[0], cj_strength=1.0, cj_bright=o.brightness,
                  cj_contrast=o.contrast, cj_sat=o.saturation, cj_hue=o.hue, random_gray_scale=o.per_view(
                      "grayscale_p")[0], sigmas=tuple(o.blur_sigma), hf_prob=o.per_view("flip_p")[0],
                  normalize=norm)
    blur, sol = o.per_view("blur_p"), o.per_view("solarize_p")
    if method in ("swav", "dino"):
        crops = dict(hf_prob=common.pop("hf_prob"))
        if method == "swav":
            return T.SwaVTransform(crop_sizes=(size, local), crop_counts=(o.n_global, o.n_local),
                                   crop_min_scales=(o.scale[0], o.local_scale[0]),
                                   crop_max_scales=(o.scale[1], o.local_scale[1]), gaussian_blur=blur[0],
                                   **crops, **common)
        return T.DINOTransform(global_crop_size=size, global_crop_scale=tuple(o.scale),
                               local_crop_size=local, local_crop_scale=tuple(o.local_scale),
                               n_local_views=o.n_local, gaussian_blur=(blur[0], blur[1], blur[-1]),
                               solarization_prob=sol[1], **crops, **common)
    if blur[0] != blur[1] or sol[0] != sol[1]:  # BYOL's asymmetric views (also Barlow Twins', VICReg's)
        views = [T.BYOLView1Transform(input_size=size, min_scale=o.scale[0], gaussian_blur=blur[i],
                                      solarization_prob=sol[i], **common) for i in range(2)]
        return T.BYOLTransform(view_1_transform=views[0], view_2_transform=views[1])
    if sol[0]:
        raise NotImplementedError(f"{method}: symmetric solarisation has no lightly transform here")
    cls = {"simclr": T.SimCLRTransform, "moco_v2": T.MoCoV2Transform, "simsiam": T.SimSiamTransform}[method]
    return cls(input_size=size, min_scale=o.scale[0], gaussian_blur=blur[0], **common)


class _PILDataset(torch.utils.data.Dataset):
    """uint8 greyscale arrays as PIL images through a lightly transform: ``(views, label)``."""

    def __init__(self, x: Tensor, y: Tensor, transform) -> None:  # noqa: ANN001
        self.x, self.y, self.transform = x.numpy(), y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):  # noqa: ANN204
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i], mode="L")), int(self.y[i])


def _mlp(dims: list[int], d_in: int, *, batch_norm: bool = True, last_bn: bool = False):  # noqa: ANN202
    """A lightly ``ProjectionHead`` with jef's ``mlp`` layout: Linear-BN-ReLU hidden layers, a plain last layer
    (optionally followed by a BatchNorm without affine parameters)."""
    from lightly.models.modules.heads import ProjectionHead

    blocks, d = [], d_in
    for i, out in enumerate(dims):
        last = i == len(dims) - 1
        bn = nn.BatchNorm1d(out, affine=False) if last and last_bn else (
            nn.BatchNorm1d(out) if batch_norm and not last else None)
        blocks.append((d, out, bn, None if last else nn.ReLU()))
        d = out
    return ProjectionHead(blocks)


class LightlyMethod(nn.Module):
    """One method written with lightly's building blocks, as its examples write them.

    ``loss(views, step, epoch)`` is the training loss (scaled as jef's recipe scales it, so the optimiser sees
    the same gradients); ``after_backward(epoch)`` and ``after_step(step)`` do what lightly's examples do there
    (DINO's frozen last layer; momentum updates, prototype normalisation).
    """

    def __init__(self, pipeline, backbone: nn.Module, total_steps: int) -> None:  # noqa: ANN001
        super().__init__()
        from lightly import loss as L
        from lightly.models.modules import heads as H
        from lightly.models.utils import deactivate_requires_grad

        self.method, self.total_steps = pipeline.method.name, total_steps
        m, d = self.method, backbone.out_dim
        proj = pipeline.projector.options
        self.backbone, self.target_momentum = backbone, None
        if m == "simclr":
            self.projector = H.SimCLRProjectionHead(d, proj.dims[0], proj.dims[1])
            self.criterion = L.NTXentLoss(temperature=pipeline.energy.options.temperature)
        elif m == "moco_v2":
            self.projector = H.MoCoProjectionHead(d, proj.dims[0], proj.dims[1])
            f = pipeline.functionals[0].options
            self.criterion = L.NTXentLoss(temperature=f.temperature, memory_bank_size=(f.size, proj.dims[1]))
        elif m in ("byol", "simsiam"):
            self.projector = (H.BYOLProjectionHead(d, proj.dims[0], proj.dims[1]) if m == "byol"
                              else _mlp(proj.dims, d, last_bn=True))
            pred = pipeline.predictor.options
            self.predictor = (H.BYOLPredictionHead(proj.dims[-1], pred.dims[0], pred.dims[1]) if m == "byol"
                              else H.SimSiamPredictionHead(proj.dims[-1], pred.dims[0], pred.dims[1]))
            self.criterion = L.NegativeCosineSimilarity()
        elif m == "barlowtwins":
            self.projector = H.BarlowTwinsProjectionHead(d, proj.dims[0], proj.dims[-1])
            self.criterion = L.BarlowTwinsLoss(lambda_param=pipeline.functionals[0].options.lambd)
        elif m == "vicreg":
            self.projector = H.VICRegProjectionHead(d, proj.dims[0], proj.dims[-1], num_layers=len(proj.dims))
            self.criterion = L.VICRegLoss()
        elif m == "swav":
            f = pipeline.functionals[0].options
            self.projector = H.SwaVProjectionHead(d, proj.dims[0], proj.dims[1])
            self.prototypes = H.SwaVPrototypes(proj.dims[1], f.n_prototypes, f.freeze_prototypes_steps)
            self.criterion = L.SwaVLoss(temperature=pipeline.energy.options.temperature,
                                        sinkhorn_iterations=f.iterations, sinkhorn_epsilon=f.epsilon)
        elif m == "dino":
            f = pipeline.functionals[0].options
            steps_per_epoch = max(1, total_steps // max(pipeline.train.epochs, 1))
            self.projector = H.DINOProjectionHead(d, proj.hidden_dim, proj.bottleneck_dim, proj.out_dim,
                                                  batch_norm=proj.batch_norm,
                                                  freeze_last_layer=proj.freeze_last_layer_epochs,
                                                  norm_last_layer=proj.norm_last_layer)
            self.steps_per_epoch = steps_per_epoch
            self.criterion = L.DINOLoss(output_dim=proj.out_dim, warmup_teacher_temp=f.warmup_teacher_temperature,
                                        teacher_temp=f.teacher_temperature, warmup_teacher_temp_epochs=0,
                                        student_temp=pipeline.energy.options.temperature,
                                        center_momentum=f.center_momentum)
        else:
            raise ValueError(f"compare_lightly: no lightly version of {m!r}")
        target = pipeline.target
        if target.name == "ema":
            self.target_momentum = (target.momentum, target.final_momentum, target.schedule)
            self.backbone_t = copy.deepcopy(self.backbone)
            if m == "dino":  # a weight-normalised layer cannot be deep-copied: a fresh head, the student's weights
                self.projector_t = H.DINOProjectionHead(d, proj.hidden_dim, proj.bottleneck_dim, proj.out_dim,
                                                        batch_norm=proj.batch_norm,
                                                        norm_last_layer=proj.norm_last_layer)
                self.projector_t.load_state_dict(self.projector.state_dict())
            else:
                self.projector_t = copy.deepcopy(self.projector)
            deactivate_requires_grad(self.backbone_t)
            deactivate_requires_grad(self.projector_t)

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        from lightly.models.utils import batch_shuffle, batch_unshuffle

        m = self.method
        if m in ("simclr", "barlowtwins", "vicreg"):
            z = [self.projector(self.backbone(v)) for v in views]
            return self.criterion(z[0], z[1])
        if m == "moco_v2":
            q = [self.projector(self.backbone(v)) for v in views]
            with torch.no_grad():  # keys on a shuffled batch (MoCo's shuffle BN), as jef's recipe
                k = []
                for v in views:
                    shuffled, idx = batch_shuffle(v)
                    k.append(batch_unshuffle(self.projector_t(self.backbone_t(shuffled)), idx))
            return 0.5 * (self.criterion(q[0], k[1]) + self.criterion(q[1], k[0]))
        if m in ("byol", "simsiam"):
            z = [self.projector(self.backbone(v)) for v in views]
            p = [self.predictor(x) for x in z]
            if m == "byol":
                with torch.no_grad():
                    t = [self.projector_t(self.backbone_t(v)) for v in views]
                # jef: 4 * mean over both orders of (1 - cos) = const - 2 cos(p0, t1) - 2 cos(p1, t0)
                return 2.0 * (self.criterion(p[0], t[1]) + self.criterion(p[1], t[0]))
            return 0.5 * (self.criterion(p[0], z[1].detach()) + self.criterion(p[1], z[0].detach()))
        if m == "swav":
            self.prototypes.normalize()
            out = [self.prototypes(F.normalize(self.projector(self.backbone(v)), dim=1), step) for v in views]
            return self.criterion(out[:2], out[2:])
        if m == "dino":
            with torch.no_grad():
                teacher = [self.projector_t(self.backbone_t(v)) for v in views[:2]]
            student = [self.projector(self.backbone(v)) for v in views]
            return self.criterion(teacher, student, epoch=epoch)
        raise AssertionError(m)

    def after_backward(self, epoch: int) -> None:
        if self.method == "dino":
            self.projector.cancel_last_layer_gradients(epoch)

    def after_step(self, step: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        if self.target_momentum is None:
            return
        start, end, schedule = self.target_momentum
        momentum = cosine_schedule(step, self.total_steps, start, end) if schedule == "cosine" else start
        update_momentum(self.backbone, self.backbone_t, m=momentum)
        update_momentum(self.projector, self.projector_t, m=momentum)


def lightly_optimizer(model: LightlyMethod, pipeline, steps_per_epoch: int, total: int):  # noqa: ANN001, ANN201
    """jef's recipe optimiser built from lightly/torch parts: ``lightly.utils.lars.LARS`` (which leaves
    parameter groups with weight decay 0 out of the layer-wise adaptation) or ``torch.optim.SGD``; norms and
    biases without weight decay where the recipe says so; the predictor at a fixed rate for SimSiam; the
    schedule is jef's warm-up + cosine multiplier (lightly's ``CosineWarmupScheduler`` has the same shape)."""
    from lightly.utils.lars import LARS

    from jef.optim import scaled_lr, warmup_cosine

    o = pipeline.train.optimizer
    fixed = {id(p) for p in model.predictor.parameters()} if o.fixed_lr_predictor else set()
    groups = []
    for is_fixed in (False, True):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in fixed) == is_fixed]
        decayed = [p for p in params if not (o.exclude_norm_and_bias and p.ndim <= 1)]
        plain = [p for p in params if o.exclude_norm_and_bias and p.ndim <= 1]
        for group, wd in ((decayed, o.weight_decay), (plain, 0.0)):
            if group:
                groups.append({"params": group, "weight_decay": wd, "fixed": is_fixed})
    lr = scaled_lr(o, pipeline.train.batch_size)
    opt = (LARS(groups, lr=lr, momentum=o.momentum, trust_coefficient=o.trust_coefficient) if o.name == "lars"
           else torch.optim.SGD(groups, lr=lr, momentum=o.momentum))
    cosine = warmup_cosine(pipeline.train.scheduler, steps_per_epoch, total)
    lambdas = [(lambda s: 1.0) if g["fixed"] else cosine for g in opt.param_groups]
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)


def run_lightly(cfg: dict[str, Any]) -> dict[str, Any]:
    from jef.config import resolve
    from jef.plugins import load_plugins

    bench = _JefBench(cfg)
    plugins = load_plugins(extra=(("compare_lightly", bench._hooks()),))
    pipeline = _resolve(cfg, plugins, resolve)
    device = _device(cfg)
    arrays = load_arrays(cfg)
    torch.manual_seed(cfg["seed"])
    steps_per_epoch = cfg["subset_train"] // cfg["batch_size"]
    total = steps_per_epoch * cfg["epochs"]
    if cfg.get("steps"):
        total = min(total, cfg["steps"])
    model = LightlyMethod(pipeline, make_backbone(cfg), total).to(device)
    optimizer, scheduler = lightly_optimizer(model, pipeline, steps_per_epoch, total)
    clip = pipeline.train.clip_grad_norm
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["precision"] == "bf16")

    def one_step(views: list[Tensor], step: int, epoch: int) -> Tensor:
        with autocast:
            loss = model.loss(views, step, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.after_backward(epoch)
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        model.after_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return loss.detach()

    stamps: list[float] = []
    model.train()
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))
    if cfg["mode"] == "step":
        views = fixed_views(pipeline, arrays, cfg, device)
        for step in range(total):
            loss = one_step(views, step, 0)
    else:
        dataset = _PILDataset(arrays["x_train"], arrays["y_train"], lightly_transform(pipeline))
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg["batch_size"], shuffle=True, drop_last=True, num_workers=cfg["workers"],
            persistent_workers=cfg["workers"] > 0, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg["seed"]))
        step = 0
        for epoch in range(cfg["epochs"]):
            for views, _ in loader:
                loss = one_step([v.to(device, non_blocking=True) for v in views], step, epoch)
                step += 1
                if step >= total:
                    break
            if step >= total:
                break
    wall = time.perf_counter() - t0
    result = _timings(stamps, cfg, wall, device)
    result["final_loss"] = float(loss)
    if cfg["mode"] == "train":
        result.update(evaluate(model.backbone, arrays, pipeline, cfg, device))
    return result


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


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}"


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
    p.add_argument("--out", default="compare_lightly.json", help="raw results (JSON)")
    p.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _fmt(x: float, spec: str = ".1f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args._worker:
        _worker(*args._worker)
        return {}
    base = {k: getattr(args, k) for k in ("epochs", "steps", "subset_train", "subset_test", "batch_size", "width",
                                           "blocks", "queue", "probe_epochs", "threads", "workers", "device",
                                           "precision", "warmup_steps", "window")}
    command = " ".join([f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}", Path(sys.executable).name,
                        *sys.argv])
    header = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(), "lightly": lightly_version(), "load_before": os.getloadavg(),
              "protocol": base}
    results: list[dict[str, Any]] = []
    for method in args.methods:
        for i, seed in enumerate(args.seeds):
            order = args.frameworks if i % 2 == 0 else args.frameworks[::-1]  # alternate who goes first
            for fw in order:
                cfg = {**base, "method": method, "seed": seed, "framework": fw, "mode": "train"}
                print(f"[compare_lightly] train {method} seed {seed} {fw} ...", file=sys.stderr, flush=True)
                results.append({**cfg, **spawn(cfg)})
        if args.step_steps:
            for r in range(args.step_repeats):
                for fw in (args.frameworks if r % 2 == 0 else args.frameworks[::-1]):
                    cfg = {**base, "method": method, "seed": args.seeds[0], "framework": fw, "mode": "step",
                           "steps": args.step_steps + args.warmup_steps, "epochs": 1000}
                    print(f"[compare_lightly] step-alone {method} {fw} run {r} ...", file=sys.stderr, flush=True)
                    results.append({**cfg, **spawn(cfg)})
    header["load_after"] = os.getloadavg()
    report = {"header": header, "results": results}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(markdown(report, args))
    return report


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    h = report["header"]
    lines = [f"Command: `{h['command']}`", "",
             f"Date: {h['date']}; machine: {h['machine']}; lightly {h['lightly']}; load average before "
             f"{h['load_before'][0]:.2f}, after {h['load_after'][0]:.2f}.", "",
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
            summary[(method, fw)] = (ips, ms)
            knn = " / ".join(f"{100 * r['knn_top1']:.1f}" for r in train)
            lin = " / ".join(f"{100 * r['linear_top1']:.1f}" for r in train)
            loss = " / ".join(f"{r['final_loss']:.3f}" for r in train)
            lines.append(f"| {method} | {fw} | {_fmt(ips, '.0f')} | {_fmt(ms)} | {_fmt(mem, '.0f')} | {knn} | "
                         f"{lin} | {loss} |")
    if set(args.frameworks) == set(FRAMEWORKS):
        lines += ["", "| method | e2e jef / lightly | step alone lightly ms / jef ms |", "|---|---:|---:|"]
        for method in args.methods:
            (ji, jm), (li, lm) = summary[(method, "jef")], summary[(method, "lightly")]
            lines.append(f"| {method} | {_fmt(ji / li, '.2f')}x | {_fmt(lm / jm, '.2f')}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
