"""SwAV through jef: discovery, recipe, the loss against the paper's, contract, errors, runs (bf16, DDP), learning."""

from __future__ import annotations

import math

import pytest
import torch
from jef_plugin_swav import SinkhornAssignment

from jef.builtin.energies import CrossEntropyEnergy
from jef.components import Branch, RunContext, StepOutputs
from jef.config import merge, resolve
from jef.testing import (
    Objective,
    assert_discovered,
    assert_learns,
    build_component,
    check_functional,
    installed_plugins,
    tiny_run,
    train_in_processes,
)
from jef.config.validate import ConfigError


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("swav")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "swav", provides={"method": ["swav"], "functional": ["sinkhorn"]})
    assert plugins.registry.get("method", "swav").extra["multi_crop"] is True


def test_recipe_is_the_papers_batch_256_setting(plugins):
    pipeline = resolve({"method": "swav"}, registry=plugins.registry)
    assert (pipeline.energy.name, pipeline.energy.options.temperature, pipeline.energy.weight) == \
        ("cross_entropy", 0.1, 1.0)
    assert [f.name for f in pipeline.functionals] == ["sinkhorn"]
    sinkhorn = pipeline.functionals[0].options
    assert (sinkhorn.n_prototypes, sinkhorn.epsilon, sinkhorn.iterations) == (3000, 0.05, 3)
    assert (sinkhorn.queue_length, sinkhorn.queue_start_epoch, sinkhorn.freeze_prototypes_steps) == (3840, 15, 313)
    assert pipeline.target.name == "shared" and pipeline.predictor is None
    assert pipeline.projector.options.dims == [2048, 128] and pipeline.projector.options.batch_norm
    views = pipeline.augmenter.options
    assert (views.n_global, views.n_local, views.scale, views.local_scale) == (2, 6, (0.14, 1.0), (0.05, 0.14))
    assert (views.brightness, views.contrast, views.saturation, views.hue, views.jitter_p, views.grayscale_p) == \
        (0.8, 0.8, 0.8, 0.2, 0.8, 0.2)
    assert (views.blur_p, views.blur_sigma, views.solarize_p) == (0.5, (0.1, 2.0), 0.0)
    optimizer = pipeline.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.scale_lr, optimizer.weight_decay, optimizer.momentum) == \
        ("lars", 0.6, "linear", 1e-6, 0.9)
    assert not optimizer.exclude_norm_and_bias
    scheduler = pipeline.train.scheduler
    assert (scheduler.name, scheduler.warmup_epochs, scheduler.final_lr_ratio) == ("cosine", 0.0, 0.001)
    assert pipeline.train.batch_size == 256 and 3840 % 256 == 0


# -- the loss ------------------------------------------------------------------------------------


def plain_sinkhorn(scores, epsilon, iterations):
    """The paper's Sinkhorn-Knopp in float64 torch, without stabilisation: rows (prototypes) to 1/K, columns
    (samples) to 1/B, codes B·Qᵀ."""
    q = torch.exp(scores / epsilon).T
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


def swav_reference(z, prototypes, n_global, tau, epsilon, iterations):
    """SwAV's swapped prediction as the paper's code computes it: for each global view b, codes q_b of its scores;
    every other view a predicts them, -mean_n Σ_k q log softmax(s_a/τ), averaged over the V-1 views a, then over b."""
    scores = [(x / x.norm(dim=1, keepdim=True)) @ prototypes.T for x in z]
    loss = 0.0
    for b in range(n_global):
        q = plain_sinkhorn(scores[b].detach(), epsilon, iterations)
        subloss = sum(-(q * torch.log_softmax(scores[a] / tau, dim=1)).sum(dim=1).mean()
                      for a in range(len(z)) if a != b)
        loss = loss + subloss / (len(z) - 1)
    return loss / n_global


