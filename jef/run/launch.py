"""How a run was launched: which launcher started it, how many processes it asked for, and what jef runs on.

Launchers tell their processes what they started through the environment: torchrun (and ``accelerate launch
--multi_gpu``, which runs torchrun) sets ``WORLD_SIZE``; mpirun sets its own size variables. ``accelerate
launch`` without ``--multi_gpu`` uses Accelerate's *simple* launcher, which starts exactly one process whatever
``--num_processes`` says (unless an MPI host file is configured) and only marks the request by setting
``MASTER_ADDR``. A user who typed ``accelerate launch --cpu --num_processes 2`` would then train on one process
without a word; :func:`check_process_count` refuses that, with the command that starts two.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from jef.config.validate import ConfigError

__all__ = ["LaunchError", "RunEnvironment", "check_process_count", "detect_launcher", "requested_processes"]

#: Size variables of the MPI implementations Accelerate's simple launcher can start through ``mpirun``.
_MPI_SIZES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")


class LaunchError(ConfigError):
    """The launcher asked for more processes than jef runs in; the message gives the command that works."""


@attrs.frozen
class RunEnvironment:
    """What a run runs on, printed when it starts and recorded in the run directory.

    Attributes:
        world_size: The number of training processes.
        device: The main process's device (``cpu``, ``cuda:0``).
        precision: ``no``, ``bf16`` or ``fp16``.
        launcher: What started the processes: ``torchrun``, ``accelerate launch``, ``mpirun`` or ``none``.
    """

    world_size: int
    device: str
    precision: str
    launcher: str

    @classmethod
    def of(cls, accelerator: Any, precision: str) -> RunEnvironment:
        """The environment of the run ``accelerator`` drives."""
        return cls(accelerator.num_processes, str(accelerator.device), precision, detect_launcher())

    def describe(self) -> str:
        """One line for the terminal: ``2 processes (torchrun), device cpu, precision bf16``."""
        processes = "1 process" if self.world_size == 1 else f"{self.world_size} processes"
        return f"{processes} ({self.launcher}), device {self.device}, precision {self.precision}"

    def record(self) -> dict[str, Any]:
        """The fields as ``run/<name>`` metrics, the first line a run (or a resumed part of it) logs."""
        return {f"run/{key}": value for key, value in attrs.asdict(self).items()}


def detect_launcher(environ: Mapping[str, str] | None = None) -> str:
    """Name the launcher that started this process, from the variables it set."""
    env = os.environ if environ is None else environ
    accelerate = any(key.startswith("ACCELERATE_") and key != "ACCELERATE_CONFIG_FILE" for key in env)
    if "WORLD_SIZE" in env or "TORCHELASTIC_RUN_ID" in env:
        return "accelerate launch" if accelerate else "torchrun"
    if any(key in env for key in _MPI_SIZES):
        return "mpirun"
    return "accelerate launch" if accelerate else "none"


def requested_processes(environ: Mapping[str, str] | None = None, parent_command: list[str] | None = None
                        ) -> tuple[int, bool] | None:
    """How many processes the launcher was asked for, and whether that number is exact; ``None`` if it says nothing.

    torchrun and MPI state the number (``WORLD_SIZE``, the MPI size variables). Accelerate's simple launcher does
    not pass it on: the number is read from its command line (``parent_command``, by default the parent
    process's, on Linux); when it came from ``accelerate config`` instead, the launcher's ``MASTER_ADDR`` (set
    only when more than one process or machine was asked for) still says "more than one" (not exact: 2).
    """
    env = os.environ if environ is None else environ
    for key in ("WORLD_SIZE", *_MPI_SIZES):
        if env.get(key, "").isdigit():
            return int(env[key]), True
    if "ACCELERATE_USE_CPU" not in env:  # set by Accelerate's simple launcher only
        return None
    command = _parent_command() if parent_command is None else parent_command
    asked = _option(command, "--num_processes")
    if asked is not None:
        return asked, True
    several = "MASTER_ADDR" in env and _option(command, "--num_machines") in (None, 1)
    return (2, False) if several else None


def check_process_count(world_size: int, *, source: str = "", environ: Mapping[str, str] | None = None,
                        parent_command: list[str] | None = None) -> None:
    """Refuse to train in fewer processes than the launcher was asked for.

    Args:
        world_size: The number of processes jef runs in (``accelerator.num_processes``).
        source: The pipeline file, for the message.
        environ: The environment (default ``os.environ``).
        parent_command: The launcher's command line (default: read from ``/proc`` where there is one).

    Raises:
        LaunchError: Naming what was asked, what runs, and the command that starts that many processes.
    """
    env = os.environ if environ is None else environ
    request = requested_processes(env, parent_command)
    if request is None or request[0] <= world_size:
        return
    asked, exact = request
    count, n = (str(asked), str(asked)) if exact else ("several", "N")
    if "WORLD_SIZE" not in env and "ACCELERATE_USE_CPU" in env:
        why = ("`accelerate launch` without --multi_gpu uses Accelerate's simple launcher, which starts one "
               "process whatever --num_processes says (its --cpu starts no CPU processes)")
    else:
        why = "fewer processes joined than the launcher started"
    raise LaunchError(
        f"the launcher asked for {count} processes but jef runs in {world_size}: {why}; to train in {n} "
        f"processes on CPUs run `accelerate launch --multi_gpu --num_processes {n} -m jef train PIPELINE --cpu` "
        f"or `torchrun --nproc_per_node {n} -m jef train PIPELINE --cpu` (see docs/distributed.md)",
        source=source)


def _option(command: list[str], name: str) -> int | None:
    """The integer value of ``name`` (``--name N`` or ``--name=N``) in ``command``, if given."""
    for i, item in enumerate(command):
        value = item.partition("=")[2] if item.startswith(name + "=") else (
            command[i + 1] if item == name and i + 1 < len(command) else None)
        if value is not None and value.isdigit():
            return int(value)
    return None


def _parent_command() -> list[str]:
    """The parent process's arguments (the launcher's), or ``[]`` where ``/proc`` does not show them."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(sys.getfilesystemencoding(), "replace") for part in raw.split(b"\0") if part]
