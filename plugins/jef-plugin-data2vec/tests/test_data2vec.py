"""data2vec through jef: discovery, the paper's recipe, the loss against a float64 reference, learning."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

from jef.components import RunContext
from jef.config import merge, resolve
from jef.model.build import build
from jef.testing import assert_discovered, assert_learns


#: The recipe on a tiny ViT: 16 px views (4 x 4 patches of 4 px), 2 blocks (both averaged for the targets),
#: rectangles of at least 2 patches, no stochastic depth (2 processes must draw what 1 draws).
TINY = {
    "method": "data2vec",
    "augmenter": {"size": 16},
    "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0,
                 "pool": "mean"},
    "masker": {"min_block": 2},
    "functionals": [{"name": "token_targets", "blocks": 2}],
}


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "data2vec", provides={"method": ["data2vec"]})


def test_recipe_is_the_papers_vit_b16_setting(plugins):
    p = resolve({"method": "data2vec"}, registry=plugins.registry)
    b = p.backbone.options
    assert (p.backbone.name, b.preset, b.patch_size, b.mask_token, b.layer_scale, b.drop_path) == \
        ("vit", "base", 16, True, 1e-4, 0.1)
    m = p.masker.options
    assert (p.masker.name, m.ratio, m.min_block, m.mode) == ("block", 0.6, 16, "replace")
    assert p.projector is None and p.predictor.name == "token_linear"
    assert (p.target.name, p.target.momentum, p.target.final_momentum, p.target.projector) == \
        ("ema", 0.999, 0.9998, False)
    [targets] = p.functionals
    assert (targets.name, targets.options.blocks, targets.options.each_norm, targets.options.norm) == \
        ("token_targets", 6, "instance", "layer")
    e = p.energy.options
    assert (p.energy.name, e.beta, e.reduce, e.scale) == ("smooth_l1", 2.0, "sum", "inverse_sqrt_dim")
    views = p.augmenter.options
    assert (views.n_global, views.n_local, views.size) == (1, 0, 224)
    o = p.train.optimizer
    assert (o.name, o.lr * 2048 / 256, o.weight_decay) == ("adamw", pytest.approx(2e-3), 0.05)


def _instance_norm(x: torch.Tensor) -> torch.Tensor:
    """Each channel over the sample's tokens: x [N, T, d]."""
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def test_loss_equals_the_papers_formula_in_float64(plugins):
    pipeline = resolve(merge(TINY, {"data": {"name": "synthetic", "image_size": 16, "train_size": 8,
                                             "test_size": 0}}), registry=plugins.registry)
    built = build(pipeline, RunContext(batch_size=6, global_batch_size=6))
    model = built.model.double()
    # A teacher that differs from the student, as after training (the EMA copy starts equal).
    with torch.no_grad():
        for parameter in model.target_backbone.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.manual_seed(0)
    view = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    # Rows that mask different numbers of patches (block masks do): the loss is the mean over every masked patch.
    drawn = model.masker(view, generator=torch.Generator().manual_seed(1))
    hidden = drawn.hidden.clone()
    hidden[0, :] = False
    hidden[0, :3] = True
    masks = attrs.evolve(drawn, hidden=hidden, predict=(hidden,), counts=(int(hidden.sum()),))
    assert hidden.sum(dim=1).unique().numel() > 1
    loss = model([view], masks=[masks]).loss

    with torch.no_grad():
        student = model.backbone.forward_tokens(view, mask=hidden, mask_mode="replace").patches
        teacher = model.target_backbone.forward_tokens(view, blocks=(0, 1)).blocks
        y = _layer_norm(sum(_instance_norm(teacher[i][:, 1:]) for i in (0, 1)) / 2)  # CLS left out
        head = model.predictor.linear
        p = student @ head.weight.T + head.bias
        x = (p - y)[hidden]  # the masked patches of every sample, [M, D]
        beta, d = 2.0, x.shape[-1]
        smooth = torch.where(x.abs() < beta, 0.5 * x ** 2 / beta, x.abs() - 0.5 * beta)
        reference = (smooth.sum(dim=-1) / math.sqrt(d)).mean()
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_data2vec_learns_on_fashion_mnist_with_a_tiny_vit(plugins):
    # On the textures of jef.testing's learning data a random ViT's kNN is already high, and data2vec's
    # instance-normed targets drop what a texture is (each image's channel means); Fashion-MNIST's shapes give
    # its masked prediction something to learn. 240 steps, the paper's AdamW with a higher LR for the short run.
    result = assert_learns(merge(TINY, {
        "data": {"name": "fashion_mnist_mini", "subset_train": 512, "subset_test": 256},
        "augmenter": {"scale": [0.5, 1.0]},
        "target": {"momentum": 0.996, "final_momentum": 1.0},
        "train": {"optimizer": {"lr": 0.003}},
    }), plugins=plugins, steps=240)
    assert result.metrics["collapse/target_std"] > 0.5  # layer-normed targets stay spread
