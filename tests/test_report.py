"""``jef report``: the HTML page of a run, the comparison of runs, and the errors a user reads."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
from pathlib import Path

import attrs
import pytest
import yaml

import jef.tools.runs
from jef.cli import main
from jef.plugins import load_plugins
from jef.tools.report import ReportError, write_report
from jef.tools.report.curves import loss_panels, monitor_panels, reduce_curve, schedule_panels
from jef.tools.report.data import MISSING, RunRecord, pipeline_differences, read_run
from jef.tools.report.figures import curves_figure
from jef.tools.report.model import ModelFigures, model_figures
from jef.tools.report.sections import curve_sections, model_sections
from jef.testing import tiny_run

PNG = b"\x89PNG\r\n\x1a\n"
IMAGE = 'src="data:image/png;base64,'
SECTIONS = ["Summary", "Loss terms and learning rate", "Monitors", "Augmented views", "Embedding map",
            "Nearest neighbours", "Resolved pipeline", "Plugin versions"]


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def _copy_logs(run, target):
    """The run's files without its checkpoint: a run that has not saved one yet."""
    target.mkdir()
    for name in ("pipeline.yaml", "plugins.json", "metrics.jsonl"):
        shutil.copy(run / name, target / name)
    return target


@pytest.fixture(scope="module")
def runs(plugins, tmp_path_factory):
    """``alpha``: a tiny run with the collapse monitor every step; ``beta``: its logs as another lr without
    monitors would have written them (only the logged numbers of a second run are compared; no training needed)."""
    root = tmp_path_factory.mktemp("runs")
    alpha = tiny_run({"monitors": [{"name": "collapse", "every": 1}]}, steps=4, plugins=plugins,
                     run_dir=root / "alpha").run_dir
    beta = _copy_logs(alpha, root / "beta")
    pipeline = yaml.safe_load((beta / "pipeline.yaml").read_text(encoding="utf-8"))
    pipeline["train"]["optimizer"]["lr"], pipeline["monitors"] = 0.05, []
    (beta / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False), encoding="utf-8")
    rows = [json.loads(line) for line in (alpha / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [{k: v * 0.9 if k == "loss" else v for k, v in row.items() if "collapse/" not in k} for row in rows]
    (beta / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return alpha, beta


def test_the_report_of_a_run_has_every_section_and_figure(runs, plugins):
    alpha, _ = runs
    path = write_report([alpha], plugins=plugins, device="cpu", max_points=50)
    assert path == alpha / "report" / "report.html"
    pngs = ["loss", "schedules", "monitors", "views", "embeddings", "retrievals"]
    for name in pngs:
        assert (path.parent / f"{name}.png").read_bytes().startswith(PNG), name
    text = path.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in text
    assert text.count(IMAGE) == len(pngs)
    # Self-contained: the embedded images are the PNGs written next to the page; nothing is fetched, no script.
    first = re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1)
    assert base64.b64decode(first) == (path.parent / "loss.png").read_bytes()
    assert "<script" not in text and 'src="http' not in text and "<link" not in text
    assert "name: scaled_cosine" in text and "temperature: 0.5" in text  # the pipeline as saved
    assert "builtin.augmenters" in text and "0.1.0" in text  # plugin versions
    assert "knn_top1" in text and "offline weighted kNN (InstDisc" in text and "k=5, T=0.1" in text  # with protocol
    assert "6 test queries, top 5 of 50 training images" in text  # --max-points caps the bank


def test_runs_are_compared_side_by_side(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # several runs: the report goes to ./jef-report
    assert main(["report", str(runs[0]), str(runs[1]), "--no-model"]) == 0
    assert capsys.readouterr().out.strip() == "wrote jef-report/report.html"
    text = (tmp_path / "jef-report" / "report.html").read_text(encoding="utf-8")
    assert "jef report: 2 runs compared" in text and "<th>alpha</th><th>beta</th>" in text
    assert "<td>train.optimizer.lr</td><td>0.1</td><td>0.05</td>" in text  # the pipelines' differences
    assert "figures of the model omitted: --no-model" in text and "Augmented views" not in text
    assert text.count(IMAGE) == 3  # loss, schedules and alpha's monitors (beta has none) overlaid
    assert (tmp_path / "jef-report" / "monitors.png").is_file()


def test_runs_without_checkpoint_or_model_keep_the_logged_numbers(runs, plugins, tmp_path):
    logs = _copy_logs(runs[0], tmp_path / "logs_only")
    entry = {"value": 0.625, "protocol": "linear probe on frozen features, 100 epochs", "step": 4}
    (logs / "evaluation.json").write_text(json.dumps({"linear_top1": entry}), encoding="utf-8")
    moved = tmp_path / "moved"  # its backbone's plugin is gone
    shutil.copytree(runs[0], moved, ignore=shutil.ignore_patterns("report"))
    pipeline = (moved / "pipeline.yaml").read_text(encoding="utf-8")
    (moved / "pipeline.yaml").write_text(pipeline.replace("name: small_cnn", "name: gone_cnn"), encoding="utf-8")
    text = write_report([logs, moved], tmp_path / "out", plugins=plugins).read_text(encoding="utf-8")
    assert text.count(IMAGE) == 3  # the curves only
    assert "No checkpoint.pt in" in text and "The logged numbers are shown" in text
    assert "the figures that need the model could not be made" in text and "gone_cnn" in text
    assert "0.6250" in text and "linear probe on frozen features, 100 epochs (evaluation.json, step 4)" in text
    assert not list((tmp_path / "out").glob("views*.png"))


def test_model_figures_of_several_runs_stand_in_columns():
    records = [RunRecord(Path(name), name, "", {}, None, [], [], {}, None) for name in ("a", "b")]
    files: dict[str, bytes] = {}
    made = ModelFigures({"views": PNG, "embeddings": PNG, "retrievals": PNG}, {"views": "4 images"})
    sections = model_sections(records, [made, "no checkpoint"], files)
    assert [s.anchor for s in sections] == ["views", "embeddings", "retrievals"]
    assert sorted(files) == ["embeddings-a.png", "retrievals-a.png", "views-a.png"]
    assert '<div class="columns"><div><h3>a</h3><figure>' in sections[0].body
    assert "<h3>b</h3><p class=\"note\">no checkpoint</p>" in sections[0].body


def test_unlabelled_data_without_test_split(runs, plugins, monkeypatch):
    loader = jef.tools.runs.load_run

    def unlabelled(*args, **kwargs):
        run = loader(*args, **kwargs)
        run.built.splits = attrs.evolve(run.built.splits, num_classes=None, test=None)
        return run

    monkeypatch.setattr(jef.tools.runs, "load_run", unlabelled)
    made = model_figures(runs[0], plugins=plugins, max_points=16)
    assert made.note is None and set(made.pngs) == {"views", "embeddings", "retrievals"}
    assert "unlabelled" in made.details["labels"]
    assert made.details["retrievals"].startswith("6 train queries, top 5 of 16 training images")


def test_errors_name_the_file_and_what_to_do(runs, tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert f"jef: error: {tmp_path}: no pipeline.yaml, so this is not a jef run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "no such directory; pass a run directory written by `jef train`" in capsys.readouterr().err
    run = _copy_logs(runs[0], tmp_path / "damaged")
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as metrics:
        metrics.write('{"step": 5, "loss": ')  # the run was killed while writing
    lines = len((run / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
    assert main(["report", str(run), "--no-model"]) == 2
    assert (f"jef: error: {run / 'metrics.jsonl'}, line {lines}: not valid JSON (Expecting value); a run killed "
            f"while writing can leave a cut line: delete or repair that line") in capsys.readouterr().err  # as in docs
    with pytest.raises(ReportError, match="is given twice"):
        write_report([runs[0], runs[0]], tmp_path / "twice")
    with pytest.raises(ReportError, match="unknown projection 'mds'; choose one of pca, tsne, umap"):
        write_report([runs[0]], tmp_path / "x", projection="mds")
    with pytest.raises(SystemExit):
        main(["report", str(runs[0]), "--max-points", "0"])
    assert "--max-points: must be at least 1" in capsys.readouterr().err


def test_curves_are_grouped_by_kind(runs):
    alpha, beta = read_run(runs[0]), read_run(runs[1])
    assert [p.title for p in loss_panels([alpha])] == ["loss", "energy/scaled_cosine", "info_nce"]
    assert [p.title for p in schedule_panels([alpha])] == ["lr"]
    monitors = [p.title for p in monitor_panels([alpha])]
    assert monitors[:2] == ["collapse/std", "collapse/rank"] and all(t.startswith("collapse/") for t in monitors)
    assert monitor_panels([beta]) == []
    both = loss_panels([alpha, beta])[0]
    assert [(c.label, c.epoch) for c in both.curves] == [("alpha", False), ("alpha, epoch mean", True),
                                                         ("beta", False), ("beta, epoch mean", True)]
    assert pipeline_differences([alpha, alpha]) == []
    changed = dict(pipeline_differences([alpha, beta]))
    assert changed["train.optimizer.lr"] == [0.1, 0.05] and changed["monitors.0.name"] == ["collapse", MISSING]


def test_a_resumed_run_has_one_curve():
    rows = [{"step": step, "loss": value} for step, value in [(1, 3.0), (2, 2.0), (3, 9.0), (3, 1.5), (4, 1.0)]]
    record = RunRecord(Path("r"), "r", "", {}, None, rows, [], {}, None)
    assert record.series("loss") == ([1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.5, 1.0])


def test_long_curves_keep_their_spikes():
    steps, values = list(range(10_000)), [1.0] * 10_000
    values[5_000] = 50.0
    x, means, lows, highs = reduce_curve(steps, values, points=100)
    assert len(x) == 100 and max(highs) == 50.0 and min(lows) == 1.0
    assert reduce_curve([1, 2], [3.0, 4.0]) == ([1, 2], [3.0, 4.0], [3.0, 4.0], [3.0, 4.0])


def test_the_collapse_panels_show_the_healthy_level_and_the_warning_threshold(runs, plugins, tmp_path):
    """collapse/std is the raw std of l2-normalised z: healthy about 1/sqrt(d), not 1; the monitor warns under
    std_threshold/sqrt(d). Both are drawn, d being the logged width of z (the projector's last layer here)."""
    record = read_run(runs[0])
    d = record.pipeline["projector"]["dims"][-1]
    assert record.series("collapse/dim")[1] == [float(d)] * 4
    stds = record.series("collapse/std")[1]
    assert all(0.5 / math.sqrt(d) < std < 1.5 / math.sqrt(d) for std in stds), stds  # the level really is 1/sqrt(d)
    panels = monitor_panels([record])
    assert "collapse/dim" not in [p.title for p in panels]  # the width is for the lines, not a curve
    figure = curves_figure(panels)
    drawn = {axes.get_title(): {line.get_label(): (list(line.get_ydata()), line.get_linestyle())
                                for line in axes.get_lines()} for axes in figure.axes}
    healthy, warning = 1 / math.sqrt(d), 0.1 / math.sqrt(d)
    assert drawn["collapse/std"][f"healthy 1/sqrt({d}) = {healthy:.3g}"] == ([healthy, healthy], "--")
    assert drawn["collapse/std"][f"warns under 0.1/sqrt({d}) = {warning:.3g}"] == ([warning, warning], ":")
    assert drawn["collapse/rank"]["warns under 1.5"] == ([1.5, 1.5], ":")
    text = html.unescape(write_report([runs[0]], tmp_path, plugins=plugins, model=False).read_text(encoding="utf-8"))
    caption = re.search(r"<figcaption>(Values logged by the run's monitors[^<]*)</figcaption>", text).group(1)
    assert "about 1/sqrt(d) when they spread over the sphere (dashed line)" in caption
    assert "warns under std_threshold/sqrt(d) (dotted line)" in caption
    assert "about 1 when" not in caption and "times sqrt(d)" not in caption


def test_a_run_that_did_not_log_the_width_says_why_its_std_panel_has_no_lines():
    rows = [{"step": 1, "collapse/std": 0.08}, {"step": 2, "collapse/std": 0.09}]
    record = RunRecord(Path("old"), "old", "", {"monitors": [{"name": "collapse", "std_threshold": 0.1}]}, None,
                       rows, [], {}, None)
    (panel,) = monitor_panels([record])
    assert panel.references == []
    (_, watch) = curve_sections([record], {})
    caption = html.unescape(watch.body)
    assert "no run here logged collapse/dim" in caption and "1/sqrt(d) of the projector's output width" in caption
