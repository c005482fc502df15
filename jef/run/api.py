"""``jef.run(...)``: train from a notebook or a script, and get back what was trained.

:func:`run_pipeline` takes a pipeline as a file, a mapping or a resolved :class:`~jef.config.Pipeline`, and
optionally a backbone module and datasets made in Python (registered for that run as the ``python_module`` and
``python_dataset`` components of :mod:`jef.builtin.python_objects`). It trains with
:func:`jef.run.loop.train` and returns a :class:`RunResult`: the final metrics (it reads as their mapping, as
``jef.run`` returned before), the run directory, and the trained backbone, loaded from the run's checkpoint
when first asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
from torch import nn

from jef.builtin.python_objects import give
from jef.config import Pipeline, load_pipeline, resolve
from jef.data.wrapped import splits_from_datasets
from jef.plugins import Plugins, get_plugins
from jef.run.directory import run_directory
from jef.run.log import METRICS_NAME
from jef.run.loop import train
from jef.run.reopen import LoadedRun, load_run

__all__ = ["RunResult", "run_pipeline"]


@attrs.define(eq=False)
class RunResult(Mapping[str, float]):
    """What ``jef.run(...)`` returns: a finished run.

    It reads as the mapping of its final metrics (``result["knn_top1"]``, ``sorted(result)``, ``dict(result)``).

    Attributes:
        metrics: The final metrics: loss terms, collapse diagnostics, evaluation results (``knn_top1``...).
        run_dir: The run directory (checkpoint, ``metrics.jsonl``, ``pipeline.yaml``, ``evaluation.json``).
        pipeline: The resolved pipeline that trained.
    """

    metrics: dict[str, float]
    run_dir: Path
    pipeline: Pipeline
    _plugins: Plugins = attrs.field(repr=False, alias="plugins")
    _loaded: LoadedRun | None = attrs.field(default=None, repr=False, alias="loaded")

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def reopen(self) -> LoadedRun:
        """The run opened from its checkpoint (:func:`jef.load_run`), once; data, augmenter and whole model."""
        if self._loaded is None:
            self._loaded = load_run(self.run_dir, plugins=self._plugins)
        return self._loaded

    @property
    def backbone(self) -> nn.Module:
        """The trained backbone, in eval mode on the CPU (the network people keep)."""
        return self.reopen().backbone

    @property
    def model(self) -> nn.Module:
        """The whole trained model (backbone, projector, predictor, target), in eval mode on the CPU."""
        return self.reopen().built.model

    def history(self) -> list[dict[str, Any]]:
        """Every line of the run's ``metrics.jsonl`` (one dict per logged step, with its ``step``)."""
        path = self.run_dir / METRICS_NAME
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_pipeline(pipeline: Pipeline | Mapping[str, Any] | str | Path, overrides: list[str] | None = None, *,
                 backbone: nn.Module | None = None, dataset: Any = None, test_dataset: Any = None,
                 num_classes: int | None = None, run_dir: str | Path | None = None,
                 resume: bool | Literal["force"] = False, overwrite: bool = False,
                 plugins: Plugins | None = None, cpu: bool | None = None) -> RunResult:
    """Train a pipeline, from a file, a mapping or a resolved pipeline, and return the finished run.

    Example:
        >>> result = jef.run({"method": "simclr", "data": {"name": "fashion_mnist_mini"}},
        ...                  ["train.epochs=1"], run_dir="runs/notebook")  # doctest: +SKIP
        >>> result["knn_top1"], result.run_dir, result.backbone  # doctest: +SKIP

    Args:
        pipeline: A pipeline YAML file, the same as a mapping, or a :class:`~jef.config.Pipeline` from
            :func:`jef.load_pipeline`.
        overrides: ``key.path=value`` strings applied last (as on the command line).
        backbone: A module mapping ``[B, C, H, W]`` float images to ``[B, d]`` features, trained instead of the
            pipeline's backbone (jef trains a copy; ``out_dim`` is measured when it has none).
        dataset: A map-style dataset trained on instead of the pipeline's data: samples ``(image, label)`` with
            a uint8 or ``[0, 1]`` float ``[C, H, W]`` tensor or a PIL image, square.
        test_dataset: Its held-out split, for the evaluation at the end (kNN, linear probe).
        num_classes: The datasets' classes (default: ``dataset.classes``, else read from the labels).
        run_dir: The run directory (default: the pipeline's ``run_dir``, else ``runs/<file stem>``, else, for a
            mapping, ``runs/<method>``).
        resume: Continue the run in ``run_dir`` (``"force"``: even with a changed pipeline).
        overwrite: Move a run already in ``run_dir`` aside first; else it is refused.
        plugins: The plugins (default: the installed ones, :func:`jef.plugins.get_plugins`).
        cpu: Force the CPU (default: a GPU when there is one).

    Raises:
        jef.config.validate.ConfigError: An invalid pipeline (naming the YAML path).
        jef.run.directory.RunDirError: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        TypeError, ValueError: A dataset sample jef cannot read (naming the sample).
    """
    plugins = plugins or get_plugins()
    overrides = list(overrides or [])
    if backbone is not None:
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"jef.run(backbone=...): expected a torch.nn.Module, got {type(backbone).__name__}")
        overrides.append("backbone={name: python_module}")
    if test_dataset is not None and dataset is None:
        raise TypeError("jef.run(test_dataset=...) needs dataset=... too (the split to train on)")
    if dataset is not None:
        overrides.append("data={name: python_dataset}")
    resolved = _resolve(pipeline, overrides, plugins)
    if run_dir is None and resolved.run_dir is None and Path(resolved.source).suffix not in (".yaml", ".yml"):
        run_dir = Path("runs") / (resolved.method.name if resolved.method else "pipeline")  # no file to name it
    directory = run_directory(resolved, run_dir)
    if backbone is not None:
        give("backbone", directory, backbone)
    if dataset is not None:
        give("data", directory, splits_from_datasets(dataset, test_dataset, num_classes=num_classes))
    metrics = train(resolved, run_dir=directory, resume=resume, overwrite=overwrite, plugins=plugins, cpu=cpu)
    return RunResult(metrics, directory, resolved, plugins=plugins)


def _resolve(pipeline: Any, overrides: list[str], plugins: Plugins) -> Pipeline:
    if isinstance(pipeline, Pipeline):
        if not overrides:
            return pipeline
        return resolve(pipeline.to_dict(), overrides, source=pipeline.source, registry=plugins.registry)
    if isinstance(pipeline, Mapping):
        return resolve(dict(pipeline), overrides, source="<jef.run pipeline>", registry=plugins.registry)
    if isinstance(pipeline, str | Path):
        return load_pipeline(pipeline, overrides, registry=plugins.registry)
    raise TypeError(f"jef.run: expected a pipeline file, a mapping or a jef.config.Pipeline, got "
                    f"{type(pipeline).__name__}")
