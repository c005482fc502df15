"""``jef eval``: the offline protocols on a finished tiny run, the table, evaluation.json, and the errors users read."""

import json
from pathlib import Path

import pytest
from PIL import Image

from jef.cli import main
from jef.plugins import load_plugins
from jef.testing import tiny_run

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text(encoding="utf-8")
QUICK = ["eval.knn.k=5", "eval.linear.epochs=2", "eval.finetune.epochs=1", "eval.finetune.batch_size=32"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    tiny_run(steps=2, plugins=load_plugins(entry_points=False),
             run_dir=run_dir)
    return run_dir


def documented(err, what):
    """The message ``err`` shows, from ``what`` on, is the one docs/evaluation.md shows."""
    tail = err.strip().splitlines()[-1]
    tail = tail[tail.index(what):]
    assert tail in DOCS, f"docs/evaluation.md does not show the real message:\n{tail}"


def evaluation(run_dir):
    return json.loads((run_dir / "evaluation.json").read_text())


def test_all_protocols_print_a_table_and_write_evaluation_json(finished, capsys):
    assert main(["eval", str(finished), "--protocol", "all", "--cpu", *QUICK]) == 0
    out = capsys.readouterr().out
    keys = ["knn_top1", "knn_top5", "linear_top1", "linear_top5", "finetune_top1", "finetune_top5"]
    lines = out.splitlines()
    assert lines[0].startswith(f"offline evaluation of {finished} (checkpoint after 2 steps")
    assert lines[1].split() == ["key", "value", "protocol"]
    assert [line.split()[0] for line in lines[2:8]] == keys
    assert "offline weighted kNN (InstDisc, arXiv:1805.01978) on frozen backbone features: k=5, T=0.1" in lines[2]
    assert lines[3].endswith("(same as above)")
    assert "synthetic4 (4 classes): 64 train / 32 test images" in lines[2]
    assert lines[-1] == f"wrote {finished / 'evaluation.json'}"
    saved = evaluation(finished)
    assert sorted(saved) == sorted(keys)
    for key, entry in saved.items():
        assert set(entry) == {"value", "protocol", "step"} and entry["step"] == 2
        assert 0.0 <= entry["value"] <= 1.0 and entry["protocol"].startswith("offline ")
        assert f"{entry['value']:.4f}" in next(line for line in lines if line.startswith(key + " "))
    assert "epochs=2" in saved["linear_top1"]["protocol"] and "epochs=1" in saved["finetune_top1"]["protocol"]


def test_by_default_the_enabled_protocols_run_and_results_are_merged(finished, capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("pipeline.yaml", "checkpoint.pt"):
        (run_dir / name).write_bytes((finished / name).read_bytes())
    assert main(["eval", str(run_dir / "checkpoint.pt"), "eval.knn.k=3"]) == 0  # knn is enabled by default
    assert sorted(evaluation(run_dir)) == ["knn_top1", "knn_top5"]
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--protocol", "linear", "--json", *QUICK]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(printed) == ["linear_top1", "linear_top5"]
    saved = evaluation(run_dir)
    assert sorted(saved) == ["knn_top1", "knn_top5", "linear_top1", "linear_top5"]  # the kNN numbers are kept
    assert "k=3" in saved["knn_top1"]["protocol"] and printed["linear_top1"] == saved["linear_top1"]


def test_unlabelled_data_is_refused_with_what_to_pass(finished, capsys, tmp_path):
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(tmp_path / f"{i}.png")
    status = main(["eval", str(finished), "--data", "image_folder", f"data.root={tmp_path}", "data.image_size=16"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jef: error: {finished}: ")
    assert "the data has no labels; evaluation needs a labelled dataset: pass data.name=..." in err
    documented(err, "the data has no labels")


def test_data_without_a_test_split_is_refused(finished, capsys):
    assert main(["eval", str(finished), "data.test_size=0"]) == 2
    err = capsys.readouterr().err
    assert "the data has no test split; evaluation scores the test split" in err
    documented(err, "the data has no test split")


def test_a_missing_run_is_explained(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no such run directory or checkpoint; pass the directory `jef train` wrote" in err
    documented(err, "no such run directory")


def test_an_unknown_protocol_is_refused(finished, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(finished), "--protocol", "svm"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --protocol: invalid choice: 'svm'" in err and "finetune" in err
    documented(err, "jef eval: error: argument --protocol")


def test_nothing_to_run_is_explained(finished, capsys):
    assert main(["eval", str(finished), "eval.knn.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert "every protocol is disabled in the pipeline's eval section; pass --protocol" in err
    documented(err, "every protocol is disabled")


def test_vit_options_on_a_cnn_run_are_refused_before_any_protocol_runs(finished, capsys):
    saved = (finished / "evaluation.json").read_bytes() if (finished / "evaluation.json").exists() else None
    status = main(["eval", str(finished), "--protocol", "knn", "--protocol", "linear", "--cpu",
                   "eval.linear.last_blocks=4"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("jef: error: eval.linear.last_blocks: the linear probe's ViT features (last_blocks: 4) "
                          "need a token backbone")
    assert "set eval.linear.last_blocks: 1 and eval.linear.avgpool_patches: false" in err
    assert main(["eval", str(finished), "--protocol", "knn", "--protocol", "finetune", "--cpu",
                 "eval.finetune.layer_decay=0.75"]) == 2
    assert "jef: error: eval.finetune.layer_decay: layer-wise lr decay needs a ViT" in capsys.readouterr().err
    after = (finished / "evaluation.json").read_bytes() if (finished / "evaluation.json").exists() else None
    assert after == saved  # kNN did not run either
