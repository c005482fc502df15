"""A plugin works from its wheel, not only from its source tree.

``make install`` installs jef and every plugin under ``plugins/`` *editable*, so they run from the source
tree and nothing shows what a wheel leaves out (a ``recipe.yaml`` that setuptools was never told to ship:
the installed plugin is broken with "cannot read recipe"). Here the scaffold of every ``jef new-plugin
--kind`` and every plugin under ``plugins/`` is built into a wheel as a user publishes it, the wheels are
installed non-editable into one scratch ``--target`` directory, and a fresh interpreter checks each one:
``jef plugins --json`` lists it as ok, its module and its entry point come from the wheel, every YAML file
of its source package is installed, and every method it provides resolves (``jef.config.resolve``).

The cheapest honest setup (no new virtual environment: reinstalling jef and torch there would take
minutes):

* Builds run offline with this environment's setuptools (``pip wheel --no-deps --no-build-isolation
  --no-index``), all packages in one ``pip wheel`` call, from copies in a temporary directory: setuptools
  builds in the tree (``build/``, ``*.egg-info``), and the source tree is shared.
* The checking interpreter runs with ``-I`` (no PYTHONPATH, user site or current directory on its path)
  and puts the target first on ``sys.path`` itself, so the rest of the environment (jef, torch) is the one
  the tests run in. The shipped plugins are also installed editable here. setuptools' editable finders sit
  at the end of ``sys.meta_path``, after the path finder, so an import finds the target's copy first; but
  a package a wheel left out entirely would come, silently, from the source tree. So the check asserts
  that ``module.__file__`` is inside the target.
* ``importlib.metadata.entry_points()`` keeps one distribution per normalised name, the first on
  ``sys.path``. The check asserts that each plugin has exactly one ``jef`` entry point and that its
  distribution lives in the target, so the editable install's ``.dist-info`` cannot answer for the wheel.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jef.tools.scaffold import KINDS, new_plugin, plugin_names

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(path for path in (ROOT / "plugins").glob("jef-plugin-*") if (path / "pyproject.toml").is_file())
SCAFFOLDS = {kind: f"wheel_{kind}" for kind in KINDS}

#: Run in the checking interpreter: argv = target, results file, plugin names.
CHECK = r"""
import contextlib, importlib, importlib.metadata, io, json, sys
from pathlib import Path

target, results, names = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), sys.argv[3:]
sys.path.insert(0, str(target))
from jef.cli import main
from jef.config import resolve
from jef.plugins import load_plugins

listing = io.StringIO()
with contextlib.redirect_stdout(listing):
    code = main(["plugins", "--json"])
assert code == 0, code
rows = {row["name"]: row for row in json.loads(listing.getvalue())}
points = importlib.metadata.entry_points(group="jef")
registry = load_plugins().registry
report = {}
for name in names:
    row = rows.get(name, {})
    found = [point for point in points if point.name == name]
    entry = {"status": row.get("status"), "error": row.get("error"), "provides": row.get("provides", {}),
             "entry_points": [str(point.dist.locate_file("")) for point in found]}
    if found:
        module = importlib.import_module(found[0].value)
        entry["package"] = str(Path(module.__file__).resolve().parent)
    entry["resolved"] = {}
    for method in entry["provides"].get("method", []):
        try:
            entry["resolved"][method] = resolve({"method": method}, source=f"<method: {method}>",
                                                registry=registry).method.name
        except Exception as error:  # reported, and the test names it
            entry["resolved"][method] = f"{type(error).__name__}: {error}"
    report[name] = entry
