"""Errors found when a pipeline is built (and by ``jef config show``), not at the first step; the command line's
own errors (a closed pipe, a missing ``--plugin`` file, a broken plugin) said once, without a traceback."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from jef import hookimpl
from jef.cli import main
from jef.components import RunContext
from jef.config import resolve
from jef.model.build import build
from jef.plugins import load_plugins
from jef.testing import TINY_PIPELINE, fake_distribution
from jef.config.validate import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs"
CTX = RunContext(batch_size=16, global_batch_size=16)


def _documented(page: str, key: str, actual: str) -> None:
    """A ``text`` block of ``docs/page`` containing ``key`` shows ``actual`` (the rule of tests/test_docs.py)."""
    shown = [textwrap.dedent(block).strip() for block in
             re.findall(r"```text\n(.*?)```", (DOCS / page).read_text(), re.S) if key in block]
    assert shown, f"docs/{page} no longer shows a message containing {key!r}"
    patterns = [r"\s+".join(r"[\s\S]*?".join(re.escape(piece) for piece in word.split("..."))
                            for word in text.split()) for text in shown]
    assert any(re.search(p, actual) for p in patterns), f"documented:\n{shown}\nreal:\n{actual}"


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tiny(extra: dict, plugins=None) -> dict:
    data = copy.deepcopy(TINY_PIPELINE)
    data.update(extra)
    return data


# -- widths of the online output and of the target embedding ---------------------------------------------------


def test_a_predictor_wider_than_the_projector_is_refused_when_built_naming_both_paths(tmp_path, capsys):
    pipeline = resolve(tiny({"predictor": {"name": "mlp", "dims": [8, 24]}}), registry=load_plugins().registry)
    with pytest.raises(ConfigError) as error:
        build(pipeline, CTX)  # what `jef train` runs before its first step
    message = str(error.value)
    assert "predictor.dims[-1]" in message and "projector.dims[-1]" in message
    assert "24 wide" in message and "16 wide" in message and "scaled_cosine" in message
    assert "set predictor.dims[-1] to 16" in message

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tiny({"predictor": {"name": "mlp", "dims": [8, 24]}})))
    code, out, err = run_cli(capsys, "config", "show", str(path))
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith(f"jef: error: {path}: predictor: the online output is 24 wide (predictor.dims[-1])")


def test_the_width_error_is_as_documented(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("pipeline.yaml").write_text("method: simsiam\nprojector: {name: mlp, dims: [2048, 2048]}\n"
                                     "predictor: {name: mlp, dims: [512, 1024]}\n")
    code, _, err = run_cli(capsys, "config", "show", "pipeline.yaml")
    assert code == 2
    _documented("pipelines.md", "the online output is", err.strip())


class WidthsSeen:
    """A plugin whose energy and functional record the widths their factories were given."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple] = {}

    @hookimpl
    def jef_register_energies(self, register):
        def bilinear(options, ctx):  # compares embeddings of different widths on purpose: a · W b
            self.seen["energy"] = (ctx.in_dim, ctx.online_dim, ctx.target_dim)
            energy = nn.Bilinear(ctx.online_dim, ctx.target_dim, 1, bias=False)
            return _Squeeze(energy)

        register("bilinear", bilinear)

    @hookimpl
    def jef_register_functionals(self, register):
        def zero(options, ctx):
            self.seen["functional"] = (ctx.in_dim, ctx.online_dim, ctx.target_dim)
            return _Zero()

        register("zero", zero)


class _Squeeze(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, a, b):
        return self.inner(a, b).squeeze(1)


class _Zero(nn.Module):
    def forward(self, out):
        return out.online.out[0].sum() * 0


