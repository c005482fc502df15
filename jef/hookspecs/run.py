"""Run hooks (``jef_run_start`` ... ``jef_run_end``): called during a run on the plugins active in it.

Re-exported by :mod:`jef.hookspecs`; see there for the two families of hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jef.hookspecs._markers import hookspec

if TYPE_CHECKING:
    from jef.components import StepOutputs, StepResult
    from jef.run.state import Run

__all__: list[str] = []


# -- Run hooks: called during a run on the plugins active in it ------------------------------------


@hookspec
def jef_run_start(run: Run) -> None:
    """Called once after the model, optimiser and data are prepared, before the first step.

    Args:
        run: The run: its context, pipeline, model, optimiser, accelerator and counters.
    """


@hookspec(firstresult=True)
def jef_train_step(run: Run, batch: Any) -> StepResult | None:
    """Compute the loss of one batch (forward only; the loop does backward).

    Stops at the first non-None result. jef's built-in implementation is
    ``trylast``: it augments the batch, runs both branches and evaluates the
    objective; a plugin the pipeline selected (its method or one of its
    components) that returns a result replaces it.

    Args:
        run: The run.
        batch: What the data loader yielded: ``(images, labels, indices)``.

    Returns:
        A :class:`~jef.components.StepResult`: ``loss`` (scalar tensor to
        back-propagate), ``terms`` (dict of named scalar tensors for logging)
        and ``outputs`` (:class:`~jef.components.StepOutputs` or None); or
        None to defer. A dict with those keys is accepted, with a
        DeprecationWarning, for one release.
    """


@hookspec
def jef_after_backward(run: Run) -> None:
    """Called after the backward pass and before the optimiser step.

    The place to edit gradients (e.g. zero the gradient of a frozen layer).

    Args:
        run: The run.
    """


@hookspec
def jef_step_end(run: Run, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
    """Called after each optimiser step (EMA update, queue enqueue, monitors).

    Args:
        run: The run; ``run.step`` is the number of optimiser steps done.
        outputs: The step's model outputs (detach before keeping them).
        terms: The step's loss terms, a mapping of floats averaged over processes that is read from the
            device only when a value is first accessed (``jef.run.terms.StepTerms``). Reading one stalls the
            step on a GPU and, with several processes, is an all-reduce every process must then do: read them
            only on steps where you need them (e.g. every N steps, on every process alike).
    """


@hookspec
def jef_epoch_end(run: Run, epoch: int, metrics: dict[str, float]) -> None:
    """Called at the end of each epoch, before its checkpoint (so what the hooks change is in it).

    Args:
        run: The run.
        epoch: The epoch just finished (0-based).
        metrics: Averages of the epoch's logged terms; hooks may add entries.
    """


@hookspec
def jef_run_end(run: Run, metrics: dict[str, float]) -> None:
    """Called once when training finished, after the final checkpoint.

    Args:
        run: The run.
        metrics: The final metrics (e.g. ``knn_top1``); hooks may add entries.
    """
