"""Runs that must learn, and runs that must be caught collapsing."""

from __future__ import annotations

import json

import pytest

from jef.evaluate.collapse import CollapseWarning
from jef.plugins import load_plugins
from jef.testing import tiny_run

#: Four texture classes, greyscale 16x16: a random CNN separates them partly, training must do better.
LEARNABLE = {
    "data": {"name": "synthetic", "channels": 1, "image_size": 16, "train_size": 512, "test_size": 256,
             "num_classes": 4},
    "augmenter": {"scale": [0.3, 1.0]},
    "backbone": {"name": "small_cnn", "width": 8},
    "projector": {"name": "mlp", "dims": [64, 32]},
    "energy": {"name": "scaled_cosine", "temperature": 0.5},
    "functionals": [{"name": "info_nce", "temperature": 0.5}],
    "train": {"epochs": 100, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.003, "scale_lr": "none"}},
    "eval": {"knn": {"k": 20, "baseline": True}},
}


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def test_contrastive_training_beats_the_random_backbone(plugins):
    result = tiny_run(LEARNABLE, steps=STEPS, plugins=plugins)
    trained, random = result.metrics["knn_top1"], result.metrics["knn_top1_random"]
    assert trained > random + MARGIN, (trained, random)


def test_a_collapsing_run_is_caught_by_the_collapse_monitor(plugins):
    # Positive pairs only (no negatives, no stop-gradient): every image can map to one point.
    collapsing = {**LEARNABLE, "functionals": [], "energy": {"name": "cosine"},
                  "monitors": [{"name": "collapse", "every": 5}], "eval": {"knn": {"enabled": False}}}
    with pytest.warns(CollapseWarning, match="collapse"):
        result = tiny_run(collapsing, steps=60, plugins=plugins)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    stds = [line["collapse/std"] for line in lines if "collapse/std" in line]
    assert stds and stds[-1] < stds[0]


def test_the_default_contrastive_run_does_not_warn(plugins, recwarn):
    tiny_run({**LEARNABLE, "monitors": [{"name": "collapse", "every": 5}], "eval": {"knn": {"enabled": False}}},
             steps=30, plugins=plugins)
    assert not [w for w in recwarn if issubclass(w.category, CollapseWarning)]


STEPS, MARGIN = 120, 0.05
