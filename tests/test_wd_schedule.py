"""``train.optimizer.final_weight_decay``: weight decay on a cosine schedule (DINO's 0.04 -> 0.4)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jef.builtin.targets import EmaTargetOptions
from jef.config import resolve
from jef.config.options import OptimizerOptions, ScheduleOptions
from jef.config.pipeline import merge
from jef.config.validate import ConfigError
from jef.hookspecs import hookimpl
from jef.model.targets import EmaTarget
from jef.plugins import load_plugins
from jef.run.checkpoint import load_checkpoint
from jef.run.optim import build_optimizer, lr_lambdas, warmup_cosine, weight_decay_at
from jef.testing import TINY_PIPELINE, InterruptAt, tiny_run

START, END = 0.04, 0.4


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


class Model(nn.Module):
    """Weights that decay, norms and biases that do not, and a predictor (its own, fixed-rate groups)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.predictor = nn.Linear(4, 4)

    def forward(self, x):
        return self.predictor(self.backbone(x))


def test_the_schedule_runs_from_the_first_value_to_the_last_on_a_cosine():
    total = 10
    assert weight_decay_at(START, END, 0, total) == pytest.approx(START)
    assert weight_decay_at(START, END, total // 2, total) == pytest.approx((START + END) / 2)
    assert weight_decay_at(START, END, total, total) == pytest.approx(END)
    assert weight_decay_at(START, END, 3 * total, total) == pytest.approx(END)  # past the end: stays
    for step in range(total + 1):
        assert weight_decay_at(START, END, step, total) == pytest.approx(
            END - (END - START) * (math.cos(math.pi * step / total) + 1) / 2)


def test_it_is_the_cosine_of_the_ema_momentum():
    ema = EmaTarget(EmaTargetOptions(momentum=START, final_momentum=END, schedule="cosine"), 12)
    assert [weight_decay_at(START, END, k, 12) for k in range(13)] == [ema.momentum(k) for k in range(13)]


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
@pytest.mark.parametrize("predictor", [False, True])
def test_each_optimiser_step_decays_with_its_scheduled_value_and_excluded_groups_stay_at_zero(name, predictor):
    options = OptimizerOptions(name=name, weight_decay=START, final_weight_decay=END, fixed_lr_predictor=predictor)
    model, total = Model(), 8
    optimizer = build_optimizer(model, options, 256)
    schedule = ScheduleOptions(warmup_epochs=1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(optimizer, schedule, 2, total))
    assert any(g["weight_decay"] == 0.0 for g in optimizer.param_groups)  # norms and biases excluded
    rates = warmup_cosine(schedule, 2, total)
    for step in range(total + 1):
        for group in optimizer.param_groups:
            decays = "final_weight_decay" in group
            assert decays == any(p.ndim > 1 for p in group["params"])
            expected = weight_decay_at(START, END, step, total) if decays else 0.0
            assert group["weight_decay"] == pytest.approx(expected), (step, group["fixed_lr"])
            assert group["lr"] == pytest.approx(0.3 * (1.0 if group["fixed_lr"] else rates(step)))  # lr unchanged
        model(torch.randn(4, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def test_without_a_final_value_the_decay_stays_constant():
    optimizer = build_optimizer(Model(), OptimizerOptions(weight_decay=START), 256)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(optimizer, ScheduleOptions(), 2, 4))
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, START]


def test_the_decay_follows_the_groups_a_loaded_state_dict_puts_in_place():
    # Loading a state dict (a resume, Accelerate's device placement) replaces the optimiser's group dicts.
    optimizer = build_optimizer(Model(), OptimizerOptions(weight_decay=START, final_weight_decay=END), 256)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(optimizer, ScheduleOptions(), 2, 4))
    optimizer.load_state_dict(optimizer.state_dict())
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(weight_decay_at(START, END, 1, 4))
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [None] * len(optimizer.param_groups)  # nothing of the closures is saved


@pytest.mark.parametrize("value", [-0.1, 1e39])
def test_a_bad_final_value_names_its_yaml_path(plugins, value):
    with pytest.raises(ConfigError, match=r"train.optimizer.final_weight_decay: "):
        resolve(merge(TINY_PIPELINE, {"train": {"optimizer": {"final_weight_decay": value}}}),
                registry=plugins.registry)


class DecayRecorder:
    """Every parameter group's weight decay after each optimiser step."""

    def __init__(self) -> None:
        self.decays: list[list[float]] = []

    @hookimpl
    def jef_step_end(self, run, outputs, terms):
        self.decays.append([group["weight_decay"] for group in run.optimizer.param_groups])


SCHEDULED = {"train": {"epochs": 2, "optimizer": {"weight_decay": START, "final_weight_decay": END}}}


def test_a_run_follows_the_schedule_and_resumes_it_bit_exactly(tmp_path, plugins):
    recorder = DecayRecorder()
    plugins.manager.register(recorder, name="decays")
    try:
        tiny_run(SCHEDULED, steps=8, run_dir=tmp_path / "straight", plugins=plugins)
    finally:
        plugins.manager.unregister(name="decays")
    # After step k (from 1) the scheduler has stepped k times: the decay set for the next step.
    assert [decays[0] for decays in recorder.decays] == pytest.approx(
        [weight_decay_at(START, END, k, 8) for k in range(1, 9)])
    assert all(decays[1] == 0.0 for decays in recorder.decays)  # norms and biases

    plugins.manager.register(InterruptAt(6), name="stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            tiny_run(SCHEDULED, steps=8, run_dir=tmp_path / "resumed", plugins=plugins)
    finally:
        plugins.manager.unregister(name="stopper")
    tiny_run(SCHEDULED, steps=8, run_dir=tmp_path / "resumed", plugins=plugins, resume=True)
    straight, resumed = load_checkpoint(tmp_path / "straight" / "checkpoint.pt"), load_checkpoint(
        tmp_path / "resumed" / "checkpoint.pt")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key  # bit-exact on CPU with the same seed
    groups = [group["weight_decay"] for group in resumed["optimizer"]["param_groups"]]
    assert groups == [group["weight_decay"] for group in straight["optimizer"]["param_groups"]]
    assert groups[0] == pytest.approx(END)


def test_the_schedule_changes_the_trained_weights(tmp_path, plugins):
    constant = tiny_run({"train": {"optimizer": {"weight_decay": START}}}, steps=3, run_dir=tmp_path / "c",
                        plugins=plugins)
    scheduled = tiny_run({"train": {"optimizer": {"weight_decay": START, "final_weight_decay": END}}}, steps=3,
                         run_dir=tmp_path / "s", plugins=plugins)
    a = load_checkpoint(constant.run_dir / "checkpoint.pt")["model"]
    b = load_checkpoint(scheduled.run_dir / "checkpoint.pt")["model"]
    assert not torch.equal(a["backbone.features.0.weight"], b["backbone.features.0.weight"])


def test_the_scheduled_decay_is_in_the_metrics_lines(tmp_path, plugins):
    import json

    run = tiny_run(SCHEDULED, steps=4, run_dir=tmp_path / "logged", plugins=plugins)
    lines = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [line["weight_decay"] for line in lines if "weight_decay" in line]
    assert logged == pytest.approx([weight_decay_at(START, END, k, 4) for k in range(1, 5)])  # 4 steps in all
    plain = tiny_run(steps=2, run_dir=tmp_path / "plain", plugins=plugins)  # constant: not logged
    assert "weight_decay" not in (plain.run_dir / "metrics.jsonl").read_text()
