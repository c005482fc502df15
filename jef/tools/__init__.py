"""What works on finished runs, and on plugins: the ``jef`` commands' machinery.

* :mod:`jef.tools.runs` -- listing and reading run directories (``jef runs``);
* :mod:`jef.tools.embed` -- a trained backbone's features of a dataset (``jef embed``);
* :mod:`jef.tools.export` -- a trained backbone as a file other code loads (``jef export``);
* :mod:`jef.tools.report` -- the HTML report of a run (``jef report``);
* :mod:`jef.tools.scaffold` -- a new plugin package from :mod:`jef.tools.templates` (``jef new``).
"""
