"""The report's figures, drawn with matplotlib's Agg canvas.

Every figure is a :class:`matplotlib.figure.Figure` made directly, never
through ``pyplot``: pyplot keeps global state (the current figure, a GUI
backend chosen at import) that would leak between figures and needs a display
on some machines. Images come in as numpy arrays ``[C, H, W]`` in ``[0, 1]``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jef.tools.report.curves import Panel, reduce_curve

__all__ = ["caption_figure", "curves_figure", "embedding_figure", "retrieval_figure", "to_png", "views_figure"]

DPI = 100
CORRECT, WRONG = "#1a9850", "#d73027"  # green and red, told apart by the marks as well as the hue


def to_png(figure: Figure) -> bytes:
    """Render ``figure`` to PNG bytes with the Agg canvas."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def run_colour(index: int) -> str:
    """The colour of run ``index``, the same in every figure."""
    return f"C{index % 10}"


def curves_figure(panels: Sequence[Panel], *, columns: int = 3) -> Figure:
    """One axes per panel, each run's curve in its colour; long curves as means with a min-max band.

    A panel's reference lines are grey and horizontal: dashed for a healthy level, dotted for a warning threshold.
    """
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    width, height = 4.4 * columns, 3.0 * rows
    figure = Figure(figsize=(width, height))
    # Fixed margins in inches: a layout engine would draw every figure twice to measure its labels.
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.35 / height,
                           wspace=0.3, hspace=0.45)
    for number, panel in enumerate(panels):
        axes = figure.add_subplot(rows, columns, number + 1)
        for curve in panel.curves:
            colour = run_colour(curve.run)
            if curve.epoch:
                axes.plot(curve.steps, curve.values, color=colour, marker="o", markersize=4, linestyle=":",
                          linewidth=1, label=curve.label)
                continue
            steps, means, lows, highs = reduce_curve(curve.steps, curve.values)
            axes.plot(steps, means, color=colour, linewidth=1.3, marker="." if len(steps) < 30 else None,
                      label=curve.label)
            if lows != highs:
                axes.fill_between(steps, lows, highs, color=colour, alpha=0.2, linewidth=0)
        for reference in panel.references:  # grey, so no run's colour is mistaken for a level
            axes.axhline(reference.value, color="0.35", linewidth=1, linestyle=":" if reference.warning else "--",
                         label=reference.label)
        axes.set_title(panel.title, fontsize=10)
        axes.set_xlabel("step", fontsize=8)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        if panel.log_scale:
            axes.set_yscale("log")
        if len({curve.label for curve in panel.curves}) > 1 or panel.references:
            axes.legend(fontsize=7)
    return figure


def _grid_figure(rows: int, columns: int, *, row_height: float, top: float) -> Figure:
    """A figure for a grid of images with fixed margins (constrained layout costs seconds on many axes)."""
    width, height = 1.5 * columns + 0.3, row_height * rows + top
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=0.3 / width, right=1 - 0.05 / width, bottom=0.05 / height, top=1 - top / height,
                           wspace=0.08, hspace=(row_height - 1.4) / 1.4 + 0.02)
    return figure


def _show(axes, image: np.ndarray) -> None:
    """Draw a ``[C, H, W]`` image in ``[0, 1]`` without ticks (greyscale for one channel)."""
    if image.shape[0] == 1:
        axes.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        axes.imshow(np.clip(image[:3].transpose(1, 2, 0), 0.0, 1.0), interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])


def views_figure(originals: np.ndarray, views: Sequence[np.ndarray], view_names: Sequence[str],
                 row_names: Sequence[str]) -> Figure:
    """A grid: each row one training image, then the augmenter's views of it.

    Args:
        originals: ``[N, C, H, W]`` images as loaded.
        views: One ``[N, C, h, w]`` array per view, de-normalised to ``[0, 1]``.
        view_names: Column titles of the views (``global 1``, ``local 1``).
        row_names: Row labels (class names, or image numbers when unlabelled).
    """
    rows, columns = len(originals), 1 + len(views)
    figure = _grid_figure(rows, columns, row_height=1.5, top=0.35)
    for row in range(rows):
        for column in range(columns):
            axes = figure.add_subplot(rows, columns, row * columns + column + 1)
            _show(axes, originals[row] if column == 0 else views[column - 1][row])
            if row == 0:
                axes.set_title("image" if column == 0 else view_names[column - 1], fontsize=9)
            if column == 0:
                axes.set_ylabel(row_names[row], fontsize=8)
    return figure


