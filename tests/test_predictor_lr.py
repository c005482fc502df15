"""``train.optimizer.fixed_lr_predictor``: SimSiam's predictor keeps its base rate (Chen & He, 2021, Sec. 4.1)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from jef.hookspecs import hookimpl
from jef.run.optim import build_optimizer, lr_lambdas, warmup_cosine
from jef.config.options import OptimizerOptions, ScheduleOptions
from jef.testing import fresh_plugins, tiny_run


class Model(nn.Module):
    """The attributes the optimiser looks at: any parameters, and ``predictor``."""

    def __init__(self, predictor: bool = True) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.predictor = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)) if predictor else None


def _ids(group):
    return {id(p) for p in group["params"]}


def test_predictor_parameters_get_their_own_fixed_groups_after_the_scheduled_ones():
    model = Model()
    optimizer = build_optimizer(model, OptimizerOptions(fixed_lr_predictor=True, weight_decay=0.1), 256)
    flags = [group["fixed_lr"] for group in optimizer.param_groups]
    assert flags == [False, False, True, True]  # group 0 (logged) is scheduled
    fixed = set().union(*(_ids(g) for g in optimizer.param_groups if g["fixed_lr"]))
    assert fixed == {id(p) for p in model.predictor.parameters()}
    # Weight decay stays off norms and biases inside the predictor too.
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0, 0.1, 0.0]
    total = sum(len(g["params"]) for g in optimizer.param_groups)
    assert total == len(list(model.parameters()))


def test_without_the_option_every_group_is_scheduled():
    optimizer = build_optimizer(Model(), OptimizerOptions(), 256)
    assert not any(g["fixed_lr"] for g in optimizer.param_groups)
    lambdas = lr_lambdas(optimizer, ScheduleOptions(warmup_epochs=1), 4, 20)
    reference = warmup_cosine(ScheduleOptions(warmup_epochs=1), 4, 20)
    assert all([f(s) for s in range(20)] == [reference(s) for s in range(20)] for f in lambdas)


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
def test_lambda_lr_keeps_fixed_groups_at_the_base_rate_through_warm_up_and_decay(name):
    model = Model()
    optimizer = build_optimizer(model, OptimizerOptions(name=name, lr=0.2, fixed_lr_predictor=True), 256)
    options = ScheduleOptions(warmup_epochs=1, final_lr_ratio=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(optimizer, options, 4, 12))
    reference = warmup_cosine(options, 4, 12)
    for step in range(12):
        for group in optimizer.param_groups:
            expected = 0.2 if group["fixed_lr"] else 0.2 * reference(step)
            assert group["lr"] == pytest.approx(expected), (step, group["fixed_lr"])
        optimizer.step()
        scheduler.step()


def test_the_option_without_a_predictor_is_a_readable_error():
    with pytest.raises(ValueError, match="fixed_lr_predictor.*no predictor"):
        build_optimizer(Model(predictor=False), OptimizerOptions(fixed_lr_predictor=True), 256)


class LrRecorder:
    """Records every parameter group's rate after each optimiser step."""

    def __init__(self) -> None:
        self.rates: list[list[tuple[bool, float]]] = []

    @hookimpl
    def jef_step_end(self, run, outputs, terms):
        self.rates.append([(g["fixed_lr"], g["lr"]) for g in run.optimizer.param_groups])


def test_in_a_run_the_predictor_rate_is_constant_and_the_rest_follow_the_schedule():
    recorder = LrRecorder()
    plugins = fresh_plugins(recorder)
    pipeline = {"predictor": {"name": "mlp", "dims": [32, 16]},
                "train": {"epochs": 2, "optimizer": {"fixed_lr_predictor": True, "lr": 0.1, "scale_lr": "none"},
                          "scheduler": {"warmup_epochs": 1}},
                "eval": {"knn": {"enabled": False}}}
    result = tiny_run(pipeline, steps=8, plugins=plugins)  # 4 steps per epoch: 4 warm-up, 4 cosine
    schedule = warmup_cosine(ScheduleOptions(warmup_epochs=1), 4, 8)
    assert len(recorder.rates) == 8
    for step, groups in enumerate(recorder.rates, start=1):  # rates after `step` scheduler steps
        assert {fixed for fixed, _ in groups} == {False, True}
        for fixed, lr in groups:
            assert lr == pytest.approx(0.1 if fixed else 0.1 * schedule(step)), (step, fixed)
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [line["lr"] for line in logged if "lr" in line]
    assert lrs == pytest.approx([0.1 * schedule(step) for step in range(1, 9)])  # the scheduled group is logged
