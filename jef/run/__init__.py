"""The run layer: the Accelerate training loop and what a run holds while it trains.

* :mod:`jef.run.loop` -- :func:`~jef.run.loop.train`, the loop;
* :mod:`jef.run.api` -- ``jef.run(...)`` (:func:`~jef.run.api.run_pipeline`) and its :class:`~jef.run.api.RunResult`;
* :mod:`jef.run.reopen` -- a finished run's model, rebuilt from its directory (:func:`~jef.run.reopen.load_run`);
* :mod:`jef.run.progress` -- the training bar and the end-of-run summary;
* :mod:`jef.run.state` -- :class:`~jef.run.state.Run`, what hooks see of a run, and per-run plugin registration;
* :mod:`jef.run.terms` -- a step's loss terms, kept on the device between sync points;
* :mod:`jef.run.accumulation` -- one optimiser step's micro-batches and ``train.on_nonfinite``;
* :mod:`jef.run.faults` -- non-finite losses, signals, faults every process must agree on;
* :mod:`jef.run.checkpoint` -- checkpoints and resuming;
* :mod:`jef.run.directory` -- the run directory: its claim, lock and layout;
* :mod:`jef.run.log` -- ``metrics.jsonl`` and TensorBoard;
* :mod:`jef.run.sampler` -- the order of the training samples;
* :mod:`jef.run.optim` -- optimisers and schedules;
* :mod:`jef.run.launch` -- how the processes were launched;
* :mod:`jef.run.accelerate_compat` -- what Accelerate's public API does not offer a plain loop.

``jef.run`` is also the public function that trains: ``jef.run(pipeline, ...)`` calls
:func:`jef.run.api.run_pipeline`, which returns a :class:`~jef.run.api.RunResult` (read as the mapping of the
final metrics, as ``jef.run`` returned before).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from jef.run.api import RunResult, run_pipeline
from jef.run.loop import train

__all__ = ["RunResult", "run_pipeline", "train"]


class _CallableRunPackage(types.ModuleType):
    """The package's type: calling ``jef.run(pipeline, ...)`` trains (the public API of jef 0.1 kept)."""

    def __call__(self, pipeline: Any, overrides: list[str] | None = None, **kwargs: Any) -> RunResult:
        """Train a pipeline (a file, a mapping or a resolved pipeline); see :func:`jef.run.api.run_pipeline`.

        A run directory that already holds a run is refused (:class:`jef.run.directory.RunDirError`): pass
        ``resume=True`` to continue it, ``overwrite=True`` to move it aside and start afresh, or another
        ``run_dir``.
        """
        return run_pipeline(pipeline, overrides, **kwargs)


sys.modules[__name__].__class__ = _CallableRunPackage
