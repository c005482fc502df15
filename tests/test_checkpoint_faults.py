"""Checkpoints that must not be written: non-finite weights or buffers, a full disk (the previous one is kept)."""

from __future__ import annotations

import errno
import shutil
import subprocess

import pytest
import torch
import yaml

from jef import hookimpl
from jef.run.checkpoint import CheckpointWriteError, load_checkpoint
from jef.config import merge
from jef.run.faults import NonFiniteStateError
from jef.plugins import load_plugins
from jef.testing import TINY_PIPELINE, temporary_plugin, tiny_run

NO_KNN = {"eval": {"knn": {"enabled": False}}}


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def _buffers(run):
    return {name: b.detach().clone() for name, b in run.unwrapped_model.named_buffers()}


class Overflow:
    """At optimiser step ``step``, after the (finite) loss's backward pass, one gradient becomes infinite: the
    update overflows that parameter to inf while the step's loss was finite, as a huge learning rate does."""

    def __init__(self, step):
        self.step, self.name = step, None

    @hookimpl
    def jef_after_backward(self, run):
        if run.step + 1 == self.step:
            self.name, weight = next((name, p) for name, p in run.unwrapped_model.named_parameters()
                                     if name.startswith("projector.") and p.dim() == 2)
            weight.grad[0, 0] = float("inf")


def test_a_checkpoint_is_never_written_with_non_finite_weights(plugins, tmp_path, one_thread):
    pipeline = {**NO_KNN, "train": {"checkpoint_every_steps": 2, "log_every": 100}}
    overflow = Overflow(4)
    with temporary_plugin(plugins, overflow), pytest.raises(NonFiniteStateError) as caught:
        tiny_run(pipeline, steps=6, run_dir=tmp_path, plugins=plugins)
    message = str(caught.value)
    assert message.startswith(f"step 4: the model holds non-finite values in parameter {overflow.name!r}, although "
                              f"the loss was finite")
    assert "the checkpoint of step 4 was not written and the last checkpoint (step 2) is kept" in message
    assert isinstance(caught.value, FloatingPointError)  # jef train prints it as one line, exit status 1
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 2 and all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())


class NanImages:
    """Step ``step``'s views reach the backbone as NaN: its forward pass writes NaN into BatchNorm's running
    statistics, and its loss is NaN. Records the model's buffers as each step starts."""

    def __init__(self, step):
        self.step, self.buffers, self.handle = step, {}, None

    @hookimpl(tryfirst=True)
    def jef_train_step(self, run, batch):
        self.buffers[run.step + 1] = _buffers(run)
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if run.step + 1 == self.step:
            self.handle = run.unwrapped_model.backbone.register_forward_pre_hook(
                lambda module, args: (args[0] * float("nan"), *args[1:]))


def test_a_skipped_step_leaves_the_batchnorm_statistics_as_they_were(plugins, tmp_path, one_thread):
    nan = NanImages(3)
    pipeline = {**NO_KNN, "train": {"on_nonfinite": "skip", "epochs": 2}}
    with temporary_plugin(plugins, nan), pytest.warns(RuntimeWarning, match="step 3: non-finite"):
        tiny_run(pipeline, steps=5, run_dir=tmp_path, plugins=plugins)
    assert any("running_mean" in name for name in nan.buffers[3])
    for name, before in nan.buffers[3].items():  # step 3 was skipped: no buffer changed, none went NaN
        assert torch.equal(before, nan.buffers[4][name]), name
    assert any(not torch.equal(before, nan.buffers[5][name]) for name, before in nan.buffers[4].items())
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 5 and all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())


# -- a full disk -------------------------------------------------------------------------------------------------

def _fill_second_write(monkeypatch):
    """torch.save writes part of the second checkpoint, then the file system says ENOSPC (as a full disk does)."""
    original, calls = torch.save, []

    def save(state, handle):
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"PK\x03\x04 a part of the checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        original(state, handle)

    monkeypatch.setattr("jef.run.checkpoint.torch.save", save)


def test_a_full_disk_is_one_error_keeping_the_previous_checkpoint(plugins, tmp_path, monkeypatch, one_thread):
    _fill_second_write(monkeypatch)
    with pytest.raises(CheckpointWriteError) as caught:
        tiny_run({**NO_KNN, "train": {"checkpoint_every_steps": 1}}, steps=3, run_dir=tmp_path, plugins=plugins)
    message = str(caught.value)
    assert message.startswith("no space left on ")
    assert f": {tmp_path / 'checkpoint.pt'}; the previous checkpoint (step 1) is intact; the checkpoint of step 2 " \
           f"was not written" in message
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == errno.ENOSPC
    assert (caught.value.step, caught.value.previous_step) == (2, 1)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1
    assert not list(tmp_path.glob(".checkpoint.pt.*.tmp"))


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 400 KiB file system: one checkpoint of the tiny run (244 KiB) fits, a second beside it does not.

    Mounting needs root (CAP_SYS_ADMIN); elsewhere the test is skipped and the ENOSPC test above still runs.
    """
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:  # lazily if a failed test's traceback still holds a file open in it
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def test_jef_train_on_a_full_disk_says_so_in_one_line(tiny_tmpfs, tmp_path, capsys):
    from jef.cli import main

    pipeline_file, run_dir = tmp_path / "tiny.yaml", tiny_tmpfs / "run"
    pipeline_file.write_text(yaml.safe_dump(merge(TINY_PIPELINE, {**NO_KNN, "train": {"checkpoint_every_steps": 1,
                                                                                     "max_steps": 3}})))
    assert main(["train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("jef: error:")]
    assert lines == [f"jef: error: no space left on tmpfs (mounted at {tiny_tmpfs}): {run_dir / 'checkpoint.pt'}; "
                     f"the previous checkpoint (step 1) is intact; the checkpoint of step 2 was not written: free "
                     f"some space there, then continue with the same command and --resume"], err
    assert "Traceback" not in err and "inline_container" not in err
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 1
