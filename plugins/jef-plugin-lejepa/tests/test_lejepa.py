"""``method: lejepa``: discovery, the recipe's values, a tiny ViT run and its checkpointed counter, learning."""

from __future__ import annotations

import math

import pytest

from jef.config import merge, resolve
from jef.run.checkpoint import load_checkpoint
from jef.testing import assert_discovered, assert_learns, tiny_run


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "lejepa", provides={"method": ["lejepa"],
                                                   "functional": ["lejepa_prediction", "sigreg"]})
    assert plugins.registry.get("method", "lejepa").extra["multi_crop"]  # local views are part of the objective


def test_recipe_resolves_to_the_papers_parts_and_weights(plugins):
    pipeline = resolve({"method": "lejepa"}, registry=plugins.registry)
    assert pipeline.energy is None and pipeline.predictor is None and pipeline.target.name == "shared"
    prediction, regulariser = pipeline.functionals
    assert (prediction.name, prediction.weight) == ("lejepa_prediction", 0.95)  # 1 − λ
    assert (regulariser.name, regulariser.weight) == ("sigreg", 0.05)  # λ
    o = regulariser.options
    assert (o.num_slices, o.t_max, o.n_points) == (1024, 3.0, 17)
    views = pipeline.augmenter.options
    assert (views.n_global, views.n_local, views.size, views.resolved_local_size) == (2, 6, 224, 96)
    assert (views.scale, views.local_scale) == ((0.3, 1.0), (0.05, 0.3))
    assert views.per_view("blur_p") == [0.5] * 8 and views.per_view("solarize_p") == [0.2] * 8
    assert (views.brightness, views.contrast, views.saturation, views.hue) == (0.4, 0.4, 0.2, 0.1)
    b = pipeline.backbone.options
    assert (pipeline.backbone.name, b.preset, b.patch_size, b.drop_path) == ("vit", "small", 16, 0.1)
    assert (pipeline.projector.name, pipeline.projector.options.dims, pipeline.projector.options.batch_norm) == \
        ("mlp", [2048, 2048, 128], True)
    train = pipeline.train
    opt = train.optimizer
    assert (opt.name, opt.lr, opt.weight_decay, opt.exclude_norm_and_bias) == ("adamw", 5e-4, 0.05, False)
    assert (train.scheduler.name, train.scheduler.final_lr_ratio) == ("cosine", 0.001)
    assert (train.epochs, train.batch_size) == (100, 256)


#: The recipe on a tiny ViT: 4-pixel patches of 16 px global views (4 x 4 grid) and 8 px local ones (2 x 2, the
#: position embedding resized), all 6 local views, a narrow projector, 256 directions, no blur or solarisation
#: (slow on a CPU), no stochastic depth. jef.testing's tiny settings choose SGD: naming adamw brings back the
#: recipe's optimiser.
TINY_VIT = {
    "augmenter": {"size": 16, "local_size": 8, "blur_p": 0.0, "solarize_p": 0.0},
    "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
    "projector": {"dims": [64, 64, 16]},
    "functionals": [{"name": "lejepa_prediction", "weight": 0.95}, {"name": "sigreg", "num_slices": 256,
                                                                     "weight": 0.05}],
}


def test_a_tiny_run_logs_both_terms_and_checkpoints_the_step_counter(plugins):
    pipeline = merge({"method": "lejepa", "train": {"optimizer": {"name": "adamw"}},
                      "eval": {"knn": {"enabled": False}}}, TINY_VIT)
    result = tiny_run(pipeline, steps=3, plugins=plugins)
    for key in ("loss", "sigreg", "lejepa_prediction"):
        assert math.isfinite(result.metrics[key]), key
    assert result.metrics["loss"] == pytest.approx(0.95 * result.metrics["lejepa_prediction"]
                                                   + 0.05 * result.metrics["sigreg"], rel=1e-5)
    model = load_checkpoint(result.run_dir / "checkpoint.pt")["model"]
    assert int(model["objective.functionals.1.step"]) == 3  # one set of directions per optimiser step


#: The tiny ViT on the four texture classes (jef.testing.LEARNING_SETTINGS: 120 steps of 64 images, AdamW at
#: 3e-3), with a one-epoch warm-up instead of ten. Measured while tuning (kNN top-1, trained vs the random ViT):
#: seed 0 0.910 vs 0.805, seed 1 0.891 vs 0.867, seed 2 0.922 vs 0.871 (at lr 1e-3: 0.902, 0.918, 0.934).
LEARNABLE = merge(TINY_VIT, {"train": {"scheduler": {"warmup_epochs": 1}}})


def test_lejepa_learns_with_multi_crop_and_does_not_collapse(plugins):
    result = assert_learns(merge({"method": "lejepa"}, LEARNABLE), plugins=plugins)
    # SIGReg holds the embeddings near the Gaussian: for 64 samples the statistic stays small.
    assert result.metrics["sigreg"] < 10.0
