"""BYOL through jef: discovery, recipe, the loss against its formula, the EMA target, runs, learning."""

from __future__ import annotations

import math

import pytest
import torch

from jef.builtin.energies import CosineEnergy
from jef.components import Branch, RunContext, StepOutputs
from jef.config import merge, resolve
from jef.run.optim import build_optimizer
from jef.testing import (
    LEARNING_SETTINGS, Objective, TINY_SETTINGS, assert_discovered, assert_learns, build_pipeline,
    installed_plugins, tiny_run,
)


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("byol")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "byol", provides={"method": ["byol"]})


def test_recipe_is_the_papers(plugins):
    pipeline = resolve({"method": "byol"}, registry=plugins.registry)
    assert (pipeline.energy.name, pipeline.energy.weight) == ("cosine", 4.0)
    assert list(pipeline.functionals) == []
    target = pipeline.target
    assert (target.name, target.momentum, target.final_momentum, target.schedule, target.projector) == \
        ("ema", 0.996, 1.0, "cosine", True)
    assert pipeline.projector.options.dims == pipeline.predictor.options.dims == [4096, 256]
    views = pipeline.augmenter.options
    assert (views.blur_p, views.solarize_p, views.saturation, views.hue) == ([1.0, 0.1], [0.0, 0.2], 0.2, 0.1)
    optimizer = pipeline.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.scale_lr, optimizer.weight_decay) == \
        ("lars", 0.2, "linear", 1.5e-6)
    assert optimizer.exclude_norm_and_bias and not optimizer.fixed_lr_predictor
    assert (pipeline.train.scheduler.name, pipeline.train.scheduler.warmup_epochs) == ("cosine", 10)


def byol_reference(q1, q2, z1, z2):
    """The paper's L^BYOL = L + L~, L = mean_n ‖q̄ − z̄'‖², written out element by element in float64."""
    def normalised_mse(q, z):
        total = 0.0
        for n in range(q.shape[0]):
            qn, zn = q[n].tolist(), z[n].tolist()
            q_norm, z_norm = math.sqrt(sum(x * x for x in qn)), math.sqrt(sum(x * x for x in zn))
            total += sum((a / q_norm - b / z_norm) ** 2 for a, b in zip(qn, zn, strict=True))
        return total / q.shape[0]

    return normalised_mse(q1, z2) + normalised_mse(q2, z1)


def test_objective_with_weight_4_is_the_papers_symmetrised_normalised_mse():
    g = torch.Generator().manual_seed(0)
    q1, q2, z1, z2 = (torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(4))
    out = StepOutputs(online=Branch(h=[z1, z2], z=[z1, z2], p=[q1, q2]), target=Branch(h=[z1, z2], z=[z1, z2]),
                      n_global=2)
    loss, _, _ = Objective(("cosine", CosineEnergy(), 4.0), [])(out)
    assert float(loss) == pytest.approx(byol_reference(q1, q2, z1, z2), rel=1e-12)


def small(plugins, **overrides):
    """The recipe's model and EMA updater, shrunk (small CNN, narrow heads), with fixed weights."""
    data = merge({"method": "byol", **TINY_SETTINGS, "predictor": {"dims": [32, 16]}}, overrides)
    pipeline = resolve(data, registry=plugins.registry)
    torch.manual_seed(0)
    built = build_pipeline(plugins, pipeline, RunContext(batch_size=8, global_batch_size=8, total_steps=10))
    updater = built.components["target"]
    return pipeline, built.model.train(), built.augmenter, updater


def views_of(augmenter, n=8):
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return augmenter(images, torch.Generator().manual_seed(2))


class FakeRun:
    """What EmaTarget.jef_step_end reads from the run."""

    def __init__(self, step: int) -> None:
        self.step, self.logged = step, {}

    def log(self, metrics):
        self.logged.update(metrics)


def test_target_parameters_change_only_through_the_ema_update(plugins):
    pipeline, model, augmenter, updater = small(plugins)
    target = [*model.target_backbone.parameters(), *model.target_projector.parameters()]
    online = [*model.backbone.parameters(), *model.projector.parameters()]
    assert all(not p.requires_grad for p in target)
    before = [p.detach().clone() for p in target]
    optimizer = build_optimizer(model, pipeline.train.optimizer, 8)
    loss, _, _ = model(views_of(augmenter))
    loss.backward()
    assert all(p.grad is None for p in target)  # no gradient reaches the target network
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, target, strict=True))  # the optimiser leaves it alone
    assert any(not torch.equal(a, b) for a, b in zip(before, online, strict=True))  # but moved the online one

    run = FakeRun(step=3)
    updater.jef_step_end(run=run, outputs=None, terms={})
    m = 1 - (1 - 0.996) * (math.cos(math.pi * 3 / 10) + 1) / 2  # τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2
    assert run.logged["target/momentum"] == pytest.approx(m)
    for old, new, theta in zip(before, target, online, strict=True):
        torch.testing.assert_close(new, m * old + (1 - m) * theta.detach())


def test_bf16_autocast_gives_a_finite_loss_and_gradients(plugins):
    _, model, augmenter, _ = small(plugins)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = model(views_of(augmenter))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tiny_run(plugins):
    result = tiny_run({"method": "byol", "predictor": {"dims": [32, 16]}, "eval": {"knn": {"enabled": False}}},
                      steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
    assert result.hooks_called.count("jef_step_end") == 2


#: Four texture classes, greyscale 16x16 (as tests/test_learning.py and the MoCo plugin's learning test).
COMMON = LEARNING_SETTINGS
#: BYOL's structure (EMA target with its projector, predictor, the recipe's loss weight) with sizes shrunk, no
#: blur or solarisation (slow on a CPU; they wash out 16-pixel textures), a faster target (0.99 → 1) for 120 steps,
#: and a one-layer projector with AdamW at 0.01, which learn clearly in 120 steps (two layers at 0.003 do not).
LEARNABLE = {"augmenter": {"scale": [0.3, 1.0], "blur_p": 0.0, "solarize_p": 0.0},
             "projector": {"dims": [32]}, "predictor": {"dims": [64, 32]}, "target": {"momentum": 0.99},
             "train": {"optimizer": {"lr": 0.01}}}


def test_byol_learns_and_does_not_collapse(plugins):
    assert_learns(merge({"method": "byol"}, LEARNABLE), plugins=plugins)


def test_multi_crop_byol_trains_with_local_views(plugins):
    result = tiny_run({"method": "byol", "predictor": {"dims": [32, 16]}, "eval": {"knn": {"enabled": False}},
                       "augmenter": {"n_local": 2, "local_size": 8}}, steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
