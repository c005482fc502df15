"""Run reports: one self-contained HTML page about a run, or several side by side (``jef report``).

* :mod:`jef.tools.report.data` -- reading run directories (pipeline, plugins, metrics, evaluation results);
* :mod:`jef.tools.report.curves` -- which curves are drawn, grouped into panels;
* :mod:`jef.tools.report.model` -- what needs the trained model: views, embedding map, retrievals;
* :mod:`jef.tools.report.figures` -- the matplotlib figures (Agg, no pyplot);
* :mod:`jef.tools.report.html` and :mod:`jef.tools.report.sections` -- the page;
* :mod:`jef.tools.report.writer` -- :func:`write_report`, which puts it together.
"""

from jef.tools.report.data import ReportError, RunRecord, read_run
from jef.tools.report.writer import default_output, write_report

__all__ = ["ReportError", "RunRecord", "default_output", "read_run", "write_report"]
