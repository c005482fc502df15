"""Built-in plugin: the ``python_module`` backbone and ``python_dataset`` data, made from objects given to
``jef.run(pipeline, backbone=module, dataset=..., test_dataset=...)``.

The objects are kept in this process, keyed by the run directory, for as long as the process lives; the run's
``pipeline.yaml`` names the components, not the objects. So that the run can be reopened in another process
(``jef.load_run``, ``jef eval``, ``jef export``), the module as it was given (its class, by import path, and its
initial weights) is saved with ``torch.save`` as ``backbone_module.pt`` in the run directory when the run
starts; the checkpoint holds the trained weights. Unpickling it needs the module's class importable under the
same name (a notebook's classes live in ``__main__``: define the class again before reopening) and runs the
pickle's code: open only runs you made. Datasets are not saved: reopen such a run with ``splits=``
(:func:`jef.data.wrapped.splits_from_datasets`) or another ``data``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jef.components import DataSplits, RunContext
from jef.config.validate import ConfigError
from jef.files import atomic_write
from jef.hookspecs import Register, hookimpl

__all__ = ["GIVEN", "MODULE_FILE", "give", "jef_register_backbones", "jef_register_datasets", "jef_run_start"]

#: The file the given module is saved to, in the run directory.
MODULE_FILE = "backbone_module.pt"
#: ``{(kind, resolved run directory): object}``: what ``jef.run`` was given in this process.
GIVEN: dict[tuple[str, str], Any] = {}


def give(kind: str, run_dir: Path, obj: Any) -> None:
    """Keep ``obj`` (``"backbone"``: an ``nn.Module``; ``"data"``: :class:`DataSplits`) for the run in ``run_dir``."""
    GIVEN[(kind, str(Path(run_dir).resolve()))] = obj


def _given(kind: str, ctx: RunContext) -> Any:
    return None if ctx.run_dir is None else GIVEN.get((kind, str(Path(ctx.run_dir).resolve())))


def build_python_module(options: Any, ctx: RunContext) -> nn.Module:
    """A copy of the module given to ``jef.run`` (or the one saved in the run directory), with ``out_dim``."""
    module = _given("backbone", ctx)
    if module is None:
        module = _load_saved(ctx)
    module = copy.deepcopy(module)  # the given module stays as it was: each run starts from it
    if not isinstance(getattr(module, "out_dim", None), int):
        module.out_dim = _feature_width(module, ctx)
    return module


def _load_saved(ctx: RunContext) -> nn.Module:
    path = None if ctx.run_dir is None else Path(ctx.run_dir) / MODULE_FILE
    if path is None or not path.is_file():
        raise ConfigError(f"the backbone is a Python module given to jef.run(backbone=...), and no {MODULE_FILE} "
                          f"was saved in {ctx.run_dir}; pass the module to jef.run again", path="backbone.name")
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as error:
        raise ConfigError(f"{path}: cannot unpickle the backbone module: {error}; its class must be importable "
                          f"under the name it had when the run trained (define it again, e.g. in the notebook)",
                          path="backbone.name") from error
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{path}: expected a saved torch.nn.Module, found {type(module).__name__}",
                          path="backbone.name")
    return module


def _feature_width(module: nn.Module, ctx: RunContext) -> int:
    """The width ``d`` of ``module``'s ``[B, d]`` features, from one forward pass of two blank images."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    blank = torch.zeros(2, ctx.in_channels, ctx.image_size, ctx.image_size, device=device)
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(blank)
    finally:
        module.train(training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the backbone module given to jef.run must map [B, C, H, W] images to [B, d] features, "
                          f"got {shape} for [2, {ctx.in_channels}, {ctx.image_size}, {ctx.image_size}]; end it with "
                          f"pooling and a flatten, or set its `out_dim`", path="backbone")
    return int(out.shape[1])


def build_python_dataset(options: Any, ctx: RunContext) -> DataSplits:
    """The splits made from the datasets given to ``jef.run`` for this run directory."""
    splits = _given("data", ctx)
    if splits is None:
        raise ConfigError(f"this run trained on datasets given to jef.run(dataset=...) in Python, which are not "
                          f"saved with the run ({ctx.run_dir}); pass them again: jef.load_run(run_dir, splits="
                          f"jef.data.wrapped.splits_from_datasets(train, test)), or another `data`", path="data.name")
    return splits


@hookimpl
def jef_register_backbones(register: Register) -> None:
    """Register ``python_module``."""
    register("python_module", build_python_module,
             description="an nn.Module given to jef.run(backbone=...); saved in the run directory to reopen it")


@hookimpl
def jef_register_datasets(register: Register) -> None:
    """Register ``python_dataset``."""
    register("python_dataset", build_python_dataset,
             description="map-style datasets given to jef.run(dataset=..., test_dataset=...); not saved")


@hookimpl
def jef_run_start(run: Any) -> None:
    """Save the given module (as given, untrained) in the run directory, so that the run can be reopened."""
    directory = run.directory  # None on processes other than the main one
    if directory is None or run.pipeline.backbone.name != "python_module":
        return
    module = GIVEN.get(("backbone", str(Path(directory).resolve())))
    if module is None or (Path(directory) / MODULE_FILE).is_file():  # reopened from the file, or resumed
        return
    atomic_write(Path(directory) / MODULE_FILE, lambda tmp: torch.save(module, tmp))

