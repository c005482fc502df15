"""The messages docs/ shows (errors, warnings, the demo's result line), checked against the real ones.

The rule of :func:`docs_text.assert_documented`: a ``text`` block of the page that contains the key shows the
real message, with ``...`` for what varies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from docs_text import assert_documented
from jef.config import resolve
from jef.plugins import load_plugins
from jef.config.validate import ConfigError


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


# -- messages the docs show, checked against the real ones -----------------------------------


def test_the_demo_result_line_is_what_jef_train_prints():
    from jef.builtin.commands import format_metrics

    actual = format_metrics({"knn_top1": 0.7300, "knn_top1_random": 0.6835, "knn_top1_pixels": 0.7770,
                             "linear_top1": 0.8395, "linear_top1_random": 0.8035, "linear_top1_pixels": 0.8085,
                             "loss": 1.0}, "runs/demo")
    assert_documented("quickstart.md", "test accuracy of frozen features", actual)


def tiny(overrides, plugins):
    from jef.config import merge
    from jef.testing import TINY_PIPELINE

    return resolve(merge(TINY_PIPELINE, overrides), source="pipeline.yaml", registry=plugins.registry)


def test_numba_missing_is_explained_as_documented(plugins, monkeypatch):
    from jef.augment import cpu_kernels
    from jef.registry import BuildError
    from jef.run.loop import train

    monkeypatch.setattr(cpu_kernels, "_import", lambda: None)  # as if numba were not installed
    pipeline = tiny({"augmenter": {"name": "views", "cpu_backend": "numba"}}, plugins)
    with pytest.raises(BuildError) as error:
        train(pipeline, cpu=True, plugins=plugins)
    assert_documented("troubleshooting.md", "need numba", f"jef: error: {error.value}")


def test_the_run_directory_errors_are_documented(tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    from jef.run.directory import RunDirError, RunDirLock, claim_run_dir

    monkeypatch.chdir(tmp_path)
    main_process = SimpleNamespace(is_main_process=True, num_processes=1)
    pipeline = SimpleNamespace(run_dir=None, source="demo.yaml")

    def refusal(run_dir: str) -> str:
        with pytest.raises(RunDirError) as caught, claim_run_dir(pipeline, run_dir, main_process):
            pass
        return f"jef: error: {caught.value}"

    run_dir = Path("runs/demo")
    run_dir.mkdir(parents=True)
    for name in ("checkpoint.pt", "metrics.jsonl", "plugins.json"):
        (run_dir / name).write_text("")
    for page in ("troubleshooting.md", "reliability.md"):
        assert_documented(page, "holds a run already", refusal("runs/demo"))
    held = RunDirLock.acquire(run_dir)  # flock locks an open file: a second open in this process is refused too
    try:
        assert_documented("troubleshooting.md", "another jef process writes", refusal("runs/demo"))
    finally:
        held.release()
    (run_dir / "checkpoint.pt").unlink()
    with pytest.raises(RunDirError) as caught, claim_run_dir(pipeline, "runs/demo", main_process, resume=True):
        pass
    assert_documented("troubleshooting.md", "saved no checkpoint", f"jef: error: {caught.value}")
    shutil.rmtree("runs")
    Path("runs").mkdir()
    Path("runs/demo").write_text("")
    assert_documented("troubleshooting.md", "is a file, not a directory", refusal("runs/demo"))
    assert_documented("troubleshooting.md", "cannot be created: runs/demo is a file", refusal("runs/demo/run"))


def test_fp16_on_cpu_is_refused_as_documented(plugins):
    from jef.run.loop import train

    pipeline = tiny({"train": {"precision": "fp16"}}, plugins)
    with pytest.raises(ValueError) as error:
        train(pipeline, cpu=True, plugins=plugins)
    assert_documented("troubleshooting.md", "fp16 needs a GPU", f"jef: error: {error.value}")


def test_a_launch_of_fewer_processes_than_asked_is_refused_as_documented():
    from jef.run.launch import check_process_count

    environ = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}
    command = ["accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "jef", "train", "byol-cifar10.yaml"]
    with pytest.raises(ValueError) as error:
        check_process_count(1, source="byol-cifar10.yaml", environ=environ, parent_command=command)
    assert_documented("distributed.md", "the launcher asked for", f"jef: error: {error.value}")


def test_too_little_data_is_refused_as_documented(tmp_path, plugins):
    from jef.run.loop import train

    pipeline = tiny({"data": {"train_size": 100}, "train": {"batch_size": 256}}, plugins)
    with pytest.raises(ValueError) as error:
        train(pipeline, cpu=True, run_dir=tmp_path, plugins=plugins)
    assert_documented("troubleshooting.md", "fewer than one step", f"jef: error: {error.value}")


def test_a_nan_loss_stops_the_run_as_documented(tmp_path):
    import torch

    from jef import hookimpl
    from jef.testing import fresh_plugins, tiny_run

    class NanTerm(torch.nn.Module):
        def forward(self, out):
            return out.online.z[0].sum() * float("nan")

    class NanPlugin:
        @hookimpl
        def jef_register_functionals(self, register):
            register("nan_term", lambda options, ctx: NanTerm())

    with pytest.raises(FloatingPointError) as error:
        tiny_run({"functionals": [{"name": "info_nce", "temperature": 0.5}, {"name": "nan_term"}]},
                 plugins=fresh_plugins(NanPlugin()), run_dir=tmp_path)
    assert "non-finite 'nan_term'" in str(error.value)
    assert_documented("troubleshooting.md", "non-finite", f"jef: error: {error.value}")


def test_the_collapse_warning_is_as_documented():
    from jef.builtin.monitors import CollapseMonitor, CollapseOptions

    message = CollapseMonitor(CollapseOptions())._diagnose(std=0.0004, rank=1.02, dim=128, step=40)
    assert_documented("troubleshooting.md", "representation collapse", message)


def test_a_broken_plugin_is_shown_as_documented(capsys):
    from jef.builtin.commands import plugins_command
    from jef.testing import fake_distribution

    with fake_distribution("jef-plugin-hiera", "import flash_attn_cuda\n", version="0.2.0"):
        loaded = load_plugins()
    plugins_command(argparse.Namespace(plugins=loaded, json=False, all=False))
    out, err = capsys.readouterr()
    assert_documented("troubleshooting.md", ": BROKEN", err + out)


def test_a_misspelt_hook_is_reported_as_documented(capsys):
    from jef import hookimpl
    from jef.testing import fresh_plugins

    class Typo:
        @hookimpl
        def jef_register_energys(self, register):
            pass

    loaded = fresh_plugins(Typo())
    assert loaded.infos["Typo"].status == "broken"
    assert_documented("troubleshooting.md", "unknown hook", capsys.readouterr().err)


def test_a_name_clash_is_reported_as_documented():
    from jef import hookimpl
    from jef.builtin.energies import build_mse
    from jef.testing import fresh_plugins

    class Losses:
        __name__ = "losses"  # the plugin's name, as an entry point would give it

        @hookimpl
        def jef_register_energies(self, register):
            register("mse", build_mse)

    loaded = fresh_plugins(Losses())
    with pytest.raises(ConfigError) as error:
        resolve({"energy": {"name": "mse"}}, source="pipeline.yaml", registry=loaded.registry)
    assert_documented("troubleshooting.md", "provided by several plugins", f"jef: error: {error.value}")
    chosen = resolve({"energy": {"name": "losses:mse"}}, registry=loaded.registry)
    assert chosen.energy.entry.provenance.plugin == "losses"


def test_resuming_without_a_checkpoint_is_reported_as_documented(tmp_path, monkeypatch):
    from jef.run.checkpoint import CHECKPOINT_NAME, load_checkpoint

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        load_checkpoint(Path("runs") / "demo" / CHECKPOINT_NAME)
    assert_documented("troubleshooting.md", "nothing to resume", f"jef: error: {error.value}")
