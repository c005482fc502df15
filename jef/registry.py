"""The name table: (kind, name) -> factory, options class and provenance.

jef owns this table; plugins fill it through the ``register`` callables the
registration hooks hand them. Nothing is ever overwritten: when two plugins
register the same (kind, name), looking the bare name up fails and names both
providers, and ``plugin:name`` picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from jef.components import NoOptions
from jef.names import closest

if TYPE_CHECKING:
    import argparse

    from jef.components import RunContext

#: Kinds of component, each with its registration hook ``jef_register_<kind>s``
#: (``heads`` and ``energies`` spelt as such).
KINDS: dict[str, str] = {
    "method": "jef_register_methods",
    "augmenter": "jef_register_augmenters",
    "backbone": "jef_register_backbones",
    "head": "jef_register_heads",
    "energy": "jef_register_energies",
    "functional": "jef_register_functionals",
    "target": "jef_register_targets",
    "masker": "jef_register_maskers",
    "tokenizer": "jef_register_tokenizers",
    "dataset": "jef_register_datasets",
    "monitor": "jef_register_monitors",
    "logger": "jef_register_loggers",
    "command": "jef_register_commands",
}


class Register(Protocol):
    """The ``register`` callable a component registration hook receives (augmenters ... monitors).

    ``register(name, factory, *, options=NoOptions, description="", paper="")`` adds one component to jef's
    table, recorded as provided by the calling plugin: ``name`` is what users write in YAML (no ``:``);
    ``factory(options, ctx)`` builds it from an instance of ``options``, an attrs class whose defaults, types
    and validators are the component's options (ranges are checked there, once), and the run's
    :class:`~jef.components.RunContext`; ``description`` is one line for ``jef list``, ``paper`` the
    reference ``jef plugins`` shows. One plugin registering a name twice is an error.
    """

    def __call__(self, name: str, factory: Callable[[Any, RunContext], Any], *, options: type = ...,
                 description: str = "", paper: str = "") -> None: ...


class RegisterMethod(Protocol):
    """The ``register`` callable :func:`jef_register_methods` receives: a method's name and its recipe."""

    def __call__(self, name: str, recipe: Mapping[str, Any] | Path | str, *, description: str = "",
                 paper: str = "", multi_crop: bool = False) -> None: ...


class RegisterCommand(Protocol):
    """The ``register`` callable :func:`jef_register_commands` receives: a sub-command's name and handler."""

    def __call__(self, name: str, handler: Callable[[argparse.Namespace], int], *,
                 arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 description: str = "") -> None: ...


class BuildError(RuntimeError):
    """A component's factory failed; the message names the component and its plugin, ``__cause__`` is the error.

    Errors about the user's input (``OSError``: a missing or unreadable file; ``ValueError``: a bad value) are
    shown by the command line as a message; any other cause is likely a bug in the plugin, and the traceback is
    shown too.
    """


class RegistryError(LookupError):
    """A component name could not be resolved (unknown or ambiguous)."""


@attrs.frozen
class Provenance:
    """Who provided a component.

    Attributes:
        plugin: The plugin's name in the plugin manager (entry-point name,
            ``builtin.<module>`` for built-ins, or a file path).
        distribution: The distribution that installed it (``jef-plugin-simclr``), if known.
        version: That distribution's version, if known.
    """

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution:
            return f"{self.plugin} ({self.distribution} {self.version or '?'})"
        return self.plugin


@attrs.frozen
class Entry:
    """One registered component.

    Attributes:
        kind: One of :data:`KINDS`.
        name: The name users write in YAML.
        factory: ``factory(options, ctx) -> component``; for methods, the recipe
            mapping; for commands, the handler.
        options: The attrs class declaring the component's options.
        description: One line for listings.
        paper: Reference of the paper the component comes from.
        provenance: Who registered it.
        extra: Kind-specific data (e.g. a command's ``arguments`` callback).
    """

    kind: str
    name: str
    factory: Any
    options: type
    description: str
    paper: str
    provenance: Provenance
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def qualified_name(self) -> str:
        """``plugin:name``, unique even when names clash."""
        return f"{self.provenance.plugin}:{self.name}"


