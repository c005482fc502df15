"""The sections of a report, from run records and figures, as HTML.

Each function returns a :class:`~jef.tools.report.html.Section` and adds the PNGs it
shows to ``files`` (file name -> bytes), which are also written next to the page.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from jef.tools.report import html
from jef.tools.report.curves import Panel, loss_panels, monitor_panels, schedule_panels
from jef.tools.report.data import MISSING, RunRecord, final_numbers, format_value, pipeline_differences
from jef.tools.report.figures import curves_figure, to_png
from jef.tools.report.model import ModelFigures

__all__ = ["CAPTIONS", "curve_sections", "model_sections", "pipeline_section", "plugins_section",
           "summary_section"]

CAPTIONS = {
    "loss": "One panel per term of the objective, over optimiser steps: loss is the weighted sum that was "
            "minimised, energy/... the mean energy D over view pairs, the others the batch functionals (A/B). "
            "Dotted markers are per-epoch means. Long runs are drawn as bucket means with a min-max band, so "
            "spikes stay visible.",
    "schedules": "The learning rate set by the scheduler at each logged step (warm-up, then decay), and momentum "
                 "schedules of EMA targets when the method has one.",
    "monitors": "Values logged by the run's monitors. collapse/std: the mean per-dimension std of the "
                "l2-normalised embeddings z of d dimensions, about 1/sqrt(d) when they spread over the sphere "
                "(dashed line) and near 0 when they collapse to a point; the collapse monitor warns under "
                "std_threshold/sqrt(d) (dotted line). collapse/rank: effective rank (RankMe), at most d, which "
                "falls under dimensional collapse (dotted line: the rank_threshold it warns under); online/...: "
                "probes trained alongside the run; kNN top-1: accuracy of a weighted kNN on frozen features.",
    "views": "Rows are training images; the first column is the image as loaded, the others the views the "
             "augmenter makes of it (seed 0, so every report shows the same draws), de-normalised for display. "
             "The backbone is trained to map the views of one image together: if the object is unrecognisable "
             "in most views, the augmentations are too strong for this data.",
    "embeddings": "Each point is one image's backbone features (l2-normalised) projected to 2-D, coloured by "
                  "class. Classes in separate clusters are easy for kNN and linear probes; a single blob, a line "
                  "or a few dense points suggest collapse. PCA keeps the two directions of largest variance "
                  "(their share is in the axis titles); t-SNE and UMAP keep neighbourhoods, not distances.",
    "retrievals": "Each row is a query image, then its most similar training images by cosine similarity of "
                  "backbone features (the neighbours that vote in the kNN protocol), similarity written above. "
                  "A green frame and = mark the query's class, a red frame and x another class.",
    "captions": "Each row is a test image and its own caption (bold), then the test captions whose text "
                "embeddings are most similar to its image embedding, similarity first; its own caption is marked "
                "= in green. Many captions fit an image equally well (one class, similar attributes): retrieval "
                "recall counts only the image's own.",
}


def slug(name: str) -> str:
    """A file-name-safe form of a run name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _slot(record: RunRecord, key: str) -> str:
    slot = record.pipeline.get(key)
    return str(slot.get("name")) if isinstance(slot, dict) else "-"


def _objective(record: RunRecord) -> str:
    energy = _slot(record, "energy")
    functionals = [str(f.get("name")) for f in record.pipeline.get("functionals") or [] if isinstance(f, dict)]
    return " + ".join(([f"D: {energy}"] if energy != "-" else []) + [f"A/B: {name}" for name in functionals]) or "-"


def summary_section(records: Sequence[RunRecord]) -> html.Section:
    """What each run is (method, data, model, length) and its final numbers with their protocols."""
    def fields(record: RunRecord) -> list[str]:
        train = record.pipeline.get("train") or {}
        rates = sorted(row["images_per_s"] for row in record.steps if isinstance(row.get("images_per_s"), int | float))
        target = f" (max_steps: {train['max_steps']})" if train.get("max_steps") else ""
        return [str(record.directory), str(record.pipeline.get("method") or "none (slots chosen in the file)"),
                _slot(record, "data"), _slot(record, "backbone"), _objective(record),
                f"{record.last_step}{target}", f"{len(record.epochs)} of {train.get('epochs', '-')}",
                _minutes(record.wall_time), f"{rates[len(rates) // 2]:.0f} images/s" if rates else "-",
                "yes" if record.checkpoint else "no"]

    labels = ["directory", "method", "data", "backbone", "objective", "steps", "epochs finished", "wall time",
              "throughput (median)", "checkpoint"]
    values = [fields(record) for record in records]
    body = html.table(["", *[record.name for record in records]],
                      [[label, *[column[i] for column in values]] for i, label in enumerate(labels)])
    numbers = [{number.key: number for number in final_numbers(record)} for record in records]
    keys = list(dict.fromkeys(key for per_run in numbers for key in per_run))
    if keys:
        rows = []
        for key in keys:
            found = [per_run.get(key) for per_run in numbers]
            protocols = dict.fromkeys(f"{n.protocol} ({n.source})" for n in found if n is not None)
            rows.append([key, *[format_value(n.value) if n else "-" for n in found], "; ".join(protocols)])
        body += "<h3>Final numbers</h3>" + html.table(["metric", *[r.name for r in records], "protocol (file)"],
                                                       rows, numeric=range(1, 1 + len(records)))
    else:
        body += html.note("No final numbers yet: jef train logs final/ values when the run ends, and jef eval "
                          "writes evaluation.json.")
    return html.Section("summary", "Summary", body)


