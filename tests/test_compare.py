"""``jef compare``: several tiny methods over seeds, end to end through the command line."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from jef.cli import main
from jef.testing import InterruptAt, TINY_SETTINGS, fresh_plugins

METHODS = ["simclr", "byol", "vicreg"]
SEEDS = [0, 1]
#: TINY_SETTINGS as a compare's shared file: 4 steps (one epoch of 64 images), the collapse monitor at each step,
#: the periodic kNN, and a 2-epoch linear probe.
SHARED = {**TINY_SETTINGS,
          "monitors": [{"name": "collapse", "every": 1}, {"name": "knn"}],
          "train": {**TINY_SETTINGS["train"], "max_steps": 4},
          "eval": {"knn": {"k": 5}, "linear": {"enabled": True, "epochs": 2}}}
BYOL = ["--set", "byol", "predictor.dims=[32,16]"]


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _compare(pipeline: Path, output: Path, *extra: str, methods=METHODS, seeds=SEEDS) -> int:
    return main(["compare", str(pipeline), "--methods", *methods, "--seeds", *map(str, seeds), "--output",
                 str(output), "--cpu", *BYOL, *extra])


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    pipeline = _write(root / "shared.yaml", SHARED)
    status = _compare(pipeline, root / "out", "--baselines", "random", "pixels")
    return status, pipeline, root / "out"


def _evaluation(directory: Path) -> dict[str, float]:
    return {k: v["value"] for k, v in json.loads((directory / "evaluation.json").read_text()).items()}


def test_files_and_numbers(compared):
    status, _, out = compared
    assert status == 0
    for name in ("compare.json", "compare.csv", "compare.html"):
        assert (out / name).is_file()
    summary = json.loads((out / "compare.json").read_text())
    rows = {row["name"]: row for row in summary["rows"]}
    assert [row["name"] for row in summary["rows"]] == [*METHODS, "random", "pixels"]
    for method in METHODS:
        row = rows[method]
        assert row["kind"] == "method" and row["failed"] == [] and row["seeds"] == SEEDS
        for key in ("knn_top1", "linear_top1"):
            per_seed = {seed: _evaluation(out / "runs" / method / f"seed{seed}")[key] for seed in SEEDS}
            stats = row["metrics"][key]
            assert stats["per_seed"] == {str(s): v for s, v in per_seed.items()}
            assert stats["mean"] == pytest.approx(statistics.fmean(per_seed.values()))
            assert (stats["spread"], stats["min"], stats["max"]) == ("min-max", min(per_seed.values()),
                                                                     max(per_seed.values()))
        for key in ("train_time_s", "images_per_s", "collapse_std", "collapse_rank"):
            assert row["metrics"][key]["n"] == 2, key
    for baseline in ("random", "pixels"):
        assert rows[baseline]["kind"] == "baseline"
        assert set(rows[baseline]["metrics"]) == {"knn_top1", "linear_top1"}
        assert (out / "baselines" / baseline / "seed0" / "evaluation.json").is_file()


def test_csv_parses(compared):
    _, _, out = compared
    with (out / "compare.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((out / "compare.json").read_text())
    assert [row["name"] for row in rows] == [*METHODS, "random", "pixels"]
    for row, entry in zip(rows, summary["rows"], strict=True):
        assert float(row["knn_top1_mean"]) == pytest.approx(entry["metrics"]["knn_top1"]["mean"])
        assert float(row["knn_top1_seed1"]) == entry["metrics"]["knn_top1"]["per_seed"]["1"]
        assert row["spread"] == "min-max"


def test_html_has_table_and_curves(compared):
    _, _, out = compared
    page = (out / "compare.html").read_text()
    assert "<table>" in page and "kNN top-1" in page and "baseline: pixels" in page
    assert all(f"<td>{method}</td>" in page for method in METHODS)
    assert "<b>" in page  # the best of a column
    assert page.count('src="data:image/png;base64,') >= 2  # loss curves and monitors (kNN), inlined
    assert not list(out.glob("*.png"))


def test_resume_retrains_only_the_missing_run(compared, capsys):
    _, pipeline, out = compared
    import shutil

    checkpoints = {path: path.stat().st_mtime_ns for path in (out / "runs").glob("*/seed*/checkpoint.pt")}
    assert len(checkpoints) == len(METHODS) * len(SEEDS)
    gone = out / "runs" / "byol" / "seed1"
    shutil.rmtree(gone)
    capsys.readouterr()
    assert _compare(pipeline, out, "--baselines", "random", "pixels") == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("finished earlier" in line for line in lines) == len(METHODS) * len(SEEDS) - 1 + 2 * len(SEEDS)
    assert any(line.startswith("[4/10] byol seed 1: trained in") for line in lines)
    for path, mtime in checkpoints.items():
        if gone not in path.parents:
            assert path.stat().st_mtime_ns == mtime, path
    assert (gone / "checkpoint.pt").is_file() and (gone / "evaluation.json").is_file()


def test_interrupted_run_resumes(tmp_path, capsys):
    from jef.tools.compare import make_plan
    from jef.tools.compare.runner import train_run

    pipeline = _write(tmp_path / "shared.yaml", SHARED)
    plugins = fresh_plugins(InterruptAt(2), entry_points=True)
    plan = make_plan(pipeline, ["simclr"], output=tmp_path / "out", registry=plugins.registry)
    with pytest.raises(KeyboardInterrupt):
        train_run(plan.runs[0], plugins=plugins, cpu=True)
    assert (plan.runs[0].directory / "checkpoint.pt").is_file()
    # An override after --methods is an override, not a method (the same value as the file's: the run resumes).
    assert main(["compare", str(pipeline), "--output", str(tmp_path / "out"), "--cpu", "--methods", "simclr",
                 "train.log_every=1"]) == 0
    assert "[1/1] simclr seed 0: resumed and finished in" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (plan.runs[0].directory / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4


FAILING_PLUGIN = '''
from jef.components import NoOptions
from jef.hookspecs import hookimpl

def build(options, ctx):
    raise ValueError("this monitor always fails")

@hookimpl
def jef_register_monitors(register):
    register("failing", build, options=NoOptions, description="fails to build")
'''


def test_a_failing_method_does_not_lose_the_others(tmp_path, capsys):
    plugin = tmp_path / "failing.py"
    plugin.write_text(FAILING_PLUGIN, encoding="utf-8")
    pipeline = _write(tmp_path / "shared.yaml", SHARED)
    status = main(["--plugin", str(plugin), "compare", str(pipeline), "--methods", "simclr", "byol", "--output",
                   str(tmp_path / "out"), "--cpu", *BYOL, "--set", "byol", "monitors=[{name: failing}]"])
    captured = capsys.readouterr()
    assert status == 1
    assert "[2/2] byol seed 0: FAILED" in captured.out and "this monitor always fails" in captured.out
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    simclr, byol = summary["rows"]
    assert "knn_top1" in simclr["metrics"] and simclr["failed"] == []
    assert byol["failed"] == [0] and "method byol, seed 0" in byol["errors"][0] and byol["metrics"] == {}
    assert "this monitor always fails" in (tmp_path / "out" / "compare.html").read_text()


@pytest.mark.parametrize("change, args, message", [
    ({"method": "simclr"}, [], "sets `method: simclr`"),
    ({}, ["--methods", "simclar", "byol"], "unknown method 'simclar'; did you mean 'simclr'?"),
    ({}, ["--seeds", "0", "1", "0"], "--seeds repeats 0"),
    ({}, ["--methods", "simclr", "simclr"], "more than once"),
    ({}, ["--set", "byol", "predictor.dims=[32,x]", "--methods", "simclr", "vicreg"], "not one of --methods"),
    ({}, ["--set", "byol", "predictor.nope=1"], "method byol: "),
])
def test_errors(tmp_path, capsys, change, args, message):
    pipeline = _write(tmp_path / "shared.yaml", {**SHARED, **change})
    argv = ["compare", str(pipeline), "--output", str(tmp_path / "out"), "--cpu"]
    if "--methods" not in args:
        argv += ["--methods", "simclr", "byol"]
    assert main([*argv, *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("jef: error: ") and message in error
    if "unknown method" in message:
        assert "vicreg" in error and "jef list method" in error
    if "predictor.nope" in " ".join(args):
        # --set is the command line: the error blames its override, not the shared file.
        assert "command line override 'predictor.nope=1'" in error and "predictor" in error
    assert not (tmp_path / "out").exists()  # nothing trained or written
