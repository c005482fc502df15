"""The four methods through jef: discovery, the recipes, tiny runs, and short runs on Fashion-MNIST.

What the short runs show (kNN top-1 of the trained backbone against the same backbone at random initialisation,
jef's bundled ``fashion_mnist_mini``, 512 training and 256 test images at 16 px, ``small_cnn`` width 8, 100
AdamW steps of 64 images; seeds 0 / 1 / 2, seed 0 is the one tested):

================  =========================  =========================  =========================
method            seed 0                     seed 1                     seed 2
================  =========================  =========================  =========================
rotation          0.691 vs 0.668 (+0.023)    0.727 vs 0.684 (+0.043)    0.691 vs 0.691 (0.000)
jigsaw            0.641 vs 0.668 (−0.027)    0.707 vs 0.684 (+0.023)    0.672 vs 0.691 (−0.019)
relative_patch    0.648 vs 0.668 (−0.020)    0.680 vs 0.684 (−0.004)    0.668 vs 0.691 (−0.023)
denoising_ae      0.715 vs 0.668 (+0.047)    0.691 vs 0.684 (+0.007)    0.680 vs 0.691 (−0.011)
================  =========================  =========================  =========================

Every classifier learns its pretext task well above chance, but at this scale none of the four reliably turns
that into better kNN features than a random CNN's (a strong baseline on these small images). The tests assert
what holds: the pretext task is learnt, and for seed 0 rotation and the denoising autoencoder beat the random
backbone. On jef's synthetic textures (``jef.testing.LEARNING_SETTINGS``) rotation and jigsaw cannot be learnt at
all: stripes and checkerboards look the same rotated by 180°, and a 90° turn maps one class onto another.
"""

from __future__ import annotations

import json
import math

import pytest
from jef_plugin_pretext import RECIPES

from jef.config import merge, resolve
from jef.config.yaml import read_yaml
from jef.testing import assert_discovered, tiny_run

METHODS = ("rotation", "jigsaw", "relative_patch", "denoising_ae")
#: What shrinks each recipe for a tiny run on 16 px images (tiles of 4 px, 10 permutations, narrow heads).
TINY = {
    "rotation": {"functionals": [{"name": "pretext_classifier", "fact": "rotation", "hidden": [16]}]},
    "jigsaw": {"augmenter": {"tile": 4, "gap": 1, "jitter": 0, "permutations": 10},
               "functionals": [{"name": "pretext_classifier", "fact": "permutation", "classes": 10, "hidden": [16]}]},
    "relative_patch": {"augmenter": {"tile": 4, "gap": 1, "jitter": 1},
                       "functionals": [{"name": "pretext_classifier", "fact": "position", "hidden": [16]}]},
    "denoising_ae": {"functionals": [{"name": "reconstruction", "hidden": [16]}]},
}


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "pretext", provides={
        "method": sorted(METHODS),
        "augmenter": ["denoise_views", "jigsaw_views", "relative_patch_views", "rotation_views"],
        "functional": ["pretext_classifier", "reconstruction"]})


@pytest.mark.parametrize("method", METHODS)
def test_each_recipe_is_one_resnet_branch_and_its_pretext_head(method, plugins):
    recipe = read_yaml(RECIPES[method])
    assert recipe["projector"] is None and recipe["energy"] is None and recipe["target"] == {"name": "shared"}
    assert recipe["backbone"] == {"name": "resnet18", "small_images": True}
    assert recipe["train"]["optimizer"]["name"] == "sgd" and recipe["train"]["scheduler"]["name"] == "cosine"
    pipeline = resolve({"method": method}, registry=plugins.registry)
    assert pipeline.energy is None and pipeline.projector is None and pipeline.target.name == "shared"
    (functional,) = pipeline.functionals
    want = {"rotation": ("rotation_views", "pretext_classifier"), "jigsaw": ("jigsaw_views", "pretext_classifier"),
            "relative_patch": ("relative_patch_views", "pretext_classifier"),
            "denoising_ae": ("denoise_views", "reconstruction")}[method]
    assert (pipeline.augmenter.name, functional.name) == want
    if method == "jigsaw":  # the classifier's classes are the augmenter's permutations
        assert functional.options.classes == pipeline.augmenter.options.permutations == 100


