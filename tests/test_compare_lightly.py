"""benchmarks/compare_lightly.py keeps working: a few steps of one method in jef and in lightly.

Skipped where lightly is not installed (the benchmark environment, ``make bench``, has it; the test
environment does not) or where the Fashion-MNIST IDX files are missing. No timing is asserted.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightly")

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_lightly", ROOT / "benchmarks" / "compare_lightly.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_lightly"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    from jef.data.fashion import find_fashion_files

    try:
        find_fashion_files(None)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
    return _load_script()


TINY = ["--seeds", "0", "--steps", "3", "--subset-train", "256", "--subset-test", "64", "--batch-size", "32",
        "--width", "4", "--blocks", "1", "1", "1", "1", "--probe-epochs", "1", "--step-steps", "2",
        "--step-repeats", "1", "--warmup-steps", "1", "--window", "1"]


# dino: its jef recipe is dino_resnet, a name the lightly side must map back
@pytest.mark.parametrize("method", ["byol", "dino"])
def test_both_frameworks_train_and_step(script, method, tmp_path, capsys):
    out = tmp_path / "results.json"
    report = script.main(["--methods", method, *TINY, "--out", str(out)])
    results = report["results"]
    assert {(r["framework"], r["mode"]) for r in results} == {
        ("jef", "train"), ("lightly", "train"), ("jef", "step"), ("lightly", "step")}
    for r in results:
        assert r["steps"] == 3, r
        assert r["final_loss"] == r["final_loss"], f"{r['framework']} {r['mode']}: loss is NaN"
        assert r["peak_mib"] > 0
        if r["mode"] == "train":
            assert 0.0 <= r["knn_top1"] <= 1.0 and 0.0 <= r["linear_top1"] <= 1.0
    assert json.loads(out.read_text())["header"]["protocol"]["batch_size"] == 32
    table = capsys.readouterr().out
    assert f"| {method} | jef |" in table and f"| {method} | lightly |" in table
    assert json.loads(out.read_text())["complete"] is True
    script.main(["--from-json", str(out)])  # the tables again, from the raw results alone
    assert capsys.readouterr().out.strip() == table.strip()


def test_same_initial_backbone(script):
    cfg = {"seed": 3, "width": 4, "blocks": [1, 1, 1, 1]}
    from compare_common import make_backbone  # beside the script, on the path once it is loaded

    a, b = make_backbone(cfg), make_backbone(cfg)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert (x == y).all(), name


def test_lightly_makes_each_method_s_views(script):
    """lightly's transform makes the views jef's recipe makes: DINO's 2 global and n local crops, not 2 views."""
    import torch
    from compare_common import _JefBench, _resolve
    from compare_lightly_side import lightly_transform
    from PIL import Image

    from jef.config import resolve
    from jef.plugins import load_plugins

    cfg = {"method": "dino", "seed": 0, "subset_train": 256, "epochs": 1, "batch_size": 32, "precision": "no",
           "queue": 64, "framework": "lightly", "width": 4, "blocks": [1, 1, 1, 1]}
    plugins = load_plugins(extra=(("compare_lightly", _JefBench(cfg)._hooks()),))  # its backbone, bench_resnet
    pipeline = _resolve(cfg, plugins, resolve)
    options = pipeline.augmenter.options
    views = lightly_transform(pipeline)(Image.fromarray(torch.zeros(28, 28, dtype=torch.uint8).numpy(), mode="L"))
    assert len(views) == options.n_global + options.n_local > 2
    assert [v.shape[-1] for v in views] == [28] * options.n_global + [options.local_size or 12] * options.n_local


def test_no_train_runs_only_the_step_alone_runs(script, tmp_path, capsys):
    out = tmp_path / "steps.json"
    report = script.main(["--methods", "simsiam", *TINY, "--step-repeats", "2", "--no-train", "--out", str(out)])
    runs = [(r["framework"], r["mode"]) for r in report["results"]]
    assert runs == [("jef", "step"), ("lightly", "step"), ("lightly", "step"), ("jef", "step")]  # interleaved
    table = capsys.readouterr().out
    assert "| simsiam | — |" in table  # no end-to-end ratio without training runs
    assert "| simsiam | jef | — |" in table


def test_profile_step_profiles_both_sides():
    import importlib.util

    spec = importlib.util.spec_from_file_location("profile_step", ROOT / "benchmarks" / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.main(["--method", "simsiam", "--width", "4", "--batch-size", "16", "--threads", "1",
                        "--short", "1", "--long", "2", "--top", "5"])
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 5
    total = next(line for line in text.splitlines() if line.startswith("| **all operators"))
    jef_ms, lightly_ms = (float(x) for x in total.split("|")[2:4])
    assert jef_ms > 0 and lightly_ms > 0


def test_each_worker_records_its_memory_by_phase(script, tmp_path, capsys):
    report = script.main(["--methods", "simclr", *TINY, "--out", str(tmp_path / "r.json")])
    for r in report["results"]:
        peaks = [r["memory"][p]["peak_mib"] for p in ("start", "setup", "loop_start", "loop_end")]
        assert peaks == sorted(peaks) and peaks[0] > 0, (r["framework"], r["mode"], peaks)
        assert r["peak_mib"] >= peaks[-1]
    assert "| simclr | lightly | step |" in capsys.readouterr().out
