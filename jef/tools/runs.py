"""Open a finished (or interrupted) run: :func:`load_run`, :class:`LoadedRun`, :func:`run_paths`.

They live in :mod:`jef.run.reopen` (the run layer, so that ``jef.run(...)`` can hand back the trained backbone);
the tools that start from a run directory (evaluation, embedding, export, reports) import them from here.
"""

from jef.run.reopen import LoadedRun, load_run, run_paths

__all__ = ["LoadedRun", "load_run", "run_paths"]
