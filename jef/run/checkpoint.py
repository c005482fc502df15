"""Checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint holds everything a run needs to continue: model (with target
network and stateful loss buffers), optimiser, scheduler, counters and random
number generator states. It is written to a temporary file in the same
directory and renamed, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import errno
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from jef.files import atomic_write
from jef.run.faults import check_finite_state, sync_point

CHECKPOINT_NAME = "checkpoint.pt"

#: Keys of the resolved pipeline that may change when a run resumes: the length of training (to extend a run; the
#: learning-rate and momentum schedules then stretch to the new length) and what does not change the computation.
RESUME_MAY_CHANGE = ("run_dir", "eval", "loggers", "train.epochs", "train.max_steps", "train.progress",
                     "train.tensorboard", "train.log_every", "train.num_workers", "train.checkpoint_every",
                     "train.checkpoint_every_steps", "train.compile", "train.channels_last", "train.cpu_malloc")
#: Top-level settings added after runs were saved, with the value those runs trained with: a saved pipeline
#: without the key is no different from a current one that has this value.
ADDED_SETTINGS: dict[str, Any] = {"model.backbone_calls": "per_resolution"}

#: What every checkpoint written by :func:`save_run` holds.
_RUN_KEYS = ("model", "optimizer", "scheduler", "step", "epoch", "batch_in_epoch", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, not jef's, or written by a different pipeline.

    The message names the file and says what to do. Not a :class:`~jef.config.validate.ConfigError`: the
    pipeline may be valid and the file the problem (and a ``ValueError`` handler meant for bad values should not
    take it for one). The command line prints it as an error (``jef: error: ...``, no traceback), exit status 2.

    Attributes:
        source: The checkpoint file the message is about ("" when none is named).
    """

    def __init__(self, message: str, *, source: str = "") -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk); the previous checkpoint is intact.

    Attributes:
        step: The step whose checkpoint was not written.
        previous_step: The step of the checkpoint on disk, intact (None: no checkpoint had been written yet).
    """

    def __init__(self, message: str, step: int, previous_step: int | None) -> None:
        self.step, self.previous_step = step, previous_step
        super().__init__(message)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings and containers of them) atomically.

    Raises:
        OSError: The write failed (``errno.ENOSPC``: the disk is full); no file was left behind.
    """

    def write(tmp: Path) -> None:
        # Through a file object the failed write's OSError (ENOSPC...) is seen: torch's own writer only says
        # "[enforce fail at inline_container.cc] unexpected pos", keeping the OSError as the context, if at all.
        with open(tmp, "wb") as handle:
            try:
                torch.save(state, handle)
            except RuntimeError as error:
                cause = _os_error_in(error)
                if cause is None:
                    raise
                raise cause from error

    atomic_write(path, write)


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError among the causes and contexts of ``error``, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: tensors and plain containers, never arbitrary pickled objects.

    Raises:
        FileNotFoundError: with a message saying what to do.
        CheckpointError: the file is truncated, corrupt, holds objects other than tensors and plain data, or is
            not a checkpoint written by ``jef train``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: nothing to resume; "
                                f"start the run without --resume or point run_dir at an earlier run")
    corrupt = ("cannot be read: truncated or corrupt ({}); jef writes checkpoints atomically, so this file was cut "
               "short or damaged elsewhere (a copy, a full disk): copy it again or resume from another run directory")
    if not zipfile.is_zipfile(path):  # what torch.save writes; a cut-off file has lost its zip directory
        raise CheckpointError(corrupt.format("not a complete zip archive, as torch.save writes"), source=str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # what weights_only refuses to load
        raise CheckpointError(f"holds objects other than tensors and plain data, which jef does not unpickle "
                              f"(arbitrary code could run); load it only if you trust it, and save its "
                              f"state_dict instead ({_first_line(error)})", source=str(path)) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(corrupt.format(_first_line(error)), source=str(path)) from error
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError("is not a checkpoint written by jef train (no 'model' entry); pass a run directory "
                              "or its checkpoint.pt", source=str(path))
    return state


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def check_resumable(state: dict[str, Any], pipeline: dict[str, Any], path: Path, *, force: bool = False,
                    world_size: int | None = None) -> None:
    """Refuse to resume from ``state`` with a pipeline that computes something else than the one that wrote it.

    Args:
        state: The loaded checkpoint.
        pipeline: The resolved pipeline of the run about to resume (``Pipeline.to_dict()``).
        path: The checkpoint file, for the message.
        force: Resume anyway, warning with the differences.
        world_size: The number of processes of the run about to resume (default: the size of the process group,
            1 without one); another number than the one that wrote the checkpoint is refused too.

    Raises:
        CheckpointError: Naming every difference (``train.optimizer.lr: 0.1 -> 0.2``) and the ways out.
    """
    missing = [key for key in _RUN_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"is not a training checkpoint of jef train (missing {', '.join(missing)}); it "
                              f"cannot be resumed", source=str(path))
    if world_size is None:
        world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    _check_world_size(state, path, force=force, world_size=world_size)
    if "pipeline" not in state:
        return  # written before checkpoints recorded their pipeline
    differences = pipeline_differences(state["pipeline"], pipeline)
    if not differences:
        return
    listing = "\n".join(f"  {line}" for line in differences)
    if force:
        warnings.warn(f"{path}: resuming with a changed pipeline (forced):\n{listing}", stacklevel=2)
        return
    raise CheckpointError(f"was written by a different pipeline; resuming would mix two runs:\n{listing}\n"
                          f"resume with the pipeline.yaml saved beside it, train into a new run_dir, or force it "
                          f"(jef train --resume --force-resume; train(..., resume='force'))", source=str(path))


def saved_world_size(state: dict[str, Any]) -> int:
    """The number of processes that wrote a checkpoint (older checkpoints: the per-process RNG states it holds)."""
    if "world_size" in state:
        return int(state["world_size"])
    per_rank = state.get("rng", {}).get("torch_per_rank")
    return 1 if per_rank is None else len(per_rank)


def _check_world_size(state: dict[str, Any], path: Path, *, force: bool, world_size: int) -> None:
    """Refuse (or, forced, warn about) resuming on another number of processes: it would not be the same run.

    Each process's own random stream (seeded ``seed + rank``) cannot be carried over to another number of
    processes, and ``train.batch_size`` is per process: kept as it is, the global batch (and the learning rate
    scaled with it), the steps of an epoch and the place in the epoch's data order (``batch_in_epoch`` counts
    each process's batches) all change.
    """
    saved = saved_world_size(state)
    if saved == world_size:
        return
    batch = state.get("pipeline", {}).get("train", {}).get("batch_size")
    processes = f"{saved} process{'es' if saved > 1 else ''}"
    what = (f"was written by a run on {processes} and this run has {world_size}: a run resumes exactly only on as "
            f"many processes as wrote its checkpoint (each process's random stream cannot be carried over, and "
            f"train.batch_size is per process, so the global batch, the learning rate scaled with it, the steps "
            f"of an epoch and the place in the epoch's data order would change)")
    if force:
        warnings.warn(f"{path}: {what}; resuming anyway (forced) from step {state['step']}", stacklevel=3)
        return
    keep = (f" (with train.batch_size={batch * saved // world_size} the global batch of {batch * saved} stays)"
            if batch and batch * saved % world_size == 0 else "")
    raise CheckpointError(f"{what}; resume it on {processes} (the launcher's --num_processes or --nproc_per_node), "
                          f"train into a new run_dir, or force it{keep} (jef train --resume --force-resume; "
                          f"train(..., resume='force'))", source=str(path))


def pipeline_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``path: saved -> current`` for every setting that differs, ignoring :data:`RESUME_MAY_CHANGE`.

    Both pipelines spell out every option, so an option on one side only comes from another version of the
    component (an option jef added, with a default that keeps the old behaviour, or one it dropped, as the
    ``shared`` target's momentum): it is no difference when the component itself (its ``name``) is the same.
    """
    old, new = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(old.keys() | new.keys()):
        if any(key == prefix or key.startswith(prefix + ".") for prefix in RESUME_MAY_CHANGE):
            continue
        if (key in old) != (key in new) and _same_component(old, new, key.rpartition(".")[0]):
            continue
        absent = ADDED_SETTINGS.get(key, "(absent)")
        before, after = old.get(key, absent), new.get(key, absent)
        if before != after:
            lines.append(f"{key}: {before!r} -> {after!r}")
    return lines


def _same_component(old: dict[str, Any], new: dict[str, Any], parent: str) -> bool:
    name = f"{parent}.name" if parent else "name"
    return name in old and name in new and old[name] == new[name]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple) and any(isinstance(item, dict) for item in value):
        items = enumerate(value)  # lists of components (functionals, monitors): compare setting by setting
    else:
        return {prefix: list(value) if isinstance(value, tuple) else value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """The global torch RNG and the named generators' states."""
    state = {"torch": torch.get_rng_state(), **{name: g.get_state() for name, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    """Put back what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for name, generator in generators.items():
        if name in state:
            generator.set_state(state[name])


def save_run(run: Any) -> None:
    """Checkpoint a :class:`jef.run.loop.Run` into its directory (rank 0 writes; every process waits for it).

    First the processes meet at a :func:`jef.run.faults.sync_point` (a non-finite loss since the last checkpoint
    raises there) and check that the model's parameters and buffers are finite: a checkpoint never holds
    unusable weights.

    Raises:
        jef.run.faults.NonFiniteLossError, jef.run.faults.NonFiniteStateError: Nothing was written; the previous
            checkpoint is kept.
        CheckpointWriteError: The disk is full (on every process: the others learn it from process 0).
    """
    sync_point(run)
    run.accelerator.wait_for_everyone()
    check_finite_state(run)
    rng = rng_state({"augment": run.generator})
    if run.accelerator.num_processes > 1:  # the global RNG is seeded per process: keep every process's state
        for key in ("torch", "cuda"):
            if key in rng:
                rng[f"{key}_per_rank"] = run.accelerator.gather(rng[key].to(run.accelerator.device)[None]).cpu()
    failure = None
    if run.directory is not None:
        try:
            save_checkpoint(run.directory / CHECKPOINT_NAME, {
                "model": run.unwrapped_model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(), "step": run.step, "epoch": run.epoch,
                "batch_in_epoch": run.batch_in_epoch, "rng": rng, "world_size": run.accelerator.num_processes,
                "monitors": _monitor_states(run), "pipeline": run.pipeline.to_dict()})
        except Exception as error:  # noqa: BLE001 - raised below, once every process knows (none waits forever)
            failure = error
    if run.accelerator.num_processes > 1 and _failed_anywhere(run, failure is not None) and failure is None:
        raise CheckpointWriteError(f"process 0 could not write the checkpoint of step {run.step} (its error says "
                                   f"why); {_previous(run)}", run.step, run.checkpoint_step)
    if isinstance(failure, OSError) and failure.errno in (errno.ENOSPC, errno.EDQUOT):
        path = run.directory / CHECKPOINT_NAME
        raise CheckpointWriteError(
            f"no space left on {_device_of(path.parent)}: {path}; {_previous(run)}; the checkpoint of step "
            f"{run.step} was not written: free some space there, then continue with the same command and --resume",
            run.step, run.checkpoint_step) from failure
    if failure is not None:
        raise failure
    run.checkpoint_step = run.step


def _failed_anywhere(run: Any, failed: bool) -> bool:
    flag = torch.tensor([int(failed)], device=run.accelerator.device)
    return bool(run.accelerator.gather(flag).max().item())


def _previous(run: Any) -> str:
    return (f"the previous checkpoint (step {run.checkpoint_step}) is intact" if run.checkpoint_step is not None
            else "no checkpoint had been written yet")


def _device_of(directory: Path) -> str:
    """The file system holding ``directory``: its device and mount point (``/dev/sda1 (mounted at /data)``)."""
    mount = os.path.realpath(directory)
    while not os.path.ismount(mount) and os.path.dirname(mount) != mount:
        mount = os.path.dirname(mount)
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:  # Linux; elsewhere the mount point alone
            sources = [line.split()[0] for line in mounts if len(line.split()) > 1 and line.split()[1] == mount]
    except OSError:
        sources = []
    return f"{sources[-1]} (mounted at {mount})" if sources else mount


def _monitor_states(run: Any) -> dict[str, Any]:
    """State of the monitors that have some (online probes), by position in the pipeline's list."""
    return {str(i): m.state_dict() for i, m in enumerate(run.monitors) if callable(getattr(m, "state_dict", None))}


def restore_run(run: Any, state: dict[str, Any]) -> None:
    """Put a checkpoint written by :func:`save_run` back into a freshly built run.

    Raises:
        CheckpointError: The weights or optimiser state do not fit the model built now.
    """
    try:
        run.unwrapped_model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"does not fit the model and optimiser built from the pipeline "
                              f"({_first_line(error)}); resume with the pipeline that wrote it",
                              source=str(run.directory / CHECKPOINT_NAME if run.directory else CHECKPOINT_NAME)
                              ) from error
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.epoch, run.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    run.checkpoint_step = run.step
    restore_rng_state(state["rng"], {"augment": run.generator})
    rank = run.accelerator.process_index
    for key, put in (("torch", torch.set_rng_state), ("cuda", torch.cuda.set_rng_state)):
        per_rank = state["rng"].get(f"{key}_per_rank")
        if per_rank is None or not (key == "torch" or torch.cuda.is_available()):
            continue
        if rank < len(per_rank):  # this process's own stream (rank 0's was restored above for every process)
            # A copy: a row of the [world, n] tensor is a view into its storage at an offset, which
            # set_rng_state reads from the storage's start (rank >= 1: "Invalid mt19937 state", or a crash).
            put(per_rank[rank].clone())
        elif key == "torch":  # a forced resume on more processes: a stream of its own, not a copy of rank 0's
            torch.manual_seed(run.pipeline.seed + rank)
    for key, monitor_state in state.get("monitors", {}).items():
        monitor = run.monitors[int(key)] if int(key) < len(run.monitors) else None
        if not callable(getattr(monitor, "load_state_dict", None)):  # only after --force-resume changed monitors
            warnings.warn(f"the state of monitor {key} in the checkpoint has no monitor to go to; not restored",
                          stacklevel=2)
            continue
        monitor.load_state_dict(monitor_state)
