"""Kill a tiny run the way a cluster does, to test that it resumes exactly.

:func:`train_killed_at` runs :func:`jef.testing.tiny_run` in a fresh Python
process and kills that process with SIGKILL (no handler runs, nothing is
flushed) at the start of a chosen step or in the middle of writing a
checkpoint. A plugin's test then resumes the run in its own process and
compares the weights with an uninterrupted run::

    straight = tiny_run(pipeline, steps=8, run_dir=tmp_path / "a")
    train_killed_at(pipeline, steps=8, kill_at=7, run_dir=tmp_path / "b")
    tiny_run(pipeline, steps=8, run_dir=tmp_path / "b", resume=True)
    # the checkpoints in a and b hold the same tensors, bit for bit (CPU, same seed)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["train_killed_at"]

_SCRIPT = r"""
import json, os, signal, sys
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])  # the same intra-op threads as the caller: the same rounding
from jef import hookimpl
from jef.plugins import load_plugins
from jef.testing import tiny_run

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class KillAtStep:
    @hookimpl(tryfirst=True)
    def jef_train_step(self, run, batch):
        if run.step + 1 == args["kill_at"]:
            die()

if args["during_checkpoint"]:
    import jef.checkpoint as checkpoint
    saves = {"count": 0}
    original = checkpoint.torch.save
    def save_then_die(state, path):
        saves["count"] += 1
        if saves["count"] == args["during_checkpoint"]:  # half the bytes reach the disk, then the process dies
            original(state, path)
            size = os.path.getsize(path)
            os.truncate(path, size // 2)
            die()
        original(state, path)
    checkpoint.torch.save = save_then_die
plugins = load_plugins(extra=(("kill-at-step", KillAtStep()),))
tiny_run(args["pipeline"], steps=args["steps"], run_dir=args["run_dir"], plugins=plugins)
"""


def train_killed_at(pipeline: Mapping[str, Any], *, steps: int, run_dir: str | Path, kill_at: int | None = None,
                    during_checkpoint: int = 0, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run ``tiny_run(pipeline, steps=steps, run_dir=run_dir)`` in a new process and SIGKILL it part-way.

    Args:
        pipeline: As for :func:`jef.testing.tiny_run` (installed plugins are loaded through their entry points).
        steps: The steps the run is meant to do.
        run_dir: The run directory; the checkpoint it holds afterwards is the last one written before the kill.
        kill_at: Kill at the start of this optimiser step (1-based), before its forward pass.
        during_checkpoint: Kill in the middle of writing the n-th checkpoint (1-based) instead: half its bytes
            are written to the temporary file, then the process dies.
        timeout: Seconds before the process is considered hung.

    Returns:
        The finished process (``returncode == -SIGKILL`` when it was killed, as intended).

    Raises:
        AssertionError: The process was not killed (it failed, or finished before the chosen point); the
            message holds its stderr.
    """
    if (kill_at is None) == (not during_checkpoint):
        raise ValueError("pass exactly one of kill_at (a step) and during_checkpoint (which checkpoint write)")
    args = {"pipeline": dict(pipeline), "steps": steps, "run_dir": str(run_dir), "kill_at": kill_at or -1,
            "during_checkpoint": during_checkpoint, "threads": torch.get_num_threads()}
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args)], capture_output=True, text=True,
                             timeout=timeout, env=env)
    if process.returncode != -signal.SIGKILL:
        raise AssertionError(f"the run was not killed (exit status {process.returncode}):\n{process.stderr[-3000:]}")
    return process
