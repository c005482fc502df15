"""Reading run directories for ``jef report``: resolved pipeline, plugins, metrics and evaluation results.

Nothing here needs torch or the model: a report of the logged numbers works
for a run without a checkpoint, or whose plugins are no longer installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from jef.run.checkpoint import CHECKPOINT_NAME

__all__ = ["FinalNumber", "ReportError", "RunRecord", "final_numbers", "pipeline_differences", "read_metrics",
           "read_run", "run_names"]

#: Columns of every step line that are bookkeeping, not curves.
META_KEYS = ("step", "time", "images_per_s", "epoch")
EVALUATION_NAME = "evaluation.json"


class ReportError(Exception):
    """A run directory cannot be reported on; the message names the file and says what to do."""


@attrs.frozen
class FinalNumber:
    """One number of the summary table.

    Attributes:
        key: Metric name without the ``final/`` prefix (``knn_top1``).
        value: The number (or, from ``evaluation.json``, whatever was stored).
        protocol: How it was measured, in words.
        source: The file it comes from.
    """

    key: str
    value: Any
    protocol: str
    source: str


@attrs.define
class RunRecord:
    """What a run directory says about its run, without building its model.

    Attributes:
        directory: The run directory.
        name: Short name used in legends and headings.
        pipeline_text: ``pipeline.yaml`` as written.
        pipeline: ``pipeline.yaml`` parsed.
        plugins: ``plugins.json`` parsed, or None when the file is missing.
        steps: One dict per step line of ``metrics.jsonl``.
        epochs: One dict per epoch line, ``epoch/`` prefixes removed, with ``step``.
        final: The ``final/`` values of the last final line, prefixes removed.
        evaluation: ``evaluation.json`` parsed, or None when the file is missing.
    """

    directory: Path
    name: str
    pipeline_text: str
    pipeline: dict[str, Any]
    plugins: list[dict[str, Any]] | None
    steps: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    final: dict[str, Any]
    evaluation: dict[str, Any] | None

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint file, or None when the run saved none."""
        path = self.directory / CHECKPOINT_NAME
        return path if path.is_file() else None

    @property
    def last_step(self) -> int:
        """The last optimiser step logged (0 when nothing was)."""
        return int(max((row["step"] for row in [*self.steps, *self.epochs]), default=0))

    @property
    def wall_time(self) -> float | None:
        """Seconds between the first and the last logged line."""
        times = [row["time"] for row in self.steps if isinstance(row.get("time"), int | float)]
        return times[-1] - times[0] if len(times) > 1 else None

    def keys(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Numeric keys of ``rows`` other than bookkeeping, in order of first appearance."""
        seen: dict[str, None] = {}
        for row in rows:
            for key, value in row.items():
                if key not in META_KEYS and _number(value) is not None:
                    seen.setdefault(key, None)
        return list(seen)

    def series(self, key: str, *, epochs: bool = False) -> tuple[list[float], list[float]]:
        """``(steps, values)`` of ``key`` over the step lines (or the epoch lines), where it was logged.

        A resumed run logs again the steps after its last checkpoint; the later line of a step wins, so the
        curve is the one the finished run followed.
        """
        values: dict[float, float] = {}
        for row in self.epochs if epochs else self.steps:
            value = _number(row.get(key))
            if value is not None:
                values[float(row["step"])] = value
        steps = sorted(values)
        return steps, [values[step] for step in steps]

    def is_term(self, key: str) -> bool:
        """Whether ``key`` is a loss term: ``loss``, ``energy/...`` or a functional named in the pipeline."""
        functionals = {slot.get("name") for slot in self.pipeline.get("functionals") or [] if isinstance(slot, dict)}
        head = key.split("/", 1)[0]
        return key == "loss" or head == "energy" or key in functionals or head in functionals


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a number (NaN and inf included: a diverged loss is worth seeing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Split ``metrics.jsonl`` into step lines, epoch lines and the final values.

    Raises:
        ReportError: A line is not a JSON object with a numeric ``step``; names the file and the line.
    """
    steps: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReportError(f"{path}, line {number}: not valid JSON ({error.msg}); a run killed while "
                                  f"writing can leave a cut line: delete or repair that line") from error
            if not isinstance(row, dict) or _number(row.get("step")) is None:
                raise ReportError(f"{path}, line {number}: expected a JSON object with a numeric 'step', as "
                                  f"`jef train` writes; delete or repair that line")
            if any(key.startswith("run/") for key in row):  # where a run (or its resumed part) ran: no step
                continue
            if any(key.startswith("final/") for key in row):
                final.update({key.removeprefix("final/"): value for key, value in row.items() if key != "step"
                              and key != "time"})
            elif any(key.startswith("epoch/") for key in row):
                epochs.append({"step": row["step"], **{key.removeprefix("epoch/"): value
                                                       for key, value in row.items() if key.startswith("epoch/")}})
            else:
                steps.append(row)
    return steps, epochs, final


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: cannot read {what} ({error}); delete the file (or restore it) and run "
                          f"the report again") from error


