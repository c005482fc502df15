"""MoCo v1/v2/v3 through jef: discovery, recipes, MoCo v3's loss against its formula, tiny runs, learning."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch
import yaml
from jef_plugin_moco.v3 import MocoV3InfoNCE

from jef import hookimpl
from jef.builtin.energies import ScaledCosineEnergy
from jef.components import Branch, StepOutputs
from jef.config import merge, resolve
from jef.testing import (
    Objective,
    LEARNING_SETTINGS,
    assert_discovered,
    assert_learns,
    build_component,
    check_functional,
    check_functional_under_gather,
    installed_plugins,
    temporary_plugin,
    tiny_run,
)

METHODS = ["moco_v1", "moco_v2", "moco_v3", "moco_v3_resnet"]


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("moco")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "moco", provides={"method": METHODS, "functional": ["moco_v3_info_nce"]})


@pytest.mark.parametrize("method", ["moco_v1", "moco_v2"])
def test_moco_v1_and_v2_recipes_use_the_queue(plugins, method):
    pipeline = resolve({"method": method}, registry=plugins.registry)
    assert pipeline.energy.name == "scaled_cosine"
    assert [f.name for f in pipeline.functionals] == ["queue_info_nce"]
    queue = pipeline.functionals[0].options
    assert queue.temperature == pipeline.energy.options.temperature == {"moco_v1": 0.07, "moco_v2": 0.2}[method]
    assert queue.size == 4096
    target = pipeline.target
    assert (target.name, target.momentum, target.schedule, target.shuffle_bn) == ("ema", 0.999, "constant", True)
    assert pipeline.predictor is None
    optimizer = pipeline.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.weight_decay) == ("sgd", 0.03, 1e-4)
    assert pipeline.projector.options.dims == {"moco_v1": [128], "moco_v2": [2048, 128]}[method]
    assert pipeline.augmenter.options.blur_p == {"moco_v1": 0.0, "moco_v2": 0.5}[method]


def test_moco_v3_recipe(plugins):
    pipeline = resolve({"method": "moco_v3_resnet"}, registry=plugins.registry)
    assert [f.name for f in pipeline.functionals] == ["moco_v3_info_nce"]
    tau = pipeline.energy.options.temperature
    assert tau == pipeline.functionals[0].options.temperature == 1.0
    assert pipeline.energy.weight == pipeline.functionals[0].weight == 4 * tau
    assert pipeline.predictor is not None and pipeline.predictor.options.dims == [4096, 256]
    assert pipeline.projector.options.last_batch_norm
    target = pipeline.target
    assert (target.name, target.momentum, target.final_momentum, target.schedule, target.shuffle_bn) == \
        ("ema", 0.99, 1.0, "cosine", False)
    assert pipeline.train.optimizer.name == "lars"


def test_moco_v3_vit_recipe_is_the_papers_vit_s_16(plugins):
    """``method: moco_v3`` is the paper's ViT-S/16 setting (arXiv:2104.02057, appendix; the official code's
    ``vit_small`` and its CONFIG.md command for ViT-Small)."""
    pipeline = resolve({"method": "moco_v3"}, registry=plugins.registry)
    backbone = pipeline.to_dict()["backbone"]
    assert (backbone["name"], backbone["preset"], backbone["heads"], backbone["patch_size"]) == ("vit", "small", 12, 16)
    assert backbone["pos_embed"] == "sincos" and backbone["frozen_patch_embed"] is True
    assert pipeline.augmenter.options.size == 224 and pipeline.augmenter.options.n_global == 2
    projector, predictor = pipeline.projector.options, pipeline.predictor.options
    assert (projector.dims, projector.batch_norm, projector.last_batch_norm) == ([4096, 4096, 256], True, True)
    assert (predictor.dims, predictor.batch_norm, predictor.last_batch_norm) == ([4096, 256], True, True)
    assert [f.name for f in pipeline.functionals] == ["moco_v3_info_nce"]
    tau = pipeline.energy.options.temperature
    assert tau == pipeline.functionals[0].options.temperature == 0.2
    assert pipeline.energy.weight == pipeline.functionals[0].weight == pytest.approx(4 * tau)
    target = pipeline.target
    assert (target.name, target.momentum, target.final_momentum, target.schedule, target.shuffle_bn) == \
        ("ema", 0.99, 1.0, "cosine", False)
    optimizer, scheduler = pipeline.train.optimizer, pipeline.train.scheduler
    assert (optimizer.name, optimizer.lr, optimizer.scale_lr, optimizer.weight_decay) == \
        ("adamw", 1.5e-4, "linear", 0.1)
    assert not optimizer.exclude_norm_and_bias  # the paper's AdamW decays every parameter
    assert (scheduler.name, scheduler.warmup_epochs, scheduler.final_lr_ratio) == ("cosine", 40, 0.0)
    assert pipeline.train.epochs == 300
    # The views are the ResNet recipe's (BYOL's asymmetric ones), only larger.
    resnet = resolve({"method": "moco_v3_resnet"}, registry=plugins.registry).to_dict()["augmenter"]
    assert {**pipeline.to_dict()["augmenter"], "size": None} == resnet


def test_config_show_shows_the_frozen_patch_projection_and_sincos(plugins, tmp_path, capsys):
    from jef.cli import main

    path = tmp_path / "moco.yaml"
    path.write_text("method: moco_v3\n")
    code = main(["config", "show", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    shown = yaml.safe_load(out)["backbone"]
    assert (shown["name"], shown["pos_embed"], shown["frozen_patch_embed"]) == ("vit", "sincos", True)
    assert re.search(r"^# backbone +vit +builtin\.vit ", out, re.M), out[:1500]


def ctr_reference(q, k, tau):
    """MoCo v3's ctr(q, k): cross-entropy of k_i among all k_j for q_i, with explicit loops, float64."""
    def cos(x, y):
        return float(x @ y) / (float(x.norm()) * float(y.norm()))

    n = q.shape[0]
    total = 0.0
    for i in range(n):
        logits = [cos(q[i], k[j]) / tau for j in range(n)]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return total / n


