"""Run a function in several gloo processes on the CPU and collect what each returned.

* :func:`run_in_processes` -- ``job(rank)`` in ``W`` processes joined in a gloo process group.
* :func:`train_in_processes` -- :func:`~jef.testing.tiny_run` under DDP in ``W`` processes; the final metrics.
* :func:`record_runs` -- several tiny runs, one after another in the same ``W`` processes (one start-up for
  all), recording each run's model state at the start and the end and every step's samples and loss: what a
  test needs to show that ``W`` processes train as one process on the global batch.
"""

from __future__ import annotations

import datetime
import faulthandler
import functools
import itertools
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from jef.hookspecs import hookimpl

#: Collectives wait this long for the other processes before failing (a test must not hang).
TIMEOUT = datetime.timedelta(seconds=60)
#: This process's rendezvous (store served by rank 0, rank, world size), kept to make the group again.
_RENDEZVOUS: dict[str, Any] = {}
_GROUPS = itertools.count()


def _worker(rank: int, world_size: int, port: int, outdir: str, job: Callable[[int], Any]) -> None:
    # A process killed by a signal (SIGABRT from a C++ abort, SIGSEGV) prints every thread's Python stack first:
    # mp.spawn itself reports only the signal's name.
    faulthandler.enable(all_threads=True)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)  # the processes share the machine's cores
    store = tdist.TCPStore("127.0.0.1", port, world_size, is_master=rank == 0, timeout=TIMEOUT)
    _RENDEZVOUS.update(store=store, rank=rank, world_size=world_size)
    ensure_process_group()
    try:
        torch.save(job(rank), os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        if tdist.is_initialized():  # Accelerator.end_training() may have destroyed it already
            tdist.destroy_process_group()
    # Rank 0 serves the store: it leaves only once every process is done with its group, so that no process
    # tears its connections down while another still uses them or the store.
    store.add("finished", 1)
    if rank == 0:
        deadline = datetime.datetime.now() + TIMEOUT
        while store.add("finished", 0) < world_size and datetime.datetime.now() < deadline:
            time.sleep(0.01)


def ensure_process_group() -> None:
    """Inside a :func:`run_in_processes` job: join the gloo process group again if it was destroyed.

    ``Accelerator.end_training()``, at the end of every :func:`jef.run.loop.train`,
    destroys the group; a job that trains several times calls this before each
    run. Every process must call it at the same points.
    """
    if not _RENDEZVOUS:
        raise RuntimeError("ensure_process_group: call it inside a job that jef.testing.run_in_processes runs")
    if not tdist.is_initialized():
        # A fresh key prefix per group: the store still holds the previous group's keys.
        store = tdist.PrefixStore(f"group{next(_GROUPS)}", _RENDEZVOUS["store"])
        tdist.init_process_group("gloo", store=store, rank=_RENDEZVOUS["rank"],
                                 world_size=_RENDEZVOUS["world_size"], timeout=TIMEOUT)


#: Rendezvous ports are taken from below the kernel's ephemeral range (32768-60999 on Linux), one block per
#: pytest-xdist worker: a port the kernel hands out for ``bind(0)`` is free only until it is released, and another
#: test process asking in the meantime may be handed the same one, which a block of its own rules out.
PORT_BLOCK, PORT_BASE = 1000, 20000
_NEXT_PORT = itertools.count()


def free_port() -> int:
    """A free loopback port for a rendezvous, from this test process's own block (see :data:`PORT_BLOCK`).

    Under pytest-xdist each worker (``PYTEST_XDIST_WORKER=gwN``) takes ports from block N, so that two workers
    starting process groups at the same moment never pick the same port; within a worker, tests run one after
    another. Outside pytest-xdist, block 0 is used.

    Raises:
        RuntimeError: Every port of the block is taken.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = PORT_BASE + (int(worker) if worker.isdigit() else 0) % 12 * PORT_BLOCK
    for _ in range(PORT_BLOCK):
        port = first + next(_NEXT_PORT) % PORT_BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # taken, by a process outside the tests or one that has not released it yet
                continue
        return port
    raise RuntimeError(f"no free port in {first}-{first + PORT_BLOCK - 1}; is another test run using them?")


def run_in_processes(job: Callable[[int], Any], world_size: int = 2) -> list[Any]:
    """Call ``job(rank)`` in ``world_size`` gloo processes; return the results in rank order.

    ``job`` must be picklable (a module-level function or a ``functools.partial``
    of one), and its results tensors, numbers or containers of them: they come
    back through ``torch.save``. A script calling this needs an
    ``if __name__ == "__main__":`` guard, as every ``spawn`` does.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="jef-processes-") as outdir:
        mp.spawn(_worker, args=(world_size, port, outdir, job), nprocs=world_size, join=True)
        return [torch.load(Path(outdir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def _launched_as(rank: int, world_size: int) -> None:
    # What `accelerate launch` sets; Accelerate then joins the process group run_in_processes made.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")


def _train_job(rank: int, pipeline: dict[str, Any], steps: int, run_dir: str, world_size: int,
               resume: bool | str = False) -> dict[str, float]:
    _launched_as(rank, world_size)
    from jef.testing import tiny_run

    return tiny_run(pipeline, steps=steps, run_dir=run_dir, resume=resume).metrics


def train_in_processes(pipeline: dict[str, Any], *, steps: int = 2, run_dir: str | Path, world_size: int = 2,
                       resume: bool | str = False) -> list[dict[str, float]]:
    """Train :func:`jef.testing.tiny_run`'s pipeline in ``world_size`` gloo processes, as ``accelerate launch`` would.

    The model is wrapped in DistributedDataParallel, so a parameter that gets
    no gradient in a step fails the run as it would on a cluster. Rank 0 writes
    the run directory (checkpoint, metrics).

    Args:
        pipeline: Overrides of the tiny pipeline (see :func:`~jef.testing.tiny_run`).
        steps: Optimiser steps.
        run_dir: The run directory (shared by the processes).
        world_size: Number of processes.
        resume: Continue from ``run_dir``'s checkpoint (``"force"``: even with a changed pipeline).

    Returns:
        Each rank's final metrics.
    """
    job = functools.partial(_train_job, pipeline=dict(pipeline), steps=steps, run_dir=str(run_dir),
                            world_size=world_size, resume=resume)
    return run_in_processes(job, world_size=world_size)


def _model_state(run: Any) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone().cpu() if isinstance(value, torch.Tensor) else value
            for key, value in run.unwrapped_model.state_dict().items()}


class RunRecorder:
    """A run plugin recording the model state at the start and the end, and each step's epoch, samples and loss."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {"initial": None, "final": None, "steps": []}

    @hookimpl
    def jef_run_start(self, run: Any) -> None:
        self.record["initial"] = _model_state(run)

    @hookimpl(trylast=True)  # after the hooks that change state at the step's end (EMA, queues)
    def jef_step_end(self, run: Any, outputs: Any, terms: dict[str, float]) -> None:
        indices = getattr(outputs, "indices", None)
        self.record["steps"].append({"epoch": run.epoch, "loss": terms["loss"],
                                     "indices": None if indices is None else indices.tolist()})
        self.record["final"] = _model_state(run)


def record_run(pipeline: Mapping[str, Any], *, steps: int, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train :func:`~jef.testing.tiny_run`'s ``pipeline`` for ``steps`` steps in this process, recording it.

    Returns:
        ``{"initial": state, "final": state, "steps": [{"epoch", "loss", "indices"}, ...]}``: the unwrapped
        model's state dict (CPU copies) before the first step and after the last one's ``jef_step_end``
        hooks, and per step its epoch, the loss averaged over processes and this process's dataset indices.
    """
    from jef.plugins import load_plugins
    from jef.testing import temporary_plugin, tiny_run

    plugins, recorder = load_plugins(), RunRecorder()
    with temporary_plugin(plugins, recorder, name="jef-testing-run-recorder"):
        tiny_run(pipeline, steps=steps, run_dir=run_dir, plugins=plugins)
    return recorder.record


def _record_job(rank: int, pipelines: dict[str, dict[str, Any]], steps: int, run_dir: str,
                world_size: int) -> dict[str, Any]:
    _launched_as(rank, world_size)
    records: dict[str, Any] = {}
    failed = None
    for name, pipeline in pipelines.items():
        if failed is not None:  # the process group may be unusable after a failure
            records[name] = {"error": f"not run: pipeline {failed!r} failed before it in the same processes"}
            continue
        try:
            ensure_process_group()
            records[name] = record_run(pipeline, steps=steps, run_dir=Path(run_dir) / name)
        except Exception:  # noqa: BLE001 - reported per pipeline, with the traceback, to the test that asked
            records[name] = {"error": f"rank {rank}: {traceback.format_exc()}"}
            failed = name
    return records


def record_runs(pipelines: Mapping[str, Mapping[str, Any]], *, steps: int, run_dir: str | Path,
                world_size: int = 1) -> list[dict[str, dict[str, Any]]]:
    """Train every pipeline for ``steps`` steps, one after another, in ``world_size`` processes, recording each.

    With ``world_size > 1`` one set of gloo processes (one start-up) runs them
    all, each under DDP as :func:`train_in_processes` does; with 1, this
    process does. ``train.batch_size`` in a pipeline is per process, as always.

    Args:
        pipelines: Name -> overrides of :func:`~jef.testing.tiny_run`'s pipeline.
        steps: Optimiser steps of each run.
        run_dir: Parent of the run directories (one per name).
        world_size: Number of processes.

    Returns:
        Per rank, name -> :func:`record_run`'s record, or ``{"error": traceback}``
        for a run that failed (the runs after it in the same processes are not
        run, their records say so).
    """
    plain = {name: dict(pipeline) for name, pipeline in pipelines.items()}
    if world_size == 1:
        return [{name: record_run(p, steps=steps, run_dir=Path(run_dir) / name) for name, p in plain.items()}]
    job = functools.partial(_record_job, pipelines=plain, steps=steps, run_dir=str(run_dir), world_size=world_size)
    return run_in_processes(job, world_size=world_size)
