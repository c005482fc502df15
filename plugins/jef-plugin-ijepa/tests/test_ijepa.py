"""I-JEPA through jef: discovery, the paper's recipe, the loss against a float64 reference, learning."""

from __future__ import annotations

import pytest
import torch

from jef.components import RunContext
from jef.config import merge, resolve
from jef.model.build import build
from jef.testing import assert_discovered, assert_learns

#: The recipe on a tiny ViT: 16 px views (a 4 x 4 grid of 4 px patches), 2 target blocks (4 of 16 patches
#: cannot leave a context), a 1-block predictor, no stochastic depth.
TINY = {
    "method": "ijepa",
    "augmenter": {"size": 16},
    "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
    "masker": {"n_targets": 2, "min_keep": 2},
    "predictor": {"width": 16, "depth": 1, "heads": 2},
}


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "ijepa", provides={"method": ["ijepa"]})


def test_recipe_is_the_papers_setting(plugins):
    p = resolve({"method": "ijepa"}, registry=plugins.registry)
    b = p.backbone.options
    assert (p.backbone.name, b.preset, b.patch_size, b.pos_embed, b.pool, b.mask_token) == \
        ("vit", "base", 16, "sincos", "mean", False)
    m = p.masker.options
    assert (p.masker.name, m.n_targets, m.target_scale, m.target_aspect, m.context_scale, m.context_aspect,
            m.min_keep) == ("multi_block", 4, (0.15, 0.2), (0.75, 1.5), (0.85, 1.0), (1.0, 1.0), 10)
    q = p.predictor.options
    assert (p.predictor.name, q.width, q.depth, q.queries, q.out) == ("vit_predictor", 384, 6, "per_set", "encoder")
    assert p.projector is None
    assert (p.target.name, p.target.momentum, p.target.final_momentum, p.target.projector) == \
        ("ema", 0.996, 1.0, False)
    [targets] = p.functionals
    assert (targets.name, targets.options.blocks, targets.options.norm) == ("token_targets", 0, "layer")
    assert (p.energy.name, p.energy.options.beta, p.energy.options.reduce) == ("smooth_l1", 1.0, "mean")
    v = p.augmenter.options
    assert (v.n_global, v.n_local, v.scale) == (1, 0, (0.3, 1.0))
    assert v.per_view("flip_p") == [0.0] and v.per_view("jitter_p") == [0.0]
    o = p.train.optimizer
    assert (o.name, o.lr * 2048 / 256, o.weight_decay, o.final_weight_decay) == \
        ("adamw", pytest.approx(1e-3), 0.04, 0.4)


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(dim=-1, keepdim=True) + 1e-5)


def _predict(predictor, context: torch.Tensor, kept: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """One predictor pass written out: context tokens and one block's positional mask tokens, per sample."""
    from jef.builtin.vit import sincos_position_embedding

    pos = sincos_position_embedding((4, 4), predictor.options.width).double()[0, 1:]
    out = []
    for n in range(context.shape[0]):
        x = torch.cat([predictor.embed(context[n]) + pos[kept[n]], predictor.mask_token[0] + pos[block[n]]])[None]
        for layer in predictor.blocks:
            x = layer(x)
        out.append(predictor.project(predictor.norm(x[0, int(kept[n].sum()):])))
    return torch.cat(out)


def test_loss_equals_the_papers_formula_in_float64(plugins):
    pipeline = resolve(merge(TINY, {"data": {"name": "synthetic", "image_size": 16, "train_size": 8,
                                             "test_size": 0}}), registry=plugins.registry)
    model = build(pipeline, RunContext(batch_size=5, global_batch_size=5)).model.double()
    with torch.no_grad():  # a target encoder that differs from the context encoder, as after training
        for parameter in model.target_backbone.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.manual_seed(0)
    view = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    masks = model.masker(view, generator=torch.Generator().manual_seed(3))
    loss = model([view], masks=[masks]).loss

    kept = ~masks.hidden
    with torch.no_grad():
        context = model.backbone.forward_tokens(view, mask=masks.hidden, mask_mode="drop").patches
        targets = _layer_norm(model.target_backbone.forward_tokens(view).patches)
        per_block = []
        for block in masks.predict:
            x = _predict(model.predictor, context, kept, block) - targets[block]
            smooth = torch.where(x.abs() < 1.0, 0.5 * x ** 2, x.abs() - 0.5)
            per_block.append(smooth.mean())
        reference = torch.stack(per_block).mean()
    assert len(masks.predict) == 2 and all(not (b & kept).any() for b in masks.predict)  # targets outside the context
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_a_target_blocks_predictions_do_not_see_the_other_blocks(plugins):
    pipeline = resolve(merge(TINY, {"data": {"name": "synthetic", "image_size": 16, "train_size": 8,
                                             "test_size": 0}}), registry=plugins.registry)
    model = build(pipeline, RunContext(batch_size=4, global_batch_size=4)).model.double()
    view = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    masks = model.masker(view, generator=torch.Generator().manual_seed(4))
    tokens = model.backbone.forward_tokens(view, mask=masks.hidden, mask_mode="drop")
    first, second = model.predictor.predict_tokens(tokens, masks)
    alone = model.predictor.predict_tokens(tokens, type(masks)(
        hidden=masks.hidden, predict=masks.predict[:1], mode="drop", grid=masks.grid, counts=masks.counts[:1]))
    torch.testing.assert_close(alone[0], first)  # one pass per block, as I-JEPA repeats the context per block
    assert first.shape == second.shape == (int(masks.predict[0].sum()), 32)


def test_ijepa_learns_on_fashion_mnist_with_a_tiny_vit(plugins):
    # At this scale the paper's layer-normed target tokens are dominated by what every image's tokens share
    # (a 2-block encoder's output still carries its position embedding strongly); the predictor reproduces that
    # from the mask tokens' positions, and 240 steps leave the encoder no better than at random (kNN 0.49 against
    # 0.53, docs/methods/ijepa.md). Instance-normed targets (each channel over an image's tokens, the norm
    # data2vec applies to its teacher's blocks) keep only what differs between an image's patches: that trains.
    assert_learns(merge(TINY, {
        "data": {"name": "fashion_mnist_mini", "subset_train": 512, "subset_test": 256},
        "predictor": {"width": 32, "depth": 2},
        "functionals": [{"name": "token_targets", "blocks": 0, "norm": "instance"}],
        "train": {"optimizer": {"lr": 0.001}},
    }), plugins=plugins, steps=240)
