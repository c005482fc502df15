"""Loggers (``loggers:``): TensorBoard, CSV, W&B offline and an MLflow file store, alone and together.

The trackers show each key under its namespaced tag (:func:`jef.builtin.loggers.metric_tag`); the CSV keeps
``metrics.jsonl``'s keys.

Each run is the real loop on tiny data; what a logger wrote is read back with that logger's own reader
(TensorBoard's event accumulator, ``csv``, MLflow's client, W&B's offline run files) and held to ``metrics.jsonl``,
which every run writes whatever its loggers.
"""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import pytest

from jef import hookimpl
from jef.builtin.loggers import CSV_NAME, CsvLogger, flat_hparams, metric_tag
from jef.config import ConfigError
from jef.registry import BuildError
from jef.testing import fresh_plugins, tiny_run

#: Two epochs of two steps each (the tiny data's 32 images at batch 16), a line per step, the final evaluation.
TWO_EPOCHS = {"train": {"epochs": 2, "tensorboard": True, "log_every": 1}, "data": {"train_size": 32},
              "monitors": [{"name": "collapse", "every": 1}]}


def jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def loss_steps(run_dir: Path) -> list[int]:
    """The steps at which ``metrics.jsonl`` holds a training loss."""
    return [row["step"] for row in jsonl(run_dir) if "loss" in row]


def test_tags_are_namespaced_by_what_they_measure():
    keys = ("loss", "info_nce", "energy/scaled_cosine", "vicreg/variance", "vicreg.1/variance", "lr",
            "images_per_s", "collapse/rank", "final/knn_top1", "epoch/loss", "run/device")
    assert {key: metric_tag(key, frozenset({"vicreg"})) for key in keys} == {
        "loss": "loss/total", "info_nce": "loss/info_nce", "energy/scaled_cosine": "loss/energy/scaled_cosine",
        "vicreg/variance": "loss/vicreg/variance", "vicreg.1/variance": "loss/vicreg.1/variance",
        "lr": "train/lr", "images_per_s": "train/images_per_s", "collapse/rank": "collapse/rank",
        "final/knn_top1": "eval/knn_top1", "epoch/loss": "epoch/loss", "run/device": "run/device"}
    assert metric_tag("vicreg/variance") == "vicreg/variance"  # not a term of this pipeline: a monitor's


def test_the_pipeline_is_flattened_to_dotted_hyperparameters():
    flat = flat_hparams({"train": {"optimizer": {"lr": 0.3}, "max_steps": None}, "monitors": [{"name": "collapse"}],
                         "eval": {"baselines": ["random", "pixels"]}})
    assert flat == {"train.optimizer.lr": 0.3, "train.max_steps": "null", "monitors.0.name": "collapse",
                    "eval.baselines": '["random", "pixels"]'}


@pytest.fixture(scope="module")
def tensorboard_and_csv(tmp_path_factory):
    """One run with two loggers at once."""
    run_dir = tmp_path_factory.mktemp("loggers") / "run"
    tiny_run({**TWO_EPOCHS, "loggers": [{"name": "tensorboard"}, {"name": "csv"}]}, steps=4, run_dir=run_dir)
    return run_dir


def test_tensorboard_gets_namespaced_scalars_hparams_and_one_view_grid_per_epoch(tensorboard_and_csv):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_and_csv / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"loss/total", "loss/info_nce", "loss/energy/scaled_cosine", "train/lr"} <= set(tags["scalars"])
    assert any(tag.startswith("collapse/") for tag in tags["scalars"]), tags["scalars"]
    assert any(tag.startswith("eval/knn") for tag in tags["scalars"]), tags["scalars"]
    assert [event.step for event in events.Scalars("loss/total")] == loss_steps(tensorboard_and_csv)
    first = next(row for row in jsonl(tensorboard_and_csv) if "loss" in row)
    assert events.Scalars("loss/total")[0].value == pytest.approx(first["loss"], rel=1e-6)
    views = events.Images("train/views")
    assert len(views) == 2  # once per epoch
    assert views[0].height == 2 * 16 and views[0].width == 8 * 16  # two views of eight 16-pixel images
    # The hparams dashboard: the resolved pipeline's values beside the final metrics.
    hparams = EventAccumulator(str(tensorboard_and_csv / "tensorboard"))
    hparams.Reload()
    plugin_data = hparams.PluginTagToContent("hparams")
    session = next(iter(plugin_data.values()))
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData.FromString(session)
    if content.HasField("session_start_info"):
        assert content.session_start_info.hparams["train.optimizer.lr"].number_value == pytest.approx(0.1)
    else:
        names = {info.name for info in content.experiment.hparam_infos}
        assert "train.optimizer.lr" in names and "backbone.name" in names


