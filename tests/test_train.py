"""The training loop end to end on tiny data: hooks, run directory, checkpoints, resume, precision."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from jef import hookimpl
from jef.components import StepResult
from jef.run.checkpoint import load_checkpoint
from jef.plugins import load_plugins
from jef.testing import InterruptAt, tiny_run

RUN_HOOKS = ["jef_run_start", "jef_train_step", "jef_after_backward", "jef_step_end", "jef_epoch_end",
             "jef_run_end"]


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def test_tiny_run_calls_every_run_hook_and_writes_the_run_directory(plugins):
    result = tiny_run({"train": {"epochs": 1}}, steps=4, plugins=plugins)
    for hook in RUN_HOOKS:
        assert hook in result.hooks_called, hook
    assert result.hooks_called.count("jef_train_step") == 4
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"pipeline.yaml", "plugins.json", "metrics.jsonl", "checkpoint.pt"} <= files
    saved = yaml.safe_load((result.run_dir / "pipeline.yaml").read_text())
    assert saved["energy"]["name"] == "scaled_cosine" and saved["train"]["max_steps"] == 4
    listing = json.loads((result.run_dir / "plugins.json").read_text())
    assert any(row["name"] == "builtin.energies" and row["version"] for row in listing)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines if "loss" in line]
    assert steps == [1, 2, 3, 4]
    assert all(math.isfinite(line["loss"]) for line in lines if "loss" in line)
    assert lines[0] == {"step": 0, "time": lines[0]["time"], "run/world_size": 1.0, "run/device": "cpu",
                        "run/precision": "no", "run/launcher": "none"}  # where it ran, before any step
    assert {"energy/scaled_cosine", "info_nce", "lr", "images_per_s"} <= set(lines[1])
    assert 0.0 <= result.metrics["knn_top1"] <= 1.0


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def test_interrupted_run_saves_and_resume_matches_an_uninterrupted_run(tmp_path, plugins):
    pipeline = {"train": {"epochs": 2}}  # 64 images / 16 = 4 steps per epoch; stop mid-epoch 2
    tiny_run(pipeline, steps=8, run_dir=tmp_path / "straight", plugins=plugins)

    stopper = InterruptAt(6)
    plugins.manager.register(stopper, name="stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            tiny_run(pipeline, steps=8, run_dir=tmp_path / "resumed", plugins=plugins)
    finally:
        plugins.manager.unregister(name="stopper")
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (6, 1, 2)

    resumed = tiny_run(pipeline, steps=8, run_dir=tmp_path / "resumed", plugins=plugins, resume=True)
    assert resumed.hooks_called.count("jef_train_step") == 2  # continued from step 6, not from 0
    lines = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    # Step 6 was interrupted inside jef_step_end, before its metrics line; the weights of step 6 were saved.
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4, 5, 7, 8]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit-exact on CPU with the same seed


def test_resume_without_checkpoint_says_what_to_do(tmp_path, plugins):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        tiny_run(steps=1, run_dir=tmp_path, plugins=plugins, resume=True)


def test_gradient_accumulation_counts_optimizer_steps(plugins):
    result = tiny_run({"train": {"grad_accum": 2, "batch_size": 8}}, steps=2, plugins=plugins)
    assert result.hooks_called.count("jef_train_step") == 4
    assert result.hooks_called.count("jef_step_end") == 2


def test_bf16_autocast_on_cpu_gives_finite_losses(plugins):
    result = tiny_run({"train": {"precision": "bf16"}}, steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])


def test_fp16_on_cpu_is_refused_with_advice(plugins):
    with pytest.raises(ValueError, match="fp16 needs a GPU; use bf16 on CPU"):
        tiny_run({"train": {"precision": "fp16"}}, steps=1, plugins=plugins)


def test_too_little_data_for_one_batch(plugins):
    with pytest.raises(ValueError, match="fewer than one step's 128; lower train.batch_size"):
        tiny_run({"train": {"batch_size": 128}}, steps=1, plugins=plugins)


def test_a_plugin_train_step_replaces_the_default(plugins):
    class ConstantStep:
        @hookimpl
        def jef_train_step(self, run, batch):
            loss = sum(p.sum() for p in run.model.parameters()) * 0.0 + 1.5
            return StepResult(loss, {}, None)

    plugins.manager.register(ConstantStep(), name="constant")
    try:
        result = tiny_run(steps=2, plugins=plugins)
    finally:
        plugins.manager.unregister(name="constant")
    assert result.metrics["loss"] == pytest.approx(1.5)


def test_a_train_step_returning_a_dict_still_trains_with_a_deprecation_warning(plugins):
    class DictStep:
        @hookimpl
        def jef_train_step(self, run, batch):
            loss = sum(p.sum() for p in run.model.parameters()) * 0.0 + 2.5
            return {"loss": loss, "terms": {"constant": loss.detach()}, "outputs": None}

    plugins.manager.register(DictStep(), name="dict_step")
    try:
        with pytest.warns(DeprecationWarning, match=r"jef_train_step returned a dict; return "
                                                    r"jef.components.StepResult\(loss, terms, outputs\)"):
            result = tiny_run(steps=2, plugins=plugins)
    finally:
        plugins.manager.unregister(name="dict_step")
    assert result.metrics["loss"] == pytest.approx(2.5) and result.metrics["constant"] == pytest.approx(2.5)


def test_a_train_step_returning_something_else_is_an_error_naming_the_hook(plugins):
    class TupleStep:
        @hookimpl
        def jef_train_step(self, run, batch):
            return (torch.tensor(1.0), {})

    plugins.manager.register(TupleStep(), name="tuple_step")
    try:
        with pytest.raises(TypeError, match="jef_train_step returned tuple; expected a jef.components.StepResult"):
            tiny_run(steps=1, plugins=plugins)
    finally:
        plugins.manager.unregister(name="tuple_step")


def test_ema_and_stopgrad_targets_train(plugins):
    ema = tiny_run({"target": {"name": "ema", "momentum": 0.9}, "predictor": {"name": "mlp", "dims": [16, 16]}},
                   steps=2, plugins=plugins)
    assert math.isfinite(ema.metrics["loss"])
    lines = [json.loads(line) for line in (ema.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("target/momentum" in line for line in lines)
    stopgrad = tiny_run({"target": {"name": "stopgrad"}}, steps=2, plugins=plugins)
    assert math.isfinite(stopgrad.metrics["loss"])


def test_tensorboard_events_are_written(plugins):
    result = tiny_run({"train": {"tensorboard": True}}, steps=2, plugins=plugins)
    events = list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_collapse_monitor_is_on_by_default_and_logged(plugins):
    result = tiny_run({"train": {"log_every": 10, "epochs": 3}}, steps=10, plugins=plugins)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("collapse/std" in line and "collapse/rank" in line for line in lines)
    assert "collapse/rank" in result.metrics


def _lrs(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["lr"] for line in lines if "lr" in line]


def test_lr_schedule_counts_optimizer_steps_under_accumulation(plugins):
    # lr 0.1 × (16 × 2 accumulated / 256): a cosine over 3 steps leaves 0.75, 0.25, then 0 of the peak.
    result = tiny_run({"train": {"grad_accum": 2, "batch_size": 16, "epochs": 3}}, steps=3, plugins=plugins)
    peak = 0.1 * 32 / 256
    assert _lrs(result.run_dir) == pytest.approx([0.75 * peak, 0.25 * peak, 0.0], abs=1e-12)


def test_two_processes_train_with_one_summary_and_the_same_schedule(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from jef.testing import TINY_PIPELINE

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not found beside the interpreter")
    pipeline = {**TINY_PIPELINE, "data": {**TINY_PIPELINE["data"], "train_size": 128},
                "train": {**TINY_PIPELINE["train"], "max_steps": 3}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "jef", "train", str(path),
                             "--run-dir", str(tmp_path / "run"), "--cpu"],
                            capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("final metrics:") == 1  # only rank 0 prints
    peak = 0.1 * 32 / 256  # global batch 2 × 16
    assert _lrs(tmp_path / "run") == pytest.approx([0.75 * peak, 0.25 * peak, 0.0], abs=1e-12)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3
