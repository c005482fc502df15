"""Built-in loggers (``loggers:``): TensorBoard, CSV, Weights & Biases and MLflow.

A logger receives what ``metrics.jsonl`` receives, on the main process only (:class:`jef.run.log.MetricsLogger`
fans each line out); the protocol is in :func:`jef.hookspecs.jef_register_loggers`. ``metrics.jsonl`` itself is
no logger: it is always written. ``wandb`` and ``mlflow`` need their packages (``pip install 'jef[wandb]'``,
``pip install 'jef[mlflow]'``); a pipeline that selects one without it fails at the run's start, naming
``loggers.N`` and what to install.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from jef.components import NoOptions, RunContext
from jef.files import atomic_write
from jef.hookspecs import Register, hookimpl

__all__ = ["CSV_NAME", "CsvLogger", "MlflowLogger", "MlflowOptions", "TensorBoardLogger",
           "TensorBoardOptions", "WandbLogger", "WandbOptions", "flat_hparams", "jef_register_loggers",
           "metric_tag"]

#: The file the ``csv`` logger writes in the run directory.
CSV_NAME = "metrics.csv"
#: Keys of a log line that describe the training rather than its loss (TensorBoard tags ``train/<key>``).
TRAIN_KEYS = frozenset({"lr", "images_per_s", "epoch", "weight_decay"})


def metric_tag(key: str, loss_terms: frozenset[str] = frozenset()) -> str:
    """The namespaced tag of a metrics key, under which the trackers (TensorBoard, W&B, MLflow) show it.

    The namespaces group the charts, and keep a key from being both a name and a folder (MLflow's file store
    cannot hold ``epoch`` beside ``epoch/loss``).

    ``loss`` -> ``loss/total``; a loss term -> ``loss/<key>`` (``info_nce`` -> ``loss/info_nce``,
    ``energy/scaled_cosine`` -> ``loss/energy/scaled_cosine``, ``vicreg/variance`` -> ``loss/vicreg/variance`` when
    ``vicreg`` is one of ``loss_terms``, the pipeline's functionals); ``lr``, ``images_per_s``, ``epoch``,
    ``weight_decay`` -> ``train/<key>``; ``final/<k>`` (the run's final metrics: evaluation results and the last
    epoch's mean terms) -> ``eval/<k>``; any other key with a namespace (``collapse/rank``, ``epoch/loss``,
    ``run/...``) stays as it is.
    """
    if key.startswith("final/"):
        return "eval/" + key.removeprefix("final/")
    if key == "loss":
        return "loss/total"
    if key in TRAIN_KEYS:
        return f"train/{key}"
    head = re.sub(r"\.\d+$", "", key.partition("/")[0])  # a second functional of one name logs as name.1
    if "/" not in key or head == "energy" or head in loss_terms:
        return f"loss/{key}"
    return key


def flat_hparams(data: Any, prefix: str = "") -> dict[str, Any]:
    """The resolved pipeline as ``{"train.optimizer.lr": 0.3, "backbone.name": "small_cnn", ...}``.

    Numbers, booleans and strings stay as they are; None becomes ``"null"`` and a list of scalars its JSON text;
    list items that are mappings (``functionals``, ``monitors``) are spelt with their index (``functionals.0.name``).
    """
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat_hparams(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list | tuple):
        if all(not isinstance(item, Mapping | list | tuple) for item in data):
            return {prefix: json.dumps(list(data))}
        out = {}
        for i, item in enumerate(data):
            out.update(flat_hparams(item, f"{prefix}.{i}"))
        return out
    if data is None:
        return {prefix: "null"}
    return {prefix: data if isinstance(data, bool | int | float | str) else str(data)}


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a line (strings such as ``run/device`` and NaN/inf are left out)."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)}


def _require(package: str, logger: str) -> Any:
    """Import ``package`` for the ``logger`` logger, or say what to install (the build names ``loggers.N``)."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ValueError(f"the {logger} logger needs the {package} package, which is not installed ({error}); "
                         f"run: pip install 'jef[{logger}]', or remove {{name: {logger}}} from loggers") from error


