"""The old import paths of the modules that moved with layout v2 (jef.moved) and the callable ``jef.run``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import jef
from jef.moved import MOVED

ROOT = Path(jef.__file__).parent


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_module_path_gives_the_moved_module_and_names_its_new_path(old, new):
    assert not (ROOT.parent / (old.replace(".", "/") + ".py")).exists()  # the alias, not a leftover file
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to {new}; import {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == module.__spec__.name == new  # the module itself keeps its new identity


def test_a_moved_package_s_submodules_moved_with_it():
    for name in ("jef.report", "jef.report.sections"):
        sys.modules.pop(name, None)
    with pytest.warns(DeprecationWarning, match="jef.report.sections moved to jef.tools.report.sections"):
        sections = importlib.import_module("jef.report.sections")
    import jef.tools.report.sections

    assert sections is jef.tools.report.sections  # one module, not a second copy found in the package's folder


def test_from_an_old_path_imports_the_same_objects():
    code = ("import warnings; warnings.simplefilter('error')\n"
            "try:\n    from jef.checkpoint import load_checkpoint\nexcept DeprecationWarning as w: print(w)\n"
            "warnings.simplefilter('ignore')\nfrom jef.checkpoint import load_checkpoint\n"
            "from jef.run.checkpoint import load_checkpoint as new\nprint(load_checkpoint is new)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == ("jef.checkpoint moved to jef.run.checkpoint; import jef.run.checkpoint (the old path goes in "
                      "the next release)")
    assert out[1] == "True"


def test_jef_run_is_the_run_package_and_trains_when_called(monkeypatch):
    import jef.run.loop

    calls = []
    monkeypatch.setattr(jef.run, "run_pipeline",
                        lambda pipeline, overrides, **kwargs: calls.append((pipeline, overrides, kwargs)) or {"x": 1.0})
    assert jef.run("pipeline.yaml", ["seed=1"], cpu=True) == {"x": 1.0}
    assert calls == [("pipeline.yaml", ["seed=1"], {"cpu": True})]
    assert jef.run.loop.train.__module__ == "jef.run.loop"


def test_a_name_jef_does_not_have_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'jef' has no attribute 'trian'"):
        jef.trian  # noqa: B018


def test_the_top_of_jef_holds_at_most_twelve_modules():
    # ARCHITECTURE §2: the core's modules live in folders that show the layers.
    modules = sorted(path.name for path in ROOT.glob("*.py"))
    assert len(modules) <= 12, modules
