"""What a run does when things go wrong: non-finite losses, signals, changed pipelines, bad checkpoints."""

from __future__ import annotations

import json
import signal
import warnings

import pytest
import torch
import yaml

from jef import hookimpl
from jef.builtin.step import jef_train_step as default_train_step
from jef.run.checkpoint import CheckpointError, load_checkpoint, pipeline_differences, save_checkpoint
from jef.config import merge
from jef.run.faults import MAX_CONSECUTIVE_SKIPS, NonFiniteLossError, RunInterrupted, nonfinite_terms
from jef.plugins import load_plugins
from jef.tools.runs import load_run
from jef.testing import temporary_plugin, tiny_run

NO_KNN = {"eval": {"knn": {"enabled": False}}}


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


class Poison:
    """The default step, with the ``info_nce`` term made NaN at the chosen optimiser steps (and micro-batches).

    Keeps a copy of the parameters as each step starts.
    """

    def __init__(self, steps, micro_batch=None):
        self.steps, self.micro_batch, self.calls, self.params = set(steps), micro_batch, 0, {}

    @hookimpl(tryfirst=True)
    def jef_train_step(self, run, batch):
        self.calls += 1
        step = run.step + 1
        self.params[step] = {k: p.detach().clone() for k, p in run.unwrapped_model.named_parameters()}
        result = default_train_step(run=run, batch=batch)
        poisoned = step in self.steps and (self.micro_batch is None or self.calls % 2 == self.micro_batch % 2)
        if poisoned:
            nan = result.terms["info_nce"] * float("nan")
            result = result._replace(loss=result.loss + nan, terms={**result.terms, "info_nce": nan})
        return result


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- non-finite losses -----------------------------------------------------------------------------------------

def test_the_terms_that_went_non_finite_are_named():
    assert nonfinite_terms({"loss": float("nan"), "a": 1.0, "b": float("inf")}) == ["b"]
    assert nonfinite_terms({"loss": float("inf"), "a": 1e38, "b": 1e38}) == ["loss"]  # only the sum overflowed
    assert nonfinite_terms({"loss": 1.0, "a": 1.0}) == []


def test_a_non_finite_loss_stops_the_run_naming_step_and_term_and_keeps_the_checkpoint(plugins, tmp_path, one_thread):
    # The loss is not read at every step: step 3's NaN is found before step 4's checkpoint, the next sync point.
    pipeline = {**NO_KNN, "train": {"checkpoint_every_steps": 2, "log_every": 100}}
    poison = Poison({3})
    with temporary_plugin(plugins, poison), pytest.raises(NonFiniteLossError) as caught:
        tiny_run(pipeline, steps=6, run_dir=tmp_path, plugins=plugins)
    message = str(caught.value)
    assert message.startswith("step 3: non-finite 'info_nce' (loss=nan, ")
    assert "found at step 4" in message and "the weights were updated after step 3" in message
    assert "the last checkpoint (step 2) is kept" in message and "train.on_nonfinite: skip" in message
    assert caught.value.step == 3 and caught.value.bad == ["info_nce"]
    assert max(poison.params) == 4  # step 4 ran (it is what the weights were updated with) ...
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2  # ... but no checkpoint after step 2 was written
    assert [line["step"] for line in _metrics(tmp_path) if "loss" in line] == []  # no log step came before


def test_a_non_finite_loss_is_found_at_the_first_log_step_after_it(plugins, tmp_path, one_thread):
    with temporary_plugin(plugins, Poison({2})), pytest.raises(NonFiniteLossError) as caught:
        tiny_run({**NO_KNN, "train": {"log_every": 3}}, steps=4, run_dir=tmp_path, plugins=plugins)
    assert str(caught.value).startswith("step 2: non-finite 'info_nce'") and "found at step 3" in str(caught.value)
    assert "no checkpoint had been written yet" in str(caught.value)
    assert not (tmp_path / "checkpoint.pt").exists()  # the final checkpoint is never written with such weights