def _curves(files: dict[str, bytes], name: str, panels: list[Panel], alt: str, note: str = "") -> str:
    files[f"{name}.png"] = to_png(curves_figure(panels))
    return html.figure(files[f"{name}.png"], alt, CAPTIONS[name] + note)


def _std_note(records: Sequence[RunRecord], panels: list[Panel]) -> str:
    """Says why a collapse/std panel has no healthy line: its run did not log the width d."""
    std = next((panel for panel in panels if panel.title == "collapse/std"), None)
    if std is None or std.references:
        return ""
    return (" The collapse/std panel has no reference lines: no run here logged collapse/dim (older versions of jef "
            "did not record the width d); read it against 1/sqrt(d) of the projector's output width.")


def curve_sections(records: Sequence[RunRecord], files: dict[str, bytes]) -> list[html.Section]:
    """Loss terms and learning rate; monitors. Only keys some run logged are drawn."""
    losses, schedules, monitors = loss_panels(records), schedule_panels(records), monitor_panels(records)
    body = ""
    if losses:
        body += _curves(files, "loss", losses, "loss terms over steps")
    if schedules:
        body += _curves(files, "schedules", schedules, "learning rate over steps")
    if not body:
        body = html.note("No training steps were logged (metrics.jsonl is missing or empty).")
    if monitors:
        watch = _curves(files, "monitors", monitors, "monitor values over steps", _std_note(records, monitors))
    else:
        watch = html.note("No monitor values were logged. Add monitors to the pipeline, e.g. "
                          "monitors: [{name: collapse, every: 10}], to see collapse diagnostics here.")
    return [html.Section("training", "Loss terms and learning rate", body),
            html.Section("monitors", "Monitors", watch)]


MODEL_PARTS = (("views", "Augmented views"), ("embeddings", "Embedding map"), ("retrievals", "Nearest neighbours"),
               ("captions", "Captions retrieved"))
#: Parts only some runs have (a text encoder's): left out when no run has them.
OPTIONAL_PARTS = {"captions"}


def model_sections(records: Sequence[RunRecord], figures: Sequence[ModelFigures | str],
                   files: dict[str, bytes]) -> list[html.Section]:
    """Views, embedding map and retrievals, one column per run (a string says why a run has none)."""
    several = len(records) > 1
    sections = []
    for part, title in MODEL_PARTS:
        if part in OPTIONAL_PARTS and not any(not isinstance(m, str) and part in m.pngs for m in figures):
            continue
        blocks = []
        for record, made in zip(records, figures, strict=True):
            if isinstance(made, str) or made.note or part not in made.pngs:
                why = made if isinstance(made, str) else made.note or f"no {part} figure"
                blocks.append((record.name, html.note(why)))
                continue
            file = f"{part}-{slug(record.name)}.png" if several else f"{part}.png"
            files[file] = made.pngs[part]
            detail = made.details.get(part, "")
            caption = f"{detail}. {CAPTIONS[part]}" + (f" Here {made.details['labels']}." if "labels" in
                                                       made.details else "")
            blocks.append((record.name, html.figure(made.pngs[part], f"{title}: {record.name}", caption)))
        body = html.columns(blocks) if several else blocks[0][1]
        sections.append(html.Section(part, title, body))
    return sections


def _cell(value: Any) -> str:
    return "(not set)" if value is MISSING else "null" if value is None else str(value)


def pipeline_section(records: Sequence[RunRecord]) -> html.Section:
    """The resolved pipeline as saved; for several runs, first the keys whose values differ."""
    if len(records) == 1:
        return html.Section("pipeline", "Resolved pipeline", html.preformatted(records[0].pipeline_text))
    differences = pipeline_differences(records)
    body = ("<h3>Differences</h3>" + html.table(["key", *[r.name for r in records]],
                                                [[key, *map(_cell, values)] for key, values in differences])
            if differences else html.paragraph("The runs' pipelines are identical."))
    body += "<h3>Each pipeline</h3>" + html.columns([(r.name, html.preformatted(r.pipeline_text)) for r in records])
    return html.Section("pipeline", "Resolved pipeline", body)


def plugins_section(records: Sequence[RunRecord]) -> html.Section:
    """The plugins installed for each run, with versions (from plugins.json)."""
    listings: list[dict[str, dict[str, Any]]] = [
        {str(row.get("name")): row for row in record.plugins or [] if isinstance(row, dict)} for record in records]
    names = list(dict.fromkeys(name for listing in listings for name in listing))
    builtin = {name for listing in listings for name, row in listing.items() if row.get("builtin")}
    names.sort(key=lambda name: name in builtin)  # installed plugins first, jef's own built-ins after them
    if not names:
        return html.Section("plugins", "Plugin versions", html.note("No plugins.json in the run directory."))

    def first(name: str, field: str, show: Callable[[Any], str] = str) -> str:
        row = next((listing[name] for listing in listings if name in listing), {})
        return show(row.get(field)) if row.get(field) else "-"

    def version(listing: dict[str, dict[str, Any]], name: str) -> str:
        row = listing.get(name)
        if row is None:
            return "(not installed)"
        status = str(row.get("status") or "ok")
        return str(row.get("version") or "-") + ("" if status == "ok" else f" ({status})")

    def provides(value: Any) -> str:
        return "; ".join(f"{kind}: {', '.join(items)}" for kind, items in value.items()) if isinstance(value, dict) \
            else str(value)

    header = ["plugin", "distribution", *[f"version ({r.name})" if len(records) > 1 else "version" for r in records],
              "provides"]
    rows = [[name, first(name, "distribution"), *[version(listing, name) for listing in listings],
             first(name, "provides", provides)] for name in names]
    return html.Section("plugins", "Plugin versions", html.table(header, rows))
