"""Which curves a report draws: loss terms, schedules and monitors, grouped into panels, for one run or several.

A panel is one set of axes with one key (``info_nce``, ``collapse/rank``);
each run that logged the key adds a curve to it, so comparing runs overlays
them. Only keys that some run logged get a panel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from jef.report.data import RunRecord

__all__ = ["Curve", "Panel", "loss_panels", "monitor_panels", "reduce_curve", "schedule_panels"]

#: A curve longer than this is drawn as bucket means with a min-max band, so a 1M-step run stays quick to draw
#: and a one-step spike still shows.
CURVE_POINTS = 2000


@attrs.frozen
class Curve:
    """One run's values of one key.

    Attributes:
        run: Index of the run (its colour).
        label: Legend text.
        steps: Optimiser steps.
        values: Values at those steps.
        epoch: True for per-epoch values (drawn as markers).
    """

    run: int
    label: str
    steps: list[float]
    values: list[float]
    epoch: bool = False


@attrs.frozen
class Panel:
    """One set of axes: a title and the curves drawn on it."""

    title: str
    curves: list[Curve]
    log_scale: bool = False


def _is_schedule(key: str) -> bool:
    """Learning rates and other scheduled values (EMA momentum): set by the recipe, not measured."""
    return key == "lr" or key.startswith("lr/") or key.endswith("/momentum")


def _panels(records: Sequence[RunRecord], wanted: Callable[[RunRecord, str], bool], *,
            epoch_means: bool) -> list[Panel]:
    """A panel per wanted key, with a step curve (and epoch markers) from each run that logged it."""
    keys: dict[str, None] = {}
    for record in records:
        for key in record.keys(record.steps) + (record.keys(record.epochs) if epoch_means else []):
            if wanted(record, key):
                keys.setdefault(key, None)
    several = len(records) > 1
    panels = []
    for key in keys:
        curves = []
        for index, record in enumerate(records):
            steps, values = record.series(key)
            if steps:
                curves.append(Curve(index, record.name if several else "logged steps", steps, values))
            steps, values = record.series(key, epochs=True) if epoch_means else ([], [])
            if steps:
                label = f"{record.name}, epoch mean" if several else "epoch mean"
                curves.append(Curve(index, label, steps, values, epoch=True))
        if curves:
            panels.append(Panel(key, curves))
    return panels


def loss_panels(records: Sequence[RunRecord]) -> list[Panel]:
    """The total loss and each term of the objective, over steps, with per-epoch means."""
    return _panels(records, lambda record, key: record.is_term(key), epoch_means=True)


def schedule_panels(records: Sequence[RunRecord]) -> list[Panel]:
    """The learning rate (and momentum schedules) over steps."""
    return _panels(records, lambda record, key: _is_schedule(key), epoch_means=False)


def monitor_panels(records: Sequence[RunRecord]) -> list[Panel]:
    """Every other logged value: collapse diagnostics, online probes, kNN, over steps and epochs.

    The final kNN numbers of ``jef train`` are added as markers at the last step to a panel that tracks kNN
    top-1 online, so the end-of-training number can be read against the curve.
    """
    panels = _panels(records, lambda record, key: not record.is_term(key) and not _is_schedule(key),
                     epoch_means=True)
    for panel in panels:
        if panel.title.endswith("knn_top1"):
            for index, record in enumerate(records):
                if isinstance(record.final.get("knn_top1"), int | float):
                    label = "final kNN" + (f", {record.name}" if len(records) > 1 else "")
                    panel.curves.append(Curve(index, label, [float(record.last_step)],
                                              [float(record.final["knn_top1"])], epoch=True))
    return panels


def reduce_curve(steps: Sequence[float], values: Sequence[float], points: int = CURVE_POINTS,
                 ) -> tuple[list[float], list[float], list[float], list[float]]:
    """``(steps, means, lows, highs)`` over at most ``points`` equal buckets (identity for short curves)."""
    if len(steps) <= points:
        return list(steps), list(values), list(values), list(values)
    size = len(steps) / points
    out: tuple[list[float], list[float], list[float], list[float]] = ([], [], [], [])
    for bucket in range(points):
        lo, hi = int(bucket * size), max(int((bucket + 1) * size), int(bucket * size) + 1)
        chunk = [v for v in values[lo:hi] if v == v]  # NaN (v != v) would poison the mean
        if not chunk:
            continue
        out[0].append(steps[(lo + hi - 1) // 2])
        out[1].append(sum(chunk) / len(chunk))
        out[2].append(min(chunk))
        out[3].append(max(chunk))
    return out
