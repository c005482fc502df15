"""MoCo v1/v2/v3 through jef: discovery, recipes, MoCo v3's loss against its formula, tiny runs, learning."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from jef_plugin_moco.v3 import MocoV3InfoNCE

from jef.builtin.energies import ScaledCosineEnergy
from jef.components import Branch, StepOutputs
from jef.config import merge, resolve
from jef.testing import (
    Objective,
    LEARNING_SETTINGS,
    assert_discovered,
    assert_learns,
    build_component,
    check_functional,
    check_functional_under_gather,
    installed_plugins,
    tiny_run,
)

METHODS = ["moco_v1", "moco_v2", "moco_v3"]


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("moco")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "moco", provides={"method": METHODS, "functional": ["moco_v3_info_nce"]})


@pytest.mark.parametrize("method", ["moco_v1", "moco_v2"])
def test_moco_v1_and_v2_recipes_use_the_queue(plugins, method):
    pipeline = resolve({"method": method}, registry=plugins.registry)
    assert pipeline.energy.name == "scaled_cosine"
    assert [f.name for f in pipeline.functionals] == ["queue_info_nce"]
    queue = pipeline.functionals[0].options
    assert queue.temperature == pipeline.energy.options.temperature == {"moco_v1": 0.07, "moco_v2": 0.2}[method]
    assert queue.size == 4096
    target = pipeline.target
    assert (target.name, target.momentum, target.schedule, target.shuffle_bn) == ("ema", 0.999, "constant", True)
    assert pipeline.predictor is None
    optimizer = pipeline.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.weight_decay) == ("sgd", 0.03, 1e-4)
    assert pipeline.projector.options.dims == {"moco_v1": [128], "moco_v2": [2048, 128]}[method]
    assert pipeline.augmenter.options.blur_p == {"moco_v1": 0.0, "moco_v2": 0.5}[method]


def test_moco_v3_recipe(plugins):
    pipeline = resolve({"method": "moco_v3"}, registry=plugins.registry)
    assert [f.name for f in pipeline.functionals] == ["moco_v3_info_nce"]
    tau = pipeline.energy.options.temperature
    assert tau == pipeline.functionals[0].options.temperature == 1.0
    assert pipeline.energy.weight == pipeline.functionals[0].weight == 4 * tau
    assert pipeline.predictor is not None and pipeline.predictor.options.dims == [4096, 256]
    assert pipeline.projector.options.last_batch_norm
    target = pipeline.target
    assert (target.name, target.momentum, target.final_momentum, target.schedule, target.shuffle_bn) == \
        ("ema", 0.99, 1.0, "cosine", False)
    assert pipeline.train.optimizer.name == "lars"


def ctr_reference(q, k, tau):
    """MoCo v3's ctr(q, k): cross-entropy of k_i among all k_j for q_i, with explicit loops, float64."""
    def cos(x, y):
        return float(x @ y) / (float(x.norm()) * float(y.norm()))

    n = q.shape[0]
    total = 0.0
    for i in range(n):
        logits = [cos(q[i], k[j]) / tau for j in range(n)]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return total / n


def test_moco_v3_objective_is_the_papers_symmetric_loss(plugins):
    tau = 0.7
    g = torch.Generator().manual_seed(0)
    q1, q2, k1, k2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4))
    objective = Objective(("scaled_cosine", ScaledCosineEnergy(tau), 4 * tau),
                          [("moco_v3_info_nce", MocoV3InfoNCE(tau), 4 * tau)])
    out = StepOutputs(online=Branch(h=[q1, q2], z=[q1, q2]), target=Branch(h=[k1, k2], z=[k1, k2]), n_global=2)
    loss, _, _ = objective(out)
    expected = 2 * tau * (ctr_reference(q1, k2, tau) + ctr_reference(q2, k1, tau))
    assert float(loss) == pytest.approx(expected, rel=1e-10)


def test_moco_v3_functional_contract_in_one_and_two_processes(plugins):
    check_functional(build_component(plugins, "functional", "moco_v3_info_nce"), name="moco_v3_info_nce",
                     predictor=True)
    check_functional_under_gather(functools.partial(MocoV3InfoNCE, 0.5), name="moco_v3_info_nce", predictor=True)


TINY = {"moco_v1": {}, "moco_v2": {}, "moco_v3": {"predictor": {"dims": [32, 16]}}}


@pytest.mark.parametrize("method", METHODS)
def test_tiny_run(plugins, method):
    result = tiny_run({"method": method, **TINY[method], "eval": {"knn": {"enabled": False}}}, steps=2,
                      plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
    assert result.hooks_called.count("jef_step_end") == 2


#: Four texture classes, greyscale 16x16 (as tests/test_learning.py), sized for short runs of each version.
COMMON = LEARNING_SETTINGS
#: Each version keeps its own structure (target, queue or in-batch keys, predictor); sizes shrink, blur goes
#: (slow on a CPU, and it blurs away 16-pixel textures), and a 0.99 momentum lets the keys move in 120 steps.
LEARNABLE = {
    "moco_v1": {"augmenter": {"scale": [0.3, 1.0]}, "projector": {"dims": [32]}, "target": {"momentum": 0.99},
                "energy": {"temperature": 0.2},
                "functionals": [{"name": "queue_info_nce", "temperature": 0.2, "size": 1024}]},
    "moco_v2": {"augmenter": {"scale": [0.3, 1.0], "blur_p": 0.0},
                "projector": {"name": "mlp", "dims": [64, 32], "batch_norm": False}, "target": {"momentum": 0.99},
                "functionals": [{"name": "queue_info_nce", "temperature": 0.2, "size": 1024}]},
    "moco_v3": {"augmenter": {"scale": [0.3, 1.0], "blur_p": 0.0, "solarize_p": 0.0},
                "projector": {"dims": [64, 32]}, "predictor": {"dims": [64, 32]},
                # EMA and predictor learn slower: a faster target (0.9 → 1) and a larger rate fit 120 steps.
                "target": {"momentum": 0.9}, "train": {"optimizer": {"lr": 0.01}},
                "energy": {"temperature": 0.2, "weight": 0.8},
                "functionals": [{"name": "moco_v3_info_nce", "temperature": 0.2, "weight": 0.8}]},
}


@pytest.mark.parametrize("method", METHODS)
def test_each_version_learns_and_does_not_collapse(plugins, method):
    assert_learns(merge({"method": method}, LEARNABLE[method]), plugins=plugins)
