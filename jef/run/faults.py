"""What a run does when something goes wrong: a signal, a non-finite loss.

Clusters stop jobs with SIGTERM (SLURM preemption, ``scancel``, a time limit)
and people stop them with Ctrl-C (SIGINT). Either asks the run to stop after
the current step, on every process; the loop then writes a checkpoint and
:func:`jef.run.loop.train` raises :class:`RunInterrupted`, whose message says how
to resume. A second signal does not abort the step or the checkpoint: the
checkpoint always holds a whole step (SIGKILL stops at once, keeping the
previous checkpoint). With several processes, a signal received by one is
shared with all at the loop's sync points, so every process stops with
:class:`RunInterrupted` after the same step.

A loss that is NaN or infinite never reaches a checkpoint. With
``train.on_nonfinite: stop`` (the default) the loop does not read the loss at
every step, which would make the host wait for the device: a
:class:`NonFiniteWatch` remembers on the device the first non-finite step and
its terms, and the loop reads it every ``train.log_every`` steps, at epoch ends
and before writing any checkpoint; it then ends the run with
:class:`NonFiniteLossError` naming that step and its terms (the weights were
updated after it, the last checkpoint is from before it). ``skip`` must decide
before each optimiser step, so it reads the terms at every step (one sync per
step): it drops the step's update and goes on, and gives up after
:data:`MAX_CONSECUTIVE_SKIPS` skipped steps in a row.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jef.dist import all_reduce_max

__all__ = ["MAX_CONSECUTIVE_SKIPS", "NonFiniteLossError", "NonFiniteStateError", "NonFiniteWatch", "RunInterrupted",
           "check_finite_state", "handle_nonfinite", "keep_buffers", "nonfinite_terms", "stop_on_signals",
           "sync_point"]

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
    """The loss went NaN or infinite; no checkpoint was written after that step.

    Attributes:
        step: The first optimiser step whose loss was non-finite.
        terms: That step's loss terms (``skip``: averaged over processes; ``stop``: as the process that saw the
            earliest non-finite step computed them).
        bad: The names of the non-finite terms.
    """

    def __init__(self, step: int, terms: dict[str, float], bad: list[str], situation: str) -> None:
        self.step, self.terms, self.bad = step, terms, bad
        shown = ", ".join(f"{key}={value:.4g}" for key, value in terms.items())
        super().__init__(
            f"step {step}: non-finite {', '.join(repr(key) for key in bad)} ({shown}); {situation}; try a lower "
            f"train.optimizer.lr, a longer train.scheduler.warmup_epochs, train.clip_grad_norm or precision 'no'")


class NonFiniteStateError(FloatingPointError):
    """The model holds NaN or infinite parameters or buffers; no checkpoint was written with them.

    Attributes:
        step: The step whose checkpoint was refused.
        name: The first non-finite tensor of the model's state dict (on the first process that holds one).
        count: How many of the model's tensors hold non-finite values there.
    """

    def __init__(self, step: int, name: str, kind: str, count: int, rank: int | None, kept: str) -> None:
        self.step, self.name, self.count = step, name, count
        others = f" and {count - 1} other tensor{'s' if count > 2 else ''}" if count > 1 else ""
        where = f" of process {rank}" if rank is not None else ""
        super().__init__(
            f"step {step}: the model{where} holds non-finite values in {kind} {name!r}{others}, although the loss "
            f"was finite (the weights overflowed, or a forward pass wrote NaN into running statistics); the "
            f"checkpoint of step {step} was not written and {kept}; try a lower train.optimizer.lr, "
            f"train.clip_grad_norm or precision 'no'")


def check_finite_state(run: Any) -> None:
    """Refuse to checkpoint a model whose parameters or buffers are NaN or infinite.

    Checked on the device (a flag per floating-point tensor) and read once, at each checkpoint; with several
    processes every process checks its own model (buffers may differ per process) and they agree with a gather,
    so all of them raise.

    Raises:
        NonFiniteStateError: Naming the first non-finite tensor.
    """
    model = run.unwrapped_model
    # A tokenizer's extra state (its vocabulary) is no tensor.
    named = [(name, t) for name, t in model.state_dict(keep_vars=True).items()
             if isinstance(t, torch.Tensor) and torch.is_floating_point(t)]
    if not named:
        return
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in named])
    local = torch.stack([(~finite).sum(), torch.argmin(finite.to(torch.uint8))])  # count, first non-finite
    rows = run.accelerator.gather(local[None]).tolist() if run.accelerator.num_processes > 1 else [local.tolist()]
    bad = [(rank, count, first) for rank, (count, first) in enumerate(rows) if count]
    if not bad:
        return
    rank, count, first = bad[0]
    name = named[first][0]
    kind = "parameter" if name in dict(model.named_parameters()) else "buffer"
    raise NonFiniteStateError(run.step, name, kind, count, rank if len(rows) > 1 else None, _kept(run))


def keep_buffers(run: Any) -> None:
    """Copy the model's buffers before a step's first forward pass (``train.on_nonfinite: skip`` only).

    A forward pass in training mode updates buffers (BatchNorm's running statistics) before the loss is known;
    a skipped step puts them back (:func:`handle_nonfinite`), so it leaves no NaN behind in them.
    """
    run.nonfinite.buffers = [b.detach().clone() for b in run.unwrapped_model.buffers()]


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
    kept = _kept(run)
    if run.pipeline.train.on_nonfinite == "stop":
        raise NonFiniteLossError(step, terms, bad, f"the weights were not updated and {kept}; "
                                 f"train.on_nonfinite: skip drops such steps instead")
    if run.nonfinite.buffers is not None:  # the skipped forward passes' updates of running statistics
        with torch.no_grad():
            for buffer, kept_copy in zip(run.unwrapped_model.buffers(), run.nonfinite.buffers, strict=True):
                buffer.copy_(kept_copy)
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


def _kept(run: Any) -> str:
    return (f"the last checkpoint (step {run.checkpoint_step}) is kept" if run.checkpoint_step is not None
            else "no checkpoint had been written yet")


class NonFiniteWatch:
    """Remembers, on the device, the first optimiser step whose loss terms were non-finite (``on_nonfinite: stop``).

    :meth:`observe` runs at every step and never makes the host wait for the device (``torch.where`` on device
    tensors); :meth:`check` reads what it saw and is called by the loop at its sync points: every
    ``train.log_every`` steps, at epoch ends and before every checkpoint, so a checkpoint never holds weights
    updated with a non-finite loss.
    """

    def __init__(self) -> None:
        self.names: list[str] | None = None
        self.first: Tensor | None = None  # 0: no non-finite step yet
        self.values: Tensor | None = None  # the terms of step ``first``
        self.buffers: list[Tensor] | None = None  # the model's buffers before this step (keep_buffers, skip only)

    def observe(self, step: int, names: list[str], values: Tensor) -> None:
        """Record ``values`` (the terms ``names`` of optimiser ``step``) if they are the first non-finite ones."""
        if self.first is None or self.names != names:
            if self.first is not None:  # other terms from now on: settle what the old ones showed first
                self._raise_if_seen(None)
            self.names = list(names)
            self.first = torch.zeros((), dtype=torch.long, device=values.device)
            self.values = torch.zeros_like(values)
        newly = (self.first == 0) & ~torch.isfinite(values).all()
        self.first = torch.where(newly, step, self.first)
        self.values = torch.where(newly, values, self.values)

    def check(self, run: Any) -> None:
        """Raise if some process saw a non-finite step (one sync; with several processes, a gather).

        Every process must call it at the same step: the processes agree on the earliest non-finite step.

        Raises:
            NonFiniteLossError: Naming the first non-finite step and its terms.
        """
        self._raise_if_seen(run)

    def _raise_if_seen(self, run: Any) -> None:
        if self.first is None or self.values is None or self.names is None:
            return
        local = torch.cat([self.first.reshape(1).double(), self.values.double()])
        seen = run.accelerator.gather(local[None]) if run is not None else local[None]
        rows = [row for row in seen.tolist() if row[0] > 0]
        if not rows:
            return
        first = min(row[0] for row in rows)
        earliest = [row[1:] for row in rows if row[0] == first]
        terms = {name: sum(row[i] for row in earliest) / len(earliest) for i, name in enumerate(self.names)}
        bad = nonfinite_terms(terms) or list(self.names)
        step = int(first)
        now = run.step if run is not None else step
        raise NonFiniteLossError(step, terms, bad, (
            f"found at step {now}: with train.on_nonfinite: stop the loss is read every train.log_every steps, at "
            f"epoch ends and before each checkpoint, not at every step, so the weights were updated after step "
            f"{step} and are not usable; {_kept(run) if run is not None else 'no checkpoint was written after it'}"
            f"; train.on_nonfinite: skip checks every step and drops such steps instead"))


def sync_point(run: Any) -> None:
    """Where the training loop's processes read what the device remembered, at the same step on every process.

    Raises :class:`NonFiniteLossError` if a non-finite loss was seen (``train.on_nonfinite: stop``), and sets
    ``run.stopping`` when some process asked to stop (a signal, :meth:`jef.run.state.Run.request_stop`); a
    signal received by any process is then known to all, so every process stops with :class:`RunInterrupted`.
    """
    if run.pipeline.train.on_nonfinite == "stop":
        run.nonfinite.check(run)
    _agree_on_stop(run)


def _agree_on_stop(run: Any) -> None:
    """Share among the processes whether one asked to stop, and the signal it received (one small all-reduce)."""
    received = _ACTIVE.get("received")
    if run.accelerator.num_processes == 1:
        run.stopping = run.stopping or bool(run.stop_reason)
        return
    local = [received.get("signal", 0) if received else 0, 1 if run.stop_reason else 0]
    number, asked = all_reduce_max(torch.tensor(local, device=run.accelerator.device)).tolist()
    if number and received is not None and "signal" not in received:  # another process got the signal
        received["signal"] = number
        run.stop_reason = run.stop_reason or f"stop requested by another process ({signal.Signals(number).name})"
    if asked:
        run.stop_reason = run.stop_reason or "stop requested by another process"
        run.stopping = True


#: The signals received by this process's running :func:`stop_on_signals` (signals are per process).
_ACTIVE: dict[str, dict[str, int]] = {}


@contextmanager
def stop_on_signals(run: Any) -> Iterator[dict[str, int]]:
    """While inside, SIGTERM and SIGINT ask ``run`` to stop after the step instead of killing the process.

    The first signal calls ``run.request_stop(reason)`` (which only sets flags: the loop stops after the step
    and writes the checkpoint). Any further signal is deferred too: the process says once that it is writing the
    checkpoint and goes on, so the checkpoint always holds a whole step (SIGKILL stops at once, keeping the
    previous checkpoint intact). Only the main process prints. With several processes, a signal that only some
    received is shared at the loop's sync points and once more on leaving, so every process raises
    :class:`RunInterrupted`; a signal arriving after that last agreement is delivered again, to the handler
    that was there before, once the block is left.

    Yields:
        A dict that gets ``{"signal": number}`` once a signal arrived (on any process). Outside the main thread
        (where Python cannot install handlers) nothing is installed and the dict stays empty.
    """
    received: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    main = run.accelerator.is_main_process

    def say(text: str) -> None:  # os.write: print() from a signal handler can re-enter a half-done print
        if main:
            os.write(2, f"jef: {text}\n".encode())

    def handle(number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        if received.get("closed"):  # after the processes' last agreement: not this run's any more
            received.setdefault("late", number)
        elif "signal" not in received:
            received["signal"] = number
            run.request_stop(f"received {name}")
            say(f"received {name}: stopping after the current step and writing the checkpoint")
        elif not received.get("told"):
            received["told"] = 1
            say(f"received {name} again: stopping: writing the checkpoint, please wait (it will hold the last "
                f"whole step; SIGKILL stops at once and keeps the previous checkpoint)")

    previous = {number: signal.signal(number, handle) for number in _SIGNALS}
    _ACTIVE["received"] = received
    try:
        yield received
        if run.accelerator.num_processes > 1:  # a signal since the last sync point: every process must know it
            _agree_on_stop(run)
    finally:
        received["closed"] = 1
        _ACTIVE.pop("received", None)
        for number, handler in previous.items():
            signal.signal(number, handler)
        for key in ("closed", "told"):
            received.pop(key, None)
        late = received.pop("late", None)
        if late is not None:
            signal.raise_signal(late)
