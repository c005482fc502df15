"""What a run does when something goes wrong: a signal, a non-finite loss.

Clusters stop jobs with SIGTERM (SLURM preemption, ``scancel``, a time limit)
and people stop them with Ctrl-C (SIGINT). Either asks the run to stop after
the current step, on every process; the loop then writes a checkpoint and
:func:`jef.train.train` raises :class:`RunInterrupted`, whose message says how
to resume. A second Ctrl-C stops at once, as Python normally does.

A loss that is NaN or infinite is checked before the optimiser step, so the
weights and the last checkpoint stay good: ``train.on_nonfinite: stop`` ends
the run with :class:`NonFiniteLossError` naming the step and the terms that
went non-finite; ``skip`` drops the step's update and goes on, and gives up
after :data:`MAX_CONSECUTIVE_SKIPS` skipped steps in a row.
"""

from __future__ import annotations

import math
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["MAX_CONSECUTIVE_SKIPS", "NonFiniteLossError", "RunInterrupted", "handle_nonfinite", "nonfinite_terms",
           "stop_on_signals"]

#: ``on_nonfinite: skip`` gives up after this many non-finite steps in a row: the run has diverged.
MAX_CONSECUTIVE_SKIPS = 10

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(Exception):
    """A signal stopped the run; its checkpoint was written first.

    Attributes:
        signal_number: The signal (``signal.SIGTERM``, ``signal.SIGINT``).
        step: The last optimiser step done, the one the checkpoint holds.
        directory: The run directory holding the checkpoint.
        exit_status: What a command line tool should exit with (128 + signal number, the shell's convention).
    """

    def __init__(self, signal_number: int, step: int, directory: Path | None) -> None:
        self.signal_number, self.step, self.directory = signal_number, step, directory
        self.exit_status = 128 + signal_number
        name = signal.Signals(signal_number).name
        where = f"; checkpoint saved in {directory}" if directory is not None else ""
        super().__init__(f"received {name}: stopped after step {step}{where}; continue with the same "
                         f"command and --resume")


class NonFiniteLossError(FloatingPointError):
    """The loss went NaN or infinite; the weights were not updated with it and no checkpoint was overwritten.

    Attributes:
        step: The optimiser step whose loss was non-finite.
        terms: That step's loss terms, averaged over processes.
        bad: The names of the non-finite terms.
    """

    def __init__(self, step: int, terms: dict[str, float], bad: list[str], situation: str) -> None:
        self.step, self.terms, self.bad = step, terms, bad
        shown = ", ".join(f"{key}={value:.4g}" for key, value in terms.items())
        super().__init__(
            f"step {step}: non-finite {', '.join(repr(key) for key in bad)} ({shown}); {situation}; try a lower "
            f"train.optimizer.lr, a longer train.scheduler.warmup_epochs, train.clip_grad_norm or precision 'no'")


def nonfinite_terms(terms: dict[str, float]) -> list[str]:
    """The names of the terms that are NaN or infinite: the individual terms first, ``loss`` only if no term is.

    The total is named alone when it overflowed although each term is finite.
    """
    bad = [key for key, value in terms.items() if key != "loss" and not math.isfinite(value)]
    if not bad and not math.isfinite(terms.get("loss", 0.0)):
        bad = ["loss"]
    return bad


def handle_nonfinite(run: Any, step: int, terms: dict[str, float], bad: list[str]) -> None:
    """Stop (``train.on_nonfinite: stop``) or count a skipped step (``skip``) for optimiser step ``step``, whose
    ``bad`` terms are non-finite. The loop has not updated the weights with it.

    Raises:
        NonFiniteLossError: In ``stop`` mode, or after :data:`MAX_CONSECUTIVE_SKIPS` skipped steps in a row.
    """
    kept = (f"the last checkpoint (step {run.checkpoint_step}) is kept" if run.checkpoint_step is not None
            else "no checkpoint had been written yet")
    if run.pipeline.train.on_nonfinite == "stop":
        raise NonFiniteLossError(step, terms, bad, f"the weights were not updated and {kept}; "
                                 f"train.on_nonfinite: skip drops such steps instead")
    run.skipped_steps += 1
    run.skipped_in_a_row += 1
    if run.skipped_in_a_row >= MAX_CONSECUTIVE_SKIPS:
        raise NonFiniteLossError(step, terms, bad, f"{run.skipped_in_a_row} steps in a row were non-finite, so "
                                 f"the run has diverged and skipping cannot help; {kept}")
    run.log({"skipped_steps": run.skipped_steps})
    if run.accelerator.is_main_process:
        shown = ", ".join(f"{key}={terms[key]:.4g}" for key in bad)
        warnings.warn(f"step {step}: non-finite {shown}; the step was skipped (train.on_nonfinite: skip, "
                      f"{run.skipped_steps} so far)", RuntimeWarning, stacklevel=2)


@contextmanager
def stop_on_signals(request_stop: Any) -> Iterator[dict[str, int]]:
    """While inside, SIGTERM and SIGINT call ``request_stop(reason)`` instead of killing the process.

    Args:
        request_stop: Called from the signal handler with a reason; it must only set flags
            (:meth:`jef.train.Run.request_stop`), the loop acts on them after the step.

    Yields:
        A dict that gets ``{"signal": number}`` once a signal arrived. Outside the main thread (where Python
        cannot install handlers) nothing is installed and the dict stays empty.
    """
    received: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handle(number: int, frame: Any) -> None:
        if number == signal.SIGINT and received.get("signal") == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step to end
        received["signal"] = number
        request_stop(f"received {signal.Signals(number).name}")

    previous = {number: signal.signal(number, handle) for number in _SIGNALS}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
