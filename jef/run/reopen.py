"""Open a finished (or interrupted) run: its resolved pipeline, its model with the trained weights, its data.

In the run layer, so that :func:`jef.run` can hand back the trained backbone; :mod:`jef.tools.runs` re-exports
it for the tools that start from a run.

Evaluation, feature extraction, export and reports all start from a run
directory written by ``jef train`` (``pipeline.yaml``, ``checkpoint.pt``,
``metrics.jsonl``) or from a checkpoint file inside one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from jef.run.checkpoint import CHECKPOINT_NAME, load_checkpoint
from jef.components import RunContext
from jef.config import Pipeline, load_pipeline
from jef.model.build import Built, build

__all__ = ["LoadedRun", "load_run", "run_paths"]


@attrs.define
class LoadedRun:
    """A run opened for evaluation.

    Attributes:
        directory: The run directory.
        pipeline: Its resolved pipeline (from ``pipeline.yaml``).
        built: Data, augmenter, model and components built from it, the model holding the checkpoint's weights.
        step: Optimiser steps the checkpoint had done (0 for a run never trained).
        epoch: Epochs the checkpoint had finished.
    """

    directory: Path
    pipeline: Pipeline
    built: Built
    step: int
    epoch: int

    @property
    def backbone(self) -> torch.nn.Module:
        """The trained backbone (the network users keep)."""
        return self.built.model.backbone


def run_paths(path: str | Path) -> tuple[Path, Path]:
    """``(run directory, checkpoint file)`` for a run directory or a checkpoint inside one.

    Raises:
        FileNotFoundError: Naming what is missing and what to pass instead.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        directory, checkpoint = path, path / CHECKPOINT_NAME
    elif path.is_file():
        directory, checkpoint = path.parent, path
    else:
        raise FileNotFoundError(f"{path}: no such run directory or checkpoint; pass the directory `jef train` "
                                f"wrote (it holds pipeline.yaml and {CHECKPOINT_NAME})")
    if not (directory / "pipeline.yaml").is_file():
        raise FileNotFoundError(f"{directory}: no pipeline.yaml, so this is not a jef run directory; pass the "
                                f"directory `jef train` wrote")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{directory}: no {CHECKPOINT_NAME}; the run saved no checkpoint yet (it is "
                                f"written after each epoch and at the end)")
    return directory, checkpoint


def load_run(path: str | Path, overrides: list[str] | None = None, *, plugins: Any = None,
             device: str | torch.device = "cpu", splits: Any = None) -> LoadedRun:
    """Rebuild a run's model from its ``pipeline.yaml`` and load the checkpoint's weights.

    Args:
        path: Run directory or checkpoint file.
        overrides: ``key.path=value`` overrides of the saved pipeline (e.g. another ``data.name``).
        plugins: Loaded plugins (default: :func:`jef.plugins.get_plugins`).
        device: Where the model goes.
        splits: Data splits to build with instead of the pipeline's data (they fix the channels and image
            size the model is built for); the pipeline's data is built when None.

    Raises:
        FileNotFoundError: No run there.
        jef.config.validate.ConfigError: The saved pipeline needs a plugin that is not installed (named).
        RuntimeError: The checkpoint does not fit the pipeline (another pipeline's checkpoint).
    """
    from jef.plugins import get_plugins

    plugins = plugins or get_plugins()
    directory, checkpoint_path = run_paths(path)
    pipeline = load_pipeline(directory / "pipeline.yaml", overrides, registry=plugins.registry)
    state = load_checkpoint(checkpoint_path)
    ctx = RunContext(seed=pipeline.seed, batch_size=pipeline.train.batch_size,
                     global_batch_size=pipeline.train.batch_size, epochs=pipeline.train.epochs,
                     run_dir=directory)
    built = build(pipeline, ctx, splits, weights=False)  # the run's checkpoint holds the weights
    try:
        built.model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise RuntimeError(f"{checkpoint_path}: the checkpoint does not fit the model built from "
                           f"{directory / 'pipeline.yaml'} (was it written by another pipeline?): {error}") from error
    built.model.to(device).eval()
    return LoadedRun(directory, pipeline, built, int(state.get("step", 0)), int(state.get("epoch", 0)))
