"""jef: the joint-embedding framework for self-supervised learning.

Public API: :data:`hookimpl` and the ``register`` callables' types (:class:`Register`, :class:`RegisterMethod`,
:class:`RegisterCommand`) for plugin authors (the hooks are in :mod:`jef.hookspecs`; plugins import
only ``jef``, :mod:`jef.components`, :mod:`jef.dist`, :mod:`jef.functional` and :mod:`jef.testing`);
:func:`load_pipeline` and ``jef.run(pipeline, ...)`` for programmatic use (``jef.run`` is the run package,
callable as :func:`jef.run.loop.train`). Importing jef loads no plugins; discovery is explicit
(:func:`jef.plugins.load_plugins`, or :func:`jef.plugins.get_plugins` for the process-wide set, loaded once).
Modules that moved with layout v2 keep their old import paths for one release (:mod:`jef.moved`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jef import moved
from jef.hookspecs import Register, RegisterCommand, RegisterMethod, hookimpl

__version__ = "0.1.0"
__all__ = ["Register", "RegisterCommand", "RegisterMethod", "__version__", "hookimpl", "load_pipeline", "run"]

if TYPE_CHECKING:
    from jef.config import Pipeline


def load_pipeline(path: Any, overrides: list[str] | None = None) -> Pipeline:
    """Read, merge with its method recipe and validate a pipeline YAML file.

    Args:
        path: The YAML file.
        overrides: ``key.path=value`` strings applied last.
    """
    from jef.config import load_pipeline as _load
    from jef.plugins import get_plugins

    return _load(path, overrides or [], registry=get_plugins().registry)


def __getattr__(name: str) -> Any:
    # ``jef.run`` is the run package, callable as the function that trains (jef.run(pipeline, ...)); imported on
    # first use, so that ``import jef`` stays light.
    if name == "run":
        import importlib

        return importlib.import_module("jef.run")
    raise AttributeError(f"module 'jef' has no attribute {name!r}")


moved.install()
