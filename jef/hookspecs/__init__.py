"""Hook specifications: every hook jef calls, and the reference for plugin authors.

A plugin is a module (or object) with functions named after these hooks and
decorated with ``@jef.hookimpl``. Installed plugins are found through the
``jef`` entry-point group; built-ins are plugins of the same kind.

Two families of hooks:

* **Registration hooks** (``jef_register_*``) are called once on every loaded
  plugin. Each receives a ``register`` callable (typed by :class:`Register`, or :class:`RegisterMethod` and
  :class:`RegisterCommand`); jef owns the name table and records which plugin (and distribution, version)
  provided each name.
* **Run hooks** (``jef_run_start`` ... ``jef_run_end``) are called during
  ``jef train`` on the plugins *active in that run*: the built-ins, ``--plugin``
  files and plugin objects, the installed plugins the pipeline selected (its
  method's or its components'), and the components and monitors it built,
  which are registered for the run and unregistered after it.

The specifications live in :mod:`jef.hookspecs.registration` and :mod:`jef.hookspecs.run`; this package
re-exports them, so ``jef.hookspecs.NAME`` and ``manager.add_hookspecs(jef.hookspecs)`` see every one.
"""

from __future__ import annotations

from jef.hookspecs._markers import PROJECT, hookimpl, hookspec
from jef.hookspecs.registration import (  # noqa: F401  (re-exported: pluggy reads the specs here)
    jef_addhooks,
    jef_register_methods,
    jef_register_augmenters,
    jef_register_backbones,
    jef_register_heads,
    jef_register_energies,
    jef_register_functionals,
    jef_register_targets,
    jef_register_maskers,
    jef_register_tokenizers,
    jef_register_datasets,
    jef_register_monitors,
    jef_register_loggers,
    jef_register_commands,
)
from jef.hookspecs.run import (  # noqa: F401  (re-exported: pluggy reads the specs here)
    jef_run_start,
    jef_train_step,
    jef_after_backward,
    jef_step_end,
    jef_epoch_end,
    jef_run_end,
)
from jef.registry import Register, RegisterCommand, RegisterMethod

__all__ = ["PROJECT", "Register", "RegisterCommand", "RegisterMethod", "hookimpl", "hookspec"]
