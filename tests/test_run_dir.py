"""Who owns a run directory: a run already there is never overwritten without being asked, one writer at a time,
one-line errors for paths that cannot be run directories, and one history in metrics.jsonl after a resume."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from jef import hookimpl
from jef.run.checkpoint import load_checkpoint
from jef.cli import main
from jef.config import merge
from jef.plugins import load_plugins
from jef.run.directory import RunDirError
from jef.testing import TINY_PIPELINE, tiny_run, train_killed_at

#: Two epochs of 4 steps (64 images, batch 16), a checkpoint every 2 steps, kNN on (it writes evaluation.json).
PIPELINE = merge(TINY_PIPELINE, {"train": {"epochs": 2, "checkpoint_every_steps": 2}})
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
#: A plugin that holds a run after step 3 (checkpoint of step 2 written) until a line arrives on its stdin.
HOLD_PLUGIN = """
import sys
from jef import hookimpl

@hookimpl
def jef_step_end(run, outputs, terms):
    if run.step == 3:
        print("HOLDING", flush=True)
        sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline") / "tiny.yaml"
    path.write_text(yaml.safe_dump(PIPELINE))
    return path


@pytest.fixture(scope="module")
def finished(pipeline_file, tmp_path_factory):
    """A run directory holding a finished run, written by a real `jef train`."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    process = _jef("train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu")
    assert process.returncode == 0, process.stderr[-3000:]
    return run_dir


def _jef(*argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "jef", *argv], capture_output=True, text=True, env=ENV,
                          timeout=300, **kwargs)


def _contents(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _steps(run_dir: Path) -> list[int]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if "loss" in line]


def _copy(finished: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    return run_dir


def _hold(pipeline_file: Path, run_dir: Path, tmp_path: Path) -> subprocess.Popen:
    """A `jef train` that is inside its run (step 3 done, the checkpoint of step 2 written) when this returns."""
    plugin = tmp_path / "hold.py"
    plugin.write_text(HOLD_PLUGIN)
    process = subprocess.Popen([sys.executable, "-m", "jef", "--plugin", str(plugin), "train", str(pipeline_file),
                                "--run-dir", str(run_dir), "--cpu"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    line = process.stdout.readline()  # blocks until the plugin says it holds the run: no timing involved
    if line.strip() != "HOLDING":
        process.kill()
        raise AssertionError(f"the holding run did not start: {line!r}\n{process.communicate()[1][-3000:]}")
    return process


# -- a run already there ---------------------------------------------------------------------------------------

def test_a_second_run_into_a_run_directory_is_refused_and_changes_nothing(finished, pipeline_file, tmp_path):
    run_dir = _copy(finished, tmp_path)
    before = _contents(run_dir)
    process = _jef("train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu")
    assert process.returncode == 2 and process.stdout == ""
    assert process.stderr.splitlines() == [
        f"jef: error: {run_dir}: holds a run already (checkpoint.pt, metrics.jsonl, plugins.json); continue it with "
        f"--resume, train into a new --run-dir, or replace it with --overwrite (the old run is moved aside to "
        f"run.old-<time>); in Python: train(..., resume=True) or train(..., overwrite=True)"]
    assert _contents(run_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_moves_the_old_run_aside_and_says_so(finished, pipeline_file, tmp_path):
    run_dir = _copy(finished, tmp_path)
    before = _contents(run_dir)
    process = _jef("train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu", "--overwrite")
    assert process.returncode == 0, process.stderr[-3000:]
    (aside,) = [p for p in tmp_path.iterdir() if p.name != "run"]
    assert aside.name.startswith("run.old-")
    assert f"jef: --overwrite: moved the previous run in {run_dir} aside to {aside}\n" in process.stderr
    assert _contents(aside) == before  # the old run, whole
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6, 7, 8]  # one run, not two appended
    assert not (run_dir / ".lock").exists() and not (aside / ".lock").exists()


def test_the_python_api_refuses_a_run_directory_holding_a_run_unless_overwrite(plugins, tmp_path):
    import jef

    pipeline = {"eval": {"knn": {"enabled": False}}}
    tiny_run(pipeline, steps=2, run_dir=tmp_path / "run", plugins=plugins)
    with pytest.raises(RunDirError, match="holds a run already"):
        tiny_run(pipeline, steps=2, run_dir=tmp_path / "run", plugins=plugins)
    assert _steps(tmp_path / "run") == [1, 2]
    validated = jef.load_pipeline(_write(tmp_path / "p.yaml", merge(TINY_PIPELINE, {**pipeline,
                                                                                    "train": {"max_steps": 3}})))
    with pytest.raises(RunDirError, match="holds a run already"):
        jef.run(validated, run_dir=tmp_path / "run", plugins=plugins, cpu=True)
    jef.run(validated, run_dir=tmp_path / "run", plugins=plugins, cpu=True, overwrite=True)
    assert _steps(tmp_path / "run") == [1, 2, 3]
    assert [_steps(p) for p in tmp_path.glob("run.old-*")] == [[1, 2]]


def test_resuming_a_run_that_saved_no_checkpoint_says_to_overwrite(plugins, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')  # killed before its first checkpoint
    with pytest.raises(RunDirError, match=r"holds a run that saved no checkpoint .*: nothing to resume; start it "
                                          r"again with --overwrite"):
        tiny_run(steps=1, run_dir=run_dir, plugins=plugins, resume=True)
    tiny_run({"eval": {"knn": {"enabled": False}}}, steps=1, run_dir=run_dir, plugins=plugins, overwrite=True)
    assert _steps(run_dir) == [1] and sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["run", "run.old"]


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# -- resuming a finished run -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [[], ["train.epochs=1"]], ids=["same-epochs", "fewer-epochs"])
def test_resuming_a_finished_run_says_already_complete_and_writes_nothing(finished, pipeline_file, tmp_path,
                                                                          overrides):
    run_dir = _copy(finished, tmp_path)
    before = _contents(run_dir)
    process = _jef("train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu", "--resume", *overrides)
    assert process.returncode == 0, process.stderr[-3000:]
    total = 4 if overrides else 8
    assert process.stderr.splitlines() == [f"jef: {run_dir}: already complete (8 steps done, this pipeline trains "
                                           f"{total}); nothing trained, evaluated or written"]
    assert _contents(run_dir) == before  # pipeline.yaml (still epochs 2, as the weights), metrics, evaluation
    assert "kNN top-1" in process.stdout  # the run's recorded final metrics


# -- one writer at a time --------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_while_a_run_holds_the_directory(pipeline_file, tmp_path):
    run_dir = tmp_path / "run"
    first = _hold(pipeline_file, run_dir, tmp_path)
    try:
        during = _contents(run_dir)
        for extra in ([], ["--overwrite"]):
            second = _jef("train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu", *extra)
            assert second.returncode == 2
            assert second.stderr.splitlines() == [
                f"jef: error: {run_dir}: another jef process writes this run directory (pid {first.pid} on host "
                f"{socket.gethostname()}, lock {run_dir / '.lock'}); wait for it to end or stop it, or train into "
                f"a new --run-dir"]
            assert _contents(run_dir) == during and sorted(p.name for p in tmp_path.iterdir()) == ["hold.py", "run"]
        _, err = first.communicate("\n", timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert not (run_dir / ".lock").exists()


def test_the_lock_of_a_killed_run_is_taken_over(pipeline_file, tmp_path):
    run_dir = tmp_path / "run"
    first = _hold(pipeline_file, run_dir, tmp_path)
    first.send_signal(signal.SIGKILL)  # no handler runs: the lock file stays, its flock goes with the process
    first.communicate(timeout=60)
    assert json.loads((run_dir / ".lock").read_text())["pid"] == first.pid
    resumed = _jef("train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"jef: {run_dir}: taking over the stale lock of pid {first.pid} on host {socket.gethostname()} (that "
            f"process is gone)") in resumed.stderr
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert not (run_dir / ".lock").exists()


def test_under_two_processes_every_process_refuses_a_run_directory_holding_a_run(finished, tmp_path):
    from torch.multiprocessing import ProcessRaisedException

    from jef.testing import train_in_processes

    run_dir = _copy(finished, tmp_path)
    before = _contents(run_dir)
    with pytest.raises(ProcessRaisedException, match="holds a run already"):  # and no process waits for another
        train_in_processes({"eval": {"knn": {"enabled": False}}}, steps=2, run_dir=run_dir)
    assert _contents(run_dir) == before


# -- paths that cannot be run directories ----------------------------------------------------------------------

def test_a_file_or_a_path_under_a_file_is_one_error_line(pipeline_file, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a directory")
    for run_dir, reason in ((afile, "is a file, not a directory; pass --run-dir a directory (it is created when "
                                    "missing)"),
                            (afile / "sub" / "run", f"cannot be created: {afile} is a file, not a directory; pass "
                                                    f"--run-dir a path outside it")):
        code = main(["train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu"])
        captured = capsys.readouterr()
        assert code == 2 and captured.err.splitlines() == [f"jef: error: {run_dir}: {reason}"]
    assert afile.read_text() == "not a directory"


def _without_dac_override():
    """In the child, before exec: drop the capabilities that let root ignore file modes (from the bounding set, so
    the exec'ed process, root or not, has them in none of its sets)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_run_directory_without_write_permission_is_one_error_line(pipeline_file, tmp_path):
    # Root ignores file modes; without CAP_DAC_OVERRIDE it does not, so as root the command runs without it.
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    preexec = _without_dac_override if os.geteuid() == 0 else None
    try:
        try:
            probe = subprocess.run(["mkdir", str(parent / "probe")], capture_output=True, preexec_fn=preexec)
        except subprocess.SubprocessError as error:  # prctl refused (a container without CAP_SETPCAP)
            pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here, and root ignores file modes: {error}")
        if probe.returncode == 0:
            pytest.skip("this process can write to a read-only directory even without CAP_DAC_OVERRIDE")
        for run_dir, reason in ((parent / "run", "cannot be created (Permission denied)"),
                                (parent, f"cannot be written (Permission denied: {parent / '.lock'})")):
            process = _jef("train", str(pipeline_file), "--run-dir", str(run_dir), "--cpu", preexec_fn=preexec)
            assert process.returncode == 2
            assert process.stderr.splitlines() == [f"jef: error: {run_dir}: {reason}; pass --run-dir a directory "
                                                   f"you can write to"]
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


# -- metrics.jsonl after a resume ------------------------------------------------------------------------------

def test_metrics_hold_one_history_after_a_kill_and_a_resume(plugins, tmp_path, one_thread):
    pipeline = {"eval": {"knn": {"enabled": False}}, "train": {"epochs": 2, "checkpoint_every_steps": 4}}
    train_killed_at(pipeline, steps=8, kill_at=7, run_dir=tmp_path)  # steps 1-6 logged, the checkpoint of step 4
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4 and _steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    tiny_run(pipeline, steps=8, run_dir=tmp_path, plugins=plugins, resume=True)
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6, 7, 8]  # 5 and 6 of the killed run were trained again: once each
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)



