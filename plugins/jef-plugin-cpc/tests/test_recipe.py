"""CPC through jef: discovery, the recipe, tiny runs of both context networks, and a short run that learns."""

from __future__ import annotations

import math

import pytest
from jef_plugin_cpc import RECIPE

from jef.config import resolve
from jef.config.yaml import read_yaml
from jef.testing import assert_discovered, tiny_run
from jef.testing.building import build_pipeline


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "cpc", provides={"method": ["cpc"], "augmenter": ["patch_grid"],
                                                "functional": ["cpc"]})


def test_the_recipe_file_says_what_it_does():
    recipe = read_yaml(RECIPE)
    augmenter = recipe["augmenter"]
    assert (augmenter["name"], augmenter["grid"], augmenter["patch"], augmenter["stride"]) == ("patch_grid", 6, 8, 4)
    assert recipe["backbone"] == {"name": "resnet18", "small_images": True}
    assert recipe["projector"] is None and recipe["energy"] is None and recipe["target"] == {"name": "shared"}
    (cpc,) = recipe["functionals"]
    assert (cpc["name"], cpc["context"], cpc["offsets"], cpc["layer_norm"]) == ("cpc", "masked_conv", 2, True)
    optimizer = recipe["train"]["optimizer"]
    assert (optimizer["name"], optimizer["lr"], optimizer["scale_lr"], optimizer["weight_decay"]) == \
        ("adamw", 2e-4, "none", 0.0)
    assert recipe["train"]["scheduler"]["name"] == "cosine"


def test_recipe_resolves_and_builds_the_paper_parts(plugins):
    pipeline = resolve({"method": "cpc"}, registry=plugins.registry)
    assert pipeline.energy is None and pipeline.projector is None
    assert pipeline.augmenter.name == "patch_grid" and [f.name for f in pipeline.functionals] == ["cpc"]
    data = {"name": "synthetic", "channels": 1, "train_size": 16, "test_size": 0, "image_size": 28}
    built = build_pipeline(plugins, {"method": "cpc", "data": data})
    assert (built.augmenter.n_views, built.augmenter.size, built.ctx.image_size) == (36, 28, 28)
    cpc = built.model.objective.functionals[0]
    assert (cpc.dim, cpc.grid, len(cpc.predictors)) == (512, 6, 2)  # z = h: ResNet-18's 512 features
    # The context network and the W_k are the model's: the optimiser and checkpoints see them.
    names = {name for name, _ in built.model.named_parameters()}
    assert "objective.functionals.0.predictors.1.weight" in names
    assert any(name.startswith("objective.functionals.0.context.") for name in names)


#: 3×3 grids of 8 px patches with a 4 px stride: the 16 px tiny images, uncropped.
TINY = {"method": "cpc", "augmenter": {"grid": 3, "patch": 8, "stride": 4, "scale": [1.0, 1.0]},
        "functionals": [{"name": "cpc", "offsets": 2, "hidden": 16}]}


@pytest.mark.parametrize("context", ["masked_conv", "gru"])
def test_tiny_cpc_run(plugins, context):
    run = {**TINY, "functionals": [{"name": "cpc", "context": context, "offsets": 2, "hidden": 16}]}
    result = tiny_run(run, steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["cpc/k1"]) and math.isfinite(result.metrics["cpc/k2"])
    assert math.isclose(result.metrics["loss"], result.metrics["cpc/k1"] + result.metrics["cpc/k2"], rel_tol=1e-5)


#: Four grey texture classes at 16 px, 256 training images, 3×3 grids of 8 px patches; 100 steps of 64.
LEARNABLE = {
    "method": "cpc",
    "data": {"name": "synthetic", "channels": 1, "image_size": 16, "train_size": 256, "test_size": 256,
             "num_classes": 4},
    "augmenter": {"grid": 3, "patch": 8, "stride": 4, "scale": [1.0, 1.0]},
    "backbone": {"name": "small_cnn", "width": 8, "first_stride": 1},
    "functionals": [{"name": "cpc", "offsets": 2, "hidden": 32}],
    "train": {"epochs": 25, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.003, "scale_lr": "none",
                                                           "weight_decay": 0.0}},
    "eval": {"knn": {"k": 20, "baseline": True}}, "monitors": [],
}


def test_the_trained_backbone_beats_the_random_one(plugins):
    """Measured: kNN top-1 0.76 on whole test images after 100 steps, 0.59 for the same backbone at random."""
    result = tiny_run(LEARNABLE, steps=100, plugins=plugins)
    trained, random = result.metrics["knn_top1"], result.metrics["knn_top1_random"]
    assert result.metrics["cpc/k1"] < math.log(64 * 9) and result.metrics["cpc/k2"] < math.log(64 * 9)
    assert trained > random + 0.08, (trained, random)
