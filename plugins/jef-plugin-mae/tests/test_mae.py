"""MAE through jef: discovery, the paper's recipe, the loss against a float64 reference, reconstruction learnt."""

from __future__ import annotations

import warnings

import pytest
import torch

from jef.components import RunContext
from jef.config import merge, resolve
from jef.evaluate.collapse import CollapseWarning
from jef.model.build import build
from jef.testing import LEARNING_SETTINGS, assert_discovered, tiny_run
from jef.tools.runs import load_run

#: The recipe on a tiny ViT: 16 px views (a 4 x 4 grid of 4 px patches, 12 hidden), a 1-block decoder.
TINY = {
    "method": "mae",
    "augmenter": {"size": 16},
    "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
    "predictor": {"width": 16, "depth": 1, "heads": 2},
}


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "mae", provides={"method": ["mae"]})


def test_recipe_is_the_papers_vit_b16_setting(plugins):
    p = resolve({"method": "mae"}, registry=plugins.registry)
    b = p.backbone.options
    assert (p.backbone.name, b.preset, b.patch_size, b.pos_embed) == ("vit", "base", 16, "sincos")
    assert (p.masker.name, p.masker.options.ratio, p.masker.options.mode) == ("random", 0.75, "drop")
    q = p.predictor.options
    assert (p.predictor.name, q.width, q.depth, q.heads, q.queries, q.out, q.cls) == \
        ("vit_predictor", 512, 8, 16, "hidden", "pixels", True)
    assert p.projector is None and p.target.name == "shared"
    [targets] = p.functionals
    assert (targets.name, targets.options.normalize) == ("patch_pixels", True)
    assert p.energy.name == "mse"
    o = p.train.optimizer
    assert (o.name, o.lr, o.betas, o.weight_decay) == ("adamw", 1.5e-4, (0.9, 0.95), 0.05)
    assert p.augmenter.options.scale == (0.2, 1.0)


def _decode(decoder, encoded, hidden: torch.Tensor) -> torch.Tensor:
    """MAE's decoder written out per sample: CLS, visible tokens and mask tokens, each with its position."""
    from jef.builtin.vit import sincos_position_embedding

    pos = sincos_position_embedding((4, 4), decoder.options.width).double()[0]
    out = []
    for n in range(hidden.shape[0]):
        visible = decoder.embed(encoded.patches[n]) + pos[1:][~hidden[n]]
        cls = decoder.embed(encoded.cls[n])[None] + pos[:1]
        queries = decoder.mask_token[0] + pos[1:][hidden[n]]
        x = torch.cat([cls, visible, queries])[None]
        for layer in decoder.blocks:
            x = layer(x)
        out.append(decoder.project(decoder.norm(x[0, 1 + visible.shape[0]:])))
    return torch.cat(out)


def test_loss_equals_the_papers_normalised_pixel_loss_in_float64(plugins):
    pipeline = resolve(merge(TINY, {"data": {"name": "synthetic", "image_size": 16, "train_size": 8,
                                             "test_size": 0}}), registry=plugins.registry)
    model = build(pipeline, RunContext(batch_size=4, global_batch_size=4)).model.double()
    torch.manual_seed(0)
    view = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    masks = model.masker(view, generator=torch.Generator().manual_seed(2))
    loss = model([view], masks=[masks]).loss

    hidden = masks.hidden
    assert (hidden.sum(dim=1) == 12).all()  # 75 % of 16 patches
    with torch.no_grad():
        encoded = model.backbone.forward_tokens(view, mask=hidden, mask_mode="drop")
        prediction = _decode(model.predictor, encoded, hidden)  # [hidden patches, 48]
        # MAE's patchify: patch (h, w) holds its p x p pixels row by row, channels last.
        patches = torch.einsum("nchpwq->nhwpqc", view.reshape(4, 3, 4, 4, 4, 4)).reshape(4, 16, 48)
        mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
        target = ((patches - mean) / (var + 1e-6) ** 0.5)[hidden]
        reference = ((prediction - target) ** 2).mean(dim=-1).mean()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def _reconstruction_errors(model, images: torch.Tensor) -> tuple[float, float]:
    """The MAE loss on fixed views and masks (seed 7), and the same error of predicting 0 at every pixel."""
    model.eval()
    with torch.no_grad():
        masks = [model.masker(images, generator=torch.Generator().manual_seed(7))]
        result = model([images], masks=masks)
        [[targets]] = result.outputs.masked.targets
        return result.loss.item(), targets.pow(2).mean().item()


def test_mae_learns_to_reconstruct_held_out_images(plugins, tmp_path):
    # MAE's frozen features are weak in kNN by nature (docs/methods/mae.md): the test measures what it learns,
    # the reconstruction of hidden patches of test images it never trained on, against the untrained model's and
    # against predicting every normalised pixel as its patch's mean (0): exact on Fashion-MNIST's flat background
    # patches, so a baseline that only shapes and edges beat.
    pipeline = merge(LEARNING_SETTINGS, merge(TINY, {
        "data": {"name": "fashion_mnist_mini", "subset_train": 512, "subset_test": 256},
        "train": {"optimizer": {"lr": 0.003}}, "eval": {"knn": {"enabled": False}}}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CollapseWarning)
        tiny_run(pipeline, steps=240, plugins=plugins, run_dir=tmp_path / "run")
    assert not [w for w in caught if issubclass(w.category, CollapseWarning)]
    run = load_run(tmp_path / "run", plugins=plugins)
    test = run.built.splits.test
    images = run.built.augmenter.eval_view(torch.stack([test[i][0] for i in range(64)]))
    trained, zero = _reconstruction_errors(run.built.model, images)
    torch.manual_seed(1)
    untrained, _ = _reconstruction_errors(build(run.pipeline, run.built.ctx, run.built.splits).model, images)
    assert trained < 0.85 * untrained and trained < 0.9 * zero, (trained, untrained, zero)