class _Tagging:
    """What the trackers share: the pipeline's loss terms, and each line's finite scalars under their tags."""

    terms: frozenset[str] = frozenset()

    def loss_terms(self, names: frozenset[str]) -> None:
        """Learn the pipeline's functional names: their keys are tagged ``loss/...``."""
        self.terms = frozenset(names)

    def tagged(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        return {metric_tag(key, self.terms): value for key, value in _scalars(metrics).items()}


# -- tensorboard -------------------------------------------------------------------------------------------------


@attrs.frozen
class TensorBoardOptions:
    """Options of the ``tensorboard`` logger."""

    images: bool = attrs.field(default=True, metadata={"doc": "log a grid of the views once per epoch"})
    hparams: bool = attrs.field(default=True, metadata={"doc": "log the resolved pipeline with the final metrics"})


class TensorBoardLogger(_Tagging):
    """Scalars under namespaced tags (:func:`metric_tag`) in ``RUN/tensorboard``, the pipeline as hparams.

    A resumed run opens its writer with ``purge_step=N+1``: TensorBoard hides the events the interrupted run wrote
    after the checkpoint.
    """

    def __init__(self, options: TensorBoardOptions, ctx: RunContext | None) -> None:
        self.options, self.writer = options, None

    def open(self, directory: Path, resumed_from: int | None) -> None:
        """Open the event writer in ``directory/tensorboard``."""
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resumed_from is None else resumed_from + 1  # hides the events after the checkpoint
        self.directory = directory / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.directory), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Add each finite scalar at ``step``."""
        for tag, value in self.tagged(metrics).items():
            self.writer.add_scalar(tag, value, step)

    def hparams(self, pipeline: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Add the flattened pipeline and the final metrics (``eval/...`` tags) to the HParams dashboard."""
        if self.options.hparams:
            final = self.tagged({f"final/{key}": value for key, value in metrics.items()})
            self.writer.add_hparams(flat_hparams(pipeline), final, run_name=".")
            self.writer.flush()

    def images(self, step: int, tag: str, images: Any) -> None:
        """Add ``images`` (``[N, C, H, W]`` in ``[0, 1]``) under ``train/<tag>``."""
        if self.options.images:
            self.writer.add_images(f"train/{tag}", images, step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# -- csv ---------------------------------------------------------------------------------------------------------


class CsvLogger:
    """``RUN/metrics.csv``: one row per line of ``metrics.jsonl`` (``step``, ``time``, then one column per key).

    The wide format ``pandas.read_csv`` reads into one column per metric (empty where a line lacks the key). A key
    seen for the first time adds a column: the file is then rewritten (atomically) with the longer header; other
    lines are appended. A resumed run drops the rows after its checkpoint's step.
    """

    def __init__(self, options: Any, ctx: RunContext | None) -> None:
        self.path: Path | None = None
        self.columns: list[str] = ["step", "time"]
        self.rows: list[dict[str, Any]] = []

    def open(self, directory: Path, resumed_from: int | None) -> None:
        """Read the rows an earlier part of the run wrote (those up to ``resumed_from``), else start afresh."""
        self.path = directory / CSV_NAME
        if resumed_from is not None and self.path.is_file():
            with self.path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle)
                self.columns = list(reader.fieldnames or self.columns)
                self.rows = [row for row in reader if _step(row) is not None and _step(row) <= resumed_from]
        else:
            self.rows = []
        self._rewrite()

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Add the row of ``step``; a new key rewrites the file with a longer header."""
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        self.rows.append(row)
        new = [key for key in row if key not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
            return
        assert self.path is not None
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow(row)

    def hparams(self, pipeline: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Nothing: the pipeline is in ``pipeline.yaml``, the final metrics in the ``final/...`` columns."""

    def close(self) -> None:
        """Nothing to flush: each row is written as it comes."""

    def _rewrite(self) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, self.columns)
                writer.writeheader()
                writer.writerows(self.rows)

        assert self.path is not None
        atomic_write(self.path, write)


def _step(row: Mapping[str, Any]) -> float | None:
    try:
        return float(row.get("step") or "")
    except ValueError:
        return None


# -- wandb -------------------------------------------------------------------------------------------------------


@attrs.frozen
class WandbOptions:
    """Options of the ``wandb`` logger (``wandb.init``'s arguments)."""

    project: str = attrs.field(default="jef", metadata={"doc": "the W&B project"})
    entity: str | None = attrs.field(default=None, metadata={"doc": "the W&B team or user (None: your default)"})
    name: str | None = attrs.field(default=None, metadata={"doc": "the W&B run's name (None: the run directory's)"})
    mode: str = attrs.field(default="offline", validator=attrs.validators.in_(("offline", "online", "disabled")),
                            metadata={"doc": "offline (sync later with `wandb sync`), online or disabled"})
    dir: str | None = attrs.field(default=None, metadata={"doc": "where W&B keeps its files (None: the run "
                                                                 "directory)"})