class Registry:
    """The table of every registered component, by kind and name.

    Args:
        read_recipe: Reads a method recipe given as a file (``register(name, Path("recipe.yaml"))``); the plugin
            machinery passes :func:`jef.config.read_yaml`. The table itself reads no files, so that the pipeline
            layer (:mod:`jef.config`), which looks names up in it, sits above it.
    """

    def __init__(self, *, read_recipe: Callable[[Path], Any] | None = None) -> None:
        self._entries: dict[str, dict[str, list[Entry]]] = {kind: {} for kind in KINDS}
        self._read_recipe = read_recipe

    # -- filling -----------------------------------------------------------

    def register_callable(self, kind: str, provenance: Provenance) -> Callable[..., None]:
        """The ``register`` function handed to one plugin's registration hook."""
        if kind == "method":

            def register_method(name: str, recipe: Mapping[str, Any] | Path | str, *,
                                description: str = "", paper: str = "", multi_crop: bool = False) -> None:
                self._add(Entry("method", name, self._load_recipe(recipe, name, provenance), NoOptions,
                                description, paper, provenance, {"multi_crop": bool(multi_crop)}))

            return register_method
        if kind == "command":

            def register_command(name: str, handler: Callable[..., int], *,
                                 arguments: Callable[..., None] | None = None,
                                 description: str = "") -> None:
                self._add(Entry("command", name, handler, NoOptions, description, "", provenance,
                                {"arguments": arguments}))

            return register_command

        def register(name: str, factory: Callable[..., Any], *, options: type = NoOptions,
                     description: str = "", paper: str = "") -> None:
            if not callable(factory):
                raise TypeError(f"plugin {provenance.plugin}: {kind} {name!r}: factory must be callable, "
                                f"got {type(factory).__name__}")
            if not attrs.has(options):
                raise TypeError(f"plugin {provenance.plugin}: {kind} {name!r}: options must be an attrs "
                                f"class, got {options!r}")
            self._add(Entry(kind, name, factory, options, description, paper, provenance))

        return register

    def _add(self, entry: Entry) -> None:
        if not entry.name or ":" in entry.name:
            raise ValueError(f"plugin {entry.provenance.plugin}: invalid {entry.kind} name "
                             f"{entry.name!r} (non-empty, no ':')")
        same = self._entries[entry.kind].setdefault(entry.name, [])
        if any(e.provenance.plugin == entry.provenance.plugin for e in same):
            raise ValueError(f"plugin {entry.provenance.plugin} registered {entry.kind} "
                             f"{entry.name!r} twice")
        same.append(entry)

    def _load_recipe(self, recipe: Mapping[str, Any] | Path | str, name: str,
                     provenance: Provenance) -> dict[str, Any]:
        """A method recipe as a plain dict, read from YAML when given a path."""
        if isinstance(recipe, Mapping):
            return dict(recipe)
        path = Path(recipe)
        if self._read_recipe is None:
            raise ValueError(f"plugin {provenance.plugin}: method {name!r}: cannot read recipe {path}: this registry "
                             f"reads no files; make it with Registry(read_recipe=jef.config.read_yaml), or register "
                             f"the recipe as a mapping")
        try:
            data = self._read_recipe(path)
        except ValueError as error:  # a ConfigError naming the file, the line and the problem
            raise ValueError(f"plugin {provenance.plugin}: method {name!r}: cannot read recipe: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"plugin {provenance.plugin}: method {name!r}: recipe {path} must be a mapping")
        return data

    def remove_plugin(self, plugin: str) -> None:
        """Forget everything one plugin registered (when it is unloaded)."""
        for by_name in self._entries.values():
            for name in list(by_name):
                by_name[name] = [e for e in by_name[name] if e.provenance.plugin != plugin]
                if not by_name[name]:
                    del by_name[name]

    # -- reading -----------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        return sorted(self._entries[_check_kind(kind)])

    def entries(self, kind: str | None = None) -> list[Entry]:
        """All entries (of one kind), sorted by kind and name."""
        kinds = [_check_kind(kind)] if kind else list(KINDS)
        return [e for k in kinds for name in sorted(self._entries[k]) for e in self._entries[k][name]]

    def get(self, kind: str, name: str) -> Entry:
        """Resolve ``name`` or ``plugin:name`` to one entry.

        Raises:
            RegistryError: unknown name (with the closest valid one), or a name
                provided by several plugins (naming them all).
        """
        by_name = self._entries[_check_kind(kind)]
        plugin, _, bare = name.rpartition(":")
        candidates = by_name.get(bare, [])
        if plugin:
            chosen = [e for e in candidates if e.provenance.plugin == plugin]
            if chosen:
                return chosen[0]
            providers = ", ".join(e.qualified_name for e in candidates) or "none"
            raise RegistryError(f"no {kind} {bare!r} from plugin {plugin!r} (providers: {providers})")
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            names = " and ".join(f"{e.provenance} as '{e.qualified_name}'" for e in candidates)
            raise RegistryError(f"{kind} {bare!r} is provided by several plugins: {names}; "
                                f"write the qualified name to choose one")
        hint = closest(bare, list(by_name))
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        available = ", ".join(sorted(by_name)) or "none registered"
        raise RegistryError(f"unknown {kind} {bare!r}{suggestion} (available: {available})")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        hint = closest(kind, list(KINDS))
        raise RegistryError(f"unknown component kind {kind!r}" + (f"; did you mean {hint!r}?" if hint else "")
                            + f" (kinds: {', '.join(KINDS)})")
    return kind