def embedding_figure(points: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str] | None,
                     axis_names: tuple[str, str], title: str) -> Figure:
    """A scatter plot of 2-D points, one colour per class (one colour for unlabelled data)."""
    figure = Figure(figsize=(6.4, 5.2), layout="constrained")
    axes = figure.add_subplot()
    size = float(np.clip(4000 / max(len(points), 1), 4, 40))  # few points drawn large enough to see
    if labels is None:
        axes.scatter(points[:, 0], points[:, 1], s=size, color="C0", alpha=0.7, linewidths=0)
    else:
        classes = sorted(int(c) for c in np.unique(labels))
        many = len(classes) > 20
        palette = colormaps["turbo" if many else "tab10" if len(classes) <= 10 else "tab20"]
        for position, cls in enumerate(classes):
            chosen = labels == cls
            name = class_names[cls] if class_names and 0 <= cls < len(class_names) else str(cls)
            colour = palette(position / max(len(classes) - 1, 1)) if many else palette(position)
            axes.scatter(points[chosen, 0], points[chosen, 1], s=size, color=colour, alpha=0.8, linewidths=0,
                         label=name)
        if not many:  # more than 20 entries make a legend nobody reads
            axes.legend(fontsize=7, markerscale=max(1.0, 20 / size), loc="center left", bbox_to_anchor=(1.0, 0.5),
                        frameon=False)
    axes.set_xlabel(axis_names[0], fontsize=9)
    axes.set_ylabel(axis_names[1], fontsize=9)
    axes.set_title(title, fontsize=10)
    axes.tick_params(labelsize=8)
    return figure


def retrieval_figure(queries: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray,
                     query_labels: Sequence[int] | None, neighbour_labels: np.ndarray | None,
                     class_names: Sequence[str] | None) -> Figure:
    """Each row a query and its nearest training images, most similar first.

    With labels, a neighbour of the query's class is framed in green and marked ``=``, another class in red and
    marked ``x``; the cosine similarity is written over each neighbour.

    Args:
        queries: ``[Q, C, H, W]`` query images.
        neighbours: ``[Q, k, C, H, W]`` their neighbours.
        similarities: ``[Q, k]`` cosine similarities.
        query_labels: Class of each query, or None when unlabelled.
        neighbour_labels: ``[Q, k]`` classes of the neighbours, or None.
        class_names: Names indexed by class, or None.
    """

    def name(label: int) -> str:
        return class_names[label] if class_names and 0 <= label < len(class_names) else f"class {label}"

    rows, k = neighbours.shape[:2]
    columns = 1 + k
    figure = _grid_figure(rows, columns, row_height=1.85, top=0.4)
    for row in range(rows):
        axes = figure.add_subplot(rows, columns, row * columns + 1)
        _show(axes, queries[row])
        axes.set_title("query" + (f"\n{name(query_labels[row])}" if query_labels is not None else ""), fontsize=8)
        for spine in axes.spines.values():
            spine.set_linewidth(2.5)
        for column in range(k):
            axes = figure.add_subplot(rows, columns, row * columns + column + 2)
            _show(axes, neighbours[row, column])
            text, colour = f"{similarities[row, column]:.2f}", "black"
            if query_labels is not None and neighbour_labels is not None:
                same = int(neighbour_labels[row, column]) == int(query_labels[row])
                colour = CORRECT if same else WRONG
                text = f"{'=' if same else 'x'} {text}\n{name(int(neighbour_labels[row, column]))}"
                for spine in axes.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
            axes.set_title(text, fontsize=8, color=colour)
    return figure


def caption_figure(images: np.ndarray, captions: Sequence[str], retrieved: Sequence[Sequence[tuple[str, float, bool]]]
                   ) -> Figure:
    """Each row a query image with its own caption, then the captions most similar to it, most similar first.

    Args:
        images: ``[Q, C, H, W]`` query images.
        captions: Each query's own caption.
        retrieved: Per query, ``(caption, cosine similarity, is its own caption)`` of the top captions; its own is
            marked ``=`` in green.
    """
    rows = len(captions)
    figure = Figure(figsize=(9.0, 1.45 * rows + 0.3))
    for row in range(rows):
        axes = figure.add_axes((0.01, 1 - (row + 1) / rows + 0.1 / rows, 0.12, 0.8 / rows))
        _show(axes, images[row])
        text_axes = figure.add_axes((0.15, 1 - (row + 1) / rows + 0.05 / rows, 0.84, 0.9 / rows))
        text_axes.set_axis_off()
        text_axes.text(0, 0.9, f"caption: {captions[row]}", fontsize=8, fontweight="bold", va="top",
                       transform=text_axes.transAxes)
        for rank, (caption, similarity, own) in enumerate(retrieved[row]):
            text_axes.text(0, 0.72 - 0.16 * rank, f"{rank + 1}. {'=' if own else ' '} {similarity:.2f}  {caption}",
                           fontsize=8, va="top", color=CORRECT if own else "black", transform=text_axes.transAxes)
    return figure
