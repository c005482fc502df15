"""Tests of the collapse monitor, its metrics (std, RankMe, alignment, uniformity) and ``stop``.

Also every monitor's option errors and its section of docs/monitors.md.
"""

import logging
import math
import warnings
from pathlib import Path

import attrs
import pytest
import torch

from jef.builtin import monitors
from jef.builtin.monitors import CollapseMonitor, CollapseOptions, build_collapse
from jef.run.checkpoint import load_checkpoint
from jef.components import Branch, RunContext, StepOutputs
from jef.evaluate.collapse import CollapseWarning, alignment, uniformity
from jef.plugins import load_plugins
from jef.testing import tiny_pipeline, tiny_run
from jef.config.validate import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

class FakeRun:
    """The part of jef.run.loop.Run a monitor uses."""

    def __init__(self, rank=0):
        self.step = 0
        self.ctx = RunContext(rank=rank)
        self.logged = []
        self.stop_reasons = []

    def log(self, values):
        self.logged.append((self.step, values))

    def request_stop(self, reason):
        self.stop_reasons.append((self.step, reason))


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
    assert set(values) == {"collapse/std", "collapse/rank", "collapse/alignment", "collapse/uniformity",
                           "collapse/dim"}
    assert values["collapse/dim"] == 16.0  # the width d, for the report's reference lines
    assert all(isinstance(v, float) for v in values.values())
    assert values["collapse/std"] * math.sqrt(16) > 0.5 and values["collapse/rank"] > 8
    # _healthy() passes one tensor as both views: perfectly aligned, and spread out (uniformity well below 0).
    assert values["collapse/alignment"] == pytest.approx(0.0, abs=1e-6) and values["collapse/uniformity"] < -1
    metrics = {"knn_top1": 0.5}
    monitor.jef_run_end(run=run, metrics=metrics)
    # The final metrics are the last measured values; d is logged with each check, not a final metric.
    assert metrics == {"knn_top1": 0.5, **{k: v for k, v in run.logged[-1][1].items() if k != "collapse/dim"}}


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
    assert set(metrics) == {"collapse/std", "collapse/rank", "collapse/alignment", "collapse/uniformity"}


# -- alignment and uniformity (Wang & Isola, arXiv:2005.10242) -----------------------------------------------------


def _unit(x):
    return [[c / math.sqrt(sum(e * e for e in row)) for c in row] for row in x.tolist()]


def _reference_alignment(z1, z2, alpha=2.0):
    """E ||x - y||^alpha over positive pairs, with explicit loops."""
    pairs = list(zip(_unit(z1), _unit(z2), strict=True))
    return sum(math.sqrt(sum((a - b) ** 2 for a, b in zip(x, y, strict=True))) ** alpha for x, y in pairs) / len(pairs)


def _reference_uniformity(z, t=2.0):
    """log E_{i<j} exp(-t ||x_i - x_j||^2), with explicit loops."""
    x = _unit(z)
    terms = [math.exp(-t * sum((a - b) ** 2 for a, b in zip(x[i], x[j], strict=True)))
             for i in range(len(x)) for j in range(i + 1, len(x))]
    return math.log(sum(terms) / len(terms))


@pytest.mark.parametrize("seed", [0, 1])
def test_alignment_and_uniformity_match_their_formulas(seed):
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(12, 5, generator=gen, dtype=torch.float64) * 3
    z2 = z1 + 0.5 * torch.randn(12, 5, generator=gen, dtype=torch.float64)
    assert alignment(z1, z2).item() == pytest.approx(_reference_alignment(z1, z2), rel=1e-5)
    assert alignment(z1, z2, alpha=1.0).item() == pytest.approx(_reference_alignment(z1, z2, 1.0), rel=1e-5)
    assert uniformity(z1).item() == pytest.approx(_reference_uniformity(z1), rel=1e-5)
    assert uniformity(z1, t=0.5).item() == pytest.approx(_reference_uniformity(z1, 0.5), rel=1e-5)


def test_alignment_and_uniformity_on_collapsed_and_spread_embeddings():
    constant = torch.ones(64, 16)
    assert uniformity(constant).item() == pytest.approx(0.0, abs=1e-6)  # one point: the worst possible value
    assert alignment(constant, constant).item() == pytest.approx(0.0, abs=1e-6)
    gaussian = torch.randn(512, 128, generator=torch.Generator().manual_seed(0))
    # Uniform on a high-dimensional sphere: ||x - y||^2 concentrates at 2, so the value approaches -2t = -4.
    assert -4.0 < uniformity(gaussian).item() < -3.8
    # Independent directions are orthogonal on average: E ||x - y||^2 = 2.
    assert alignment(gaussian, gaussian.roll(1, dims=0)).item() == pytest.approx(2.0, abs=0.05)