class NoOutDimHead(nn.Module):
    """A third-party head that does not declare ``out_dim``: its width is measured."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 12)
        self.norm = nn.BatchNorm1d(12)

    def forward(self, x):
        return self.norm(self.linear(x))


class Heads:
    @hookimpl
    def jef_register_heads(self, register):
        register("no_out_dim", lambda options, ctx: NoOutDimHead(ctx.in_dim))


@pytest.mark.parametrize("target", [{"name": "shared"}, {"name": "ema", "projector": False}])
def test_energies_and_functionals_are_given_the_online_and_the_target_width(target):
    widths = WidthsSeen()
    plugins = load_plugins(extra=(("widths", widths), ("heads", Heads())))
    pipeline = resolve(tiny({"predictor": {"name": "no_out_dim"}, "target": target,
                             "energy": {"name": "bilinear"}, "functionals": [{"name": "zero"}]}),
                       registry=plugins.registry)
    torch.manual_seed(0)
    built = build(pipeline, CTX)
    # The projector's width, or the backbone's for an EMA target without its own projector.
    target_dim = 16 if target["name"] == "shared" else built.model.backbone.out_dim
    assert widths.seen["energy"] == widths.seen["functional"] == (target_dim, 12, target_dim)
    assert (built.ctx.online_dim, built.ctx.target_dim) == (12, target_dim)
    predictor = built.model.predictor
    assert predictor.training and predictor.norm.num_batches_tracked.item() == 0  # measuring it changed nothing
    loss, _, _ = built.model([torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)])
    assert torch.isfinite(loss)


# -- jef config show checks what jef train would build -------------------------------------------------------


def test_config_show_refuses_local_views_for_a_method_without_multi_crop(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("method: simsiam\ndata: {name: synthetic}\naugmenter: {name: views, n_local: 2}\n")
    code, out, err = run_cli(capsys, "config", "show", str(path))
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith(f"jef: error: {path}: augmenter: method 'simsiam' (")
    assert "does not declare multi-crop support, but the augmenter makes 2 local view(s)" in err


def test_config_show_reports_a_factory_that_fails(tmp_path, capsys, buggy_backbone):
    plugin = tmp_path / "buggy.py"
    plugin.write_text(buggy_backbone)
    path = tmp_path / "p.yaml"
    path.write_text("method: simclr\ndata: {name: synthetic}\nbackbone: {name: buggy}\n")
    code, out, err = run_cli(capsys, "--plugin", str(plugin), "config", "show", str(path))
    assert code == 2 and out == ""
    assert err.rstrip().splitlines()[-1].startswith(f"jef: error: {path}: backbone: building backbone 'buggy' from ")


def test_config_show_builds_without_the_data(tmp_path, capsys):
    # The data may live elsewhere (a cluster's disk, a download): config show checks everything else. A memory
    # bank, sized by the training split, is built with a stand-in size.
    path = tmp_path / "p.yaml"
    path.write_text(f"method: instdisc\ndata: {{name: image_folder, root: {tmp_path / 'not-here'}, channels: 1}}\n")
    code, out, err = run_cli(capsys, "config", "show", str(path))
    assert code == 0, err
    assert "name: image_folder" in out
    assert not (tmp_path / "not-here").exists()


def test_check_marks_the_context_as_a_dry_run_with_the_data_facts_it_declares():
    from jef.model.build import check

    pipeline = resolve(tiny({}), registry=load_plugins().registry)
    ctx = check(pipeline)
    assert ctx.dry_run and (ctx.in_channels, ctx.train_size) == (3, 64)
    assert (ctx.online_dim, ctx.target_dim) == (16, 16)


# -- the command line ----------------------------------------------------------------------------------------


def test_output_into_a_pipe_closed_early_ends_quietly_with_status_141(tmp_path):
    # `jef list | head -1`: the reader is gone before jef writes.
    proc = subprocess.Popen([sys.executable, "-m", "jef", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == ""


PIPE_COMMAND = """
from jef import hookimpl

@hookimpl
def jef_register_commands(register):
    def fail(args):
        print("working")
        raise BrokenPipeError("a worker's pipe closed")
    register("pipe-fails", fail)
"""


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(tmp_path):
    plugin = tmp_path / "pipe_command.py"
    plugin.write_text(PIPE_COMMAND)
    result = subprocess.run([sys.executable, "-m", "jef", "--plugin", str(plugin), "pipe-fails"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == "working\n"
    assert "BrokenPipeError: a worker's pipe closed" in result.stderr


def test_a_missing_plugin_file_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "--plugin", "my_energy.py", "list", "energy")
    assert code == 2 and out == ""
    assert err.splitlines() == ["jef: error: --plugin my_energy.py: no such file; give the path of a Python file "
                                "that defines jef hooks (e.g. --plugin ./my_plugin.py), or install the plugin and "
                                "drop --plugin"]
    _documented("troubleshooting.md", "--plugin my_energy.py: no such file", err.strip())
    Path("my_energy.py").mkdir()
    code, _, err = run_cli(capsys, "list", "energy", "--plugin=my_energy.py")
    assert code == 2 and err.startswith("jef: error: --plugin my_energy.py: is a directory;")


def test_a_broken_plugin_is_reported_once(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("energy: {name: scaled_cosin}\n")  # train stops at the pipeline: the report comes before
    with fake_distribution("jef-plugin-bad", "raise RuntimeError('boom')\n"):
        code, _, err = run_cli(capsys, "train", str(path), "--run-dir", str(tmp_path / "run"))
    assert code == 2
    assert len(re.findall(r"plugin 'bad'", err)) == 1, err
    assert "RuntimeError: boom" in err