def test_the_papers_optimisers():
    lrs = {m: read_yaml(RECIPES[m])["train"] for m in METHODS}
    assert (lrs["rotation"]["optimizer"]["lr"], lrs["rotation"]["batch_size"]) == (0.2, 128)  # 0.1 at batch 128
    assert lrs["rotation"]["optimizer"]["weight_decay"] == lrs["jigsaw"]["optimizer"]["weight_decay"] == 5e-4
    assert lrs["denoising_ae"]["optimizer"]["momentum"] == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_tiny_run(method, plugins):
    result = tiny_run({"method": method, **TINY[method]}, steps=2, plugins=plugins)
    term = "reconstruction" if method == "denoising_ae" else "pretext_classifier"
    assert math.isfinite(result.metrics["loss"]) and result.metrics["loss"] == result.metrics[term]
    assert "jef_step_end" in result.hooks_called
    if method != "denoising_ae":
        fact = TINY[method]["functionals"][0]["fact"]
        logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert any(f"{fact}_accuracy" in line for line in logged), logged[-1]


def test_a_plain_views_augmenter_is_refused_with_the_augmenter_to_use(plugins):
    pipeline = {"method": "rotation", **TINY["rotation"], "augmenter": {"name": "views", "n_global": 1}}
    with pytest.raises(ValueError, match=r"needs the fact 'rotation'.*rotation_views"):
        tiny_run(pipeline, steps=1, plugins=plugins)


#: The short runs of the module docstring.
LEARNING = {
    "data": {"name": "fashion_mnist_mini", "subset_train": 512, "subset_test": 256},
    "backbone": {"name": "small_cnn", "width": 8}, "monitors": [], "seed": 0,
    "train": {"epochs": 100, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.003, "scale_lr": "none",
                                                             "weight_decay": 1e-4}},
    "eval": {"knn": {"k": 20, "baseline": True}},
}
SHORT = {
    "rotation": {"augmenter": {"size": 16}, "functionals": [{"name": "pretext_classifier", "hidden": [64]}]},
    "jigsaw": {"augmenter": {"size": 16, "tile": 6, "gap": 1, "jitter": 1, "permutations": 24},
               "functionals": [{"name": "pretext_classifier", "fact": "permutation", "classes": 24, "hidden": [64]}]},
    "relative_patch": {"augmenter": {"size": 16, "tile": 6, "gap": 1, "jitter": 1},
                       "functionals": [{"name": "pretext_classifier", "fact": "position", "hidden": [64]}]},
    "denoising_ae": {"augmenter": {"size": 16}, "functionals": [{"name": "reconstruction", "hidden": [128]}]},
}
#: Chance level of each classifier, and whether (seed 0) the trained kNN beats the random backbone's.
CHANCE = {"rotation": 1 / 4, "jigsaw": 1 / 24, "relative_patch": 1 / 8}
BEATS_RANDOM = {"rotation": True, "jigsaw": False, "relative_patch": False, "denoising_ae": True}


@pytest.mark.parametrize("method", METHODS)
def test_a_short_run_learns_the_pretext_task(method, plugins):
    result = tiny_run(merge(merge(LEARNING, {"method": method}), SHORT[method]), steps=100, plugins=plugins)
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    if method in CHANCE:
        key = {"rotation": "rotation", "jigsaw": "permutation", "relative_patch": "position"}[method]
        accuracy = [line[f"{key}_accuracy"] for line in logged if f"{key}_accuracy" in line]
        # The mean of the last 10 batches' accuracy, at least twice chance.
        assert sum(accuracy[-10:]) / 10 > 2 * CHANCE[method], accuracy[-10:]
    else:
        losses = [line["loss"] for line in logged if "loss" in line]
        assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])
    trained, random = result.metrics["knn_top1"], result.metrics["knn_top1_random"]
    if BEATS_RANDOM[method]:
        assert trained > random + 0.01, (trained, random)
