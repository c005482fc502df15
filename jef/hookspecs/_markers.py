"""The markers of jef's hooks: ``@jef.hookspec`` (jef's own specifications) and ``@jef.hookimpl`` (plugins)."""

from __future__ import annotations

import pluggy

#: The pluggy project name, and the entry-point group of installed plugins.
PROJECT = "jef"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "hookimpl", "hookspec"]
