"""DINO's head through jef: its shape, normalisation and initialisation, the frozen last layer, the EMA teacher."""

from __future__ import annotations

import math

import pytest
import torch
from jef_plugin_dino.head import DinoHead

from jef.components import RunContext
from jef.config import merge, resolve
from jef.run.optim import build_optimizer
from jef.testing import TINY_SETTINGS, build_component, build_pipeline, check_head


def test_head_passes_the_contract_and_normalises_its_bottleneck(plugins):
    check_head(build_component(plugins, "head", "dino_head", {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}),
               name="dino_head")
    torch.manual_seed(0)
    head = DinoHead(12, 40, hidden_dim=24, bottleneck_dim=6)
    x = torch.randn(9, 12)
    bottleneck = head.bottleneck(x)
    torch.testing.assert_close(bottleneck.norm(dim=1), torch.ones(9))
    logits = head(x)
    assert logits.shape == (9, 40) and head.out_dim == 40
    # g = 1: every row of the last layer is a unit vector, so each logit is a cosine.
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(40))
    assert logits.abs().max() <= 1.0 + 1e-6
    g = head.last_layer.parametrizations.weight.original0
    assert torch.equal(g, torch.ones(40, 1)) and not g.requires_grad
    logits.sum().backward()
    assert g.grad is None and head.last_layer.parametrizations.weight.original1.grad is not None
    # Paper's initialisation of the MLP: truncated normal, std 0.02, zero biases.
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    assert linears[1].weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert any(isinstance(m, torch.nn.GELU) for m in head.mlp)


def test_head_options_change_the_layers():
    assert DinoHead(8, 10, n_layers=1, bottleneck_dim=4).mlp[0].in_features == 8
    assert len(DinoHead(8, 10, n_layers=1).mlp) == 1
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in DinoHead(8, 10, hidden_dim=6, batch_norm=True).mlp)
    assert DinoHead(8, 10, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad


def _small(plugins, **overrides):
    data = merge({"method": "dino_resnet", **TINY_SETTINGS, "augmenter": {"n_local": 2, "local_size": 8, "blur_p": 0.0,
                                                                      "solarize_p": 0.0},
                  "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}},
                 overrides)
    pipeline = resolve(data, registry=plugins.registry)
    torch.manual_seed(0)
    built = build_pipeline(plugins, pipeline, RunContext(batch_size=8, global_batch_size=8, total_steps=10))
    updater = built.components["target"]
    return pipeline, built.model.train(), built.augmenter, updater


def _views(augmenter):
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return augmenter(images, torch.Generator().manual_seed(2))


class FakeRun:
    def __init__(self, step=0, epoch=0):
        self.step, self.epoch, self.logged = step, epoch, {}

    def log(self, metrics):
        self.logged.update(metrics)


def test_teacher_head_is_an_ema_of_the_student_head_weight_norm_included(plugins):
    pipeline, model, augmenter, updater = _small(plugins)
    names = [n for n, _ in model.projector.named_parameters()]
    assert names == [n for n, _ in model.target_projector.named_parameters()]
    assert "last_layer.parametrizations.weight.original1" in names
    teacher = [*model.target_backbone.parameters(), *model.target_projector.parameters()]
    student = [*model.backbone.parameters(), *model.projector.parameters()]
    before = [p.detach().clone() for p in teacher]
    optimizer = build_optimizer(model, pipeline.train.optimizer, 8)
    assert not any(p is model.projector.last_layer.parametrizations.weight.original0
                   for group in optimizer.param_groups for p in group["params"])  # g is not trained
    loss, _, _ = model(_views(augmenter))
    loss.backward()
    model.projector.jef_after_backward(run=FakeRun(epoch=1))  # past the frozen epoch: the last layer moves too
    optimizer.step()
    run = FakeRun(step=4)
    updater.jef_step_end(run=run, outputs=None, terms={})
    m = 1 - (1 - 0.996) * (math.cos(math.pi * 4 / 10) + 1) / 2
    for old, new, theta in zip(before, teacher, student, strict=True):
        torch.testing.assert_close(new, m * old + (1 - m) * theta.detach())
    assert torch.equal(model.target_projector.last_layer.parametrizations.weight.original0, torch.ones(32, 1))


def test_last_layer_gradients_are_dropped_only_during_the_frozen_epochs(plugins):
    _, model, augmenter, _ = _small(plugins, projector={"freeze_last_layer_epochs": 2})
    loss, _, _ = model(_views(augmenter))
    loss.backward()
    v = model.projector.last_layer.parametrizations.weight.original1
    model.projector.jef_after_backward(run=FakeRun(epoch=2))
    assert v.grad is not None
    model.projector.jef_after_backward(run=FakeRun(epoch=1))
    assert v.grad is None and model.projector.mlp[0].weight.grad is not None


def test_bf16_autocast_gives_a_finite_loss_and_gradients(plugins):
    _, model, augmenter, _ = _small(plugins)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, out = model(_views(augmenter))
    assert torch.isfinite(loss) and out.target.z[0].dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
