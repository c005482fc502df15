"""The import paths of the modules that moved with layout v2, kept working for one release.

``import jef.train`` (or ``from jef.checkpoint import load_checkpoint``) still works: it gives the module at its
new path and warns with a :class:`DeprecationWarning` that names that path. Code that imports only the plugin
author's modules (``jef``, ``jef.components``, ``jef.dist``, ``jef.functional``, ``jef.testing``) never meets
this. The table is in docs/upgrading.md.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install", "moved_to"]

#: Old module path -> new module path.
MOVED: dict[str, str] = {
    "jef.train": "jef.run.loop",
    "jef.run_state": "jef.run.state",
    "jef.step_terms": "jef.run.terms",
    "jef.faults": "jef.run.faults",
    "jef.checkpoint": "jef.run.checkpoint",
    "jef.runlog": "jef.run.log",
    "jef.data_order": "jef.run.sampler",
    "jef.optim": "jef.run.optim",
    "jef.run_dir": "jef.run.directory",
    "jef.launch": "jef.run.launch",
    "jef.accelerate_compat": "jef.run.accelerate_compat",
    "jef.options": "jef.config.options",
    "jef.validate": "jef.config.validate",
    "jef.pipeline": "jef.model.build",
    "jef.shuffle_bn": "jef.model.shuffle_bn",
    "jef.sync_bn": "jef.model.sync_bn",
    "jef.runs": "jef.tools.runs",
    "jef.embed": "jef.tools.embed",
    "jef.export": "jef.tools.export",
    "jef.scaffold": "jef.tools.scaffold",
    "jef.report": "jef.tools.report",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new, self.spec = new, None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new}; import {self.new} (the old path goes in the next "
                      f"release)", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The module at its new path is already executed; the import system gave it the old path's spec.
        module.__spec__ = self.spec


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = moved_to(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new))


def moved_to(name: str) -> str | None:
    """The new path of module ``name`` if it moved (a moved package's submodules moved with it), else None."""
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        new = MOVED.get(".".join(parts[:end]))
        if new is not None:
            return ".".join([new, *parts[end:]])
    return None


def install() -> None:
    """Make the old paths importable (once per process; :mod:`jef` calls it on import)."""
    # First: behind the path finder, ``jef.report.sections`` would be found in ``jef.report``'s (that is
    # jef.tools.report's) folder and loaded a second time, as another module.
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
