"""The run directory: resolved pipeline, plugin list, metrics (JSONL, and the loggers: TensorBoard, CSV, ...)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
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
    """Appends one JSON object per logged step to ``metrics.jsonl`` and fans the values out to the run's loggers.

    Only the main process writes; other processes keep the values for hooks. ``metrics.jsonl`` is always written;
    the loggers (the pipeline's ``loggers:``, :mod:`jef.builtin.loggers`) come beside it. A run resumed from a
    checkpoint at step N trains steps N+1... again: the lines the interrupted run wrote after step N are dropped
    first, and each logger is opened with ``resumed_from=N`` to do the same, so each holds one history.

    Args:
        directory: The run directory (None: nothing is written).
        enabled: Whether this process writes (the main process).
        tensorboard: Without ``loggers``: mirror the scalars to TensorBoard (the built-in ``tensorboard`` logger).
        resumed_from: The step of the checkpoint the run resumes from, or None.
        loggers: The built logger objects (:func:`build_loggers`); None: as ``tensorboard`` says.
        views: Makes the grid of views that loggers with an ``images`` method receive once per epoch.
        epoch: Reads the run's epoch counter; when it has moved on at a write, that write ends an epoch.
        pipeline: The resolved pipeline (plain data), handed to the loggers' ``hparams`` with the final metrics
            when the run's final line (``final/...`` keys) is written.
    """

    def __init__(self, directory: Path | None, *, enabled: bool = True, tensorboard: bool = True,
                 resumed_from: int | None = None, loggers: list[Any] | None = None,
                 views: Callable[[], Any] | None = None, epoch: Callable[[], int] | None = None,
                 pipeline: Mapping[str, Any] | None = None) -> None:
        self.directory, self.enabled = directory, enabled and directory is not None
        self._file = None
        self.loggers: list[Any] = []
        self._views, self._epoch, self._pipeline = views, epoch, pipeline
        self._last_epoch = epoch() if epoch is not None else 0
        if self.enabled:
            assert directory is not None
            directory.mkdir(parents=True, exist_ok=True)
            if resumed_from is not None:
                drop_superseded(directory / METRICS_NAME, resumed_from)
            self._file = (directory / METRICS_NAME).open("a", encoding="utf-8")
            if loggers is None and tensorboard:
                from jef.builtin.loggers import TensorBoardLogger, TensorBoardOptions

                loggers = [TensorBoardLogger(TensorBoardOptions(), None)]
            for logger in loggers or []:
                logger.open(directory, resumed_from)
                self.loggers.append(logger)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (floats or 0-d tensors) at ``step``."""
        if not self.enabled:
            return
        values = {key: _as_float(value) for key, value in metrics.items()}
        assert self._file is not None
        self._file.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        self._file.flush()
        for logger in self.loggers:
            logger.write(step, values)
        if self._epoch is not None and self._epoch() != self._last_epoch:  # the epoch's line: its views
            self._last_epoch = self._epoch()
            takers = [logger for logger in self.loggers if callable(getattr(logger, "images", None))]
            grid = self._views() if takers and self._views is not None else None
            for logger in takers if grid is not None else []:
                logger.images(step, "views", grid)
        final = {key.removeprefix("final/"): value for key, value in values.items() if key.startswith("final/")}
        if final and self._pipeline is not None:  # the run's last line: its settings beside its results
            self.hparams(self._pipeline, final)

    def hparams(self, pipeline: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Hand the resolved pipeline and the final ``metrics`` to every logger (once, at the run's end)."""
        if self.enabled:
            final = {key: _as_float(value) for key, value in metrics.items()}
            for logger in self.loggers:
                logger.hparams(pipeline, final)

    def close(self) -> None:
        """Flush and close the files and the loggers."""
        if self._file is not None:
            self._file.close()
            self._file = None
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            logger.close()


def build_loggers(pipeline: Any, ctx: Any) -> list[Any]:
    """Build the pipeline's ``loggers:`` (on the main process), less ``tensorboard`` when ``train.tensorboard`` is
    false (the option older pipelines use to turn TensorBoard off).

    Raises:
        jef.registry.BuildError: A logger's factory failed (a missing package: what to install), naming
            ``loggers.N``.
    """
    from jef.model.slots import make_component

    loggers = [make_component(slot, ctx, pipeline, f"loggers.{i}") for i, slot in enumerate(pipeline.loggers)
               if pipeline.train.tensorboard or slot.name.rpartition(":")[2] != "tensorboard"]
    terms = frozenset(slot.name for slot in pipeline.functionals)
    for logger in loggers:
        if callable(getattr(logger, "loss_terms", None)):
            logger.loss_terms(terms)
    return loggers


def view_grid(run: Any, count: int = 8) -> Any:
    """The run's global views of the first ``count`` training images, one row per view, in ``[0, 1]``.

    Made with a generator of its own (seeded by the seed and the epoch) under a forked RNG: the run's randomness,
    and so its training, is the same with or without it. None when the data holds no images.
    """
    import torch

    from jef.data.fields import as_fields

    split = run.splits.train if run.splits is not None else None
    try:
        images = torch.stack([as_fields(split[i])["image"] for i in range(min(count, len(split)))])
    except Exception:  # no image field (a dataset of another kind): no grid
        return None
    device = run.accelerator.device
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        generator = torch.Generator().manual_seed(run.pipeline.seed * 1000 + run.epoch)
        views = run.augmenter(images.to(device), generator=generator)
    n_global = getattr(run.augmenter, "n_global", len(views))
    rows = []
    for view in views[:n_global]:
        view = view.detach().float().cpu()
        low = view.amin(dim=(1, 2, 3), keepdim=True)
        high = view.amax(dim=(1, 2, 3), keepdim=True)
        view = (view - low) / (high - low).clamp_min(1e-8)
        rows.append(torch.cat(list(view), dim=2))  # [C, H, count * W]
    return torch.cat(rows, dim=1).unsqueeze(0) if rows else None  # [1, C, views * H, count * W]


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
