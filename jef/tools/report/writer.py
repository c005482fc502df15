"""Write a report: read the runs, draw the figures, write ``report.html`` and the PNGs."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jef.files import atomic_write
from jef.run.checkpoint import CHECKPOINT_NAME
from jef.tools.report import html
from jef.tools.report.data import ReportError, read_run, run_names
from jef.tools.report.model import ModelFigures, check_projection, model_figures
from jef.tools.report.sections import curve_sections, model_sections, pipeline_section, plugins_section, summary_section

__all__ = ["default_output", "write_report"]

REPORT_NAME = "report.html"


def default_output(runs: Sequence[str | Path]) -> Path:
    """``RUN_DIR/report`` for one run, ``./jef-report`` for several."""
    return Path(runs[0]).expanduser() / "report" if len(runs) == 1 else Path("jef-report")


def write_report(runs: Sequence[str | Path], output: str | Path | None = None, *, model: bool = True,
                 max_points: int = 2000, projection: str = "pca", device: str | None = None,
                 plugins: Any = None) -> Path:
    """Write the report of one run, or the side-by-side comparison of several.

    Args:
        runs: Run directories written by ``jef train``.
        output: Directory for ``report.html`` and the PNGs (default: :func:`default_output`).
        model: Draw the figures that need the trained model (views, embedding map, retrievals); they need
            the checkpoint, the run's plugins and its data.
        max_points: At most this many images of each split are embedded for the map and the retrievals.
        projection: 2-D projection of the embedding map: ``pca``, ``tsne`` (scikit-learn) or ``umap`` (umap-learn).
        device: Where the backbone runs (default: the GPU when there is one).
        plugins: Loaded plugins (default: :func:`jef.plugins.get_plugins`).

    Returns:
        The path of ``report.html``.

    Raises:
        ReportError: Not a run directory, a damaged file (named, with its line), or a bad option.
    """
    if not runs:
        raise ReportError("no run directory given; pass one or more directories written by `jef train`")
    if max_points < 1:
        raise ReportError(f"max_points must be at least 1, got {max_points}")
    check_projection(projection)
    directories = [Path(run).expanduser() for run in runs]
    records = [read_run(directory, name) for directory, name in zip(directories, run_names(directories),
                                                                     strict=True)]
    output = Path(output).expanduser() if output is not None else default_output(directories)

    figures: list[ModelFigures | str] = []
    if model:
        import torch

        from jef.plugins import get_plugins

        plugins = plugins or get_plugins()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        for record in records:
            if record.checkpoint is None:
                figures.append(f"No {CHECKPOINT_NAME} in {record.directory}, so no figures of the model: the "
                               f"run saves one after each epoch and at its end. The logged numbers are shown.")
                continue
            made = model_figures(record.directory, plugins=plugins, device=device, max_points=max_points,
                                 projection=projection)
            if made.note:
                print(f"jef: warning: {record.name}: {made.note}", file=sys.stderr)
            figures.append(made)

    files: dict[str, bytes] = {}
    sections = [summary_section(records), *curve_sections(records, files)]
    if model:
        sections += model_sections(records, figures, files)
    sections += [pipeline_section(records), plugins_section(records)]
    names = ", ".join(record.name for record in records)
    title = f"jef report: {names}" if len(records) == 1 else f"jef report: {len(records)} runs compared"
    subtitle = names + ("" if model else " (figures of the model omitted: --no-model)")
    text = html.page(title, subtitle, sections)

    output.mkdir(parents=True, exist_ok=True)
    for name, png in files.items():
        atomic_write(output / name, lambda tmp, png=png: tmp.write_bytes(png))
    atomic_write(output / REPORT_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return output / REPORT_NAME