def test_the_first_of_several_non_finite_steps_is_named(plugins, one_thread):
    with temporary_plugin(plugins, Poison({2, 3})), pytest.raises(NonFiniteLossError, match="^step 2: .*found at "
                                                                                          "step 4"):
        tiny_run({**NO_KNN, "train": {"log_every": 4}}, steps=4, plugins=plugins)


def test_a_non_finite_micro_batch_is_caught_under_gradient_accumulation(plugins, one_thread):
    # Step 2's first micro-batch is NaN, its second (the one whose terms are logged) is finite.
    for on_nonfinite in ("stop", "skip"):
        poison = Poison({2}, micro_batch=1)
        pipeline = {**NO_KNN, "train": {"grad_accum": 2, "batch_size": 8, "on_nonfinite": on_nonfinite}}
        with temporary_plugin(plugins, poison), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if on_nonfinite == "stop":
                with pytest.raises(NonFiniteLossError, match="step 2: non-finite 'loss'"):
                    tiny_run(pipeline, steps=3, plugins=plugins)
            else:
                tiny_run(pipeline, steps=3, plugins=plugins)
                assert any("step 2: non-finite loss=nan" in str(w.message) for w in caught), on_nonfinite
    assert "no checkpoint had been written yet" in str(NonFiniteLossError(1, {"loss": 1.0}, ["loss"],
                                                                          "no checkpoint had been written yet"))


def test_skip_drops_the_update_of_a_non_finite_step_and_goes_on(plugins, tmp_path, one_thread):
    poison = Poison({3})
    with temporary_plugin(plugins, poison), pytest.warns(RuntimeWarning, match="step 3: non-finite info_nce=nan"):
        result = tiny_run({**NO_KNN, "train": {"on_nonfinite": "skip", "epochs": 2}}, steps=5, run_dir=tmp_path,
                          plugins=plugins)
    for name, before in poison.params[3].items():  # step 3 changed no parameter ...
        assert torch.equal(before, poison.params[4][name]), name
    assert any(not torch.equal(before, poison.params[5][name]) for name, before in poison.params[4].items())
    lines = {line["step"]: line for line in _metrics(tmp_path) if "lr" in line}
    assert "loss" not in lines[3] and lines[3]["skipped_steps"] == 1  # ... and logged no loss, only the skip
    assert "loss" in lines[4] and "loss" in lines[5]
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))


def test_skip_gives_up_when_every_step_is_non_finite(plugins, one_thread):
    steps = MAX_CONSECUTIVE_SKIPS + 2
    with temporary_plugin(plugins, Poison(range(1, steps + 1))), pytest.warns(RuntimeWarning), \
            pytest.raises(NonFiniteLossError, match=f"step {MAX_CONSECUTIVE_SKIPS}: .*{MAX_CONSECUTIVE_SKIPS} steps "
                                                    f"in a row were non-finite"):
        tiny_run({**NO_KNN, "train": {"on_nonfinite": "skip", "epochs": 4}}, steps=steps, plugins=plugins)


# -- signals ---------------------------------------------------------------------------------------------------

class SignalAt:
    """Sends the process a signal (once, or twice) during optimiser step ``step``'s step-end hook."""

    def __init__(self, step, number, times=1):
        self.step, self.number, self.times = step, number, times

    @hookimpl
    def jef_step_end(self, run, outputs, terms):
        if run.step == self.step:
            for _ in range(self.times):
                signal.raise_signal(self.number)


