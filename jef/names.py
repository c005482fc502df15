"""Names a user or a plugin author writes: the closest valid name to a misspelt one, and the check of a plugin's
``jef_*`` names (a hook pluggy would never call is an error, not a silent no-op).

The lowest layer of jef's own modules (it imports none of them): the name table, the pipeline validation, plugin
loading and the registration of a run's objects all use it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pluggy

__all__ = ["closest", "hook_problems"]


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid choice to a misspelt word, or None when none is close (``difflib``, cutoff 0.6)."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def hook_problems(plugin: Any, manager: pluggy.PluginManager) -> list[str]:
    """What pluggy would get wrong in ``plugin``'s callable ``jef_*`` attributes, one message each.

    A name that is no hook of ``manager`` is a misspelling (the closest hook is named), unless marked
    ``optionalhook``; a hook's name without ``@jef.hookimpl`` would never be called. Pluggy reads the marker.
    """
    hooks = [name for name in dir(manager.hook) if name.startswith("jef_") and getattr(manager.hook, name).has_spec()]
    problems = []
    for name in sorted(n for n in dir(plugin) if n.startswith("jef_")):
        value = inspect.getattr_static(plugin, name, None)
        if not (callable(value) or isinstance(value, classmethod)):
            continue  # data named jef_* is no attempt at a hook
        marked = manager.parse_hookimpl_opts(plugin, name)
        if name in hooks and marked is None:
            problems.append(f"{name!r} is not marked @jef.hookimpl, so pluggy would never call it; decorate it")
        elif name not in hooks and not (marked or {}).get("optionalhook"):
            hint = closest(name, hooks)
            problems.append(f"unknown hook {name!r}" + (f"; did you mean {hint!r}?" if hint else ""))
    return problems
