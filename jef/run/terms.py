"""A step's loss terms, kept on the device between the training loop's sync points.

Reading a tensor's value on the host (``.item()``, ``float()``, ``if tensor``)
makes the host wait for the device to finish the step, and averaging the terms
over processes is an all-reduce. Doing either at every step stalls a GPU's
queue of kernels, so the loop keeps each step's terms as one small tensor and
reads them only where something asks: at ``train.log_every`` steps, at epoch
ends, before checkpoints, and whenever a hook reads :class:`StepTerms`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from jef.components import StepResult

__all__ = ["EpochTerms", "StepTerms", "log_record", "on_host", "step_terms"]


class StepTerms(Mapping[str, float]):
    """One optimiser step's loss terms, averaged over processes, read from the device on first access.

    Iterating over the names and ``len`` cost nothing; the first value read costs one device sync and, with
    several processes, one all-reduce, which every process must then do too (hooks run on every process, so a
    hook that reads the terms reads them everywhere).

    Attributes:
        names: The term names, ``"loss"`` first.
        values: ``[len(names)]`` float32 tensor on the device, this process's values.
    """

    def __init__(self, names: list[str], values: Tensor, accelerator: Any) -> None:
        self.names, self.values, self._accelerator = names, values, accelerator
        self._floats: dict[str, float] | None = None

    def floats(self) -> dict[str, float]:
        """The terms as floats, averaged over processes (the sync happens here, once)."""
        if self._floats is None:
            reduced = self._accelerator.reduce(self.values, reduction="mean")
            self._floats = dict(zip(self.names, reduced.tolist(), strict=True))
        return self._floats

    def __getitem__(self, key: str) -> float:
        return self.floats()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, key: object) -> bool:
        return key in self.names

    def __repr__(self) -> str:
        shown = self._floats if self._floats is not None else "not read yet"
        return f"StepTerms({shown})"


def step_terms(result: StepResult, accumulated: Tensor, accelerator: Any) -> StepTerms:
    """The terms of the step that ``result`` (the last micro-batch's ``jef_train_step`` result) ends.

    ``loss`` is the accumulated sum over the optimiser step's micro-batches when that sum is non-finite, so that
    a NaN in an earlier micro-batch stays visible; otherwise the last micro-batch's loss, like the other terms.
    Everything stays on the device (``torch.where``, no sync).
    """
    loss = result.loss.detach().float()
    accumulated = accumulated.detach().float()
    loss = torch.where(torch.isfinite(accumulated), loss, accumulated)
    names = ["loss", *result.terms]
    values = torch.stack([loss, *(value.detach().float().reshape(()) for value in result.terms.values())])
    return StepTerms(names, values, accelerator)


class EpochTerms:
    """Running sums of an epoch's step terms on the device; their means are read once, at the epoch's end."""

    def __init__(self) -> None:
        self.names: list[str] | None = None
        self.sums: Tensor | None = None
        self.count = 0

    def add(self, terms: StepTerms) -> None:
        """Add one step's terms (a tensor addition: no sync)."""
        if self.sums is None or self.names != terms.names:
            if self.sums is not None:  # the sums are one tensor: the names must stay the same
                raise ValueError(f"the loss terms changed within an epoch: {self.names} then {terms.names}; "
                                 "a jef_train_step must return the same terms at every step")
            self.names, self.sums = list(terms.names), terms.values.clone()
        else:
            self.sums += terms.values
        self.count += 1

    def means(self, accelerator: Any) -> dict[str, float]:
        """The epoch's mean of each term, averaged over processes (one sync)."""
        if self.sums is None or self.names is None:
            return {}
        reduced = accelerator.reduce(self.sums / self.count, reduction="mean")
        return dict(zip(self.names, reduced.tolist(), strict=True))


def on_host(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` with every tensor read as a float (a sync each: call it at log steps only)."""
    return {k: float(v.item()) if isinstance(v, Tensor) else v for k, v in metrics.items()}


def log_record(run: Any, terms: StepTerms | None, images_per_s: float) -> dict[str, Any]:
    """A log step's line of ``metrics.jsonl``: the step's terms (None: a skipped step), lr, throughput, epoch,
    the values plugins left in ``run.pending`` (which it empties) and, when ``train.optimizer`` schedules it, the
    weight decay."""
    record = {**(terms.floats() if terms is not None else {}), "lr": run.scheduler.get_last_lr()[0],
              "images_per_s": images_per_s, "epoch": run.epoch, **on_host(run.pending)}
    if run.pipeline.train.optimizer.final_weight_decay is not None:
        record["weight_decay"] = max(group["weight_decay"] for group in run.optimizer.param_groups)
    run.pending.clear()
    return record
