"""DINO in real training runs: the frozen last layer, exact resume, two DDP processes, bf16, learning."""

from __future__ import annotations

import json
import math

import pytest
import torch

from jef import hookimpl
from jef.run.checkpoint import load_checkpoint
from jef.config import merge
from jef.testing import InterruptAt, assert_learns, temporary_plugin, tiny_run, train_in_processes

#: The ResNet recipe's structure (multi-crop, dino_head, EMA teacher, centring) shrunk for runs of a few steps: 64 images,
#: batches of 16 (4 steps per epoch), 2 local views of 8 pixels, no blur or solarisation (slow on a CPU).
TINY = {
    "method": "dino_resnet",
    "augmenter": {"n_local": 2, "local_size": 8, "blur_p": 0.0, "solarize_p": 0.0},
    "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8},
    "train": {"epochs": 2},
    "eval": {"knn": {"enabled": False}},
}


def _last_layer(module):
    return module.last_layer.parametrizations.weight.original1.detach().clone()


class Recorder:
    """Copies the student's head at the start of the run and at the end of each epoch."""

    def __init__(self):
        self.seen = {}

    def _record(self, run, when):
        model = run.unwrapped_model
        self.seen[when] = {"last": _last_layer(model.projector), "mlp": model.projector.mlp[0].weight.detach().clone(),
                           "teacher_last": _last_layer(model.target_projector)}

    @hookimpl
    def jef_run_start(self, run):
        self._record(run, "start")

    @hookimpl
    def jef_epoch_end(self, run, epoch, metrics):
        self._record(run, f"epoch {epoch}")


#: Warm-up of the teacher temperature over both epochs and a frozen first epoch: a resumed run that restored the
#: wrong epoch would use the wrong temperature or freeze the last layer again.
RESUMABLE = merge(TINY, {"functionals": [{"name": "centering", "warmup_teacher_temperature": 0.02,
                                          "warmup_teacher_temperature_epochs": 2}]})


@pytest.fixture(scope="module")
def straight(plugins, tmp_path_factory):
    """Two epochs of 4 steps, uninterrupted, with the student's head recorded; shared by two tests (time)."""
    recorder, run_dir = Recorder(), tmp_path_factory.mktemp("straight")
    with temporary_plugin(plugins, recorder, name="recorder"):
        tiny_run(RESUMABLE, steps=8, run_dir=run_dir, plugins=plugins)
    return recorder.seen, run_dir


def test_the_last_layer_is_frozen_during_the_first_epoch_only(straight):
    seen, _ = straight
    start, first, second = seen["start"], seen["epoch 0"], seen["epoch 1"]
    assert torch.equal(first["last"], start["last"])
    # The teacher's EMA of an unchanged layer, m·x + (1 − m)·x, is x up to rounding.
    torch.testing.assert_close(first["teacher_last"], start["teacher_last"], rtol=1e-6, atol=1e-7)
    assert not torch.equal(first["mlp"], start["mlp"])  # the rest of the head trained meanwhile
    assert not torch.equal(second["last"], first["last"])
    assert not torch.equal(second["teacher_last"], first["teacher_last"])  # the teacher follows the student


def test_the_teacher_temperature_in_use_is_logged_per_epoch(straight):
    _, run_dir = straight
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {line["step"]: line["centering/teacher_temperature"] for line in lines
              if "centering/teacher_temperature" in line}
    assert logged == {1: 0.02, 2: 0.02, 3: 0.02, 4: 0.02, 5: 0.04, 6: 0.04, 7: 0.04, 8: 0.04}  # linspace(.02, .04, 2)


def test_a_resumed_run_ends_bit_exactly_like_an_uninterrupted_one(tmp_path, plugins, straight):
    with temporary_plugin(plugins, InterruptAt(6), name="stopper"), pytest.raises(KeyboardInterrupt):
        tiny_run(RESUMABLE, steps=8, run_dir=tmp_path, plugins=plugins)
    interrupted = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (interrupted["step"], interrupted["epoch"]) == (6, 1)
    tiny_run(RESUMABLE, steps=8, run_dir=tmp_path, plugins=plugins, resume=True)
    expected = load_checkpoint(straight[1] / "checkpoint.pt")["model"]
    resumed = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    centre = "objective.functionals.0.center"
    assert centre in expected and expected[centre].abs().sum() > 0
    assert "target_projector.last_layer.parametrizations.weight.original1" in expected
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def test_two_ddp_processes_train_with_the_last_layer_frozen(tmp_path):
    # Two processes of 16 images: 2 steps per epoch, so step 3 is in epoch 1, still frozen.
    metrics = train_in_processes(merge(TINY, {"projector": {"freeze_last_layer_epochs": 2}}), steps=3,
                                 run_dir=tmp_path)
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert metrics[0]["loss"] == metrics[1]["loss"]  # the logged loss is averaged over processes
    model = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    # The student's last layer never moved, so the teacher's EMA of it did not either.
    key = "last_layer.parametrizations.weight.original1"
    torch.testing.assert_close(model[f"projector.{key}"], model[f"target_projector.{key}"], rtol=1e-6, atol=1e-7)
    assert model["objective.functionals.0.center"].abs().sum() > 0


def test_a_bf16_run_has_finite_losses(plugins):
    result = tiny_run(merge(TINY, {"train": {"precision": "bf16"}}), steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"]) and math.isfinite(result.metrics["energy/cross_entropy"])


#: Multi-crop on the four greyscale texture classes (jef.testing.LEARNING_SETTINGS, 120 steps): 4 local views of 8
#: pixels, no blur or solarisation, a narrow two-layer head with BatchNorm (the paper's use_bn_in_head option), a
#: faster teacher (0.99 → 1) and a one-epoch warm-up (8 steps) instead of ten. Measured while tuning: with seeds 0, 1,
#: 2 the trained backbone beats the random one by 0.117, 0.234, 0.129. Without the BatchNorm (three layers, 2 local
#: views) the collapse monitor warned at step 10-15 (the logits' spread, healthy at initialisation, shrank) and the
#: teacher's entropy ended at 0.95-0.97 of log K.
LEARNABLE = {
    "augmenter": {"n_local": 4, "local_size": 8, "scale": [0.3, 1.0], "local_scale": [0.1, 0.3], "blur_p": 0.0,
                  "solarize_p": 0.0},
    "projector": {"name": "dino_head", "out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32, "n_layers": 2,
                  "batch_norm": True},
    "target": {"momentum": 0.99},
    "train": {"scheduler": {"warmup_epochs": 1}},
}


def test_dino_learns_with_multi_crop_and_does_not_collapse(plugins):
    result = assert_learns(merge({"method": "dino_resnet"}, LEARNABLE), plugins=plugins)
    entropy = result.metrics["collapse/target_entropy"]  # the teacher's, as a fraction of log K
    assert 0.0 < entropy < 0.99
