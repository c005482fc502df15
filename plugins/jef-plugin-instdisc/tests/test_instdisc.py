"""InstDisc through jef: discovery, recipe, a tiny run, and a short run that learns without collapsing."""

from __future__ import annotations

import math

import pytest

from jef.config import resolve
from jef.evaluate.collapse import CollapseWarning
from jef.testing import assert_discovered, installed_plugins, tiny_run


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("instdisc")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "instdisc", provides={"method": ["instdisc"]})


def test_recipe_resolves_to_the_paper_parts(plugins):
    pipeline = resolve({"method": "instdisc"}, registry=plugins.registry)
    assert pipeline.energy is None  # D: none; the memory bank's NCE is the whole objective
    assert [f.name for f in pipeline.functionals] == ["memory_bank"]
    bank = pipeline.functionals[0].options
    assert (bank.dim, bank.temperature, bank.loss, bank.noise_samples, bank.momentum) == (128, 0.07, "nce", 4096, 0.5)
    assert bank.size is None  # filled from the training split
    assert pipeline.augmenter.options.n_global == 1
    assert pipeline.projector.options.dims == [128] and not pipeline.projector.options.batch_norm
    optimizer = pipeline.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.momentum, optimizer.weight_decay) == ("sgd", 0.03, 0.9, 5e-4)


#: The tiny settings with a bank sized for their 64 training images and a 16-d linear head.
TINY = {"method": "instdisc", "projector": {"name": "mlp", "dims": [16], "batch_norm": False},
        "functionals": [{"name": "memory_bank", "size": 64, "dim": 16, "noise_samples": 64}]}


def test_tiny_instdisc_run(plugins):
    result = tiny_run(TINY, steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"]) and math.isfinite(result.metrics["memory_bank/nce"])
    assert "jef_step_end" in result.hooks_called


def test_the_bank_size_comes_from_the_training_split(plugins):
    functionals = [{"name": "memory_bank", "dim": 16, "noise_samples": 64}]
    result = tiny_run({**TINY, "functionals": functionals}, steps=1, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])


#: Four texture classes, greyscale 16x16 (as in jef's tests/test_learning.py); the full softmax over the
#: 512-row bank is exact and cheap at this size.
LEARNABLE = {
    "method": "instdisc",
    "data": {"name": "synthetic", "channels": 1, "image_size": 16, "train_size": 512, "test_size": 256,
             "num_classes": 4},
    "augmenter": {"scale": [0.3, 1.0]},
    "backbone": {"name": "small_cnn", "width": 8},
    "projector": {"name": "mlp", "dims": [32], "batch_norm": False},
    "functionals": [{"name": "memory_bank", "size": 512, "dim": 32, "loss": "softmax", "temperature": 0.1}],
    "train": {"epochs": 100, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.003, "scale_lr": "none"}},
    "eval": {"knn": {"k": 20, "baseline": True}},
    "monitors": [{"name": "collapse", "every": 5}],
}


@pytest.mark.parametrize("bank", [{"loss": "softmax"}, {"loss": "nce", "noise_samples": 64}], ids=["softmax", "nce"])
def test_instdisc_beats_the_random_backbone_without_collapsing(plugins, recwarn, bank):
    functionals = [{**LEARNABLE["functionals"][0], **bank}]
    result = tiny_run({**LEARNABLE, "functionals": functionals}, steps=120, plugins=plugins)
    trained, random = result.metrics["knn_top1"], result.metrics["knn_top1_random"]
    assert trained > random + 0.05, (trained, random)
    assert not [w for w in recwarn if issubclass(w.category, CollapseWarning)]
