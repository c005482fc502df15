"""Meta-tests that keep the reference honest: hooks documented and exercised, size budgets kept."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import attrs
import pytest

from jef import hookspecs
from jef.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("jef_"))


def test_there_are_hooks():
    assert len(HOOKS) >= 16


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_docstring_documenting_each_argument(name):
    function = getattr(hookspecs, name)
    doc = inspect.getdoc(function) or ""
    assert doc, f"{name} has no docstring"
    assert "Args:" in doc, f"{name}'s docstring has no Args: section"
    for parameter in inspect.signature(function).parameters:
        assert re.search(rf"^\s+{parameter}:", doc, re.MULTILINE), f"{name}: argument {parameter!r} undocumented"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_exercised_by_a_test(name):
    test_files = [*ROOT.glob("tests/test_*.py"), *ROOT.glob("plugins/*/tests/test_*.py")]
    users = [path.name for path in test_files if path.name != "test_meta.py" and name in path.read_text()]
    assert users, f"no test mentions {name}; add one that calls or implements it"


def test_firstresult_hooks_say_so():
    for name in HOOKS:
        opts = getattr(getattr(hookspecs, name), "jef_spec", {})
        if opts.get("firstresult"):
            assert "Stops at the first non-None result" in getattr(hookspecs, name).__doc__


#: The hook reference stays short enough to read: 300 lines a file of jef/hookspecs/ (one per hook family).
BUDGETS = {**{str(path.relative_to(ROOT)): 300 for path in sorted((ROOT / "jef/hookspecs").glob("*.py"))},
           "jef/plugins.py": 200, "jef/run/loop.py": 250}


@pytest.mark.parametrize("path,limit", sorted(BUDGETS.items()))
def test_core_files_keep_their_size_budget(path, limit):
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= limit, f"{path} has {lines} lines, over its budget of {limit}: split it by responsibility"


def test_method_plugin_modules_keep_their_size_budget():
    for path in ROOT.glob("plugins/jef-plugin-*/jef_plugin_*/*.py"):
        assert len(path.read_text().splitlines()) <= 300, path


def test_every_builtin_option_is_documented():
    plugins = load_plugins(entry_points=False)
    undocumented = [f"{entry.kind} {entry.name}: {field.name}"
                    for entry in plugins.registry.entries() if entry.kind != "command"
                    for field in attrs.fields(entry.options) if not field.metadata.get("doc")]
    assert not undocumented, undocumented


def test_builtins_provide_every_component_kind_but_methods():
    plugins = load_plugins(entry_points=False)
    for kind in ("augmenter", "backbone", "head", "energy", "functional", "dataset", "monitor", "command"):
        assert plugins.registry.names(kind), kind
    assert plugins.registry.names("method") == []  # the core knows no method by name
