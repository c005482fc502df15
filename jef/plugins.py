"""Plugin discovery: built-ins, installed entry points (group ``jef``) and local files, one at a time.

A plugin that fails (import error, misspelt or unmarked hook, error while registering) is recorded as broken
with its distribution and the error; the others load (:func:`jef.names.hook_problems` checks the hooks, as it
does a run's own objects). Discovery is explicit, never a side effect of import.
Environment: ``JEF_LOAD_PLUGINS`` (comma-separated allow-list of entry points; set but empty loads none),
``JEF_DISABLE_PLUGINS`` (names not to load), ``JEF_TRACE_PLUGINS=1`` (print every hook call).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pluggy

from jef.builtin import BUILTIN_PLUGINS
from jef import hookspecs
from jef.config import read_yaml
from jef.names import hook_problems
from jef.registry import KINDS, Provenance, Registry

ENTRY_POINT_GROUP = "jef"


@attrs.define
class PluginInfo:
    """What ``jef plugins`` shows for one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    status: str = "ok"  # ok | broken | disabled
    error: str | None = None
    hooks: list[str] = attrs.field(factory=list)
    provides: dict[str, list[str]] = attrs.field(factory=dict)
    builtin: bool = False
    #: How it was loaded: builtin | entry_point | file (``--plugin``) | object (``extra``, :func:`add_plugin`).
    #: An entry point's run hooks run only in pipelines that select it; the others' in every run.
    origin: str = "object"


@attrs.define
class Plugins:
    """The loaded plugin manager, the name table, and a record of every plugin."""

    manager: pluggy.PluginManager
    registry: Registry
    infos: dict[str, PluginInfo]

    def broken(self) -> list[PluginInfo]:
        """Plugins that failed to load or register."""
        return [info for info in self.infos.values() if info.status == "broken"]


def new_manager() -> pluggy.PluginManager:
    """A plugin manager that knows jef's hook specifications and nothing else."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    # Historic: every plugin registered from now on receives the call when it is registered.
    manager.hook.jef_addhooks.call_historic(kwargs={"pluginmanager": manager})
    if os.environ.get("JEF_TRACE_PLUGINS") == "1":
        manager.trace.root.setwriter(lambda message: print(message, end="", file=sys.stderr))
        manager.enable_tracing()
    return manager


def load_plugins(*, builtins: bool = True, entry_points: bool = True,
                 files: tuple[str | Path, ...] = (), extra: tuple[tuple[str, Any], ...] = ()) -> Plugins:
    """Load plugins, fill the registry and return them.

    Args:
        builtins: Load jef's built-in plugins.
        entry_points: Load installed plugins of the ``jef`` entry-point group.
        files: Paths of one-off plugin modules (``--plugin file.py``).
        extra: ``(name, plugin_object)`` pairs registered as they are (tests).
    """
    plugins = Plugins(new_manager(), Registry(read_recipe=read_yaml), {})
    if builtins:
        for module in BUILTIN_PLUGINS:  # listed explicitly: a helper module of the built-ins is no plugin
            _add(plugins, f"builtin.{module}", lambda m=module: importlib.import_module(f"jef.builtin.{m}"),
                 PluginInfo(f"builtin.{module}", "jef", _version("jef"), builtin=True, origin="builtin"))
    if entry_points:
        allow = _env_names("JEF_LOAD_PLUGINS")
        deny = _env_names("JEF_DISABLE_PLUGINS") or set()
        for point in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
            dist = getattr(point, "dist", None)
            info = PluginInfo(point.name, dist.name if dist else None, dist.version if dist else None,
                              origin="entry_point")
            if (allow is not None and point.name not in allow) or point.name in deny:
                info.status = "disabled"
                plugins.infos[point.name] = info
                continue
            _add(plugins, point.name, point.load, info)
    for path in files:
        _add(plugins, str(path), lambda p=path: _import_file(Path(p)), PluginInfo(str(path), origin="file"))
    for name, obj in extra:
        _add(plugins, name, lambda o=obj: o, PluginInfo(name))
    # After every plugin is in: a hook published by a later plugin's jef_addhooks is known by then.
    for name in list(plugins.infos):
        _check_hooks(plugins, name)
    plugins.manager.check_pending()
    _register_components(plugins)
    return plugins


@functools.cache
def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    return load_plugins()


def add_plugin(plugins: Plugins, name: str, plugin: Any) -> PluginInfo:
    """Register one more plugin object after loading and add its components to the registry."""
    _add(plugins, name, lambda: plugin, PluginInfo(name))
    _check_hooks(plugins, name)
    _register_components(plugins, only=name)
    return plugins.infos[name]


def _add(plugins: Plugins, name: str, load: Any, info: PluginInfo) -> None:
    """Import and register one plugin; record it as broken instead of raising."""
    plugins.infos[name] = info
    try:
        plugins.manager.register(load(), name=name)
    except Exception as error:  # noqa: BLE001 -- one broken plugin must not stop the others
        info.status, info.error = "broken", f"{type(error).__name__}: {error}"
        detail = traceback.format_exception_only(type(error), error)[-1].strip()
        print(f"jef: plugin {name!r} ({info.distribution or 'no distribution'}) failed to load: {detail}",
              file=sys.stderr)
        return
    info.hooks = sorted(caller.name for caller in plugins.manager.get_hookcallers(
        plugins.manager.get_plugin(name)) or [])


def _check_hooks(plugins: Plugins, name: str) -> None:
    """Mark loaded plugin ``name`` broken, and unregister it, when :func:`hook_problems` finds any."""
    info = plugins.infos[name]
    if info.status != "ok" or not (problems := hook_problems(plugins.manager.get_plugin(name), plugins.manager)):
        return
    info.status, info.hooks, info.error = "broken", [], "; ".join(problems)
    print(f"jef: plugin {name!r} is broken: {info.error}", file=sys.stderr)
    plugins.manager.unregister(name=name)


def _register_components(plugins: Plugins, only: str | None = None) -> None:
    """Call every registration hook plugin by plugin (or of plugin ``only``), recording who provided what."""
    for kind, hook_name in KINDS.items():
        for impl in getattr(plugins.manager.hook, hook_name).get_hookimpls():
            info = plugins.infos[impl.plugin_name]
            if info.status != "ok" or (only is not None and impl.plugin_name != only):
                continue
            provenance = Provenance(impl.plugin_name, info.distribution, info.version)
            try:
                impl.function(register=plugins.registry.register_callable(kind, provenance))
            except Exception as error:  # noqa: BLE001 -- isolate the failing plugin
                info.status, info.error = "broken", f"{hook_name}: {type(error).__name__}: {error}"
                plugins.registry.remove_plugin(impl.plugin_name)
                info.provides.clear()
                print(f"jef: plugin {impl.plugin_name!r} failed in {hook_name}: {error}", file=sys.stderr)
                continue
            if added := [e.name for e in plugins.registry.entries(kind) if e.provenance.plugin == impl.plugin_name]:
                info.provides[kind] = sorted(added)


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"--plugin {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"jef_local_plugin_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"--plugin {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return None
