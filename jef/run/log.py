"""The run directory: resolved pipeline, plugin list, metrics (JSONL and TensorBoard)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from jef.files import atomic_write

#: The metrics file of a run directory: one JSON object per line, each with its optimiser ``step``.
METRICS_NAME = "metrics.jsonl"


def plugin_listing(plugins: Any) -> list[dict[str, Any]]:
    """The plugins and their versions, as saved in each run directory and printed by ``jef plugins --json``."""
    import attrs

    return [attrs.asdict(info) for info in plugins.infos.values()]


def write_run_files(directory: Path, pipeline_data: dict[str, Any], plugins: list[dict[str, Any]], *,
                    header: str = "") -> None:
    """Keep what is needed to know how a run was made: the resolved pipeline and the installed plugins.

    Args:
        directory: The run directory.
        pipeline_data: The resolved pipeline (``Pipeline.to_dict()``), written as ``pipeline.yaml``.
        plugins: The plugin listing, written as ``plugins.json``.
        header: A comment line above the pipeline (where the run trains); YAML readers skip it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    text = (f"# {header}\n" if header else "") + yaml.safe_dump(pipeline_data, sort_keys=False)
    atomic_write(directory / "pipeline.yaml", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    listing = json.dumps(plugins, indent=2)
    atomic_write(directory / "plugins.json", lambda tmp: tmp.write_text(listing, encoding="utf-8"))


class MetricsLogger:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    Only the main process writes; other processes keep the values for hooks. A run resumed from a checkpoint at
    step N trains steps N+1... again: the lines (and TensorBoard events) the interrupted run wrote after step N are
    dropped first, so the file holds one history.
    """

    def __init__(self, directory: Path | None, *, enabled: bool = True, tensorboard: bool = True,
                 resumed_from: int | None = None) -> None:
        self.directory, self.enabled = directory, enabled and directory is not None
        self._file = None
        self._writer = None
        if self.enabled:
            assert directory is not None
            directory.mkdir(parents=True, exist_ok=True)
            if resumed_from is not None:
                drop_superseded(directory / METRICS_NAME, resumed_from)
            self._file = (directory / METRICS_NAME).open("a", encoding="utf-8")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resumed_from is None else resumed_from + 1  # hides the events after the checkpoint
                self._writer = SummaryWriter(log_dir=str(directory / "tensorboard"), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (floats or 0-d tensors) at ``step``."""
        if not self.enabled:
            return
        values = {key: _as_float(value) for key, value in metrics.items()}
        assert self._file is not None
        self._file.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, float) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close the files."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def drop_superseded(path: Path, step: int) -> None:
    """Rewrite the metrics file ``path`` (atomically) without its lines after ``step``.

    A line cut short by a killed process (the last one, without its newline) goes too; any other line is kept
    as it is, for ``jef report`` to point at.
    """
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not _superseded(line, step)]
    if kept and not kept[-1].endswith("\n"):
        kept.pop()
    if kept != lines:
        atomic_write(path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))


def _superseded(line: str, step: int) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return False
    value = row.get("step") if isinstance(row, dict) else None
    return isinstance(value, int | float) and value > step


def _as_float(value: Any) -> Any:
    if hasattr(value, "item"):
        return float(value.item())
    if isinstance(value, int | float):
        return float(value)
    return value