def test_csv_holds_one_row_per_metrics_line_and_one_column_per_key(tensorboard_and_csv):
    with (tensorboard_and_csv / CSV_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    lines = jsonl(tensorboard_and_csv)
    assert [int(row["step"]) for row in rows] == [line["step"] for line in lines]
    keys = set().union(*lines) - {"time"}
    assert keys <= set(rows[0]), keys - set(rows[0])
    losses = [float(row["loss"]) for row in rows if row["loss"]]
    assert losses == pytest.approx([line["loss"] for line in lines if "loss" in line], rel=1e-6)


def test_a_resumed_csv_drops_the_rows_after_the_checkpoint(tmp_path):
    logger = CsvLogger(None, None)
    logger.open(tmp_path, None)
    for step in (1, 2, 3, 4):
        logger.write(step, {"loss": float(step)})
    logger.write(4, {"final/knn_top1": 0.5})  # a new column rewrites the file
    logger.close()
    resumed = CsvLogger(None, None)
    resumed.open(tmp_path, 2)
    resumed.write(3, {"loss": 30.0})
    resumed.close()
    with (tmp_path / CSV_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["step"], row["loss"]) for row in rows] == [("1", "1.0"), ("2", "2.0"), ("3", "30.0")]
    assert "final/knn_top1" in rows[0]  # the longer header survives


def test_train_tensorboard_false_drops_the_tensorboard_logger_only(tmp_path):
    run_dir = tmp_path / "run"
    tiny_run({"train": {"tensorboard": False}, "loggers": [{"name": "tensorboard"}, {"name": "csv"}]},
             run_dir=run_dir)
    assert not (run_dir / "tensorboard").exists()
    assert (run_dir / CSV_NAME).is_file() and (run_dir / "metrics.jsonl").is_file()


