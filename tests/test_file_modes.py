"""File modes in a run directory: what a plain ``open()`` and ``mkdir()`` give (``0o666 & ~umask``, ``0o777 & ~umask``).

``tempfile.mkstemp`` creates owner-only (0600) files; :func:`jef.files.atomic_write` used it, so that the
checkpoints, exports and reports of a run were unreadable to the group and others whatever the umask said.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from jef.cli import main
from jef.files import atomic_write
from jef.plugins import load_plugins
from jef.testing import tiny_run


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


@pytest.fixture
def umask(request):
    """Set the process's umask for one test, then restore it."""
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def wrong_modes(root: Path, umask: int) -> list[str]:
    """Every file and directory under ``root`` (``root`` included) whose mode is not what ``open()`` would give."""
    wrong = []
    for path in [root, *sorted(root.rglob("*"))]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        if mode != expected:
            wrong.append(f"{path.relative_to(root.parent)}: {oct(mode)}, not {oct(expected)}")
    return wrong


@pytest.mark.parametrize("umask", [0o022, 0o002], indirect=True)
def test_every_file_of_a_run_directory_has_the_mode_open_gives(umask, plugins, tmp_path, one_thread):
    run_dir = tiny_run({"eval": {"knn": {"enabled": False}}}, steps=1, plugins=plugins,
                       run_dir=tmp_path / "run").run_dir
    # What users take out of it, written into it: an export (safetensors replaces the file it is given), the
    # features in each format, and a report.
    assert main(["export", str(run_dir), "--output", str(run_dir / "exported"), "--format", "both"]) == 0
    for suffix in ("safetensors", "npz", "pt"):
        assert main(["embed", str(run_dir), "synthetic", "--output", str(run_dir / f"features.{suffix}"),
                     "--split", "test", "--cpu"]) == 0
    from jef.tools.report.writer import write_report

    write_report([run_dir], model=False, plugins=plugins)
    names = {path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*")}
    assert {"pipeline.yaml", "plugins.json", "metrics.jsonl", "checkpoint.pt", "exported/backbone.safetensors",
            "exported/backbone.pt", "exported/backbone.py", "exported/backbone.json", "exported/README.md",
            "features.safetensors", "features.npz", "features.pt", "report/report.html"} <= names
    assert not wrong_modes(run_dir, umask)


@pytest.mark.parametrize("umask", [0o027, 0o077], indirect=True)
def test_atomic_write_follows_the_umask_whatever_the_writer_does(umask, tmp_path):
    def replace(tmp: Path) -> None:  # a writer that puts a file of its own in place, as safetensors does
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    atomic_write(tmp_path / "out" / "a.txt", lambda tmp: tmp.write_text("a"))
    atomic_write(tmp_path / "out" / "b.bin", replace)
    assert not wrong_modes(tmp_path / "out", umask)


def test_atomic_writes_from_threads_do_not_collide_and_leave_the_umask_alone(tmp_path):
    before = os.umask(0o022)
    try:
        threads = [threading.Thread(target=atomic_write, args=(tmp_path / f"{i}.txt", lambda tmp: tmp.write_text("x")))
                   for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert os.umask(0o022) == 0o022  # nothing changed it, even for a moment that another thread could see
    finally:
        os.umask(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.txt" for i in range(8))
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o644}