@pytest.mark.parametrize(("number", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_the_step_then_stops_with_how_to_resume(plugins, tmp_path, one_thread, number, status):
    before = signal.getsignal(number)
    pipeline = {**NO_KNN, "train": {"epochs": 2}}
    with temporary_plugin(plugins, SignalAt(3, number)), pytest.raises(RunInterrupted) as caught:
        tiny_run(pipeline, steps=6, run_dir=tmp_path, plugins=plugins)
    name = signal.Signals(number).name
    assert str(caught.value) == (f"received {name}: stopped after step 3; checkpoint saved in {tmp_path}; continue "
                                 f"with the same command and --resume")
    assert caught.value.exit_status == status
    assert signal.getsignal(number) is before  # the run's handler is gone
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert not (tmp_path / "evaluation.json").exists()  # a stopped job is not evaluated
    resumed = tiny_run(pipeline, steps=6, run_dir=tmp_path, plugins=plugins, resume=True)
    assert resumed.hooks_called.count("jef_train_step") == 3


def test_a_second_ctrl_c_waits_for_the_step_and_its_checkpoint(plugins, tmp_path, one_thread, capfd):
    pipeline = {**NO_KNN, "train": {"epochs": 2}}
    with temporary_plugin(plugins, SignalAt(2, signal.SIGINT, times=3)), pytest.raises(RunInterrupted) as caught:
        tiny_run(pipeline, steps=6, run_dir=tmp_path, plugins=plugins)
    assert caught.value.step == 2 and caught.value.exit_status == 130
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    err = capfd.readouterr().err
    assert "jef: received SIGINT: stopping after the current step and writing the checkpoint" in err
    assert err.count("jef: received SIGINT again: stopping: writing the checkpoint, please wait") == 1


# -- resuming with another pipeline ----------------------------------------------------------------------------

def test_resuming_with_a_changed_pipeline_is_refused_listing_the_differences(plugins, tmp_path, one_thread):
    pipeline = {**NO_KNN, "train": {"epochs": 2}}
    tiny_run(pipeline, steps=2, run_dir=tmp_path, plugins=plugins)
    saved_files = {name: (tmp_path / name).read_bytes() for name in ("pipeline.yaml", "metrics.jsonl",
                                                                      "checkpoint.pt")}
    changed = {**NO_KNN, "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.2}},
               "projector": {"dims": [32, 8]}}
    with pytest.raises(CheckpointError) as caught:
        tiny_run(changed, steps=4, run_dir=tmp_path, plugins=plugins, resume=True)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'checkpoint.pt'}: was written by a different pipeline")
    assert "  projector.dims: [32, 16] -> [32, 8]" in message and "  train.optimizer.lr: 0.1 -> 0.2" in message
    assert "--force-resume" in message
    assert {name: (tmp_path / name).read_bytes() for name in saved_files} == saved_files  # nothing touched

    # Settings that do not change what is computed may differ.
    relaxed = {"eval": {"knn": {"enabled": True}}, "train": {"epochs": 20, "max_steps": 9, "log_every": 5}}
    saved = yaml.safe_load(saved_files["pipeline.yaml"].decode())
    assert pipeline_differences(saved, merge(saved, relaxed)) == []
    assert pipeline_differences(saved, merge(saved, {"seed": 1})) == ["seed: 0 -> 1"]


def test_options_of_another_version_of_a_component_are_no_difference():
    # A run saved before the shared target lost its momentum options and before final_weight_decay existed.
    saved = {"target": {"name": "shared", "momentum": 0.996, "projector": True},
             "train": {"optimizer": {"name": "sgd", "lr": 0.1}}, "functionals": [{"name": "info_nce"}]}
    current = {"target": {"name": "shared"},
               "train": {"optimizer": {"name": "sgd", "lr": 0.1, "final_weight_decay": None}},
               "functionals": [{"name": "info_nce"}, {"name": "variance"}]}
    assert pipeline_differences(saved, current) == ["functionals.1.name: '(absent)' -> 'variance'"]
    changed = {**current, "target": {"name": "ema", "momentum": 0.99}}
    assert pipeline_differences(saved, changed) == [
        "functionals.1.name: '(absent)' -> 'variance'", "target.momentum: 0.996 -> 0.99", "target.name: 'shared' -> 'ema'",
        "target.projector: True -> '(absent)'"]


def test_a_forced_resume_goes_on_with_a_warning(plugins, tmp_path, one_thread):
    tiny_run({**NO_KNN, "train": {"epochs": 2}}, steps=2, run_dir=tmp_path, plugins=plugins)
    lower = {**NO_KNN, "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}}}
    with pytest.warns(UserWarning, match=r"resuming with a changed pipeline \(forced\):\n  train.optimizer.lr"):
        tiny_run(lower, steps=4, run_dir=tmp_path, plugins=plugins, resume="force")
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


# -- checkpoints that cannot be used ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(plugins, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished")
    tiny_run(NO_KNN, steps=1, run_dir=run_dir, plugins=plugins)
    return run_dir


class Arbitrary:
    """Stands for any object a pickle could build (and run code while doing so)."""


def test_truncated_foreign_and_unsafe_checkpoints_are_refused_naming_the_file(finished, tmp_path):
    good = (finished / "checkpoint.pt").read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], "cannot be read: truncated or corrupt"),
        "garbage": (b"not a checkpoint at all", "cannot be read: truncated or corrupt"),
        "foreign": (None, "is not a checkpoint written by jef train"),
        "pickled object": (None, "holds objects other than tensors and plain data, which jef does not unpickle"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / f"{name}.pt"
        if name == "foreign":
            torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
        elif name == "pickled object":
            torch.save({"model": Arbitrary()}, path)
        else:
            path.write_bytes(content)
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        assert str(caught.value).startswith(f"{path}: {expected}"), name


def test_a_truncated_checkpoint_in_a_run_directory_is_explained_by_the_commands(finished, tmp_path, capsys):
    import shutil

    from jef.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_run(run_dir)
    assert main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jef: error: {checkpoint}: cannot be read: truncated or corrupt")


def test_jef_train_resume_from_an_unusable_checkpoint_prints_the_error_and_touches_nothing(finished, tmp_path,
                                                                                           capsys):
    import shutil

    from jef.cli import main
    from jef.config.validate import ConfigError

    assert not issubclass(CheckpointError, ConfigError)  # the file is the problem, not the pipeline's values
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    checkpoint, pipeline_file = run_dir / "checkpoint.pt", tmp_path / "pipeline.yaml"
    shutil.copy(run_dir / "pipeline.yaml", pipeline_file)
    train = ["train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu", "--resume"]

    assert main([*train, "train.optimizer.lr=0.2"]) == 2  # another pipeline's checkpoint: the differences, listed
    err = capsys.readouterr().err
    assert err.startswith(f"jef: error: {checkpoint}: was written by a different pipeline; resuming would mix two "
                          f"runs:\n  train.optimizer.lr: 0.1 -> 0.2\n")
    assert "Traceback" not in err

    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    assert main(train) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("jef: error", "Traceback"))]
    assert len(lines) == 1 and lines[0].startswith(f"jef: error: {checkpoint}: cannot be read: truncated or corrupt")
    assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == before


