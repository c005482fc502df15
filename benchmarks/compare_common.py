"""What both sides of benchmarks/compare_lightly.py share: the backbone, the data, evaluation, timing, and
the jef worker (``jef.run.loop.train`` with a plugin that times every step)."""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from memory import Phases, peak_memory_mib
from torch import Tensor, nn

METHODS = ("simclr", "moco_v2", "byol", "simsiam", "barlowtwins", "vicreg", "swav", "dino")
#: The jef recipe behind a compared method, where the names differ: the comparison trains a ResNet, and
#: `method: dino` is the ViT-S/16 setting (224 px crops, AdamW).
JEF_RECIPES = {"dino": "dino_resnet"}
_COMPARED = {recipe: method for method, recipe in JEF_RECIPES.items()}


def compared_method(pipeline) -> str:  # noqa: ANN001
    """The compared method a resolved pipeline is of: jef's recipe for it may have another name (dino_resnet)."""
    return _COMPARED.get(pipeline.method.name, pipeline.method.name)
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
    stage) make a method's run a few minutes on two CPU cores. ``stem="imagenet"`` is ResNet's own stem (7x7
    stride-2 conv, 3x3 stride-2 max-pool), for 224-pixel views: with it and ``width=64`` this is ResNet-18.
    """

    def __init__(self, in_channels: int = 1, width: int = 8, blocks: tuple[int, ...] = (2, 2, 2, 2),
                 stem: str = "small") -> None:
        super().__init__()
        first = (nn.Conv2d(in_channels, width, 3, 1, 1, bias=False) if stem == "small"
                 else nn.Conv2d(in_channels, width, 7, 2, 3, bias=False))
        pool = [] if stem == "small" else [nn.MaxPool2d(3, 2, 1)]
        self.stem = nn.Sequential(first, nn.BatchNorm2d(width), nn.ReLU(inplace=True), *pool)
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

    #: Calls per batch: 2 runs a two-view batch one view at a time (BatchNorm statistics per view), for ablations.
    chunks: int = 1

    def forward(self, x: Tensor) -> Tensor:
        if self.chunks > 1:
            return torch.cat([self._forward(part) for part in x.chunk(self.chunks)])
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


def make_backbone(cfg: dict[str, Any]) -> BenchResNet:
    """The backbone both frameworks train, with weights drawn from ``cfg['seed']`` alone (same start for both)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + cfg["seed"])
        return BenchResNet(1, cfg["width"], tuple(cfg["blocks"]), cfg.get("stem", "small"))


# --------------------------------------------------------------------------------------------------------------
# The protocol: one jef pipeline per method; lightly reads its settings from it
# --------------------------------------------------------------------------------------------------------------