results.write_text(json.dumps(report))
"""


def _recipe_as_yaml(package: Path, name: str) -> None:
    """Move the generated method's recipe from ``RECIPE = {...}`` to ``recipe.yaml``: the shipped layout."""
    module = package / "__init__.py"
    source = module.read_text(encoding="utf-8")
    (assignment,) = [node for node in ast.parse(source).body
                     if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["RECIPE"]]
    (package / "recipe.yaml").write_text(yaml.safe_dump(ast.literal_eval(assignment.value)), encoding="utf-8")
    # The hooks read RECIPE when they are called, so rebinding it at the end of the module is enough.
    module.write_text(source + '\nRECIPE = __import__("pathlib").Path(__file__).with_name("recipe.yaml")\n',
                      encoding="utf-8")
    assert f'register("{name}", RECIPE,' in source


def _yaml_files(package: Path) -> set[str]:
    return {str(path.relative_to(package)) for path in package.rglob("*.y*ml")}


@pytest.fixture(scope="session")
def wheels(tmp_path_factory):
    """Build every wheel, install them into one target, check them all in one interpreter: name -> report."""
    root = tmp_path_factory.mktemp("wheels")
    sources: dict[str, Path] = {}  # plugin name -> the copy its wheel is built from
    for kind, name in SCAFFOLDS.items():
        sources[name] = new_plugin(name, kind, root / "scaffolds")
        package = sources[name] / plugin_names(name)["package"]
        if kind == "method":
            _recipe_as_yaml(package, name)
        else:  # any kind may carry data files; a YAML one must ship too
            (package / "defaults.yaml").write_text("# data of the package, read at run time\nscale: 1.0\n")
    for path in SHIPPED:
        name = next(iter(_entry_points(path)))
        sources[name] = root / "shipped" / path.name
        shutil.copytree(path, sources[name], ignore=shutil.ignore_patterns("*.egg-info", "build", "dist",
                                                                          "__pycache__", ".pytest_cache"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(root / "dist"), *map(str, sources.values())],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-4000:]
    files = sorted((root / "dist").glob("*.whl"))
    assert len(files) == len(sources), [f.name for f in files]
    target = root / "target"
    installed = subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                                *map(str, files)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-4000:]
    results = root / "results.json"
    checked = subprocess.run([sys.executable, "-I", "-c", CHECK, str(target), str(results), *sources],
                             capture_output=True, text=True, timeout=600, cwd=root,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-4000:]
    return target.resolve(), sources, json.loads(results.read_text())


def _entry_points(path: Path) -> dict[str, str]:
    import tomllib

    return tomllib.loads((path / "pyproject.toml").read_text())["project"]["entry-points"]["jef"]


def test_the_build_tools_are_here():
    """The wheels are built offline with this environment's setuptools: a missing one is a failure, not a skip."""
    import setuptools

    assert int(setuptools.__version__.split(".")[0]) >= 77, setuptools.__version__


@pytest.mark.parametrize("name", [*SCAFFOLDS.values(), *(next(iter(_entry_points(p))) for p in SHIPPED)])
def test_the_installed_wheel_works(wheels, name):
    target, sources, report = wheels
    entry = report[name]
    assert entry["status"] == "ok", f"{name} from its wheel: {entry['status']}: {entry['error']}"
    assert entry["entry_points"] == [str(target)], "one entry point, from the wheel's .dist-info"
    package = Path(entry["package"])
    assert package.parent == target, f"{name} was imported from {package}, not from the wheel"
    source_package = sources[name] / package.name
    if entry["resolved"]:  # a method plugin ships its recipes as package data (an adapter, e.g. timm, has none)
        assert _yaml_files(source_package), f"{source_package} has no YAML file: nothing checks the package data"
    missing = _yaml_files(source_package) - _yaml_files(package)
    assert not missing, f"the wheel of {name} leaves out {sorted(missing)}"
    for method, resolved in entry["resolved"].items():
        assert resolved == method, f"method {method!r} from the wheel of {name}: {resolved}"


def test_every_method_was_resolved(wheels):
    _, _, report = wheels
    assert report[SCAFFOLDS["method"]]["resolved"] == {SCAFFOLDS["method"]: SCAFFOLDS["method"]}
    assert set(report["moco"]["resolved"]) == {"moco_v1", "moco_v2", "moco_v3", "moco_v3_resnet"}
