"""Which curves a report draws: loss terms, schedules and monitors, grouped into panels, for one run or several.

A panel is one set of axes with one key (``info_nce``, ``collapse/rank``);
each run that logged the key adds a curve to it, so comparing runs overlays
them. Only keys that some run logged get a panel. The collapse monitor's
panels also carry horizontal reference lines: the healthy level and the
threshold it warns at, so a curve can be read against them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import math

import attrs

from jef.tools.report.data import RunRecord

__all__ = ["Curve", "Panel", "Reference", "loss_panels", "monitor_panels", "reduce_curve", "schedule_panels"]

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
class Reference:
    """A horizontal line across a panel: a level to read the curves against.

    Attributes:
        value: Its height.
        label: Legend text (what the level means, with its value).
        warning: True for a threshold the monitor warns at (drawn dotted), False for a healthy level (dashed).
    """

    value: float
    label: str
    warning: bool = False


@attrs.frozen
class Panel:
    """One set of axes: a title, the curves drawn on it and reference lines."""

    title: str
    curves: list[Curve]
    log_scale: bool = False
    references: list[Reference] = attrs.field(factory=list)


#: Logged by the collapse monitor with each check: the width d of the embeddings, for the reference lines only.
DIM_KEY = "collapse/dim"


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
    panels = _panels(records, lambda record, key: not record.is_term(key) and not _is_schedule(key)
                     and key != DIM_KEY, epoch_means=True)
    for panel in panels:
        panel.references.extend(_collapse_references(records, panel.title))
        if panel.title.endswith("knn_top1"):
            for index, record in enumerate(records):
                if isinstance(record.final.get("knn_top1"), int | float):
                    label = "final kNN" + (f", {record.name}" if len(records) > 1 else "")
                    panel.curves.append(Curve(index, label, [float(record.last_step)],
                                              [float(record.final["knn_top1"])], epoch=True))
    return panels


def _collapse_options(record: RunRecord) -> dict[str, object]:
    """The options of the run's collapse monitor as ``pipeline.yaml`` spells them out (empty when it has none)."""
    for slot in record.pipeline.get("monitors") or []:
        if isinstance(slot, dict) and str(slot.get("name", "")).rpartition(":")[2] == "collapse":
            return slot
    return {}


def _collapse_references(records: Sequence[RunRecord], key: str) -> list[Reference]:
    """The healthy level and the warning threshold of a collapse panel, one line per distinct value over runs.

    ``collapse/std`` is the raw std of l2-normalised embeddings: about ``1/sqrt(d)`` when they spread over the
    sphere, and the monitor warns under ``std_threshold/sqrt(d)``; d comes from the logged ``collapse/dim`` (a run
    that did not log it gets no std lines). ``collapse/rank`` warns under ``rank_threshold``,
    ``collapse/target_entropy`` at ``uniform_threshold`` and above.
    """
    lines: dict[tuple[float, bool], str] = {}
    for record in records:
        options = _collapse_options(record)
        if key == "collapse/std":
            dims = record.series(DIM_KEY)[1]
            if not dims or dims[-1] < 1:
                continue
            d = int(dims[-1])
            lines.setdefault((1 / math.sqrt(d), False), f"healthy 1/sqrt({d}) = {1 / math.sqrt(d):.3g}")
            threshold = options.get("std_threshold")
            if isinstance(threshold, int | float):
                lines.setdefault((threshold / math.sqrt(d), True),
                                 f"warns under {threshold:g}/sqrt({d}) = {threshold / math.sqrt(d):.3g}")
        elif key == "collapse/rank" and isinstance(options.get("rank_threshold"), int | float):
            lines.setdefault((float(options["rank_threshold"]), True), f"warns under {options['rank_threshold']:g}")
        elif key == "collapse/target_entropy" and isinstance(options.get("uniform_threshold"), int | float):
            lines.setdefault((float(options["uniform_threshold"]), True),
                             f"warns at {options['uniform_threshold']:g} and above")
    return [Reference(value, label, warning) for (value, warning), label in lines.items()]


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