def test_moco_v3_objective_is_the_papers_symmetric_loss(plugins):
    tau = 0.7
    g = torch.Generator().manual_seed(0)
    q1, q2, k1, k2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4))
    objective = Objective(("scaled_cosine", ScaledCosineEnergy(tau), 4 * tau),
                          [("moco_v3_info_nce", MocoV3InfoNCE(tau), 4 * tau)])
    out = StepOutputs(online=Branch(h=[q1, q2], z=[q1, q2]), target=Branch(h=[k1, k2], z=[k1, k2]), n_global=2)
    loss, _, _ = objective(out)
    expected = 2 * tau * (ctr_reference(q1, k2, tau) + ctr_reference(q2, k1, tau))
    assert float(loss) == pytest.approx(expected, rel=1e-10)


def test_moco_v3_functional_contract_in_one_and_two_processes(plugins):
    check_functional(build_component(plugins, "functional", "moco_v3_info_nce"), name="moco_v3_info_nce",
                     predictor=True)
    check_functional_under_gather(functools.partial(MocoV3InfoNCE, 0.5), name="moco_v3_info_nce", predictor=True)


#: A tiny ViT for 16-pixel images: 4-pixel patches (a 4 x 4 grid), 2 blocks of width 32 with 2 heads. The tiny
#: settings' backbone is small_cnn, so the ViT recipe's tests name vit again (keeping the recipe's sin-cos
#: positions and frozen patch projection) and crop 16-pixel views instead of 224-pixel ones.
TINY_VIT = {"augmenter": {"size": 16},
            "backbone": {"name": "vit", "preset": "tiny", "width": 32, "depth": 2, "heads": 2, "patch_size": 4}}
TINY = {"moco_v1": {}, "moco_v2": {}, "moco_v3": {**TINY_VIT, "predictor": {"dims": [32, 16]}},
        "moco_v3_resnet": {"predictor": {"dims": [32, 16]}}}