def read_run(directory: str | Path, name: str | None = None) -> RunRecord:
    """Read what a run directory holds, without building its model.

    Args:
        directory: A directory written by ``jef train``.
        name: Name for legends (default: the directory's name).

    Raises:
        ReportError: Not a run directory, or one of its files is damaged (named, with what to do).
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ReportError(f"{directory}: no such directory; pass a run directory written by `jef train`")
    pipeline_path = directory / "pipeline.yaml"
    if not pipeline_path.is_file():
        raise ReportError(f"{directory}: no pipeline.yaml, so this is not a jef run directory; pass the directory "
                          f"`jef train` wrote (it holds pipeline.yaml and metrics.jsonl)")
    text = pipeline_path.read_text(encoding="utf-8")
    try:
        pipeline = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ReportError(f"{pipeline_path}: not valid YAML ({error}); restore the file `jef train` wrote") from error
    if not isinstance(pipeline, dict):
        raise ReportError(f"{pipeline_path}: expected a mapping of pipeline sections; restore the file "
                          f"`jef train` wrote")
    plugins_path = directory / "plugins.json"
    plugins = _read_json(plugins_path, "the plugin list") if plugins_path.is_file() else None
    metrics_path = directory / "metrics.jsonl"
    steps, epochs, final = read_metrics(metrics_path) if metrics_path.is_file() else ([], [], {})
    evaluation_path = directory / EVALUATION_NAME
    evaluation = _read_json(evaluation_path, "the evaluation results") if evaluation_path.is_file() else None
    if evaluation is not None and not isinstance(evaluation, dict):
        raise ReportError(f"{evaluation_path}: expected an object of metric -> {{value, protocol}}; delete it and "
                          f"run `jef eval` again")
    return RunRecord(directory, name or directory.resolve().name, text, pipeline,
                     plugins if isinstance(plugins, list) else None, steps, epochs, final, evaluation)


def run_names(directories: Sequence[Path]) -> list[str]:
    """Short, distinct names for runs: the directory names, with their parents where two are alike."""
    resolved = [Path(d).expanduser().resolve() for d in directories]
    for twice in {d for d in resolved if resolved.count(d) > 1}:
        raise ReportError(f"{twice} is given twice; pass each run directory once")
    names = [d.name for d in resolved]
    if len(set(names)) < len(names):
        names = [f"{d.parent.name}/{d.name}" for d in resolved]
    if len(set(names)) < len(names):
        names = [str(d) for d in resolved]
    return names


# -- the summary ---------------------------------------------------------------------


def _protocol(record: RunRecord, key: str) -> str:
    """How a ``final/`` number of ``jef train`` was measured (the loop's end-of-training protocol)."""
    knn = (record.pipeline.get("eval") or {}).get("knn") or {}
    setting = f"k={knn.get('k', '?')}, T={knn.get('temperature', '?')}"
    if key == "knn_top1":
        return f"weighted kNN top-1 ({setting}), frozen trained backbone, train split -> test split"
    if key == "knn_top1_random":
        return f"the same kNN ({setting}) on the randomly initialised backbone (the baseline to beat)"
    if record.is_term(key):
        return "training loss term, mean over the last epoch's steps"
    return "last value logged at the end of training"


def final_numbers(record: RunRecord) -> list[FinalNumber]:
    """The run's final numbers: ``evaluation.json`` first, then the ``final/`` values it does not cover."""
    numbers = []
    for key, entry in (record.evaluation or {}).items():
        if isinstance(entry, Mapping) and "value" in entry:
            step = f", step {entry['step']}" if entry.get("step") is not None else ""
            numbers.append(FinalNumber(key, entry["value"], str(entry.get("protocol") or ""),
                                       f"{EVALUATION_NAME}{step}"))
        else:
            numbers.append(FinalNumber(key, entry, "", EVALUATION_NAME))
    covered = {number.key for number in numbers}
    numbers += [FinalNumber(key, value, _protocol(record, key), "metrics.jsonl")
                for key, value in record.final.items() if key not in covered]
    return numbers


def format_value(value: Any) -> str:
    """A table cell: 4 significant decimals for floats, everything else as text."""
    number = _number(value)
    if number is None:
        return str(value)
    if not math.isfinite(number) or number == int(number) and isinstance(value, int):
        return str(value)
    return f"{number:.4f}"


# -- comparing pipelines --------------------------------------------------------------


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.0.c": value}`` for every leaf of nested mappings and lists."""
    if isinstance(data, Mapping) and data:
        return {k: v for key, value in data.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(data, list) and data and any(isinstance(item, Mapping | list) for item in data):
        return {k: v for i, value in enumerate(data) for k, v in flatten(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): data}


MISSING = object()


def pipeline_differences(records: Sequence[RunRecord]) -> list[tuple[str, list[Any]]]:
    """Pipeline keys whose values differ between runs: ``(key, [value or MISSING per run])``, in file order."""
    flat = [flatten(record.pipeline) for record in records]
    keys = list(dict.fromkeys(key for one in flat for key in one))
    rows = []
    for key in keys:
        values = [one.get(key, MISSING) for one in flat]
        if any(value != values[0] for value in values[1:]):
            rows.append((key, values))
    return rows