def test_an_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})

    def disk_full(state, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("jef.run.checkpoint.torch.save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "step": 2})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


SLOW_PLUGIN = '''
import time
from jef import hookimpl

@hookimpl
def jef_step_end(run, outputs, terms):
    time.sleep(0.2)  # slow enough for the test to signal it mid-run
'''


def test_jef_train_stopped_by_sigterm_exits_143_saying_how_to_resume(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from jef.testing import TINY_PIPELINE

    pipeline_file, plugin_file, run_dir = tmp_path / "tiny.yaml", tmp_path / "slow.py", tmp_path / "run"
    pipeline_file.write_text(yaml.safe_dump(merge(TINY_PIPELINE, {**NO_KNN, "train": {"epochs": 50}})))
    plugin_file.write_text(SLOW_PLUGIN)
    process = subprocess.Popen([sys.executable, "-m", "jef", "train", str(pipeline_file), "--run-dir", str(run_dir),
                                "--cpu", "--plugin", str(plugin_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # a couple of steps are done
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    step = load_checkpoint(run_dir / "checkpoint.pt")["step"]
    assert step >= 2
    assert f"jef: received SIGTERM: stopped after step {step}; checkpoint saved in {run_dir}; continue with the " \
           f"same command and --resume" in err
    assert "Traceback" not in err
