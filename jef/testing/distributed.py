"""Run a function in several gloo processes on the CPU and collect what each returned."""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, port: int, outdir: str, job: Callable[[int], Any]) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)  # the processes share the machine's cores
    tdist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(job(rank), os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        if tdist.is_initialized():  # Accelerator.end_training() may have destroyed it already
            tdist.destroy_process_group()


def run_in_processes(job: Callable[[int], Any], world_size: int = 2) -> list[Any]:
    """Call ``job(rank)`` in ``world_size`` gloo processes; return the results in rank order.

    ``job`` must be picklable (a module-level function or a ``functools.partial``
    of one), and its results tensors, numbers or containers of them: they come
    back through ``torch.save``. A script calling this needs an
    ``if __name__ == "__main__":`` guard, as every ``spawn`` does.
    """
    with socket.socket() as sock:  # a free port on the loopback interface
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="jef-processes-") as outdir:
        mp.spawn(_worker, args=(world_size, port, outdir, job), nprocs=world_size, join=True)
        return [torch.load(Path(outdir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def _train_job(rank: int, pipeline: dict[str, Any], steps: int, run_dir: str, world_size: int) -> dict[str, float]:
    # What `accelerate launch` sets; Accelerate then joins the process group run_in_processes made.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")
    from jef.testing import tiny_run

    return tiny_run(pipeline, steps=steps, run_dir=run_dir).metrics


def train_in_processes(pipeline: dict[str, Any], *, steps: int = 2, run_dir: str | Path,
                       world_size: int = 2) -> list[dict[str, float]]:
    """Train :func:`jef.testing.tiny_run`'s pipeline in ``world_size`` gloo processes, as ``accelerate launch`` would.

    The model is wrapped in DistributedDataParallel, so a parameter that gets
    no gradient in a step fails the run as it would on a cluster. Rank 0 writes
    the run directory (checkpoint, metrics).

    Args:
        pipeline: Overrides of the tiny pipeline (see :func:`~jef.testing.tiny_run`).
        steps: Optimiser steps.
        run_dir: The run directory (shared by the processes).
        world_size: Number of processes.

    Returns:
        Each rank's final metrics.
    """
    import functools

    job = functools.partial(_train_job, pipeline=dict(pipeline), steps=steps, run_dir=str(run_dir),
                            world_size=world_size)
    return run_in_processes(job, world_size=world_size)
