"""``method: triplet``: discovery, the recipe's values, and a short run of the real loop that learns."""

from __future__ import annotations

from jef.config import merge, resolve
from jef.testing import assert_discovered, assert_learns


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "triplet", provides={"method": ["triplet"], "functional": ["triplet"]})
    assert plugins.registry.get("method", "triplet").extra["multi_crop"]  # local crops are extra anchors


def test_recipe_resolves_to_the_papers_parts(plugins):
    pipeline = resolve({"method": "triplet"}, registry=plugins.registry)
    assert pipeline.energy is None and pipeline.predictor is None and pipeline.target.name == "shared"
    (triplet,) = pipeline.functionals
    o = triplet.options
    assert (triplet.name, triplet.weight, o.margin, o.mining, o.symmetric) == ("triplet", 1.0, 0.2, "semi_hard", True)
    views = pipeline.augmenter.options
    assert (pipeline.augmenter.name, views.n_global, views.n_local) == ("views", 2, 0)
    assert (pipeline.backbone.name, pipeline.backbone.options.small_images) == ("resnet18", True)
    assert (pipeline.projector.name, pipeline.projector.options.dims) == ("mlp", [2048, 128])
    opt = pipeline.train.optimizer
    assert (opt.name, opt.lr, opt.scale_lr, opt.momentum, opt.weight_decay) == ("sgd", 0.05, "linear", 0.9, 1e-4)
    assert pipeline.train.scheduler.name == "cosine"


def test_batch_hard_is_an_option(plugins):
    pipeline = resolve({"method": "triplet", "functionals": [{"name": "triplet", "mining": "batch_hard",
                                                              "margin": 0.5, "symmetric": False}]},
                       registry=plugins.registry)
    o = pipeline.functionals[0].options
    assert (o.mining, o.margin, o.symmetric) == ("batch_hard", 0.5, False)


#: jef.testing.LEARNING_SETTINGS (four grey texture classes at 16 px, small_cnn, 120 steps of 64 images) with the
#: recipe's SGD at a rate for this short run: 0.5, not the recipe's 0.05 x 64/256 = 0.0125 (which learns too, more
#: slowly). Measured while tuning (kNN top-1, trained vs the random backbone), seeds 0, 1, 2: 0.801 vs 0.605,
#: 0.719 vs 0.527, 0.789 vs 0.551; AdamW 3e-3 (the settings' own): 0.750, 0.637, 0.785; the recipe's rate:
#: 0.680, 0.707 (seeds 0, 1). batch_hard collapses on this data (see docs/methods/triplet.md).
LEARNABLE = {"train": {"optimizer": {"name": "sgd", "lr": 0.5, "scale_lr": "none", "momentum": 0.9,
                                     "weight_decay": 1.0e-4}}}


def test_triplet_learns_without_collapsing(plugins):
    result = assert_learns(merge({"method": "triplet"}, LEARNABLE), plugins=plugins, margin=0.1)
    # The real loop logs the term; below the margin 0.2, most triplets are satisfied after training.
    assert result.metrics["loss"] == result.metrics["triplet"] and 0 < result.metrics["triplet"] < 0.2