def test_a_resume_drops_the_lines_after_its_checkpoint_and_a_line_cut_short(tmp_path):
    from jef.run.log import drop_superseded

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": step, "loss": 1.0 / step} for step in range(1, 7)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 7, "lo')  # killed while writing
    drop_superseded(path, 4)
    assert path.read_text() == "".join(json.dumps(row) + "\n" for row in rows[:4])
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # rewritten in place, no temporary left


class _RaiseAtStep:
    @hookimpl
    def jef_step_end(self, run, outputs, terms):
        if run.step == 1:
            raise RuntimeError("a plugin bug")


def test_a_run_that_raises_closes_its_files(plugins, tmp_path):
    """An open metrics file left to the garbage collector warns later, inside whatever test or code runs then."""
    plugins.manager.register(_RaiseAtStep(), name="raise-at-step")
    try:
        with pytest.raises(RuntimeError, match="a plugin bug"):
            tiny_run({"eval": {"knn": {"enabled": False}}}, steps=3, run_dir=tmp_path / "run", plugins=plugins)
    finally:
        plugins.manager.unregister(name="raise-at-step")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_a_run_that_fails_before_writing_leaves_no_folders_behind(tmp_path, capsys):
    pipeline = tmp_path / "folder.yaml"
    pipeline.write_text(f"method: simclr\ndata: {{name: image_folder, root: {tmp_path / 'absent'}}}\n")
    assert main(["train", str(pipeline), "--run-dir", str(tmp_path / "runs" / "a" / "run"), "--cpu"]) == 2
    assert "data: building dataset 'image_folder'" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder.yaml"]  # not even runs/ or runs/a/
