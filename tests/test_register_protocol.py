"""The register callables' types (jef.Register, RegisterMethod, RegisterCommand) are what the registry hands out."""

from __future__ import annotations

import inspect

import pytest

import jef
from jef import hookspecs
from jef.registry import KINDS, Provenance, Registry

PROTOCOLS = {"method": jef.RegisterMethod, "command": jef.RegisterCommand}


def _parameters(function) -> list[tuple[str, inspect._ParameterKind, object]]:
    """Name, kind and default of each parameter; a protocol's ``...`` default stands for any default."""
    return [(p.name, p.kind, "any" if p.default is Ellipsis else p.default)
            for p in inspect.signature(function).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_registration_hook_is_typed_with_the_callable_the_registry_gives_it(kind):
    protocol = PROTOCOLS.get(kind, jef.Register)
    given = _parameters(Registry().register_callable(kind, Provenance("a_plugin")))
    typed = _parameters(protocol.__call__)
    assert [(name, k) for name, k, _ in given] == [(name, k) for name, k, _ in typed], kind
    assert [d for _, _, d in typed] == [t if t == "any" else g for (_, _, g), (_, _, t) in zip(given, typed)], kind
    hook = getattr(hookspecs, KINDS[kind])
    assert inspect.signature(hook).parameters["register"].annotation == protocol.__name__, KINDS[kind]

