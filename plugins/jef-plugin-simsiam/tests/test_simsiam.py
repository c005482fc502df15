"""SimSiam through jef: discovery, recipe, the loss against its formula, stop-gradient, runs, collapse."""

from __future__ import annotations

import math

import pytest
import torch

from jef.builtin.energies import CosineEnergy
from jef.components import Branch, RunContext, StepOutputs
from jef.config import merge, resolve
from jef.evaluate.collapse import CollapseWarning
from jef.testing import (
    LEARNING_SETTINGS, Objective, TINY_SETTINGS, assert_discovered, assert_learns, build_pipeline,
    installed_plugins, tiny_run,
)


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("simsiam")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "simsiam", provides={"method": ["simsiam"]})


def test_recipe_is_the_papers(plugins):
    pipeline = resolve({"method": "simsiam"}, registry=plugins.registry)
    assert (pipeline.energy.name, pipeline.energy.weight) == ("cosine", 1.0)
    assert list(pipeline.functionals) == []
    assert pipeline.target.name == "stopgrad"
    projector, predictor = pipeline.projector.options, pipeline.predictor.options
    assert (projector.dims, projector.last_batch_norm) == ([2048, 2048], True)
    assert (predictor.dims, predictor.last_batch_norm) == ([512, 2048], False)  # bottleneck, no output BN
    optimizer = pipeline.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.scale_lr, optimizer.weight_decay, optimizer.momentum) == \
        ("sgd", 0.05, "linear", 1e-4, 0.9)
    assert optimizer.fixed_lr_predictor
    assert pipeline.train.scheduler.name == "cosine"
    assert pipeline.augmenter.options.scale == (0.2, 1.0)


def simsiam_reference(p1, p2, z1, z2):
    """The paper's L = ½ D(p1, z2) + ½ D(p2, z1), D = −mean_n cos, written out sample by sample in float64."""
    def d(p, z):
        values = [-float(p[n] @ z[n]) / (float(p[n].norm()) * float(z[n].norm())) for n in range(p.shape[0])]
        return sum(values) / len(values)

    return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)


def test_objective_is_the_papers_symmetrised_negative_cosine_plus_one():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(4))
    out = StepOutputs(online=Branch(h=[z1, z2], z=[z1, z2], p=[p1, p2]), target=Branch(h=[z1, z2], z=[z1, z2]),
                      n_global=2)
    loss, terms, _ = Objective(("cosine", CosineEnergy(), 1.0), [])(out)
    # jef's D is 1 − cos: the constant 1 shifts the loss and changes no gradient.
    assert float(loss) == pytest.approx(1.0 + simsiam_reference(p1, p2, z1, z2), rel=1e-12)
    assert float(terms["energy/cosine"]) == pytest.approx(float(loss), rel=1e-12)


def small_model(plugins, **overrides):
    """The recipe's model, shrunk (small CNN, narrow heads), in train mode, with fixed weights."""
    data = merge({"method": "simsiam", **TINY_SETTINGS, "predictor": {"dims": [8, 16]}}, overrides)
    pipeline = resolve(data, registry=plugins.registry)
    torch.manual_seed(0)
    built = build_pipeline(plugins, pipeline, RunContext(batch_size=8, global_batch_size=8))
    return built.model.train(), built.augmenter


def views_of(augmenter, n=8):
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return augmenter(images, torch.Generator().manual_seed(2))


def test_stop_gradient_no_gradient_reaches_the_target_branch(plugins):
    model, augmenter = small_model(plugins)
    views = views_of(augmenter)
    loss, _, out = model(views)
    assert all(not z.requires_grad and z.grad_fn is None for z in out.target.z)  # nothing to differentiate
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    # The same forward written by hand: the backbone sees both views in one call (shared BN statistics),
    # heads per view, and the targets are detached: gradient flows only through p_a = h(f(x_a)).
    def by_hand(detach: bool):
        h = model.backbone(torch.cat(views)).chunk(2)
        z = [model.projector(x) for x in h]
        p = [model.predictor(x) for x in z]
        t = [x.detach() for x in z] if detach else z
        cos = torch.nn.functional.cosine_similarity
        return 0.5 * (1 - cos(p[0], t[1])).mean() + 0.5 * (1 - cos(p[1], t[0])).mean()

    expected = torch.autograd.grad(by_hand(True), list(model.parameters()), allow_unused=True)
    for got, want in zip(grads, expected, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want)
    # Without the stop-gradient the backbone's gradient differs: the test would see a leak.
    leaked = torch.autograd.grad(by_hand(False), list(model.backbone.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(leaked, grads[:len(leaked)], strict=True))


def test_bf16_autocast_gives_a_finite_loss_and_gradients(plugins):
    model, augmenter = small_model(plugins)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = model(views_of(augmenter))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tiny_run(plugins):
    result = tiny_run({"method": "simsiam", "predictor": {"dims": [8, 16]}, "eval": {"knn": {"enabled": False}}},
                      steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
    assert result.hooks_called.count("jef_step_end") == 2


#: Four texture classes, greyscale 16x16 (as tests/test_learning.py and the MoCo plugin's learning test).
COMMON = LEARNING_SETTINGS
#: SimSiam's structure (stop-gradient, bottleneck predictor at a fixed rate, output BN), sizes shrunk; no blur
#: (slow on a CPU, and it blurs away 16-pixel textures). A one-layer projector (linear + affine-free BN) and
#: AdamW at 0.01 learn clearly within 120 steps (two layers at 0.003 barely beat the random backbone).
LEARNABLE = {"augmenter": {"scale": [0.3, 1.0], "blur_p": 0.0}, "projector": {"dims": [32]},
             "predictor": {"dims": [16, 32]}, "train": {"optimizer": {"lr": 0.01}}}


def test_simsiam_learns_and_does_not_collapse(plugins):
    assert_learns(merge({"method": "simsiam"}, LEARNABLE), plugins=plugins)


def test_without_the_stop_gradient_simsiam_collapses_and_the_monitor_says_so(plugins):
    # The same run as the learning test with the gradient flowing into the target too (Chen & He, 2021,
    # Sec. 4.1, Fig. 2): the output BN keeps each dimension's std, so the collapse is dimensional (rank).
    collapsing = merge(merge({"method": "simsiam", **COMMON}, LEARNABLE),
                       {"target": {"name": "shared"}, "eval": {"knn": {"enabled": False}}})
    with pytest.warns(CollapseWarning, match="collapse"):
        tiny_run(collapsing, steps=120, plugins=plugins)  # caught at step 65
