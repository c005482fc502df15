"""Tests of the collapse monitor."""

import logging
import math
import warnings

import pytest
import torch

from jef.builtin import monitors
from jef.builtin.monitors import CollapseMonitor, CollapseOptions, build_collapse
from jef.components import Branch, RunContext, StepOutputs
from jef.evaluate.collapse import CollapseWarning


class FakeRun:
    """The part of jef.train.Run a monitor uses."""

    def __init__(self, rank=0):
        self.step = 0
        self.ctx = RunContext(rank=rank)
        self.logged = []

    def log(self, values):
        self.logged.append((self.step, values))


def _outputs(z):
    branch = Branch(h=[z], z=[z, z])
    return StepOutputs(online=branch, target=branch, n_global=2)


def _healthy(n=64, d=16):
    return _outputs(torch.randn(n, d, generator=torch.Generator().manual_seed(0), requires_grad=True))


def _collapsed(n=64, d=16):
    return _outputs(torch.ones(n, d) + 1e-4 * torch.randn(n, d, generator=torch.Generator().manual_seed(0)))


def _steps(monitor, run, outputs, steps):
    for step in range(1, steps + 1):
        run.step = step
        monitor.jef_step_end(run=run, outputs=outputs, terms={})


def test_logs_every_n_steps_and_stays_silent_when_healthy():
    monitor, run = build_collapse(CollapseOptions(every=3), RunContext()), FakeRun()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        _steps(monitor, run, _healthy(), 10)
    assert [step for step, _ in run.logged] == [3, 6, 9]
    values = run.logged[0][1]
    assert set(values) == {"collapse/std", "collapse/rank"}
    assert all(isinstance(v, float) for v in values.values())
    assert values["collapse/std"] * math.sqrt(16) > 0.5 and values["collapse/rank"] > 8
    metrics = {"knn_top1": 0.5}
    monitor.jef_run_end(run=run, metrics=metrics)
    assert metrics == {"knn_top1": 0.5, **run.logged[-1][1]}


def test_warns_once_on_collapse(caplog):
    monitor, run = CollapseMonitor(CollapseOptions(every=2)), FakeRun()
    with caplog.at_level(logging.WARNING, logger="jef"), pytest.warns(CollapseWarning) as record:
        _steps(monitor, run, _collapsed(), 6)
    assert len(record) == 1
    message = str(record[0].message)
    assert "complete collapse" in message and "dimensional collapse" in message and "step 2" in message
    assert "stop-gradient" in message and "learning rate" in message
    assert [r.getMessage() for r in caplog.records if r.name == "jef"] == [message]
    assert len(run.logged) == 3 and run.logged[0][1]["collapse/std"] < 1e-3


def test_new_run_warns_again():
    monitor, run = CollapseMonitor(CollapseOptions(every=1)), FakeRun()
    with pytest.warns(CollapseWarning):
        _steps(monitor, run, _collapsed(), 1)
    monitor.jef_run_start(run=run)
    with pytest.warns(CollapseWarning):
        _steps(monitor, run, _collapsed(), 1)


def test_skips_missing_outputs_and_other_ranks():
    monitor, run = CollapseMonitor(CollapseOptions(every=1)), FakeRun(rank=1)
    _steps(monitor, run, None, 2)
    assert run.logged == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        _steps(monitor, run, _collapsed(), 2)
    assert len(run.logged) == 2  # other ranks still log, but only rank 0 warns
    metrics = {}
    CollapseMonitor(CollapseOptions()).jef_run_end(run=run, metrics=metrics)
    assert metrics == {}


def test_options_validated_and_registered():
    with pytest.raises(ValueError):
        CollapseOptions(every=0)
    table = {}
    monitors.jef_register_monitors(lambda name, factory, **kw: table.setdefault(name, (factory, kw)))
    factory, kw = table["collapse"]
    assert kw["options"] is CollapseOptions
    assert isinstance(factory(CollapseOptions(), RunContext()), CollapseMonitor)


def test_monitor_is_a_valid_pluggy_plugin():
    import pluggy

    from jef import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    monitor, run = CollapseMonitor(CollapseOptions(every=1)), FakeRun()
    pm.register(monitor)  # validates the hookimpl signatures against the specs
    run.step = 1
    pm.hook.jef_run_start(run=run)
    pm.hook.jef_step_end(run=run, outputs=_healthy(), terms={})
    metrics = {}
    pm.hook.jef_run_end(run=run, metrics=metrics)
    assert set(metrics) == {"collapse/std", "collapse/rank"}
