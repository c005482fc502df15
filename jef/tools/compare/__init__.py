"""``jef compare``: train several methods on the same data, backbone and budget, over seeds, and compare them.

* :mod:`jef.tools.compare.plan` -- reading the shared pipeline, checking methods and seeds, one pipeline per run;
* :mod:`jef.tools.compare.runner` -- training (or resuming) each run, and the baselines;
* :mod:`jef.tools.compare.summary` -- mean and spread over seeds; ``compare.json`` and ``compare.csv``;
* :mod:`jef.tools.compare.page` -- ``compare.html``, whose curves are :mod:`jef.tools.report`'s.

See ``docs/compare.md``.
"""

from jef.tools.compare.plan import BASELINES, CompareError, Plan, RunSpec, make_plan
from jef.tools.compare.runner import compare

__all__ = ["BASELINES", "CompareError", "Plan", "RunSpec", "compare", "make_plan"]