def fixed_problem(n=6, dim=5, k=4, views=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = [torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(views)]
    functional = SinkhornAssignment(dim, k, epsilon=0.3, iterations=3).double()
    with torch.no_grad():
        functional.prototypes.weight.copy_(torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=1))
    return z, functional


def test_objective_is_the_papers_swapped_prediction_with_local_views():
    z, functional = fixed_problem()  # 2 global + 2 local views
    objective = Objective(("cross_entropy", CrossEntropyEnergy(0.1), 1.0), [("sinkhorn", functional, 1.0)])
    out = StepOutputs(online=Branch(h=z, z=z), target=Branch(h=z[:2], z=z[:2]), n_global=2)
    loss, terms, made = objective(out)
    assert set(terms) == {"energy/cross_entropy"}  # the functional only makes the targets
    prototypes = functional.prototypes.weight.detach().clone().requires_grad_()
    z_ref = [x.detach().clone().requires_grad_() for x in z]
    expected = swav_reference(z_ref, prototypes, 2, 0.1, 0.3, 3)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    # The codes are the targets and the assignments the collapse monitor reads; rows are distributions.
    assert made.assignments is made.target.z and len(made.assignments) == 2
    for q in made.assignments:
        assert not q.requires_grad
        torch.testing.assert_close(q.sum(dim=1), torch.ones(6, dtype=torch.float64))
    # Same gradients as the reference, to the embeddings (through the scores only) and to the prototypes.
    loss.backward()
    expected.backward()
    for ours, theirs in zip(z, z_ref, strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(functional.prototypes.weight.grad, prototypes.grad, rtol=1e-10, atol=1e-12)


def test_the_functional_passes_the_contract(plugins):
    ctx = RunContext(batch_size=8, global_batch_size=8, in_dim=8, n_views=4, n_global=2)
    functional = build_component(plugins, "functional", "sinkhorn", {"n_prototypes": 6}, ctx=ctx)
    check_functional(functional, name="sinkhorn", n_views=4, n_global=2)
    with_queue = build_component(plugins, "functional", "sinkhorn", {"n_prototypes": 6, "queue_length": 16,
                                                                    "queue_start_epoch": 0}, ctx=ctx)
    check_functional(with_queue, name="sinkhorn", n_views=3, n_global=2)


# -- what a user reads -------------------------------------------------------------------------------


@pytest.mark.parametrize("option,value,message", [
    ("epsilon", 0.0, r"functionals\.0\.epsilon: must be > 0\.0, got 0\.0"),
    ("n_prototypes", 1, r"functionals\.0\.n_prototypes: must be >= 2, got 1"),
    ("iterations", 0, r"functionals\.0\.iterations: must be >= 1, got 0"),
    ("queue_length", -1, r"functionals\.0\.queue_length: must be >= 0, got -1"),
    ("freeze_prototypes_steps", -1, r"functionals\.0\.freeze_prototypes_steps: must be >= 0, got -1"),
    ("n_prototype", 10, r"unknown key 'n_prototype'; did you mean 'n_prototypes'\?"),
])
def test_bad_options_are_config_errors_naming_the_key(plugins, option, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve({"method": "swav", "functionals": [{"name": "sinkhorn", option: value}]}, registry=plugins.registry)


def test_a_queue_length_that_is_not_a_multiple_of_the_global_batch_is_refused(plugins):
    with pytest.raises(RuntimeError, match=r"sinkhorn: queue_length 40 is not a multiple of the global batch size "
                                           r"16 \(train\.batch_size 16 x 1 process\(es\)\); the queue holds whole "
                                           r"batches: set queue_length to 32 or 48, or 0 for no queue"):
        tiny_run({"method": "swav", "functionals": [{"name": "sinkhorn", "queue_length": 40}]}, steps=1,
                 plugins=plugins)


def test_online_outputs_of_another_width_are_explained():
    functional = SinkhornAssignment(8, 4)
    z = [torch.randn(3, 8) for _ in range(2)]
    out = StepOutputs(online=Branch(h=z, z=z, p=[torch.randn(3, 5)] * 2), target=Branch(h=z, z=z), n_global=2)
    with pytest.raises(ValueError, match=r"sinkhorn: online output 0 has shape \[3, 5\], but the prototypes take "
                                         r"\[N, 8\] embeddings \(the projector's width\)"):
        functional.targets(out)


def test_the_parts_run_with_local_views_without_the_method(plugins):
    # `method: swav` declares multi-crop; naming the parts yourself is allowed too.
    result = tiny_run({"augmenter": {"name": "views", "n_local": 2, "local_size": 8},
                       "energy": {"name": "cross_entropy"},
                       "functionals": [{"name": "sinkhorn", "n_prototypes": 8, "freeze_prototypes_steps": 0}],
                       "eval": {"knn": {"enabled": False}}}, steps=1, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])


# -- runs ------------------------------------------------------------------------------------------

#: The recipe's structure shrunk: 2 global + 2 local views, 16 prototypes, a short freeze.
SMALL = {"method": "swav", "augmenter": {"n_local": 2, "local_size": 8, "blur_p": 0.0},
         "functionals": [{"name": "sinkhorn", "n_prototypes": 16, "freeze_prototypes_steps": 1}],
         "eval": {"knn": {"enabled": False}}}


def test_the_recipe_runs_as_is_on_tiny_data(plugins):
    result = tiny_run({"method": "swav", "eval": {"knn": {"enabled": False}}}, steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
    assert result.hooks_called.count("jef_after_backward") == 2


def test_bf16_autocast_gives_finite_losses(plugins):
    result = tiny_run(merge(SMALL, {"train": {"precision": "bf16"}}), steps=3, plugins=plugins)
    assert math.isfinite(result.metrics["loss"]) and math.isfinite(result.metrics["energy/cross_entropy"])


def test_ddp_with_frozen_prototypes_has_no_unused_parameter_error(tmp_path):
    # The prototypes score every view, so DDP sees their gradient even while jef_after_backward drops it.
    frozen = merge(SMALL, {"functionals": [{"name": "sinkhorn", "n_prototypes": 16, "freeze_prototypes_steps": 10}]})
    metrics = train_in_processes(frozen, steps=3, run_dir=tmp_path)
    assert len(metrics) == 2 and all(math.isfinite(m["loss"]) for m in metrics)


#: SwAV's structure (multi-crop, shared target, Sinkhorn codes, frozen prototypes at first) sized for 120 steps of
#: 16-pixel greyscale textures: 2 local 8-pixel views, milder crops and jitter (the recipe's s = 1 jitter and
#: 5-14 % local crops wipe out these textures: the codes go uniform), no blur (slow on a CPU), 64 prototypes for a
#: batch of 64, and sharper codes (ε = 0.02): 64-d embeddings of a small CNN score the prototypes within a narrow
#: range, and at ε = 0.05 the codes start almost uniform. With these, 8 seeds beat the random backbone by
#: 0.15-0.27 kNN top-1; at ε = 0.05 one seed in eight did not learn.
LEARNABLE = {"augmenter": {"n_local": 2, "local_size": 8, "blur_p": 0.0, "scale": [0.3, 1.0],
                           "local_scale": [0.1, 0.3], "brightness": 0.4, "contrast": 0.4},
             "projector": {"dims": [128, 64]}, "train": {"optimizer": {"lr": 0.01}},
             "functionals": [{"name": "sinkhorn", "n_prototypes": 64, "epsilon": 0.02,
                              "freeze_prototypes_steps": 10, "queue_length": 0}]}


def test_swav_learns_with_multi_crop_and_does_not_collapse(plugins):
    result = assert_learns(merge({"method": "swav"}, LEARNABLE), plugins=plugins)
    # The collapse monitor read the codes (StepOutputs.assignments): more than a handful of prototypes in use.
    assert result.metrics["collapse/target_usage"] > 0.25
    assert result.metrics["collapse/target_entropy"] < 0.9
