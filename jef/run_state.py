"""The state of a training run, handed to every run hook, and the registration of a run's own hook objects."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import torch
from accelerate import Accelerator

from jef.accelerate_compat import cache_package_checks
from jef.components import RunContext
from jef.config import Pipeline
from jef.faults import NonFiniteWatch
from jef.plugins import Plugins

__all__ = ["Run", "run_plugins"]

cache_package_checks()  # every training loop builds a Run: Accelerate's per-step package checks are asked once


@attrs.define(eq=False)
class Run:
    """The state of a run, handed to every run hook."""

    ctx: RunContext
    pipeline: Pipeline
    accelerator: Accelerator
    model: torch.nn.Module
    augmenter: torch.nn.Module
    optimizer: Any
    scheduler: Any
    directory: Path | None
    generator: torch.Generator
    splits: Any = None  # the DataSplits (monitors that evaluate read the labelled splits)
    monitors: list[Any] = attrs.field(factory=list)  # their state_dict(), if any, is checkpointed
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    pending: dict[str, float] = attrs.field(factory=dict)
    history: list[dict[str, float]] = attrs.field(factory=list)
    stop_reason: str | None = None
    checkpoint_step: int | None = None  # the step of the last checkpoint written (or resumed from)
    skipped_steps: int = 0  # steps dropped for a non-finite loss (train.on_nonfinite: skip)
    skipped_in_a_row: int = 0
    stopping: bool = False  # every process agreed to stop (set by the loop at its sync points)
    nonfinite: NonFiniteWatch = attrs.field(factory=NonFiniteWatch)  # train.on_nonfinite: stop

    def log(self, metrics: dict[str, Any]) -> None:
        """Queue metrics for the next metrics line (the latest value of each key wins).

        Tensors are kept on the device (a detached copy) and read when the line is written, at a log step, so
        logging from a step hook makes the host wait for the device only at log steps.
        """
        self.pending.update({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()})

    def request_stop(self, reason: str) -> None:
        """Stop the run, on every process, keeping a checkpoint (e.g. a monitor that saw a collapse).

        In one process the run stops after the current step; with several, the processes agree at the loop's
        next sync point (a ``train.log_every`` step or the epoch's end), so within ``train.log_every`` steps.
        """
        self.stop_reason = reason
        self.accelerator.set_trigger()

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The model without Accelerate's wrappers (DDP, mixed precision)."""
        return self.accelerator.unwrap_model(self.model)


@contextmanager
def run_plugins(plugins: Plugins, objects: list[Any]) -> Iterator[None]:
    """Register the run's components and monitors that implement hooks; unregister them afterwards."""
    names = []
    try:
        for obj in objects:
            if obj is not None and any(name.startswith("jef_") and callable(getattr(type(obj), name, None))
                                       for name in dir(type(obj))):
                names.append(plugins.manager.register(obj, name=f"run:{type(obj).__name__}:{id(obj)}"))
        yield
    finally:
        for name in names:
            plugins.manager.unregister(name=name)
