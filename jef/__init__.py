"""jef: the joint-embedding framework for self-supervised learning.

Public API: :data:`hookimpl` and the ``register`` callables' types (:class:`Register`, :class:`RegisterMethod`,
:class:`RegisterCommand`) for plugin authors (the hooks are in :mod:`jef.hookspecs`; plugins import
only ``jef``, :mod:`jef.components`, :mod:`jef.dist`, :mod:`jef.functional` and :mod:`jef.testing`);
for notebooks and scripts, :func:`load_pipeline`, ``jef.run(pipeline, ...)`` (``jef.run`` is the run package,
callable as :func:`jef.run.api.run_pipeline`, returning a :class:`jef.run.api.RunResult`), and, imported on
first use, :func:`~jef.run.reopen.load_run`, :func:`~jef.tools.export.load_exported`,
:func:`~jef.tools.embed.load_embeddings`, :func:`~jef.evaluate.protocols.evaluate_backbone`,
:func:`~jef.tools.report.writer.write_report` and :func:`add_plugin`. Importing jef loads no plugins; discovery is explicit
(:func:`jef.plugins.load_plugins`, or :func:`jef.plugins.get_plugins` for the process-wide set, loaded once).
Modules that moved with layout v2 keep their old import paths for one release (:mod:`jef.moved`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jef import moved
from jef.hookspecs import Register, RegisterCommand, RegisterMethod, hookimpl

__version__ = "0.1.0"
__all__ = ["Register", "RegisterCommand", "RegisterMethod", "__version__", "add_plugin", "evaluate_backbone",
           "hookimpl", "load_embeddings", "load_exported", "load_pipeline", "load_run", "run", "write_report"]

#: The notebook API's functions, imported on first use (``import jef`` stays light): name -> module.
_LAZY = {"load_run": "jef.run.reopen", "load_exported": "jef.tools.export", "load_embeddings": "jef.tools.embed",
         "evaluate_backbone": "jef.evaluate.protocols", "write_report": "jef.tools.report.writer"}

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


def add_plugin(plugin: Any, name: str | None = None, *, plugins: Any = None) -> Any:
    """Add a plugin object or module (its ``@jef.hookimpl`` functions) to the process-wide plugins.

    For components written in a notebook or script: what they register can be named in a pipeline at once.

    Example:
        >>> class Tiny:
        ...     @jef.hookimpl
        ...     def jef_register_backbones(self, register): register("tiny_mlp", build_tiny_mlp)
        >>> jef.add_plugin(Tiny())  # doctest: +SKIP

    Args:
        plugin: An object or module with ``@jef.hookimpl`` methods or functions.
        name: Its name in ``jef plugins`` and in errors (default: its class or module name).
        plugins: The plugins to add it to (default: :func:`jef.plugins.get_plugins`).

    Returns:
        The plugin's :class:`jef.plugins.PluginInfo`; ``status`` is ``"broken"`` (and ``error`` says why) when
        its hooks do not match jef's.
    """
    from jef.plugins import add_plugin as _add, get_plugins

    plugins = plugins or get_plugins()
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    if name in plugins.infos:
        raise ValueError(f"jef.add_plugin: a plugin named {name!r} is loaded already; pass another name=")
    return _add(plugins, name, plugin)


def __getattr__(name: str) -> Any:
    # ``jef.run`` is the run package, callable as the function that trains (jef.run(pipeline, ...)); imported on
    # first use, so that ``import jef`` stays light.
    if name == "run":
        import importlib

        return importlib.import_module("jef.run")
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jef' has no attribute {name!r}")


moved.install()
