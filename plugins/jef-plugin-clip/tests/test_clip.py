"""CLIP through jef: discovery, the paper's recipe, the functional against the paper's formula, the clamp."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from jef.components import Branch, StepOutputs
from jef.config import resolve
from jef.run.optim import parameter_groups
from jef.testing import assert_discovered, installed_plugins, tiny_run
from jef_plugin_clip import ClipContrastive, ClipOptions


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("clip")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "clip", provides={"method": ["clip"], "functional": ["clip_contrastive"]})


def test_recipe_resolves_to_the_paper_parts(plugins):
    pipeline = resolve({"method": "clip"}, registry=plugins.registry)
    assert pipeline.energy is None and [f.name for f in pipeline.functionals] == ["clip_contrastive"]
    clip = pipeline.functionals[0].options
    assert (clip.temperature, clip.max_scale, clip.learnable) == (0.07, 100.0, True)
    assert (pipeline.target.name, pipeline.target.options.encoder) == ("tower", "text")
    text = pipeline.encoders["text"]
    assert text.field == "text" and text.tokenizer.options.context_length == 77
    backbone = text.backbone.options  # Sec. 2.4: 12 layers, width 512, 8 heads, causal, EOT
    assert (backbone.width, backbone.depth, backbone.heads, backbone.causal, backbone.pool) == (
        512, 12, 8, True, "eot")
    assert (pipeline.backbone.options.preset, pipeline.backbone.options.patch_size) == ("base", 32)  # ViT-B/32
    assert pipeline.projector.options.dims == [512] and text.projector.options.dims == [512]
    optimizer = pipeline.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.betas, optimizer.weight_decay) == ("adamw", 5e-4, (0.9, 0.98), 0.2)
    assert pipeline.augmenter.options.n_global == 1


def _outputs(image, text):
    return StepOutputs(online=Branch(h=[image], z=[image]), target=Branch(h=[text], z=[text]), n_global=1)


def test_the_loss_is_the_papers_symmetric_cross_entropy():
    """Radford et al. 2021, Fig. 3: logits = exp(t)·normalise(I)·normalise(T)ᵀ, mean of the two cross-entropies."""
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    clip = ClipContrastive(ClipOptions())
    loss = clip(_outputs(image, text))
    x, y = [t.double() / t.double().norm(dim=1, keepdim=True) for t in (image, text)]
    logits = x @ y.T / 0.07
    labels = torch.arange(6)
    want = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    assert float(loss.detach()) == pytest.approx(float(want), abs=1e-6)
    loss.backward()
    assert clip.logit_scale.grad is not None and clip.logit_scale.grad != 0  # the temperature is learnt


def test_the_scale_is_clamped_at_log_100_after_a_step_and_logged():
    clip = ClipContrastive(ClipOptions())
    assert float(clip.logit_scale) == pytest.approx(math.log(1 / 0.07))
    logged = {}
    run = SimpleNamespace(log=logged.update)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(250.0))
    clip.jef_step_end(run=run, outputs=None, terms={})
    assert float(clip.logit_scale) == pytest.approx(math.log(100.0))
    assert float(logged["clip/logit_scale"]) == pytest.approx(100.0, rel=1e-5)
    with torch.no_grad():
        clip.logit_scale.fill_(1.0)
    clip.jef_step_end(run=run, outputs=None, terms={})
    assert float(clip.logit_scale) == 1.0  # below the bound: unchanged


def test_the_scale_is_trained_without_weight_decay_and_can_be_fixed():
    clip = ClipContrastive(ClipOptions())
    options = SimpleNamespace(fixed_lr_predictor=False, exclude_norm_and_bias=True, weight_decay=0.2,
                              final_weight_decay=None)
    groups = parameter_groups(clip, options)
    undecayed = [p for g in groups if g["weight_decay"] == 0.0 for p in g["params"]]
    assert any(p is clip.logit_scale for p in undecayed)
    fixed = ClipContrastive(ClipOptions(learnable=False))
    assert not fixed.logit_scale.requires_grad


def test_bad_options_and_inputs_are_explained():
    with pytest.raises(ValueError, match="above max_scale"):
        ClipOptions(temperature=0.001)
    clip = ClipContrastive(ClipOptions())
    two_views = StepOutputs(online=Branch(h=[torch.ones(2, 3)] * 2, z=[torch.ones(2, 3)] * 2),
                            target=Branch(h=[torch.ones(2, 3)], z=[torch.ones(2, 3)]), n_global=2)
    with pytest.raises(ValueError, match="set augmenter.n_global: 1"):
        clip(two_views)


#: examples/clip_fashion.yaml, shrunk: 2,048 bundled captioned images, narrower towers, no kNN or retrieval.
LEARNABLE = {
    "method": "clip", "data": {"name": "fashion_mnist_captions", "subset_train": 2048, "subset_test": 500},
    "augmenter": {"name": "views", "n_global": 1, "size": 28, "scale": [0.8, 1.0]},
    "backbone": {"name": "small_cnn", "width": 8, "first_stride": 1},
    "projector": {"name": "mlp", "dims": [64], "batch_norm": False},
    "encoders": {"text": {"field": "text", "tokenizer": {"name": "words", "context_length": 16, "max_vocab": 1000},
                          "backbone": {"name": "text_transformer", "width": 32, "depth": 1, "heads": 4},
                          "projector": {"name": "mlp", "dims": [64], "batch_norm": False}}},
    "train": {"epochs": 20, "batch_size": 128,
              "optimizer": {"name": "adamw", "lr": 0.001, "scale_lr": "none", "weight_decay": 0.1},
              "scheduler": {"warmup_epochs": 0.2}},
    "eval": {"knn": {"enabled": False}, "retrieval": {"enabled": False}}, "monitors": []}


def test_a_short_cpu_run_classifies_zero_shot_well_above_chance(plugins):
    """48 steps on the bundled captions: 0.44 zero-shot top-1 when measured (10 classes, chance 0.1)."""
    result = tiny_run(LEARNABLE, steps=48, plugins=plugins)
    assert result.metrics["zero_shot_top1"] > 0.3, result.metrics
