"""``compare.html``: the table of methods (best value per column in bold) and the runs' curves side by side.

One self-contained page: the curves are :mod:`jef.tools.report`'s figures (loss terms, learning rate, monitors
with the periodic kNN), inlined as base64 PNGs; no file is written beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from jef.tools.compare.plan import Plan
from jef.tools.compare.summary import METRICS, SPREAD, write_text

__all__ = ["HTML_NAME", "format_stats", "results_table", "write_page"]

HTML_NAME = "compare.html"
#: Decimals of each metric in the table.
DECIMALS = {"train_time_s": 2, "images_per_s": 0, "collapse_std": 4, "collapse_rank": 1}


def format_stats(metric: str, stats: Mapping[str, Any] | None) -> str:
    """``mean ± std`` (3 seeds or more), ``mean (min–max)`` (2), ``value`` (1); ``-`` when not measured."""
    if not stats:
        return "-"
    digits = DECIMALS.get(metric, 3)
    mean = f"{stats['mean']:.{digits}f}"
    if stats["spread"] == "std":
        return f"{mean} ± {stats['std']:.{digits}f}"
    if stats["spread"] == "min-max":
        return f"{mean} ({stats['min']:.{digits}f}–{stats['max']:.{digits}f})"
    return mean


def _best(rows: Sequence[Mapping[str, Any]], metric: str, better: str | None) -> float | None:
    means = [row["metrics"][metric]["mean"] for row in rows if metric in row["metrics"]]
    if better is None or len(means) < 2:
        return None
    return max(means) if better == "max" else min(means)


def _status(row: Mapping[str, Any]) -> str:
    if not row["failed"]:
        return "ok"
    return f"failed (seed {', '.join(map(str, row['failed']))}): " + "; ".join(row["errors"])


def results_table(summary: Mapping[str, Any]) -> str:
    """The table: one row per method and baseline, columns for the metrics any row has, the best in bold."""
    rows = summary["rows"]
    shown = [(metric, label, better) for metric, label, better in METRICS if any(metric in r["metrics"] for r in rows)]
    head = "".join(f"<th>{escape(cell)}</th>" for cell in ["method", "seeds", *(label for _, label, _ in shown),
                                                              "status"])
    body = []
    for row in rows:
        cells = [f"<td>{escape(row['name'] if row['kind'] == 'method' else 'baseline: ' + row['name'])}</td>",
                 f"<td>{escape(' '.join(map(str, row['seeds'])))}</td>"]
        for metric, _, better in shown:
            stats = row["metrics"].get(metric)
            text = escape(format_stats(metric, stats))
            best = _best(rows, metric, better)
            if stats and best is not None and stats["mean"] == best:
                text = f"<b>{text}</b>"
            per_seed = ", ".join(f"seed {s}: {v:.6g}" for s, v in (stats or {}).get("per_seed", {}).items())
            cells.append(f'<td class=num title="{escape(per_seed)}">{text}</td>')
        cells.append(f"<td>{escape(_status(row))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def per_seed_table(summary: Mapping[str, Any]) -> str:
    """Every run's own numbers (what the means are of)."""
    rows = summary["rows"]
    shown = [(metric, label) for metric, label, _ in METRICS if any(metric in r["metrics"] for r in rows)]
    head = "".join(f"<th>{escape(c)}</th>" for c in ["method", "seed", *(label for _, label in shown), "directory"])
    body = []
    for row in rows:
        for seed, run in row["runs"].items():
            values = run.get("values", {})
            cells = [escape(row["name"]), escape(seed)]
            cells += [escape(f"{values[m]:.{DECIMALS.get(m, 4)}f}") if m in values else
                      ("failed" if run["status"] == "failed" else "-") for m, _ in shown]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{escape(run['directory'])}</td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_page(plan: Plan, summary: Mapping[str, Any]) -> Path:
    """Write ``compare.html`` atomically; returns its path."""
    from jef.tools.report import html
    from jef.tools.report.data import ReportError, read_run
    from jef.tools.report.sections import curve_sections, pipeline_section

    failed = {(row["name"], int(seed)) for row in summary["rows"] if row["kind"] == "method"
              for seed, run in row["runs"].items() if run["status"] == "failed"}
    records, notes = [], []
    for spec in plan.runs:
        if (spec.method, spec.seed) in failed and not (spec.directory / "metrics.jsonl").is_file():
            continue
        try:
            records.append(read_run(spec.directory, spec.name))
        except ReportError as error:
            notes.append(html.note(f"{spec.name}: no curves: {error}"))
    caption = (f"{SPREAD}. Bold: the best mean of a column (highest accuracy, rank and throughput; shortest "
               "time); collapse/std is not ranked (healthy is about 1/sqrt(d), not the largest). Hover a cell for "
               "each seed's value. Accuracies are the offline protocols' (evaluation.json); train time runs from "
               "the start of training to its last step (end-of-run evaluation left out); images/s is the median "
               "logged rate. Baselines: random = the backbone at random initialisation, pixels = the eval view's "
               "pixels, flattened; neither is trained.")
    body = results_table(summary) + html.paragraph(caption)
    sections = [html.Section("results", "Results", body),
                html.Section("runs", "Each run", per_seed_table(summary))]
    files: dict[str, bytes] = {}
    if records:
        sections += curve_sections(records, files)
        sections.append(pipeline_section(records))
    if notes:
        sections[0] = html.Section("results", "Results", body + "".join(notes))
    title = f"jef compare: {', '.join(plan.methods)}"
    subtitle = (f"{plan.source}, seeds {' '.join(map(str, plan.seeds))}; "
                f"{len(plan.runs)} runs in {plan.output / 'runs'}")
    path = plan.output / HTML_NAME
    write_text(path, html.page(title, subtitle, sections))
    return path
