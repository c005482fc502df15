"""Checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint holds everything a run needs to continue: model (with target
network and stateful loss buffers), optimiser, scheduler, counters and random
number generator states. It is written to a temporary file in the same
directory and renamed, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path``; no partial file ever appears."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings and containers of them) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary pickle).

    Raises:
        FileNotFoundError: with a message saying what to do.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: nothing to resume; "
                                f"start the run without --resume or point run_dir at an earlier run")
    return torch.load(path, map_location="cpu", weights_only=True)


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
    """Checkpoint a :class:`jef.train.Run` into its directory (rank 0 writes; every process waits for it)."""
    run.accelerator.wait_for_everyone()
    if run.directory is None:
        return
    save_checkpoint(run.directory / CHECKPOINT_NAME, {
        "model": run.unwrapped_model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "step": run.step, "epoch": run.epoch,
        "batch_in_epoch": run.batch_in_epoch, "rng": rng_state({"augment": run.generator}),
        "monitors": _monitor_states(run)})


def _monitor_states(run: Any) -> dict[str, Any]:
    """State of the monitors that have some (online probes), by position in the pipeline's list."""
    return {str(i): m.state_dict() for i, m in enumerate(run.monitors) if callable(getattr(m, "state_dict", None))}


def restore_run(run: Any, state: dict[str, Any]) -> None:
    """Put a checkpoint written by :func:`save_run` back into a freshly built run."""
    run.unwrapped_model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.epoch, run.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    restore_rng_state(state["rng"], {"augment": run.generator})
    for key, monitor_state in state.get("monitors", {}).items():
        run.monitors[int(key)].load_state_dict(monitor_state)
