"""Barlow Twins through jef: discovery, recipe, a tiny run, learning on synthetic data."""

from __future__ import annotations

import math

import pytest

from jef.config import merge, resolve
from jef.testing import LEARNING_SETTINGS, assert_discovered, assert_learns, installed_plugins, tiny_run


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("barlowtwins")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "barlowtwins", provides={"method": ["barlowtwins"]})


def test_recipe_resolves_to_the_paper_parts_and_weights(plugins):
    pipeline = resolve({"method": "barlowtwins"}, registry=plugins.registry)
    assert pipeline.energy is None
    assert [(f.name, f.weight, f.options.lambd) for f in pipeline.functionals] == [("cross_correlation", 1.0, 0.0051)]
    assert pipeline.target.name == "shared"
    assert pipeline.predictor is None
    assert pipeline.projector.options.dims == [2048, 2048, 2048]
    assert not pipeline.projector.options.last_batch_norm  # the functional standardises; BN twice is redundant
    optimizer = pipeline.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.weight_decay) == ("lars", 0.2, 1.5e-6)


def test_tiny_barlowtwins_run(plugins):
    result = tiny_run({"method": "barlowtwins", "augmenter": {"blur_p": 0.0}, "projector": {"dims": [32, 32]}},
                      steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])


COMMON = LEARNING_SETTINGS
#: Barlow Twins' structure; a 64-wide projector with a larger λ (fewer off-diagonal terms to weigh against the
#: 64 diagonal ones), a faster rate for 120 steps, no blur or solarisation (slow on a CPU, they wash out 16 pixels).
LEARNABLE = {"augmenter": {"scale": [0.3, 1.0], "blur_p": 0.0, "solarize_p": 0.0},
             "projector": {"dims": [64, 64]}, "train": {"optimizer": {"lr": 0.01}},
             "functionals": [{"name": "cross_correlation", "lambd": 0.02}]}


def test_barlowtwins_learns_and_does_not_collapse(plugins):
    assert_learns(merge({"method": "barlowtwins"}, LEARNABLE), plugins=plugins)
