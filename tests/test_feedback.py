"""What a run shows while and after it trains: the bar, the evaluation bars, the summary, the demo's table."""

from __future__ import annotations

import re

import pytest
import torch

from jef.cli import main
from jef.evaluate.knn import knn_evaluate
from jef.evaluate.progress import progress_shown
from jef.evaluate.results import baseline_table
from jef.run.progress import TrainProgress, format_duration, next_commands
from jef.testing import tiny_run


def test_durations_read_as_people_write_them():
    assert [format_duration(s) for s in (3.21, 42.4, 185, 7384)] == ["3.2s", "42s", "3m 05s", "2h 03m"]


def test_the_bar_shows_epochs_from_one_images_per_second_and_the_last_logged_loss(capsys):
    progress = TrainProgress("simclr", total=8, done=0, steps_per_epoch=2, enabled=True)
    progress.step(epoch=0, images=64, epoch_rate=1234.0)
    assert "loss" not in progress.bar.postfix  # nothing logged yet: no stale or made-up loss
    progress.logged({"loss": 2.5})
    for epoch in (0, 1, 1, 2, 2, 3, 3):
        progress.step(epoch=epoch, images=64, epoch_rate=1234.0)
    assert progress.bar.postfix == "epoch 4/4, 1,234 img/s, loss 2.5000"
    assert progress.bar.n == 8 and progress.images == 8 * 64
    progress.close()


def test_the_summary_names_the_run_directory_time_throughput_and_next_commands(tmp_path):
    progress = TrainProgress("byol", total=4, done=1, steps_per_epoch=2, enabled=False)
    for _ in range(3):
        progress.step(epoch=0, images=32, epoch_rate=1.0)
    progress.close()
    text = progress.summary(4, tmp_path)
    first = text.splitlines()[0]
    assert re.fullmatch(r"jef: trained byol for 3 steps \(resumed at step 1\) in [\d.]+s \([\d,]+ images/s\)", first)
    assert f"run directory: {tmp_path}" in text
    for command in next_commands(tmp_path):
        assert f"  {command}" in text
    assert [c.split()[1] for c in next_commands(tmp_path)] == ["report", "eval", "export"]


def test_a_run_with_progress_shows_every_stage_and_ends_with_the_summary(tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny_run({"train": {"progress": True, "epochs": 2, "log_every": 1},
              "eval": {"knn": {"baseline": True}, "linear": {"enabled": True, "epochs": 2},
                       "finetune": {"enabled": True, "epochs": 1}}}, steps=8, run_dir=run_dir)
    err = capsys.readouterr().err
    for shown in ("train pipeline", "epoch 1/2", "epoch 2/2", "img/s", "loss ", "kNN of the random backbone",
                  "kNN and linear probe: train features", "linear probe", "fine-tuning",
                  "jef: trained pipeline for 8 steps", f"run directory: {run_dir}", f"jef report {run_dir}"):
        assert shown in err, shown
    assert err.rstrip().endswith("# the backbone, loadable without jef")  # the summary is the last thing said


def test_a_run_without_progress_says_nothing_on_stderr(tmp_path, capsys):
    tiny_run({"eval": {"linear": {"enabled": True, "epochs": 2}}}, run_dir=tmp_path / "run")
    err = capsys.readouterr().err
    assert "train pipeline" not in err and "linear probe" not in err and "jef: trained" not in err


@pytest.mark.parametrize("shown", [True, False, None])
def test_evaluation_bars_follow_the_run_or_the_terminal(shown, capsys):
    from jef.components import RunContext
    from jef.data.synthetic import SyntheticOptions, build_synthetic

    splits = build_synthetic(SyntheticOptions(train_size=24, test_size=12, image_size=8, num_classes=2), RunContext())
    with progress_shown(shown):
        knn_evaluate(torch.nn.Flatten(), splits, k=3, description="probe me")
    err = capsys.readouterr().err
    # None: tqdm shows bars on a terminal only, and pytest's captured stderr is none.
    assert ("probe me: train features" in err) is bool(shown)


def test_the_baseline_table_puts_the_trained_backbone_against_random_init_and_pixels():
    lines = baseline_table({"knn_top1": 0.7285, "knn_top1_random": 0.6835, "knn_top1_pixels": 0.7605,
                            "linear_top1": 0.8123, "linear_top1_pixels": 0.771})
    assert [line.split() for line in lines] == [
        ["kNN", "top-1", "linear", "top-1"],
        ["trained", "backbone", "0.7285", "0.8123"],
        ["random-init", "backbone", "0.6835", "-"],
        ["raw", "pixels", "0.7605", "0.7710"]]
    assert baseline_table({"loss": 1.0}) == []


def test_the_demo_ends_with_the_table_and_the_run_directory(tmp_path, capsys):
    """`make demo`'s pipeline, shortened (two steps, 1,000 images, two probe epochs): the table is printed last."""
    run_dir = tmp_path / "demo"
    status = main(["train", "examples/demo.yaml", "--run-dir", str(run_dir), "train.max_steps=2",
                   "train.progress=false", "train.batch_size=64", "eval.linear.epochs=2",
                   "data.subset_train=1000", "data.subset_test=500", "eval.knn.k=20"])
    assert status == 0
    out = capsys.readouterr().out.rstrip().splitlines()
    assert out[-1] == f"run directory: {run_dir}"
    table = out[-5:-1]
    assert out[-6] == "test accuracy of frozen features (top-1):"
    assert table[0].split() == ["kNN", "top-1", "linear", "top-1"]
    for line, label in zip(table[1:], ("trained backbone", "random-init backbone", "raw pixels"), strict=True):
        assert line.strip().startswith(label)
        values = [float(v) for v in line.split()[-2:]]
        assert all(0.1 < v <= 1.0 for v in values), line  # ten classes: every number above chance
    evaluation = (run_dir / "evaluation.json").read_text()
    assert "knn_top1_pixels" in evaluation and "linear_top1_random" in evaluation


def test_the_baselines_are_the_same_protocols_on_pixels_and_on_the_initial_backbone(tmp_path):
    import json

    from jef.plugins import load_plugins
    from jef.run.reopen import load_run
    from jef.testing import temporary_plugin
    from jef.testing.distributed import RunRecorder

    run_dir, plugins, recorder = tmp_path / "run", load_plugins(), RunRecorder()
    with temporary_plugin(plugins, recorder, name="recorder"):
        result = tiny_run({"eval": {"baselines": ["random", "pixels"], "linear": {"enabled": True, "epochs": 2}}},
                          steps=2, run_dir=run_dir, plugins=plugins)
    run = load_run(run_dir, plugins=plugins)
    knn, splits, view = run.pipeline.eval.knn, run.built.splits, run.built.augmenter.eval_view
    pixels = knn_evaluate(torch.nn.Flatten(), splits, view, k=knn.k, temperature=knn.temperature)
    assert result.metrics["knn_top1_pixels"] == pytest.approx(pixels)
    run.built.model.load_state_dict(recorder.record["initial"])  # the model before its first step
    initial = knn_evaluate(run.backbone, splits, view, k=knn.k, temperature=knn.temperature)
    assert result.metrics["knn_top1_random"] == pytest.approx(initial)
    saved = json.loads((run_dir / "evaluation.json").read_text())
    assert {"knn_top1_random", "linear_top1_random", "knn_top1_pixels", "linear_top5_pixels"} <= set(saved)
    assert saved["linear_top1_pixels"]["protocol"].startswith("baseline, the eval view's pixels")