def test_alignment_and_uniformity_reject_bad_input():
    with pytest.raises(ValueError, match="two views of the same images"):
        alignment(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"shape \[N, d\]"):
        uniformity(torch.randn(4))
    with pytest.raises(ValueError, match="t must be > 0"):
        uniformity(torch.randn(4, 3), t=0)


# -- stop: true ----------------------------------------------------------------------------------------------


def test_stop_asks_the_run_to_stop_on_collapse_only():
    run = FakeRun()
    with pytest.warns(CollapseWarning):
        _steps(CollapseMonitor(CollapseOptions(every=1, stop=True)), run, _collapsed(), 3)
    assert len(run.stop_reasons) == 1
    step, reason = run.stop_reasons[0]
    assert step == 1 and reason.startswith("the collapse monitor (stop: true) diagnosed complete collapse")
    for monitor, outputs in [(CollapseMonitor(CollapseOptions(every=1, stop=True)), _healthy()),
                             (CollapseMonitor(CollapseOptions(every=1)), _collapsed())]:
        run = FakeRun()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CollapseWarning)
            _steps(monitor, run, outputs, 3)
        assert run.stop_reasons == []


def test_a_collapsing_run_with_stop_ends_early_and_keeps_its_checkpoint(tmp_path, capsys):
    # Energy only, shared target, no functional: nothing keeps the embeddings apart, so they collapse.
    collapsing = {"energy": {"name": "cosine"}, "functionals": [], "target": {"name": "shared"},
                  "monitors": [{"name": "collapse", "every": 1, "stop": True}],
                  "train": {"epochs": 10, "optimizer": {"name": "adamw", "lr": 0.03, "scale_lr": "none"}},
                  "eval": {"knn": {"enabled": False}}}
    with pytest.warns(CollapseWarning, match="complete collapse") as record:
        result = tiny_run(collapsing, steps=30, run_dir=tmp_path)
    stopped_at = int(str(record[0].message).split("at step ")[1].split()[0])
    assert stopped_at < 30
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == stopped_at
    assert result.hooks_called.count("jef_train_step") == stopped_at
    assert result.metrics["collapse/std"] * math.sqrt(16) < 0.1
    assert f"run stopped at step {stopped_at}: the collapse monitor (stop: true) diagnosed" in capsys.readouterr().err


# -- every monitor: options and documentation ------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def test_bad_options_name_the_option(plugins):
    cases = [({"name": "collapse", "stop": "yes"}, "monitors.1.stop: expected true or false, got str 'yes'"),
             ({"name": "online_linear", "feature": "p"}, "monitors.1.feature: expected one of 'h', 'z', got 'p'"),
             ({"name": "online_linear", "lr": 0}, "monitors.1.lr: must be > 0.0, got 0"),
             ({"name": "knn", "every_epochs": 0}, "monitors.1.every_epochs: must be >= 1, got 0"),
             ({"name": "knn", "every": 5}, "monitors.1.every: unknown key 'every' (valid keys: every_epochs,"),
             ({"name": "knn", "max_train": 0}, "monitors.1.max_train: must be >= 1, got 0")]
    for slot, message in cases:
        with pytest.raises(ConfigError) as error:
            tiny_pipeline({"monitors": [{"name": "collapse"}, slot]}, registry=plugins.registry)
        assert message in str(error.value)


def test_the_monitors_page_lists_every_option_with_its_default(plugins):
    page = (Path(__file__).resolve().parents[1] / "docs" / "monitors.md").read_text(encoding="utf-8")
    sections = {part.split("`")[1]: part for part in page.split("\n## ")[1:] if part.startswith("`")}

    def as_yaml(value):
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    for name in ("collapse", "online_linear", "knn"):
        entry = plugins.registry.get("monitor", name)
        assert name in sections, f"docs/monitors.md has no section ## `{name}`"
        for field in attrs.fields(entry.options):
            row = f"| `{field.name}` | `{as_yaml(field.default)}` |"
            assert row in sections[name], f"docs/monitors.md, section {name}: no row {row!r}"
