"""One optimiser step's micro-batches: the loss they sum to, the step's terms, and ``train.on_nonfinite``.

With ``train.grad_accum: k`` an optimiser step is k micro-batches, each with its own forward and backward
pass; Accelerate's ``accumulate`` context says when the last one has run (``sync_gradients``). This object
collects what the loop needs from them and decides, before the update, whether the step may update the
weights:

* ``stop`` (the default) never reads the loss on the host: the step's terms are handed to the run's
  :class:`~jef.run.faults.NonFiniteWatch`, which the loop reads at its sync points;
* ``skip`` reads the step's terms (one sync per step) and drops the update of a non-finite step, the
  BatchNorm buffers of its forward passes included (kept before its first micro-batch).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from jef.components import StepResult
from jef.run.faults import handle_nonfinite, keep_buffers, nonfinite_terms
from jef.run.terms import StepTerms, step_terms

__all__ = ["Accumulation", "as_step_result"]


class Accumulation:
    """The state of the optimiser step being accumulated.

    Attributes:
        terms: After the step's last micro-batch: its :class:`~jef.run.terms.StepTerms`; None before.
        update: False when the step's loss is non-finite and ``train.on_nonfinite: skip`` drops its update.
    """

    def __init__(self, run: Any) -> None:
        self.run = run
        self.skip_mode = run.pipeline.train.on_nonfinite == "skip"
        self._loss: Tensor | None = None
        self.terms: StepTerms | None = None
        self.update = True

    def start(self) -> None:
        """Before a micro-batch's forward pass: in ``skip`` mode, keep the buffers a skipped step restores."""
        if self.skip_mode and self._loss is None:
            keep_buffers(self.run)

    def add(self, result: StepResult) -> None:
        """After a micro-batch's backward pass: add its loss; at the step's last one, judge the step.

        Raises:
            jef.run.faults.NonFiniteLossError: ``skip`` gave up after too many non-finite steps in a row.
        """
        run, accelerator = self.run, self.run.accelerator
        loss = result.loss.detach()  # the sum keeps a NaN of any micro-batch visible
        self._loss = loss if self._loss is None else self._loss + loss
        self.terms, self.update = None, True
        if not accelerator.sync_gradients:
            return
        terms, self._loss = step_terms(result, self._loss, accelerator), None
        bad: list[str] = []
        if self.skip_mode:  # the update depends on this step's loss: read it now (a sync per step)
            bad = nonfinite_terms(terms.floats())
        else:  # remembered on the device, read at the next sync point
            run.nonfinite.observe(run.step + 1, terms.names, terms.values)
        if bad:  # before the update, so a non-finite step never reaches the weights
            handle_nonfinite(run, run.step + 1, terms.floats(), bad)  # raises after too many in a row
        self.terms, self.update = terms, not bad


def as_step_result(result: Any, hook: str = "jef_train_step") -> StepResult:
    """A hook's result as a :class:`~jef.components.StepResult` (a mapping is accepted, with a warning).

    Raises:
        TypeError: The result is neither, or lacks a loss; the message names what it got.
    """
    if isinstance(result, StepResult):
        return result
    if isinstance(result, Mapping) and "loss" in result:
        warnings.warn(f"{hook} returned a dict; return jef.components.StepResult(loss, terms, outputs) "
                      "(dicts are accepted until the next release)", DeprecationWarning, stacklevel=2)
        return StepResult(result["loss"], dict(result.get("terms", {})), result.get("outputs"))
    raise TypeError(f"{hook} returned {type(result).__name__}; expected a jef.components.StepResult "
                    "(loss, terms, outputs)")
