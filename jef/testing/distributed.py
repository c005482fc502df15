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
