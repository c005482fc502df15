"""Functionals that make targets (the SwAV/DINO shape of objective), the cross_entropy energy, multi-crop checks
and the assignment diagnostics of the collapse monitor."""

from __future__ import annotations

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jef import hookimpl
from jef.builtin.energies import CrossEntropyEnergy
from jef.builtin.monitors import CollapseOptions, build_collapse
from jef.components import Branch, RunContext, StepOutputs
from jef.evaluate.collapse import CollapseWarning, assignment_entropy, class_usage
from jef.functional import soft_cross_entropy
from jef.model.joint import Objective
from jef.plugins import load_plugins
from jef.testing import TINY_OBJECTIVE, ContractError, check_functional, temporary_plugin, tiny_run
from jef.config.validate import ConfigError


class SharpenedTargets(nn.Module):
    """A toy target maker: targets = softmax(t / 0.5) of the detached target embeddings; records what it saw."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def targets(self, out):
        with torch.no_grad():
            probs = [torch.softmax(t / 0.5, dim=1) for t in out.target.z]
        return attrs.evolve(out, target=attrs.evolve(out.target, z=probs), assignments=probs)

    def forward(self, out):
        self.seen.append(out.target.z)
        return {}


class MeanTarget(nn.Module):
    """A functional after the target maker: returns the mean of the targets it sees (no gradient needed)."""

    def forward(self, out):
        return out.online.z[0].sum() * 0 + torch.stack([t.mean() for t in out.target.z]).mean()


def _outputs(n=6, k=5, views=3, n_global=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = [torch.randn(n, k, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(views)]
    online = Branch(h=z, z=z)
    return StepOutputs(online=online, target=Branch(h=z[:n_global], z=[t.detach() for t in z[:n_global]]),
                       n_global=n_global), z


# -- the objective ---------------------------------------------------------------------------


def test_targets_are_made_before_the_energy_and_seen_by_later_functionals():
    maker = SharpenedTargets()
    objective = Objective(("cross_entropy", CrossEntropyEnergy(0.1), 1.0),
                          [("maker", maker, 1.0), ("mean", MeanTarget(), 1.0)])
    out, z = _outputs()
    loss, terms, made = objective(out)
    probs = [torch.softmax(t.detach() / 0.5, dim=1) for t in z[:2]]
    # Reference: every ordered pair (a, b), a ≠ b, b global, of -Σ q_b log softmax(z_a / 0.1), averaged.
    pairs = [(a, b) for a in range(3) for b in range(2) if a != b]
    expected = torch.stack([-(probs[b] * F.log_softmax(z[a] / 0.1, dim=1)).sum(1).mean() for a, b in pairs]).mean()
    assert set(terms) == {"energy/cross_entropy", "mean"}  # the maker adds no term of its own
    assert torch.allclose(terms["energy/cross_entropy"], expected)
    assert torch.allclose(terms["mean"], torch.tensor(1 / 5, dtype=torch.float64))  # means of probability rows
    assert torch.allclose(loss, expected + 0.2)
    assert all(torch.equal(a, b) for a, b in zip(made.target.z, probs, strict=True))
    assert made.assignments is made.target.z or all(torch.equal(a, b) for a, b in zip(made.assignments, probs,
                                                                                         strict=True))
    assert all(torch.equal(a, b) for a, b in zip(maker.seen[0], probs, strict=True))
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in z)  # local view 2 is an anchor too


def test_an_objective_with_no_term_at_all_says_so():
    objective = Objective(None, [("maker", SharpenedTargets(), 1.0)])
    with pytest.raises(ValueError, match="the objective has no term"):
        objective(_outputs()[0])


# -- the cross_entropy energy ------------------------------------------------------------------


def test_soft_cross_entropy_matches_torch_with_soft_labels():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 4, generator=gen, requires_grad=True)
    targets = torch.softmax(torch.randn(7, 4, generator=gen), dim=1)
    ours = soft_cross_entropy(logits, targets, temperature=0.2)
    reference = F.cross_entropy(logits / 0.2, targets, reduction="none")
    assert torch.allclose(ours, reference, atol=1e-6)
    big = torch.full((3, 4), 3e4, dtype=torch.bfloat16)  # logits/τ would overflow in half precision
    assert torch.isfinite(soft_cross_entropy(big, torch.full((3, 4), 0.25), 0.01)).all()
    with pytest.raises(ValueError, match="soft_cross_entropy: logits and targets must have the same shape"):
        soft_cross_entropy(logits, targets[:, :3])
    with pytest.raises(ValueError, match="temperature must be a positive"):
        soft_cross_entropy(logits, targets, temperature=0.0)


def test_cross_entropy_without_a_target_maker_is_a_config_error():
    pipeline = {"energy": {"name": "cross_entropy"}, "functionals": [{"name": "info_nce"}]}
    with pytest.raises(ConfigError, match=r"energy: energy 'cross_entropy' compares the online outputs with "
                                          r"target distributions, but no functional makes targets"):
        tiny_run(pipeline, steps=1, plugins=load_plugins(entry_points=False))


# -- contract checks of target makers --------------------------------------------------------------


class LeakyTargets(SharpenedTargets):
    def targets(self, out):
        probs = [torch.softmax(t, dim=1) for t in out.online.z[:out.n_global]]  # carries the online gradient
        return attrs.evolve(out, target=attrs.evolve(out.target, z=probs))


class NotProbabilities(SharpenedTargets):
    def targets(self, out):
        made = super().targets(out)
        return attrs.evolve(made, assignments=[2 * p for p in made.assignments])


def test_check_functional_accepts_a_target_maker_and_explains_broken_ones():
    check_functional(SharpenedTargets(), n_views=3, n_global=2)
    with pytest.raises(ContractError, match="made target 0 carries a gradient; targets are constants"):
        check_functional(LeakyTargets(), name="leaky")
    with pytest.raises(ContractError, match=r"assignments\[0\] must hold probability rows"):
        check_functional(NotProbabilities(), name="scaled")


# -- multi-crop is declared by methods -----------------------------------------------------------


class RecipePlugin:
    """Registers two methods with the tiny objective, one declaring multi-crop support."""

    @hookimpl
    def jef_register_methods(self, register):
        register("single_crop", TINY_OBJECTIVE)
        register("multi_crop", TINY_OBJECTIVE, multi_crop=True)


def test_local_views_need_a_method_that_declares_multi_crop():
    plugins = load_plugins(entry_points=False)
    local = {"augmenter": {"name": "views", "n_local": 2, "local_size": 8}}
    with temporary_plugin(plugins, RecipePlugin(), name="recipes"):
        with pytest.raises(ConfigError, match=r"augmenter: method 'single_crop' \(recipes\) does not declare "
                                              r"multi-crop support, but the augmenter makes 2 local view"):
            tiny_run({"method": "single_crop", **local}, steps=1, plugins=plugins)
        result = tiny_run({"method": "multi_crop", **local}, steps=2, plugins=plugins)
        assert torch.isfinite(torch.tensor(result.metrics["loss"]))
        tiny_run({"method": "single_crop"}, steps=1, plugins=plugins)  # no local views: fine


# -- the collapse monitor on assignments ------------------------------------------------------------


class FakeRun:
    def __init__(self):
        self.step, self.ctx, self.logged = 10, RunContext(), []

    def log(self, values):
        self.logged.append(values)


def _assigned(probs):
    z = torch.randn(probs.shape[0], 8, generator=torch.Generator().manual_seed(0))
    branch = Branch(h=[z, z], z=[z, z])
    return StepOutputs(online=branch, target=branch, n_global=2, assignments=[probs, probs])


def test_assignment_metrics_for_one_hot_uniform_and_single_class_targets():
    one_hot = torch.eye(8)[torch.arange(16) % 8]
    assert assignment_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert class_usage(one_hot).item() == 1.0
    uniform = torch.full((16, 8), 1 / 8)
    assert assignment_entropy(uniform).item() == pytest.approx(1.0)
    assert class_usage(uniform).item() == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match=r"assignments of shape \[N, K\] with N >= 1 and K >= 2"):
        assignment_entropy(torch.ones(4, 1))


@pytest.mark.parametrize(("probs", "expected"), [
    (torch.eye(8)[torch.zeros(16, dtype=torch.long)], "target collapse: all 16 samples' targets put most mass on one"),
    (torch.full((16, 8), 1 / 8), "uniform collapse: the targets' entropy is 1.000 of the uniform log 8"),
])
def test_collapse_monitor_reports_and_warns_on_collapsed_targets(probs, expected):
    monitor, run = build_collapse(CollapseOptions(every=1), RunContext()), FakeRun()
    with pytest.warns(CollapseWarning, match=expected):
        monitor.jef_step_end(run=run, outputs=_assigned(probs), terms={})
    assert {"collapse/target_entropy", "collapse/target_usage"} <= set(run.logged[0])


def test_collapse_monitor_is_silent_on_healthy_targets():
    monitor, run = build_collapse(CollapseOptions(every=1), RunContext()), FakeRun()
    probs = torch.softmax(4 * torch.randn(32, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        monitor.jef_step_end(run=run, outputs=_assigned(probs), terms={})
    assert 0.1 < run.logged[0]["collapse/target_entropy"] < 0.9
    assert run.logged[0]["collapse/target_usage"] == 1.0
