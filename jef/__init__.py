"""jef: the joint-embedding framework for self-supervised learning.

Public API: :data:`hookimpl` for plugin authors, :func:`load_pipeline` and
:func:`run` for programmatic use. Importing jef loads no plugins; discovery is
explicit (:func:`jef.plugins.get_plugin_manager`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jef.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl", "load_pipeline", "run"]

if TYPE_CHECKING:
    from jef.config import Pipeline


def load_pipeline(path: Any, overrides: list[str] | None = None) -> Pipeline:
    """Read, merge with its method recipe and validate a pipeline YAML file.

    Args:
        path: The YAML file.
        overrides: ``key.path=value`` strings applied last.
    """
    from jef.config import load_pipeline as _load

    return _load(path, overrides or [])


def run(pipeline: Pipeline, **kwargs: Any) -> dict[str, float]:
    """Train a validated pipeline; returns the final metrics. See :func:`jef.train.train`.

    A run directory that already holds a run is refused (:class:`jef.run_dir.RunDirError`): pass ``resume=True``
    to continue it, ``overwrite=True`` to move it aside and start afresh, or another ``run_dir``.
    """
    from jef.train import train

    return train(pipeline, **kwargs)