class WandbLogger(_Tagging):
    """Weights & Biases: every line at its step, the pipeline as the run's config, the final metrics in its summary.

    A resumed run starts a new W&B run (same name) from the checkpoint's step: W&B keeps no way to drop the steps
    the interrupted run logged after it, so filter the earlier run's history by step when comparing.
    """

    def __init__(self, options: WandbOptions, ctx: RunContext | None) -> None:
        self.options, self.wandb, self.run = options, _require("wandb", "wandb"), None

    def open(self, directory: Path, resumed_from: int | None) -> None:
        """Start the W&B run (in ``options.dir``, else the run directory)."""
        where = Path(self.options.dir or directory)
        where.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(project=self.options.project, entity=self.options.entity,
                                   name=self.options.name or directory.name, mode=self.options.mode, dir=str(where),
                                   reinit="create_new")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log the line's finite scalars at ``step``."""
        self.run.log(self.tagged(metrics), step=step)

    def hparams(self, pipeline: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """The flattened pipeline as config, the final metrics as summary."""
        self.run.config.update(flat_hparams(pipeline), allow_val_change=True)
        self.run.summary.update(self.tagged({f"final/{key}": value for key, value in metrics.items()}))

    def images(self, step: int, tag: str, images: Any) -> None:
        """Log the grid as a ``wandb.Image``."""
        array = (images[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
        self.run.log({f"train/{tag}": self.wandb.Image(array)}, step=step)

    def close(self) -> None:
        """Finish the W&B run."""
        if self.run is not None:
            self.run.finish()
            self.run = None


# -- mlflow ------------------------------------------------------------------------------------------------------


@attrs.frozen
class MlflowOptions:
    """Options of the ``mlflow`` logger."""

    tracking_uri: str | None = attrs.field(default=None, metadata={
        "doc": "the MLflow tracking URI (None: a file store, file:RUN/mlruns)"})
    experiment: str = attrs.field(default="jef", metadata={"doc": "the MLflow experiment (created when missing)"})
    run_name: str | None = attrs.field(default=None, metadata={"doc": "the MLflow run's name (None: the run "
                                                                      "directory's)"})


class MlflowLogger(_Tagging):
    """MLflow: every line's scalars at their step, the flattened pipeline as params, the final metrics.

    A resumed run starts a new MLflow run (same name, tag ``jef.resumed_from``) from the checkpoint's step: MLflow
    keeps no way to drop the steps the interrupted run logged after it.
    """

    def __init__(self, options: MlflowOptions, ctx: RunContext | None) -> None:
        self.options, self.mlflow, self.client, self.run_id = options, _require("mlflow", "mlflow"), None, None

    def open(self, directory: Path, resumed_from: int | None) -> None:
        """Create (or find) the experiment and start a run in it."""
        uri = self.options.tracking_uri or (directory / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps file stores "in maintenance mode" and refuses them unless this is set; a file store is
            # what works with no server and no database (mlflow-skinny has no SQLAlchemy). An explicit setting wins.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = self.mlflow.MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(self.options.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(self.options.experiment))
        tags = {} if resumed_from is None else {"jef.resumed_from": str(resumed_from)}
        run = self.client.create_run(experiment_id, run_name=self.options.run_name or directory.name, tags=tags)
        self.run_id = run.info.run_id

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log the line's finite scalars at ``step`` (one batch)."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(tag, value, stamp, step) for tag, value in self.tagged(metrics).items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def hparams(self, pipeline: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Log the flattened pipeline as params (100 a batch, MLflow's limit); the final metrics came as a line."""
        from mlflow.entities import Param

        params = [Param(key, str(value)[:6000]) for key, value in flat_hparams(pipeline).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def close(self) -> None:
        """End the MLflow run."""
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id)
            self.run_id = None


@hookimpl
def jef_register_loggers(register: Register) -> None:
    """Register the built-in loggers."""
    register("tensorboard", TensorBoardLogger, options=TensorBoardOptions,
             description="TensorBoard events in RUN/tensorboard: namespaced scalars, hparams, view grids")
    register("csv", CsvLogger, options=NoOptions,
             description="RUN/metrics.csv: one row per logged line, one column per metric (pandas.read_csv)")
    register("wandb", WandbLogger, options=WandbOptions,
             description="Weights & Biases (offline by default); pip install 'jef[wandb]'")
    register("mlflow", MlflowLogger, options=MlflowOptions,
             description="MLflow (a file store in RUN/mlruns by default); pip install 'jef[mlflow]'")
