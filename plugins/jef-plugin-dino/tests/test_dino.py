"""DINO through jef: discovery, recipe, the loss against the paper's, the centre, the schedule, errors."""

from __future__ import annotations

import math

import pytest
import torch
from jef_plugin_dino.centering import Centering, teacher_temperature

from jef.builtin.energies import CrossEntropyEnergy
from jef.components import Branch, RunContext, StepOutputs
from jef.config import merge, resolve
from jef.testing import (
    Objective, TINY_SETTINGS, assert_discovered, build_component, build_pipeline, check_functional,
    run_in_processes,
)
from jef.config.validate import ConfigError


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "dino", provides={"method": ["dino", "dino_resnet"], "head": ["dino_head"],
                                                 "functional": ["centering"]})
    assert plugins.registry.get("method", "dino").extra["multi_crop"]
    assert plugins.registry.get("method", "dino_resnet").extra["multi_crop"]


def test_recipe_is_the_papers_resnet_setting(plugins):
    pipeline = resolve({"method": "dino_resnet"}, registry=plugins.registry)
    assert (pipeline.energy.name, pipeline.energy.options.temperature, pipeline.energy.weight) == \
        ("cross_entropy", 0.1, 1.0)
    [centering] = pipeline.functionals
    c = centering.options
    assert centering.name == "centering"
    assert (c.center_momentum, c.teacher_temperature, c.warmup_teacher_temperature,
            c.warmup_teacher_temperature_epochs) == (0.9, 0.04, 0.04, 0)
    target = pipeline.target
    assert (target.name, target.momentum, target.final_momentum, target.schedule, target.projector) == \
        ("ema", 0.996, 1.0, "cosine", True)
    head = pipeline.projector.options
    assert pipeline.projector.name == "dino_head" and pipeline.predictor is None
    assert (head.out_dim, head.hidden_dim, head.bottleneck_dim, head.n_layers, head.batch_norm,
            head.norm_last_layer, head.freeze_last_layer_epochs) == (4096, 2048, 256, 3, False, True, 1)
    views = pipeline.augmenter.options
    assert (views.n_global, views.n_local, views.scale, views.local_scale) == (2, 6, (0.14, 1.0), (0.05, 0.14))
    assert views.per_view("blur_p") == [1.0, 0.1] + [0.5] * 6
    assert views.per_view("solarize_p") == [0.0, 0.2] + [0.0] * 6
    assert (views.saturation, views.hue) == (0.2, 0.1)
    train = pipeline.train
    assert (train.optimizer.name, train.optimizer.lr, train.optimizer.scale_lr, train.optimizer.weight_decay) == \
        ("sgd", 0.03, "linear", 1e-4)
    assert train.clip_grad_norm == 3.0
    assert (train.scheduler.name, train.scheduler.warmup_epochs) == ("cosine", 10)


# -- the loss --------------------------------------------------------------------------------


def _softmax(row):
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def dino_reference(student, teacher, center, tau_s, tau_t):
    """The paper's loss (Eq. 3 with multi-crop, Algorithm 1), written out with Python floats.

    For every teacher view ``iq`` (global) and student view ``v ≠ iq`` (global or local):
    ``mean_n −Σ_k P_t[n, k] · log P_s[n, k]``; the loss is the mean of these terms.
    """
    terms = []
    for iq, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == iq:
                continue
            total = 0.0
            for n in range(t.shape[0]):
                p_t = _softmax([(a - c) / tau_t for a, c in zip(t[n].tolist(), center, strict=True)])
                p_s = _softmax([a / tau_s for a in s[n].tolist()])
                total -= sum(p * math.log(q) for p, q in zip(p_t, p_s, strict=True))
            terms.append(total / t.shape[0])
    return sum(terms) / len(terms)


def _logits(n_views, n=5, k=7, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, k, generator=g, dtype=torch.float64) for _ in range(n_views)]


def _dino_objective(centering):
    """The recipe's objective: the cross_entropy energy at the student temperature 0.1, made targets."""
    return Objective(("cross_entropy", CrossEntropyEnergy(0.1), 1.0), [("centering", centering, 1.0)])


