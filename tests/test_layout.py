"""train.channels_last and train.compile: the same training, the same files, another way of running it."""

from __future__ import annotations

import json

import pytest
import torch

from jef.run.layout import apply_layout
from jef.testing import tiny_run
from jef.tools.runs import load_run


def losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


def weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("layout") / "eager"
    tiny_run(steps=3, run_dir=run_dir)
    return run_dir


@pytest.mark.parametrize("option", ["channels_last", "compile"])
def test_the_option_trains_the_same_model_into_the_same_files(option, eager, tmp_path):
    run_dir = tmp_path / option
    tiny_run({"train": {option: True}}, steps=3, run_dir=run_dir)
    assert losses(run_dir) == pytest.approx(losses(eager), rel=1e-4)
    ours, theirs = weights(run_dir), weights(eager)
    assert list(ours) == list(theirs)  # no _orig_mod. prefixes: checkpoints, exports and load_run read it alike
    for key, value in theirs.items():
        assert torch.allclose(ours[key].float(), value.float(), rtol=1e-3, atol=1e-5), key
    reopened = load_run(run_dir).backbone
    assert torch.allclose(reopened(torch.zeros(2, 3, 16, 16)), load_run(eager).backbone(torch.zeros(2, 3, 16, 16)),
                          rtol=1e-3, atol=1e-5)


def test_a_run_resumes_with_the_options_switched(eager, tmp_path):
    import shutil

    run_dir = tmp_path / "resumed"
    shutil.copytree(eager, run_dir)
    tiny_run({"train": {"channels_last": True}}, steps=4, run_dir=run_dir, resume=True)
    assert len(losses(run_dir)) == 4


def test_channels_last_converts_the_convolutions_and_leaves_the_rest():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))

    class Options:
        channels_last, compile = True, False

    apply_layout(model, Options())
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()  # really converted: a 4x3x3x3 weight is not both
    out = model[0](torch.randn(2, 3, 8, 8))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_the_layout_benchmark_runs_and_tables_each_variant_against_eager(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "layout_speed.py"
    spec = importlib.util.spec_from_file_location("layout_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "table.md"
    assert module.main(["--recipes", "simclr_cnn", "--variants", "eager", "channels_last", "per-view calls",
                        "--batch-size", "8", "--steps", "1", "--repeats", "2", "--warmup", "0", "--threads", "1",
                        "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| simclr_cnn")]
    assert [row.split("|")[2].strip() for row in rows] == ["eager", "channels_last", "per-view calls"]
    assert rows[0].endswith("| 1.00x |")
    # Channels-last computes the same first loss; per-view calls change BatchNorm's statistics, so not quite.
    err = capsys.readouterr().err  # the first losses' line, then each row as it completes
    first = next(line for line in err.splitlines() if "first losses " in line).split("first losses ")[1]
    losses = dict(part.rsplit(" ", 1) for part in first.strip().split(", "))
    assert float(losses["channels_last"]) == pytest.approx(float(losses["eager"]), rel=1e-5)
    assert float(losses["per-view calls"]) != pytest.approx(float(losses["eager"]), rel=1e-5)
