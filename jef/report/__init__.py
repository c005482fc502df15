"""Run reports: one self-contained HTML page about a run, or several side by side (``jef report``).

* :mod:`jef.report.data` -- reading run directories (pipeline, plugins, metrics, evaluation results);
* :mod:`jef.report.curves` -- which curves are drawn, grouped into panels;
* :mod:`jef.report.model` -- what needs the trained model: views, embedding map, retrievals;
* :mod:`jef.report.figures` -- the matplotlib figures (Agg, no pyplot);
* :mod:`jef.report.html` and :mod:`jef.report.sections` -- the page;
* :mod:`jef.report.writer` -- :func:`write_report`, which puts it together.
"""

from jef.report.data import ReportError, RunRecord, read_run
from jef.report.writer import default_output, write_report

__all__ = ["ReportError", "RunRecord", "default_output", "read_run", "write_report"]
