"""The numbers of a compare: per method (and baseline), mean and spread over seeds; ``compare.json``, ``compare.csv``.

Per run: the offline accuracies of ``evaluation.json`` (``knn_top1``, ``linear_top1``, ``finetune_top1`` when run),
the training time and the median ``images_per_s`` of ``metrics.jsonl``, and the collapse monitor's last
``collapse/std`` and ``collapse/rank`` when it logged them. Over seeds: the mean, and the spread: the sample
standard deviation (n - 1) for three seeds or more, the min and max for two, none for one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jef.files import atomic_write
from jef.tools.compare.plan import Plan

__all__ = ["METRICS", "SPREAD", "csv_text", "run_values", "spread_kind", "summarise", "train_seconds", "write_tables",
           "write_text"]

#: ``(key, column heading, which is best)``: the columns, in order; ``None``: no best value is marked.
METRICS: tuple[tuple[str, str, str | None], ...] = (
    ("knn_top1", "kNN top-1", "max"),
    ("linear_top1", "linear top-1", "max"),
    ("finetune_top1", "fine-tune top-1", "max"),
    ("train_time_s", "train time (s)", "min"),
    ("images_per_s", "images/s (median)", "max"),
    ("collapse_std", "collapse/std (last)", None),
    ("collapse_rank", "collapse/rank (last)", "max"),
)
#: How the spread is given, as written in compare.json.
SPREAD = ("mean and spread over the seeds that succeeded: the sample standard deviation (n - 1) for 3 seeds or "
          "more ('std'), the minimum and maximum for 2 ('min-max'), none for 1")
JSON_NAME, CSV_NAME = "compare.json", "compare.csv"


def spread_kind(n: int) -> str | None:
    """``std`` for 3 values or more, ``min-max`` for 2, None for 1."""
    return "std" if n >= 3 else "min-max" if n == 2 else None


def _stats(per_seed: Mapping[int, float]) -> dict[str, Any]:
    values = list(per_seed.values())
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values), "spread": spread_kind(len(values)),
            "per_seed": {str(seed): value for seed, value in per_seed.items()}}


def _lines(directory: Path) -> list[dict[str, Any]]:
    path, rows = directory / "metrics.jsonl", []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: the report names it; here it is skipped
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def train_seconds(rows: list[dict[str, Any]]) -> float | None:
    """Seconds of training: from each part's start line (``run/...``; a resumed run has several) to its last step
    or epoch line, summed. End-of-run evaluation (after the last step) is not counted."""
    total, start, end = 0.0, None, None
    for row in rows:
        when = row.get("time")
        if not isinstance(when, int | float):
            continue
        if any(key.startswith("run/") for key in row):
            if start is not None and end is not None:
                total += end - start
            start, end = when, None
        elif not any(key.startswith("final/") for key in row) and start is not None:
            end = when
    if start is not None and end is not None:
        total += end - start
    return total if total > 0 else None


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if isinstance(row.get(key), int | float) and not isinstance(row[key], bool)]
    return float(values[-1]) if values else None


def run_values(directory: Path, metrics: Mapping[str, Any]) -> dict[str, float]:
    """One run's numbers: evaluation.json's accuracies (else the final metrics'), time, throughput, collapse."""
    from jef.evaluate.protocols import read_evaluation

    try:
        stored = read_evaluation(directory)
    except ValueError:  # a damaged evaluation.json: the final metrics the run logged stand in
        stored = {}
    evaluation = {key: entry.get("value") for key, entry in stored.items() if isinstance(entry, dict)}
    lines = _lines(directory)
    rows = [row for row in lines if not any(k.startswith(("run/", "final/")) for k in row)]
    rates = sorted(row["images_per_s"] for row in rows if isinstance(row.get("images_per_s"), int | float))
    values: dict[str, Any] = {key: evaluation.get(key, metrics.get(key)) for key, _, _ in METRICS[:3]}
    values.update(train_time_s=train_seconds(lines),
                  images_per_s=statistics.median(rates) if rates else None,
                  collapse_std=_last(rows, "collapse/std"), collapse_rank=_last(rows, "collapse/rank"))
    return {key: float(value) for key, value in values.items()
            if isinstance(value, int | float) and math.isfinite(value)}


def summarise(plan: Plan, outcomes: Mapping[tuple[str, int], Any]) -> dict[str, Any]:
    """The compare's numbers: one row per method, then per baseline, each with mean, spread and per-seed values."""
    rows = []
    names = [*((m, "method") for m in plan.methods), *((b, "baseline") for b in plan.baselines)]
    for name, kind in names:
        key = name if kind == "method" else f"baseline:{name}"
        runs, per_metric = {}, {}
        for seed in plan.seeds:
            outcome = outcomes[(key, seed)]
            if kind == "method":
                directory = next(s.directory for s in plan.runs if s.method == name and s.seed == seed)
            else:
                directory = plan.output / "baselines" / name / f"seed{seed}"
            entry = {"directory": str(directory), "status": outcome.status, "error": outcome.error}
            if outcome.status != "failed":
                entry["values"] = run_values(directory, outcome.metrics)
                for metric, value in entry["values"].items():
                    per_metric.setdefault(metric, {})[seed] = value
            runs[str(seed)] = entry
        rows.append({"name": name, "kind": kind, "seeds": list(plan.seeds),
                     "failed": [int(s) for s, e in runs.items() if e["status"] == "failed"],
                     "errors": [e["error"] for e in runs.values() if e["error"]],
                     "metrics": {metric: _stats(per_metric[metric]) for metric, _, _ in METRICS
                                 if metric in per_metric},
                     "runs": runs})
    return {"pipeline": str(plan.source), "output": str(plan.output), "methods": list(plan.methods),
            "seeds": list(plan.seeds), "baselines": list(plan.baselines), "spread": SPREAD, "rows": rows}


def csv_text(summary: Mapping[str, Any]) -> str:
    """One line per method and baseline: mean, std, min, max and each seed's value of every metric."""
    seeds = summary["seeds"]
    header = ["name", "kind", "seeds", "failed_seeds", "spread"]
    for metric, _, _ in METRICS:
        header += [f"{metric}_{part}" for part in ("mean", "std", "min", "max")]
        header += [f"{metric}_seed{seed}" for seed in seeds]
    header.append("errors")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)

    def cell(value: Any) -> str:
        return "" if value is None else repr(value) if isinstance(value, float) else str(value)

    for row in summary["rows"]:
        ok = len(row["seeds"]) - len(row["failed"])
        line = [row["name"], row["kind"], " ".join(map(str, row["seeds"])), " ".join(map(str, row["failed"])),
                spread_kind(ok) or ""]
        for metric, _, _ in METRICS:
            stats = row["metrics"].get(metric, {})
            line += [cell(stats.get(part)) for part in ("mean", "std", "min", "max")]
            line += [cell(stats.get("per_seed", {}).get(str(seed))) for seed in seeds]
        line.append(" | ".join(row["errors"]))
        writer.writerow(line)
    return out.getvalue()


def write_tables(output: Path, summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``compare.json`` and ``compare.csv`` atomically; returns their paths."""
    text = json.dumps(summary, indent=2) + "\n"
    table = csv_text(summary)
    write_text(output / JSON_NAME, text)
    write_text(output / CSV_NAME, table)
    return output / JSON_NAME, output / CSV_NAME


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically, with the mode ``open()`` gives (0644 under umask 022; see :mod:`jef.files`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
