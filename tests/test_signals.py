"""Signals at bad moments, sent to real ``jef train`` processes: a second Ctrl-C, SIGTERM to one rank of torchrun.

The timing is made deterministic by a plugin that signals its own process from inside a hook or from the
checkpoint's write path (the handler runs at the next bytecode), rather than by sleeping.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

from jef.run.checkpoint import load_checkpoint
from jef.config import merge
from jef.plugins import load_plugins
from jef.testing import TINY_PIPELINE, free_port, tiny_run

#: 4 steps an epoch; the stop comes at step 3, mid-epoch, after the checkpoint of no step.
PIPELINE = {"eval": {"knn": {"enabled": False}}, "train": {"epochs": 2}}
STEPS = 6

SECOND_CTRL_C = '''
import os, signal
import jef.run.checkpoint as checkpoint
from jef import hookimpl

MODE, STEP, sent = {mode!r}, 3, []


def ctrl_c():
    sent.append(signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode, here


@hookimpl(tryfirst=True)
def jef_train_step(run, batch):
    if MODE == "step" and run.step + 1 == STEP and not sent:
        ctrl_c()  # the first, before the step's forward pass


@hookimpl
def jef_after_backward(run):
    if MODE == "step" and run.step + 1 == STEP and len(sent) == 1:
        ctrl_c()  # the second, a moment later: the step's augmentations and forward pass are done


@hookimpl
def jef_step_end(run, outputs, terms):
    if MODE == "write" and run.step == STEP and not sent:
        ctrl_c()


original = checkpoint.torch.save


def save(state, target):
    if MODE == "write" and len(sent) == 1:
        ctrl_c()  # the second, while the stop's checkpoint is being written
    original(state, target)


checkpoint.torch.save = save
'''


def _files(tmp_path, plugin_source, **overrides):
    pipeline_file, plugin_file = tmp_path / "tiny.yaml", tmp_path / "signals.py"
    pipeline_file.write_text(yaml.safe_dump(merge(TINY_PIPELINE, merge(PIPELINE, {"train": {"max_steps": STEPS},
                                                                                  **overrides}))))
    plugin_file.write_text(plugin_source)
    return tmp_path / "run", pipeline_file, plugin_file


def _jef_train(tmp_path, plugin_source, *, launcher=(), run_dir, **overrides):
    _, pipeline_file, plugin_file = _files(tmp_path, plugin_source, **overrides)
    command = [*launcher] if launcher else [sys.executable]
    return subprocess.run([*command, "-m", "jef", "train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu",
                           "--plugin", str(plugin_file)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("moment", ["step", "write"])
def test_a_second_ctrl_c_at_a_bad_moment_waits_for_a_whole_step_checkpoint(moment, tmp_path, one_thread):
    # "step": two Ctrl-C within one step (the second after its augmentations drew their random numbers);
    # "write": the second while the stop's checkpoint is written. Either way the run finishes step 3, writes
    # its checkpoint whole and exits 130 with one line, and the resumed run is exactly an uninterrupted one.
    plugins = load_plugins()
    straight = tiny_run(PIPELINE, steps=STEPS, run_dir=tmp_path / "straight", plugins=plugins).run_dir
    run_dir = tmp_path / "stopped"
    process = _jef_train(tmp_path, SECOND_CTRL_C.format(mode=moment), run_dir=run_dir)
    assert process.returncode == 130, process.stderr[-3000:]
    assert "Traceback" not in process.stderr
    assert process.stderr.count("jef: received SIGINT again: stopping: writing the checkpoint, please wait") == 1
    assert f"jef: received SIGINT: stopped after step 3; checkpoint saved in {run_dir}" in process.stderr
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 3
    assert not list(run_dir.glob(".checkpoint.pt.*.tmp"))

    tiny_run(PIPELINE, steps=STEPS, run_dir=run_dir, plugins=plugins, resume=True)
    expected, resumed = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(run_dir / "checkpoint.pt")
    assert resumed["step"] == expected["step"] == STEPS
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert torch.equal(expected["rng"]["augment"], resumed["rng"]["augment"])


SIGTERM_TO_RANK_1 = '''
import os, signal
from jef import hookimpl


@hookimpl
def jef_step_end(run, outputs, terms):
    if run.step == 1 and run.ctx.rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` of one worker
'''


def _assert_stopped_without_evaluating(run_dir):
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 2  # the sync point where the stop was shared
    assert not (run_dir / "evaluation.json").exists()
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [key for line in lines for key in line if key.startswith("final/")]


def test_sigterm_to_one_rank_stops_every_rank_with_143_and_one_message(tmp_path):
    # Shared at the next sync point (train.log_every: 2, so step 2): every rank stops after step 2, exits 143,
    # and nothing evaluates the stopped run. The kNN evaluation is on, as it would run after a finished run.
    # The ranks are started as torchrun starts them, so that each one's exit status is its own: torchrun itself
    # stops the remaining workers once one has exited, and whether it does so before they exit on their own is a
    # matter of milliseconds (the next test runs torchrun and asserts only what does not depend on them).
    run_dir, pipeline_file, plugin_file = _files(tmp_path, SIGTERM_TO_RANK_1, eval={"knn": {"enabled": True}},
                                                 train={"log_every": 2})
    port = free_port()
    processes = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "jef", "train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu",
             "--plugin", str(plugin_file)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [143, 143], errors
    message = "jef: received SIGTERM: stopped after step 2; checkpoint saved in"
    assert [err.count(message) for err in errors] == [1, 0], errors  # printed once, by rank 0
    assert not [err for err in errors if "Traceback" in err], errors
    _assert_stopped_without_evaluating(run_dir)


def test_sigterm_to_one_rank_under_torchrun_stops_the_run_without_evaluating(tmp_path):
    run_dir = tmp_path / "run"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    process = _jef_train(tmp_path, SIGTERM_TO_RANK_1, launcher=launcher, run_dir=run_dir,
                         eval={"knn": {"enabled": True}}, train={"log_every": 2})
    err = process.stderr
    assert process.returncode != 0  # torchrun reports its workers' 143 as a failure (ChildFailedError), exit 1
    # The first worker to exit is torchrun's root cause: jef's 143. torchrun then stops the others with SIGTERM;
    # one that has not exited on its own by then (milliseconds, under load) is listed as killed by it (-15).
    root_cause = re.search(r"Root Cause \(first observed failure\):[\s\S]*?exitcode\s*: (-?\d+)", err)
    assert root_cause and root_cause.group(1) == "143", err[-4000:]
    reported = re.findall(r"rank\s*: (\d) \(local_rank: \d\)\s+exitcode\s*: (-?\d+)", err)
    assert {code for _, code in reported} <= {"143", "-15"}, err[-4000:]
    assert err.count("jef: received SIGTERM: stopped after step 2; checkpoint saved in") <= 1, err[-4000:]
    assert "/jef/" not in "".join(line for line in err.splitlines() if line.lstrip().startswith("File "))
    _assert_stopped_without_evaluating(run_dir)
