"""Config ergonomics: where `jef config show` says each value came from, what it hides, override suggestions that
blame the command line, `base:` files, and `jef train --sweep`."""

from __future__ import annotations

import re

import pytest
import yaml

from jef.cli import main
from jef.testing import TINY_PIPELINE


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def marks(out: str) -> dict[str, str]:
    """``{'lr: 0.2': 'command line', 'first_stride: 2': ''}``: each YAML line of ``config show`` and its mark."""
    found = {}
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        text, _, mark = line.partition("  # ")
        found.setdefault(text.strip(), mark.strip())
    return found


@pytest.fixture
def layered(tmp_path):
    """A file on a base file (in another folder) on the simclr recipe on jef's defaults."""
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "base.yaml").write_text(
        "method: simclr\n"
        "data: {name: synthetic, train_size: 64, test_size: 32, image_size: 16, num_classes: 4}\n"
        "backbone: {name: small_cnn, width: 8}\n"
        "projector: {dims: [64, 32]}\n"
        "train: {epochs: 1, batch_size: 16, progress: false, tensorboard: false, log_every: 1,\n"
        "        optimizer: {name: sgd, lr: 0.1}}\n"
        "eval: {knn: {k: 5}}\n")
    path = tmp_path / "p.yaml"
    path.write_text("base: common/base.yaml\nbackbone: {width: 4}\nprojector: {dims: [16]}\n"
                    "train: {batch_size: 8}\n")
    return path


def test_config_show_marks_where_each_value_came_from(layered, capsys):
    code, out, _ = run_cli(capsys, "config", "show", layered, "train.optimizer.lr=0.2")
    assert code == 0
    found = marks(out)
    assert found["lr: 0.2"] == "command line"
    assert found["width: 4"] == "file"
    assert found["dims: [16]"] == "file"  # a list is replaced whole, not merged with the base's
    assert found["batch_size: 8"] == "file"  # the file wins over its base
    assert found["epochs: 1"] == "base common/base.yaml"
    assert found["method: simclr"] == "base common/base.yaml"
    assert found["name: scaled_cosine"] == "recipe"  # simclr's energy
    assert found["first_stride: 2"] == ""  # a default: unmarked
    # The header is still there, and the output is YAML that reads back as the pipeline.
    assert "# energy (D)           scaled_cosine          builtin.energies (jef " in out
    shown = yaml.safe_load(out)
    assert shown["train"]["optimizer"]["lr"] == 0.2 and shown["backbone"]["width"] == 4
    assert shown["projector"]["dims"] == [16] and "base" not in shown


def test_config_show_hides_what_is_not_selected_and_all_shows_it(layered, capsys):
    code, out, _ = run_cli(capsys, "config", "show", layered)
    assert code == 0
    shown = yaml.safe_load(out)
    assert "predictor" not in shown and "masker" not in shown  # no such component
    assert shown["eval"]["linear"] == {"enabled": False}  # an evaluation that is off: no options
    assert "betas" not in shown["train"]["optimizer"]  # AdamW's, not SGD's
    assert "momentum" in shown["train"]["optimizer"]
    assert re.search(r"^# not selected, not shown \(--all shows them\): predictor, masker, eval\.linear\.\*", out,
                     re.MULTILINE)
    code, out, _ = run_cli(capsys, "config", "show", layered, "--all")
    everything = yaml.safe_load(out)
    assert everything["predictor"] is None and "betas" in everything["train"]["optimizer"]
    assert "epochs" in everything["eval"]["linear"]


def test_a_wrong_override_path_suggests_the_full_path_and_blames_the_command_line(layered, capsys):
    code, _, err = run_cli(capsys, "config", "show", layered, "train.lr=0.1")
    assert code == 2
    assert err.startswith("jef: error: command line override 'train.lr=0.1': train.lr: unknown key 'lr'; "
                          "did you mean train.optimizer.lr?")
    assert str(layered) not in err  # the file is not to blame
    code, _, err = run_cli(capsys, "config", "show", layered, "trian.epochs=3")
    assert code == 2 and "command line override 'trian.epochs=3'" in err and "did you mean train.epochs?" in err
    # A bad value set on the command line is the command line's too.
    code, _, err = run_cli(capsys, "config", "show", layered, "train.optimizer.lr=-1")
    assert err.startswith("jef: error: command line override 'train.optimizer.lr=-1': train.optimizer.lr: must be")


