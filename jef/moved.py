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

__all__ = ["MOVED", "install"]

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
        new = MOVED.get(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new))


def install() -> None:
    """Make the old paths importable (once per process; :mod:`jef` calls it on import)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
