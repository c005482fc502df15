"""Opening finished runs (jef.tools.runs.load_run) and stopping a run from a monitor (Run.request_stop)."""

from __future__ import annotations

import pytest
import torch

from jef import hookimpl
from jef.run.checkpoint import load_checkpoint
from jef.plugins import load_plugins
from jef.tools.runs import load_run
from jef.testing import temporary_plugin, tiny_run


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


@pytest.fixture(scope="module")
def finished(plugins, tmp_path_factory):
    return tiny_run({"eval": {"knn": {"enabled": False}}}, steps=3, plugins=plugins,
                    run_dir=tmp_path_factory.mktemp("run"))


def test_a_run_opens_with_its_trained_weights(plugins, finished):
    for where in (finished.run_dir, finished.run_dir / "checkpoint.pt"):
        run = load_run(where, plugins=plugins)
        saved = load_checkpoint(finished.run_dir / "checkpoint.pt")["model"]
        assert run.step == 3 and run.directory == finished.run_dir
        assert all(torch.equal(value, saved[key]) for key, value in run.built.model.state_dict().items())
        assert not run.backbone.training  # opened for evaluation


def test_overrides_change_the_saved_pipeline(plugins, finished):
    run = load_run(finished.run_dir, ["data.test_size=8"], plugins=plugins)
    assert len(run.built.splits.test) == 8


def test_missing_runs_and_foreign_checkpoints_are_explained(plugins, finished, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory or checkpoint"):
        load_run(tmp_path / "nowhere", plugins=plugins)
    with pytest.raises(FileNotFoundError, match="no pipeline.yaml, so this is not a jef run directory"):
        load_run(tmp_path, plugins=plugins)
    other = tiny_run({"backbone": {"width": 4}, "eval": {"knn": {"enabled": False}}}, steps=1, plugins=plugins,
                     run_dir=tmp_path / "other")
    (finished.run_dir / "foreign.pt").write_bytes((other.run_dir / "checkpoint.pt").read_bytes())
    with pytest.raises(RuntimeError, match="the checkpoint does not fit the model built from .*another pipeline"):
        load_run(finished.run_dir / "foreign.pt", plugins=plugins)


class StopAt:
    def __init__(self, step):
        self.step = step

    @hookimpl
    def jef_step_end(self, run, outputs, terms):
        if run.step == self.step:
            run.request_stop("the test says so")


def test_a_monitor_can_stop_the_run_and_the_checkpoint_is_kept(plugins, tmp_path, capsys):
    with temporary_plugin(plugins, StopAt(2), name="stop_at"):
        result = tiny_run({"eval": {"knn": {"enabled": False}}}, steps=5, plugins=plugins, run_dir=tmp_path)
    assert result.hooks_called.count("jef_step_end") == 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert "jef: run stopped at step 2: the test says so; checkpoint saved in" in capsys.readouterr().err


def test_given_splits_replace_the_saved_data(plugins, finished):
    from jef.components import RunContext
    from jef.data.synthetic import SyntheticOptions, build_synthetic

    other = build_synthetic(SyntheticOptions(train_size=8, test_size=4, image_size=16, num_classes=2), RunContext())
    run = load_run(finished.run_dir, plugins=plugins, splits=other)
    assert run.built.splits is other
