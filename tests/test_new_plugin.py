"""``jef new-plugin``: the generated packages install and their own tests pass out of the box."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jef.cli import main
from jef.tools.scaffold import KINDS, generated_files, new_plugin, plugin_names


def test_generated_file_set_and_names(tmp_path):
    target = new_plugin("my-method", "method", tmp_path)
    assert target == tmp_path / "jef-plugin-my-method"
    assert generated_files(target) == ["README.md", "jef_plugin_my_method/__init__.py", "pyproject.toml",
                                       "tests/test_my_method.py"]
    pyproject = (target / "pyproject.toml").read_text()
    assert '[project.entry-points.jef]\nmy_method = "jef_plugin_my_method"' in pyproject
    assert 'name = "jef-plugin-my-method"' in pyproject
    assert "${" not in "".join((target / f).read_text() for f in generated_files(target))


def test_names_are_checked():
    assert plugin_names("jef-plugin-Barlow")["package"] == "jef_plugin_barlow"
    with pytest.raises(ValueError, match="use lower-case letters, digits"):
        plugin_names("2fast")


def test_cli_refuses_an_existing_directory_and_leaves_nothing_half_made(tmp_path, capsys):
    assert main(["new-plugin", "demo", "--kind", "energy", "--directory", str(tmp_path)]) == 0
    assert "created" in capsys.readouterr().out
    assert main(["new-plugin", "demo", "--directory", str(tmp_path)]) == 2
    assert "already exists; choose another name or --directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jef-plugin-demo"]  # no staging directory left
    with pytest.raises(SystemExit):
        main(["new-plugin", "demo2", "--kind", "optimizer", "--directory", str(tmp_path)])
    assert "invalid choice: 'optimizer'" in capsys.readouterr().err


def test_every_kind_installs_and_passes_its_own_tests(tmp_path):
    targets = [new_plugin(f"gen_{kind}", kind, tmp_path) for kind in KINDS]
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(site), *map(str, targets)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *[str(t / "tests") for t in targets]],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "19 passed" in result.stdout  # method 6, functional 4, energy, backbone, augmenter 3 each
