"""Work-arounds for what HuggingFace Accelerate's public API does not offer a plain training loop.

**Several runs in one process.** Accelerate keeps its state (precision, accumulation steps, device) in
process-wide singletons that the first ``Accelerator`` fixes: a second run with another precision would
raise. Accelerate has no public way to reset them (its own test utilities call the private
``_reset_state``), so :func:`reset_accelerate_state` does, before each run's ``Accelerator``.

**Per-step package checks.** ``accelerate`` (1.15 and earlier) asks ``is_lomo_available()`` twice in every ``AcceleratedOptimizer.step``; each
call has ``importlib`` search every ``sys.path`` entry and import finder for the ``lomo_optim`` package. That costs
0.3 to 3 ms per step on a CPU, depending on the file system and the number of editable installs: about a millisecond
of a 60 ms SimCLR step on 2 cores (``benchmarks/step_overhead.py``). Whether a package is installed does not
change while a run trains, so jef answers the question once per process.
"""

from __future__ import annotations

import functools
import importlib

from accelerate.state import AcceleratorState, GradientState

__all__ = ["cache_package_checks", "reset_accelerate_state"]

#: Modules of ``accelerate`` that ask ``is_lomo_available`` on the training path.
_ASKERS = ("accelerate.accelerator", "accelerate.optimizer")


def cache_package_checks() -> None:
    """Make Accelerate's per-step ``is_lomo_available()`` ask the file system once per process (idempotent)."""
    for name in _ASKERS:
        module = importlib.import_module(name)
        check = getattr(module, "is_lomo_available", None)
        if check is not None and not hasattr(check, "cache_info"):
            module.is_lomo_available = functools.cache(check)


def reset_accelerate_state() -> None:
    """Forget the process-wide Accelerate state of an earlier run (its precision and accumulation steps).

    The device state (``PartialState``) is kept: it holds the process group of a multi-process run.
    """
    AcceleratorState._reset_state()  # private: no public reset exists (accelerate 1.15)
    GradientState._reset_state()