def test_an_unknown_key_in_the_file_still_blames_the_file(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("method: simclr\ntrain: {lr: 0.1}\n")
    code, _, err = run_cli(capsys, "config", "show", path)
    assert code == 2 and err.startswith(f"jef: error: {path}: train.lr: unknown key 'lr'")


def test_a_base_file_is_one_level_only(tmp_path, layered, capsys):
    inner = tmp_path / "q.yaml"
    inner.write_text("base: p.yaml\n")
    code, _, err = run_cli(capsys, "config", "show", inner)
    assert code == 2
    assert err.startswith(f"jef: error: {inner}: base: base file 'p.yaml' ")
    assert "names a base of its own ('common/base.yaml'); only one level of base: is allowed" in err


@pytest.mark.parametrize(("base", "content", "expected"), [
    ("missing.yaml", None, "base file 'missing.yaml' not found (looked for {dir}/missing.yaml: a base path is "
                           "relative to the folder of p.yaml)"),
    ("list.yaml", "- method: simclr\n", "base file 'list.yaml' ({dir}/list.yaml): a pipeline file must be a "
                                        "mapping of slots"),
    ("bad.yaml", "train: {epochs: 1\n", "base file 'bad.yaml' ({dir}/bad.yaml): invalid YAML at line 2"),
    ("3", None, "expected the path of another pipeline file to start from (relative to this one)"),
])
def test_base_file_errors_name_the_including_file_and_base(tmp_path, capsys, base, content, expected):
    if content is not None:
        (tmp_path / base).write_text(content)
    path = tmp_path / "p.yaml"
    path.write_text(f"base: {base}\nmethod: simclr\n")
    code, _, err = run_cli(capsys, "config", "show", path)
    assert code == 2
    assert err.startswith(f"jef: error: {path}: base: {expected.format(dir=tmp_path.resolve())}")


def sweep_file(tmp_path):
    """The tiny pipeline (two optimiser steps at most), on a base file."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_PIPELINE))
    path = tmp_path / "p.yaml"
    path.write_text("base: base.yaml\ntrain: {max_steps: 1}\neval: {knn: {enabled: false}}\n")
    return path


def test_sweep_trains_one_run_per_value_into_sibling_directories(tmp_path, capsys):
    path = sweep_file(tmp_path)
    code, out, _ = run_cli(capsys, "train", path, "--cpu", "--run-dir", tmp_path / "runs",
                           "--sweep", "train.optimizer.lr=0.05,0.2")
    assert code == 0
    assert f"jef: sweep run 1/2: train.optimizer.lr=0.05 -> {tmp_path / 'runs' / 'lr=0.05'}" in out
    assert "jef: sweep run 2/2: train.optimizer.lr=0.2" in out
    table = out[out.index("sweep: final metrics of 2 run(s)"):].splitlines()
    assert table[1].split()[0] == "run" and "loss" in table[1].split()
    assert [row.split()[0] for row in table[2:4]] == ["lr=0.05", "lr=0.2"]
    for name, lr in (("lr=0.05", 0.05), ("lr=0.2", 0.2)):
        saved = yaml.safe_load((tmp_path / "runs" / name / "pipeline.yaml").read_text())
        assert saved["train"]["optimizer"]["lr"] == lr
        assert "base" not in saved  # the saved pipeline is resolved: no base: left to follow
        assert saved["train"]["max_steps"] == 1 and saved["data"]["name"] == "synthetic"


def test_a_failing_sweep_run_stops_the_sweep_and_says_how_to_go_on(tmp_path, capsys):
    path = sweep_file(tmp_path)
    runs = tmp_path / "runs"
    (runs / "lr=0.2").mkdir(parents=True)
    (runs / "lr=0.2" / "metrics.jsonl").write_text("{}\n")  # a run directory already holding a run
    code, out, err = run_cli(capsys, "train", path, "--cpu", "--run-dir", runs,
                             "--sweep", "train.optimizer.lr=0.05,0.2,0.4")
    assert code == 2
    assert "sweep: final metrics of 1 run(s)" in out  # what finished before the failure
    assert (f"jef: the sweep stopped at run lr=0.2 (2 of 3, {runs / 'lr=0.2'}); finished: lr=0.05. To go on, run "
            "the same command with --sweep train.optimizer.lr=0.2,0.4") in err
    assert not (runs / "lr=0.4").exists()  # not started
    # --overwrite applies to each run: the rest of the sweep goes on.
    code, out, _ = run_cli(capsys, "train", path, "--cpu", "--run-dir", runs, "--overwrite",
                           "--sweep", "train.optimizer.lr=0.2,0.4")
    assert code == 0 and (runs / "lr=0.4" / "checkpoint.pt").is_file()
    assert yaml.safe_load((runs / "lr=0.2" / "pipeline.yaml").read_text())["train"]["optimizer"]["lr"] == 0.2


@pytest.mark.parametrize(("sweeps", "expected"), [
    (["train.optimizer.lr=0.1,-1"], "command line override 'train.optimizer.lr=-1': train.optimizer.lr: must be"),
    (["train.lr=0.1,0.3"], "command line override 'train.lr=0.1': train.lr: unknown key 'lr'; "
                           "did you mean train.optimizer.lr?"),
    (["projector.dims=[8],[16]"], "--sweep 'projector.dims=[8],[16]': values with brackets (lists, mappings) "
                                  "cannot be swept: the values are split at every comma"),
    (["train.optimizer.lr=0.1,0.1"], "--sweep 'train.optimizer.lr=0.1,0.1': 0.1 given more than once; each value "
                                     "is one run"),
    (["train.optimizer.lr=0.1,0.3", "seed=1,2"], "--sweep: one --sweep per command (got 2"),
])
def test_a_bad_sweep_is_refused_before_any_run(tmp_path, capsys, sweeps, expected):
    path = sweep_file(tmp_path)
    argv = [item for sweep in sweeps for item in ("--sweep", sweep)]
    code, _, err = run_cli(capsys, "train", path, "--cpu", "--run-dir", tmp_path / "runs", *argv)
    assert code == 2 and err.startswith(f"jef: error: {expected}"), err
    assert not (tmp_path / "runs").exists()


def test_an_unquoted_no_reads_as_the_choice_it_spells_not_as_false(tmp_path):
    """YAML 1.1 reads `precision: no` as False; where `no` is one of the choices, that is what the user meant."""
    from jef.config import load_pipeline
    from jef.plugins import get_plugins

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(TINY_PIPELINE) + "")
    text = path.read_text().replace("train:\n", "train:\n  precision: no\n", 1)
    path.write_text(text)
    assert "precision: no" in text and yaml.safe_load(text)["train"]["precision"] is False
    registry = get_plugins().registry
    assert load_pipeline(path, [], registry=registry).train.precision == "no"
    assert load_pipeline(path, ["train.precision=bf16"], registry=registry).train.precision == "bf16"
    assert load_pipeline(path, ["train.precision=no"], registry=registry).train.precision == "no"
    with pytest.raises(Exception, match=r"expected one of 'no', 'bf16', 'fp16', got True"):
        load_pipeline(path, ["train.precision=yes"], registry=registry)