@pytest.mark.parametrize("method", METHODS)
def test_tiny_run(plugins, method):
    result = tiny_run({"method": method, **TINY[method], "eval": {"knn": {"enabled": False}}}, steps=2,
                      plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
    assert result.hooks_called.count("jef_step_end") == 2


#: Four texture classes, greyscale 16x16 (as tests/test_learning.py), sized for short runs of each version.
COMMON = LEARNING_SETTINGS
#: Each version keeps its own structure (target, queue or in-batch keys, predictor); sizes shrink, blur goes
#: (slow on a CPU, and it blurs away 16-pixel textures), and a 0.99 momentum lets the keys move in 120 steps.
LEARNABLE = {
    "moco_v1": {"augmenter": {"scale": [0.3, 1.0]}, "projector": {"dims": [32]}, "target": {"momentum": 0.99},
                "energy": {"temperature": 0.2},
                "functionals": [{"name": "queue_info_nce", "temperature": 0.2, "size": 1024}]},
    "moco_v2": {"augmenter": {"scale": [0.3, 1.0], "blur_p": 0.0},
                "projector": {"name": "mlp", "dims": [64, 32], "batch_norm": False}, "target": {"momentum": 0.99},
                "functionals": [{"name": "queue_info_nce", "temperature": 0.2, "size": 1024}]},
    # The ViT recipe as it is (τ 0.2, momentum 0.99 → 1, AdamW, a 3-layer projector), on the tiny ViT with narrow
    # heads; 120 steps need a 1-epoch warm-up (the recipe's 40 would never end) and AdamW's rate of a tiny model.
    "moco_v3": {"augmenter": {"size": 16, "scale": [0.3, 1.0], "blur_p": 0.0, "solarize_p": 0.0},
                "backbone": TINY_VIT["backbone"], "projector": {"dims": [64, 64, 32]}, "predictor": {"dims": [64, 32]},
                "train": {"optimizer": {"lr": 0.001}, "scheduler": {"warmup_epochs": 1}}},
    "moco_v3_resnet": {"augmenter": {"scale": [0.3, 1.0], "blur_p": 0.0, "solarize_p": 0.0},
                       "projector": {"dims": [64, 32]}, "predictor": {"dims": [64, 32]},
                       # EMA and predictor learn slower: a faster target (0.9 → 1) and a larger rate fit 120 steps.
                       "target": {"momentum": 0.9}, "train": {"optimizer": {"lr": 0.01}},
                       "energy": {"temperature": 0.2, "weight": 0.8},
                       "functionals": [{"name": "moco_v3_info_nce", "temperature": 0.2, "weight": 0.8}]},
}


@pytest.mark.parametrize("method", METHODS)
def test_each_version_learns_and_does_not_collapse(plugins, method):
    assert_learns(merge({"method": method}, LEARNABLE[method]), plugins=plugins)


class StateAtStartAndEnd:
    """The model's state dict when the run starts and when it ends."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}

    @hookimpl
    def jef_run_start(self, run):
        self.start = {k: v.detach().clone() for k, v in run.unwrapped_model.state_dict().items()}

    @hookimpl
    def jef_run_end(self, run, metrics):
        self.end = {k: v.detach().clone() for k, v in run.unwrapped_model.state_dict().items()}


def test_the_vit_recipe_trains_every_weight_but_the_patch_projection_and_positions(plugins):
    recorder = StateAtStartAndEnd()
    with temporary_plugin(plugins, recorder, "moco-state-recorder"):
        tiny_run({"method": "moco_v3", **TINY["moco_v3"], "eval": {"knn": {"enabled": False}}}, steps=2,
                 plugins=plugins)
    fixed = [k for k in recorder.start if "patch_embed.proj" in k or k.endswith("pos_embed")]
    # Both encoders: the online backbone and the EMA copy of it, each with a weight, a bias and the positions.
    assert len(fixed) == 6, fixed
    for key in fixed:
        if key.startswith("target_"):  # m·t + (1 − m)·t: the EMA of a constant, which rounds in float32
            torch.testing.assert_close(recorder.end[key], recorder.start[key], msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(recorder.start[key], recorder.end[key]), f"{key} changed in training"
    online = [k for k in recorder.start if k.startswith("backbone.") and k not in fixed]
    assert online, sorted(recorder.start)
    moved = [k for k in online if not torch.equal(recorder.start[k], recorder.end[k])]
    assert moved == online, f"weights that did not train: {sorted(set(online) - set(moved))}"