def test_objective_is_the_papers_loss_with_local_crops_and_a_warm_temperature():
    student, teacher = _logits(5, seed=0, scale=2.0), _logits(2, seed=1)  # 2 global + 3 local student views
    centering = Centering(7, center_momentum=0.8, teacher_temperature=0.06, warmup_teacher_temperature=0.02,
                          warmup_teacher_temperature_epochs=3).double()
    centering.center.copy_(torch.randn(1, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    centering.epoch = 1  # τ_t = 0.02 + (0.06 − 0.02)·1/2 = 0.04
    old_center = centering.center[0].tolist()
    out = StepOutputs(online=Branch(h=student, z=student), target=Branch(h=teacher, z=teacher), n_global=2)
    loss, terms, made = _dino_objective(centering)(out)
    assert float(loss) == pytest.approx(dino_reference(student, teacher, old_center, 0.1, 0.04), rel=1e-12)
    assert set(terms) == {"energy/cross_entropy"}  # the functional adds no term of its own
    assert made.assignments is not None and all(a is z for a, z in zip(made.assignments, made.target.z, strict=True))
    for probs in made.assignments:
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(5, dtype=torch.float64))
    mean = torch.cat(teacher).mean(dim=0)  # over both global views and every sample
    torch.testing.assert_close(centering.center[0], 0.8 * torch.tensor(old_center, dtype=torch.float64) + 0.2 * mean)


def test_gradient_reaches_only_the_student():
    student = [s.requires_grad_() for s in _logits(3, seed=3)]
    teacher = [t.requires_grad_() for t in _logits(2, seed=4)]
    out = StepOutputs(online=Branch(h=student, z=student), target=Branch(h=teacher, z=teacher), n_global=2)
    loss, _, _ = _dino_objective(Centering(7).double())(out)
    loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


# -- the centre -----------------------------------------------------------------------------------


def _step_teacher(step, rows):
    return [t[rows] for t in _logits(2, n=6, k=4, seed=100 + step)]


def _centre_two_steps(rows):
    """Make targets for two steps from the given rows of each step's teacher logits; the centre and targets."""
    centering = Centering(4, center_momentum=0.9).double()
    made = []
    for step in range(2):
        teacher = _step_teacher(step, rows)
        out = StepOutputs(online=Branch(h=teacher, z=teacher), target=Branch(h=teacher, z=teacher), n_global=2)
        made.append([p.clone() for p in centering.targets(out).target.z])
    return centering.center.clone(), made


def _centre_job(rank):
    return _centre_two_steps(slice(rank * 3, rank * 3 + 3))


def test_centre_follows_its_formula():
    centre, _ = _centre_two_steps(slice(0, 6))
    expected = torch.zeros(4, dtype=torch.float64)
    for step in range(2):
        expected = 0.9 * expected + 0.1 * torch.cat(_step_teacher(step, slice(0, 6))).mean(dim=0)
    torch.testing.assert_close(centre[0], expected, rtol=1e-12, atol=1e-14)


def test_two_processes_holding_halves_update_the_centre_like_one_on_the_global_batch():
    results = run_in_processes(_centre_job)
    centre, made = _centre_two_steps(slice(0, 6))
    for rank, (rank_centre, rank_made) in enumerate(results):
        torch.testing.assert_close(rank_centre, centre, rtol=1e-12, atol=1e-14)  # every rank, the same centre
        for step in range(2):  # step 1's targets used the centre of step 0's global batch
            for view in range(2):
                torch.testing.assert_close(rank_made[step][view], made[step][view][rank * 3:rank * 3 + 3])


def test_teacher_temperature_warms_up_linearly_per_epoch():
    # The paper's code: np.linspace(0.04, 0.07, 30) for epochs 0..29, then 0.07.
    values = [teacher_temperature(e, 0.07, 0.04, 30) for e in range(32)]
    assert values[0] == 0.04 and values[29] == pytest.approx(0.07) and values[30:] == [0.07, 0.07]
    assert values[1] == pytest.approx(0.04 + 0.03 / 29)
    assert [teacher_temperature(e, 0.04, 0.02, 1) for e in range(3)] == [0.02, 0.04, 0.04]
    assert teacher_temperature(0, 0.04, 0.02, 0) == 0.04
    centering = Centering(3, teacher_temperature=0.07, warmup_teacher_temperature=0.04,
                          warmup_teacher_temperature_epochs=4)

    class Run:
        epoch = 2

    centering.jef_run_start(run=Run())  # a resumed run starts in its epoch
    assert centering.temperature() == pytest.approx(0.06)
    centering.jef_epoch_end(run=Run(), epoch=2, metrics={})
    assert centering.epoch == 3 and centering.temperature() == pytest.approx(0.07)


def test_centering_passes_the_functional_contract(plugins):
    ctx = RunContext(in_dim=8)
    check_functional(build_component(plugins, "functional", "centering", ctx=ctx), name="centering",
                     n_views=4, n_global=2)


# -- errors a user reads ----------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "path", "words"), [
    ({"functionals": [{"name": "centering", "center_momentum": 1.0}]}, "functionals.0.center_momentum", "< 1"),
    ({"functionals": [{"name": "centering", "teacher_temperature": 0}]}, "functionals.0.teacher_temperature", "> 0"),
    ({"projector": {"n_layers": 0}}, "projector.n_layers", ">= 1"),
    ({"projector": {"out_dims": 10}}, "projector.out_dims", "did you mean 'out_dim'"),
    ({"augmenter": {"blur_p": [1.0, 0.1, 0.5, 0.5]}}, "augmenter.blur_p", "2 values (one per global view), 3 (the "
                                                                          "global views', then one for every local"),
    ({"functionals": []}, "energy", "no functional makes targets"),
])
def test_bad_options_name_their_key(plugins, override, path, words):
    with pytest.raises(ConfigError) as caught:
        data = merge({"method": "dino", **TINY_SETTINGS, "projector": {"name": "dino_head", "out_dim": 16}},
                     override)
        pipeline = resolve(data, registry=plugins.registry)
        build_pipeline(plugins, pipeline, RunContext())
    assert caught.value.path == path and words in str(caught.value), str(caught.value)


def test_a_teacher_warm_up_longer_than_the_run_is_refused(plugins):
    data = {"method": "dino", **TINY_SETTINGS, "projector": {"name": "dino_head", "out_dim": 16},
            "functionals": [{"name": "centering", "warmup_teacher_temperature_epochs": 30}]}
    pipeline = resolve(data, registry=plugins.registry)
    with pytest.raises(RuntimeError, match=r"warmup_teacher_temperature_epochs=30 is longer than the run's 10 "):
        build_pipeline(plugins, pipeline, RunContext(epochs=10))


def test_a_teacher_of_another_width_is_explained():
    teacher = _logits(2, k=5)
    out = StepOutputs(online=Branch(h=teacher, z=teacher), target=Branch(h=teacher, z=teacher), n_global=2)
    with pytest.raises(ValueError, match=r"teacher view 0 has shape \[5, 5\] but the centre has K=7"):
        Centering(7).targets(out)