def test_an_unknown_logger_is_named_with_the_ones_there_are():
    with pytest.raises(ConfigError) as error:
        tiny_run({"loggers": [{"name": "tensorbord"}]})
    message = str(error.value)
    assert "loggers.0.name" in message and "tensorboard" in message and "csv" in message


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_a_logger_whose_package_is_missing_says_what_to_install(package, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError, as when it is not installed
    with pytest.raises(BuildError) as error:
        tiny_run({"loggers": [{"name": "csv"}, {"name": package}]}, run_dir=tmp_path / "run")
    message = str(error.value)
    assert "loggers.1" in message and f"pip install 'jef[{package}]'" in message, message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the run wrote anything


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (``run-*.wandb``), parsed with W&B's own protobuf schema.

    The file is LevelDB's log format: a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte header
    (CRC, length, type: 1 whole, 2 first, 3 middle, 4 last), a record being one chunk or first ... last.
    """
    from wandb.proto import wandb_internal_pb2

    raw, records, pos, parts, block = path.read_bytes(), [], 7, b"", 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0:
            break
        parts, pos = parts + raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def test_wandb_offline_keeps_every_step_the_config_the_summary_and_the_views(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # the logger's dir wins over the environment
    run_dir = tmp_path / "run"
    tiny_run({**TWO_EPOCHS, "loggers": [{"name": "wandb", "project": "jef-tests"}]}, steps=4, run_dir=run_dir)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (file,) = offline.glob("*.wandb")
    records = wandb_records(file)

    def items(record, field):
        return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in field}

    history = [items(r, r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    lines = jsonl(run_dir)
    assert [row["_step"] for row in history] == sorted({line["step"] for line in lines})  # lines of a step merge
    losses = {line["step"]: line["loss"] for line in lines if "loss" in line}
    assert {row["_step"]: row["loss/total"] for row in history if "loss/total" in row} == pytest.approx(losses)
    (config,) = [items(r, r.config.update) for r in records if r.WhichOneof("record_type") == "config"]
    assert config["train.optimizer.lr"] == 0.1 and config["backbone.name"] == "small_cnn"
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update(items(record, record.summary.update))
    final = {key: value for line in lines for key, value in line.items() if key.startswith("final/")}
    assert final and {key: summary[metric_tag(key)] for key in final} == pytest.approx(final)
    assert len(list((offline / "files" / "media" / "images").rglob("views_*.png"))) == 2  # once per epoch
    assert not (tmp_path / "elsewhere").exists()


def test_mlflow_file_store_holds_every_step_the_params_and_the_final_metrics(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # recorded as unset, so the logger's setting is undone after
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    tiny_run({**TWO_EPOCHS, "loggers": [{"name": "mlflow", "experiment": "tests"}, {"name": "csv"}]}, steps=4,
             run_dir=run_dir)
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss/total")
    assert [metric.step for metric in history] == loss_steps(run_dir)
    assert run.data.params["train.optimizer.lr"] == "0.1"
    assert run.data.metrics["eval/knn_top1"] == pytest.approx(
        next(line["final/knn_top1"] for line in jsonl(run_dir) if "final/knn_top1" in line))
    assert {"train/lr", "train/epoch", "epoch/loss", "loss/info_nce"} <= set(run.data.metrics)


class RecordingLogger:
    """A third-party logger: keeps every call, so the protocol's order and arguments can be checked."""

    calls: list = []

    def __init__(self, options, ctx):
        self.calls.append(("init", ctx.rank))

    def loss_terms(self, names):
        self.calls.append(("loss_terms", sorted(names)))

    def open(self, directory, resumed_from):
        self.calls.append(("open", directory.name, resumed_from))

    def write(self, step, metrics):
        self.calls.append(("write", step, sorted(metrics)))

    def hparams(self, pipeline, metrics):
        self.calls.append(("hparams", pipeline["train"]["max_steps"], sorted(metrics)))

    def close(self):
        self.calls.append(("close",))


class RecordingLoggerPlugin:
    @hookimpl
    def jef_register_loggers(self, register):
        register("recording", RecordingLogger, description="keeps every call (tests)")


def test_a_plugin_logger_gets_the_protocol_in_order_and_a_resumed_run_says_where_it_restarts(tmp_path):
    plugins = fresh_plugins(RecordingLoggerPlugin())
    run_dir = tmp_path / "run"
    pipeline = {"loggers": [{"name": "recording"}, {"name": "csv"}], "functionals": [{"name": "info_nce"}]}
    RecordingLogger.calls = []
    tiny_run(pipeline, steps=2, run_dir=run_dir, plugins=plugins)
    first = RecordingLogger.calls
    assert first[:3] == [("init", 0), ("loss_terms", ["info_nce"]), ("open", "run", None)]
    assert first[-2][0] == "hparams" and first[-2][1] == 2 and "knn_top1" in first[-2][2]
    assert first[-1] == ("close",)
    writes = [call for call in first if call[0] == "write"]
    assert [call[1] for call in writes] == [line["step"] for line in jsonl(run_dir)]

    RecordingLogger.calls = []
    tiny_run(pipeline, steps=4, run_dir=run_dir, plugins=plugins, resume=True)  # two more steps
    assert RecordingLogger.calls[2] == ("open", "run", 2)
    with (run_dir / CSV_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # The csv holds one history, as metrics.jsonl does: the resumed part follows what was kept.
    assert [int(row["step"]) for row in rows] == [line["step"] for line in jsonl(run_dir)]
    assert [int(row["step"]) for row in rows if row["loss"]] == [1, 2, 3, 4]
