"""jef: the joint-embedding framework for self-supervised learning.

Public API: :data:`hookimpl` for plugin authors, :func:`load_pipeline` and
:func:`run` for programmatic use. Importing jef loads no plugins; discovery is
explicit (:func:`jef.plugins.get_plugin_manager`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jef import moved
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


def __getattr__(name: str) -> Any:
    # ``jef.run`` is the run package, callable as the function that trains (jef.run(pipeline, ...)); imported on
    # first use, so that ``import jef`` stays light.
    if name == "run":
        import importlib

        return importlib.import_module("jef.run")
    raise AttributeError(f"module 'jef' has no attribute {name!r}")


moved.install()
