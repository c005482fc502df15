"""VICReg through jef: discovery, recipe, a tiny run, learning on synthetic data, collapse without v and c."""

from __future__ import annotations

import math

import pytest

from jef.config import merge, resolve
from jef.evaluate.collapse import CollapseWarning
from jef.testing import LEARNING_SETTINGS, assert_discovered, assert_learns, installed_plugins, tiny_run


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("vicreg")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "vicreg", provides={"method": ["vicreg"]})


def test_recipe_resolves_to_the_paper_parts_and_weights(plugins):
    pipeline = resolve({"method": "vicreg"}, registry=plugins.registry)
    assert (pipeline.energy.name, pipeline.energy.weight) == ("mse", 25.0)  # λ
    terms = {f.name: f for f in pipeline.functionals}
    assert list(terms) == ["variance", "covariance"]
    assert terms["variance"].weight == 25.0  # μ, on the branches' mean as in the official code
    assert (terms["variance"].options.gamma, terms["variance"].options.eps) == (1.0, 1e-4)
    assert terms["covariance"].weight == 2.0  # ν = 1 on each branch: the official code sums them
    assert pipeline.target.name == "shared"
    assert pipeline.predictor is None
    assert pipeline.projector.options.dims == [2048, 2048, 2048]
    optimizer = pipeline.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.weight_decay) == ("lars", 0.2, 1e-6)


def test_tiny_vicreg_run(plugins):
    result = tiny_run({"method": "vicreg", "augmenter": {"blur_p": 0.0}, "projector": {"dims": [32, 32]}},
                      steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])


COMMON = LEARNING_SETTINGS
#: VICReg's structure and weights; smaller projector, no blur or solarisation (slow on a CPU, and they wash
#: out 16-pixel textures).
LEARNABLE = {"augmenter": {"scale": [0.3, 1.0], "blur_p": 0.0, "solarize_p": 0.0},
             "projector": {"dims": [64, 64]},
             "train": {"optimizer": {"lr": 0.01}}}  # 0.003 reaches only ~0.68 in 120 steps; 0.01 gives ~0.80


def test_vicreg_learns_and_does_not_collapse(plugins):
    assert_learns(merge({"method": "vicreg"}, LEARNABLE), plugins=plugins)


def test_without_variance_and_covariance_the_collapse_monitor_warns(plugins):
    # A deliberately broken VICReg: the invariance term alone is minimised by mapping every image to one point.
    broken = merge({"method": "vicreg", **COMMON}, LEARNABLE)
    zero = [{"name": "variance", "weight": 0.0}, {"name": "covariance", "weight": 0.0}]
    # A faster rate makes the (steady) shrinking of the embeddings' spread cross the threshold within 120 steps.
    broken = merge(broken, {"functionals": zero, "train": {"optimizer": {"lr": 0.03}},
                            "eval": {"knn": {"enabled": False}}})
    with pytest.warns(CollapseWarning, match="collapse"):
        result = tiny_run(broken, steps=120, plugins=plugins)
    assert result.metrics["variance"] > 0.5  # the term would have objected: most dimensions are under γ