class _JefBench:
    """A jef plugin: registers the shared backbone and stamps the time of every optimiser step."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg, self.stamps, self.backbone = cfg, [], None
        self.fixed_views: list[Tensor] | None = None
        self.phases = Phases()

    def _build(self, options: Any, ctx: Any) -> nn.Module:
        self.backbone = make_backbone(self.cfg)
        self.backbone.chunks = self.cfg.get("jef_backbone_chunks", 1)  # --jef-backbone-chunks (jef's side only)
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
                bench.phases.mark("loop_start")  # the model built, jef's data set loaded, the first batch drawn
                if bench.fixed_views is None:
                    return None  # the default step: jef's augmenter on the batch
                return run.model(bench.fixed_views, batch[2])  # a StepResult

        return Hooks()


# --------------------------------------------------------------------------------------------------------------
# Data and evaluation (identical for both)
# --------------------------------------------------------------------------------------------------------------

def load_arrays(cfg: dict[str, Any]) -> dict[str, Tensor]:
    from jef.data.bundled import load_bundle
    from jef.data.fashion import find_fashion_files, load_fashion_split

    # fashion_mnist_mini: the 12k images bundled with jef, for machines without the IDX files (no network)
    bundle = load_bundle() if cfg.get("data") == "fashion_mnist_mini" else None
    files = None if bundle else find_fashion_files(None)
    out = {}
    for split, n in (("train", cfg["subset_train"]), ("test", cfg["subset_test"])):
        x, y = (bundle[f"x_{split}"], bundle[f"y_{split}"]) if bundle else load_fashion_split(files, split)
        out[f"x_{split}"] = torch.from_numpy(x[:n].copy())
        out[f"y_{split}"] = torch.from_numpy(y[:n].astype("int64"))
    return out


def normalisation(pipeline) -> tuple[float, float]:
    mean, std = pipeline.augmenter.options.channel_stats(1)
    return float(mean[0]), float(std[0])


def evaluate(backbone: nn.Module, arrays: dict[str, Tensor], pipeline, cfg: dict[str, Any],
             device: torch.device) -> dict[str, float]:
    """kNN (k=200, T=0.1) and linear-probe top-1 of frozen features: centre view (the whole 28x28 image,
    resized to the views' side with ``--image-size``), scaled to [0, 1] and normalised as the training views;
    the training subset is the bank / probe set."""
    from jef.config.options import LinearProbeOptions
    from jef.evaluate import knn_top1, linear_probe

    mean, std = normalisation(pipeline)
    side = cfg.get("image_size") or 28

    def centre(x: Tensor) -> Tensor:  # the model trained on views of this side: it is scored at that side
        x = ((x[:, None].float() / 255 - mean) / std).to(device)
        return x if side == 28 else F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)

    backbone.eval()
    feats = {}
    with torch.no_grad():
        for split in ("train", "test"):
            chunks = [backbone(centre(x)).float() for x in arrays[f"x_{split}"].split(256)]
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


def fixed_views(pipeline, arrays: dict[str, Tensor], cfg: dict[str, Any], device: torch.device) -> list[Tensor]:
    """One batch's views, made once by jef's augmenter from a fixed seed: the same tensors on both sides."""
    from jef.augment.views import ViewsAugmenter

    aug = ViewsAugmenter(pipeline.augmenter.options, in_channels=1, image_size=28)
    images = arrays["x_train"][:cfg["batch_size"], None].to(device)  # made where they are used (a GPU: no numba JIT)
    return list(aug(images, generator=torch.Generator().manual_seed(cfg["seed"])))


# --------------------------------------------------------------------------------------------------------------
# jef worker
# --------------------------------------------------------------------------------------------------------------

def setup(cfg: dict[str, Any]) -> tuple[_JefBench, Any, Any, torch.device, dict[str, Tensor]]:
    """What either worker starts from: the timing plugin, the plugins, jef's resolved pipeline (every setting of
    both sides), the device and the data."""
    from jef.config import resolve
    from jef.plugins import load_plugins

    bench = _JefBench(cfg)
    bench.phases.mark("start")  # torch and jef imported
    plugins = load_plugins(extra=(("compare_lightly", bench._hooks()),))
    return bench, plugins, _resolve(cfg, plugins, resolve), _device(cfg), load_arrays(cfg)


def run_jef(cfg: dict[str, Any]) -> dict[str, Any]:
    from jef.run.loop import train

    bench, plugins, pipeline, device, arrays = setup(cfg)
    bench.phases.mark("setup")  # the pipeline resolved, the benchmark's arrays loaded
    if cfg["mode"] == "step":
        bench.fixed_views = fixed_views(pipeline, arrays, cfg, device)
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        metrics = train(pipeline, run_dir=run_dir, plugins=plugins, cpu=device.type == "cpu")
        wall = time.perf_counter() - t0
    bench.phases.mark("loop_end")
    result = _timings(bench.stamps, cfg, wall, device)
    result["memory"] = bench.phases.marks
    result["final_loss"] = float(metrics.get("loss", float("nan")))
    if cfg["mode"] == "train":
        result.update(evaluate(bench.backbone, arrays, pipeline, cfg, device))
    return result


def _resolve(cfg: dict[str, Any], plugins, resolve):  # noqa: ANN001, ANN202
    method = cfg["method"]
    user: dict[str, Any] = {
        "method": JEF_RECIPES.get(method, method), "seed": cfg["seed"],
        "data": {"name": cfg.get("data", "fashion_mnist"), "subset_train": cfg["subset_train"], "subset_test": 1},
        "backbone": {"name": "bench_resnet"},
        "monitors": [],  # lightly has none; jef's default collapse monitor is left out for identical work
        "train": {"epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "progress": False,
                  "tensorboard": False, "num_workers": 0, "log_every": 1_000_000,
                  "checkpoint_every": 1_000_000, "precision": cfg["precision"]},
        "eval": {"knn": {"enabled": False}},
    }
    if cfg.get("image_size"):  # views of this side from the 28-pixel sources (lightly's transform reads it too)
        user["augmenter"] = {"size": cfg["image_size"]}
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
    if cfg.get("framework") == "jef":  # --jef-override: an ablation of jef's side only
        overrides += cfg.get("jef_override", [])
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
