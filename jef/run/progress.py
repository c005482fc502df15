"""What a run shows while it trains: the progress bar, and the summary when it ends.

The bar refreshes every step from values already on the host (the images counted so far, the wall clock
and the loss of the last logged step), so it never makes the host wait for the device; the loss it shows
is the one last read at a log step (``train.log_every``).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = ["TrainProgress", "format_duration", "next_commands"]


def format_duration(seconds: float) -> str:
    """``"42s"``, ``"3m 05s"`` or ``"2h 03m"``: a wall time as people read it."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def next_commands(directory: Path | str) -> list[str]:
    """The commands people run on a finished run, with its directory filled in."""
    directory = str(directory)
    return [f"jef report {directory}   # an HTML report: curves, collapse diagnostics, neighbours",
            f"jef eval {directory} --protocol all   # kNN, linear probe and fine-tuning again",
            f"jef export {directory} --output {directory}/export   # the backbone, loadable without jef"]


class TrainProgress:
    """The training bar (``epoch 4/4``, images/s and the last logged loss) and the end-of-run summary.

    Args:
        name: What trains (the method's name), the bar's label.
        total: The run's optimiser steps.
        done: Steps already done (a resumed run).
        steps_per_epoch: Optimiser steps per epoch, for the 1-based ``epoch E/N`` shown.
        enabled: Show the bar and the summary (``train.progress``, on the main process only).
    """

    def __init__(self, name: str, total: int, done: int, steps_per_epoch: int, *, enabled: bool) -> None:
        self.name, self.total, self.first_step, self.enabled = name, total, done, enabled
        self.epochs = max(1, math.ceil(total / max(steps_per_epoch, 1)))
        self.started = time.perf_counter()
        self.images = 0
        self.trained: float | None = None  # when training ended (close), before the evaluation
        self.loss: float | None = None
        self.shown_epoch: int | None = None
        self.bar = tqdm(total=total, initial=done, desc=f"train {name}", unit="step", disable=not enabled,
                        mininterval=0.5, dynamic_ncols=True)

    def step(self, epoch: int, images: int, epoch_rate: float) -> None:
        """One optimiser step done: ``images`` more images (all processes), ``epoch_rate`` images/s this epoch."""
        self.images += images
        if not self.enabled:
            return
        loss = "" if self.loss is None or not math.isfinite(self.loss) else f", loss {self.loss:.4f}"
        shown = min(epoch + 1, self.epochs)
        self.bar.set_postfix_str(f"epoch {shown}/{self.epochs}, {epoch_rate:,.0f} img/s{loss}",
                                 refresh=False)  # update() redraws, at most every mininterval
        self.bar.update(1)
        if shown != self.shown_epoch:  # each epoch is drawn at its first step, however short it is
            self.shown_epoch = shown
            self.bar.refresh()

    def logged(self, record: dict[str, Any]) -> None:
        """A log step's record: its loss is what the bar shows until the next log step."""
        value = record.get("loss")
        if isinstance(value, int | float):
            self.loss = float(value)

    def close(self) -> None:
        """Close the bar, and note when training ended (idempotent)."""
        if self.trained is None:
            self.trained = time.perf_counter()
        self.bar.close()

    def summary(self, step: int, directory: Path | str | None) -> str:
        """The lines printed when the run ends: where it is, how long it took, how fast, and what to run next."""
        now = time.perf_counter()
        trained = self.trained or now
        wall, steps = trained - self.started, step - self.first_step
        rate = f"{self.images / wall:,.0f} images/s" if wall > 0 and self.images else "no images"
        resumed = f" (resumed at step {self.first_step})" if self.first_step else ""
        evaluated = f", evaluated in {format_duration(now - trained)}" if now - trained >= 0.05 else ""
        lines = [f"jef: trained {self.name} for {steps} steps{resumed} in {format_duration(wall)} ({rate})"
                 f"{evaluated}", f"run directory: {directory}"]
        if directory is not None:
            lines += ["next:"] + [f"  {command}" for command in next_commands(directory)]
        return "\n".join(lines)

    def print_summary(self, step: int, directory: Path | str | None) -> None:
        """Print :meth:`summary` on stderr, when the bar is shown."""
        if self.enabled:
            tqdm.write(self.summary(step, directory), file=sys.stderr)
