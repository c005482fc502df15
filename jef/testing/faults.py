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
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from jef.testing.distributed import free_port

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
    if args["world_size"] > 1:  # tell the parent this process is there, and wait for it to kill every process
        import time
        open(os.path.join(args["markers"], f"rank{os.environ['RANK']}"), "w").close()
        time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)

class KillAtStep:
    @hookimpl(tryfirst=True)
    def jef_train_step(self, run, batch):
        if run.step + 1 == args["kill_at"]:
            die()

if args["during_checkpoint"]:
    import jef.run.checkpoint as checkpoint
    saves = {"count": 0}
    original = checkpoint.torch.save
    def save_then_die(state, handle):
        saves["count"] += 1
        if saves["count"] == args["during_checkpoint"]:  # half the bytes reach the disk, then the process dies
            original(state, handle)
            handle.flush()
            os.ftruncate(handle.fileno(), os.fstat(handle.fileno()).st_size // 2)
            die()
        original(state, handle)
    checkpoint.torch.save = save_then_die
plugins = load_plugins(extra=(("kill-at-step", KillAtStep()),))
tiny_run(args["pipeline"], steps=args["steps"], run_dir=args["run_dir"], plugins=plugins)
"""


def train_killed_at(pipeline: Mapping[str, Any], *, steps: int, run_dir: str | Path, kill_at: int | None = None,
                    during_checkpoint: int = 0, world_size: int = 1,
                    timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run ``tiny_run(pipeline, steps=steps, run_dir=run_dir)`` in a new process and SIGKILL it part-way.

    Args:
        pipeline: As for :func:`jef.testing.tiny_run` (installed plugins are loaded through their entry points).
        steps: The steps the run is meant to do.
        run_dir: The run directory; the checkpoint it holds afterwards is the last one written before the kill.
        kill_at: Kill at the start of this optimiser step (1-based), before its forward pass.
        during_checkpoint: Kill in the middle of writing the n-th checkpoint (1-based) instead: half its bytes
            are written to the temporary file, then the process dies.
        world_size: Train in this many gloo processes on the CPU, launched as ``torchrun`` launches them (one
            intra-op thread each, as :func:`jef.testing.train_in_processes`); when every process has reached
            step ``kill_at`` they are all killed with SIGKILL, as a cluster kills a job. ``kill_at`` only.
        timeout: Seconds before the process is considered hung.

    Returns:
        The finished process (rank 0's with several; ``returncode == -SIGKILL`` when it was killed, as intended).

    Raises:
        AssertionError: The process was not killed (it failed, or finished before the chosen point); the
            message holds its stderr.
    """
    if (kill_at is None) == (not during_checkpoint):
        raise ValueError("pass exactly one of kill_at (a step) and during_checkpoint (which checkpoint write)")
    if world_size > 1 and during_checkpoint:
        raise ValueError("during_checkpoint is for one process; with world_size > 1 pass kill_at")
    threads = torch.get_num_threads() if world_size == 1 else 1
    args = {"pipeline": dict(pipeline), "steps": steps, "run_dir": str(run_dir), "kill_at": kill_at or -1,
            "during_checkpoint": during_checkpoint, "threads": threads, "world_size": world_size}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if world_size == 1:
        process = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args)], capture_output=True, text=True,
                                 timeout=timeout, env=env)
        if process.returncode != -signal.SIGKILL:
            raise AssertionError(f"the run was not killed (exit status {process.returncode}):\n"
                                 f"{process.stderr[-3000:]}")
        return process
    return _kill_processes(args, env, world_size, timeout)


def _kill_processes(args: dict[str, Any], env: dict[str, str], world_size: int,
                    timeout: float) -> subprocess.CompletedProcess[str]:
    """Start ``world_size`` processes as torchrun would, wait until each has reached the step, SIGKILL them all."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="jef-kill-") as tmp:
        markers, logs = Path(tmp) / "ready", Path(tmp) / "logs"
        markers.mkdir()
        logs.mkdir()
        args = {**args, "markers": str(markers)}
        processes = []
        for rank in range(world_size):
            launched = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            with open(logs / f"rank{rank}.err", "w") as err:  # a file, not a pipe nobody reads while waiting
                processes.append(subprocess.Popen([sys.executable, "-c", _SCRIPT, json.dumps(args)], env=launched,
                                                  stdout=subprocess.DEVNULL, stderr=err, text=True))
        deadline = time.monotonic() + timeout
        try:
            while len(os.listdir(markers)) < world_size:  # every process waits at the start of step kill_at
                if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        finally:
            for process in processes:  # every process, also when one failed: never leave one behind
                if process.poll() is None:
                    process.kill()
            codes = [process.wait() for process in processes]
        errors = [(logs / f"rank{rank}.err").read_text() for rank in range(world_size)]
    failed = [(rank, code) for rank, code in enumerate(codes) if code != -signal.SIGKILL]
    if failed:
        rank, code = failed[0]
        raise AssertionError(f"the run was not killed: rank {rank} ended with exit status {code}:\n"
                             f"{errors[rank][-3000:]}")
    return subprocess.CompletedProcess(processes[0].args, codes[0], "", errors[0])
