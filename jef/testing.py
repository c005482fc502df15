"""Helpers for testing jef and jef plugins.

* :func:`fresh_plugins` -- a plugin manager with exactly the plugins you name.
* :func:`fake_distribution` -- an installed-looking distribution with a ``jef``
  entry point, made in a temporary directory (offline entry-point tests).
* :func:`tiny_run` -- the real training loop on CPU on tiny synthetic images,
  recording which hooks were called.
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from jef.config import merge, resolve
from jef.plugins import Plugins, load_plugins

#: A pipeline small enough to train in seconds on a CPU.
TINY_PIPELINE: dict[str, Any] = {
    "data": {"name": "synthetic", "train_size": 64, "test_size": 32, "image_size": 16, "num_classes": 4},
    "augmenter": {"name": "views", "size": 16},
    "backbone": {"name": "small_cnn", "width": 8},
    "projector": {"name": "mlp", "dims": [32, 16]},
    "energy": {"name": "scaled_cosine", "temperature": 0.5},
    "functionals": [{"name": "info_nce", "temperature": 0.5}],
    "train": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1},
              "progress": False, "tensorboard": False, "log_every": 1},
    "eval": {"knn": {"k": 5}},
}


def fresh_plugins(*plugins: Any, builtins: bool = True, entry_points: bool = False) -> Plugins:
    """Load a plugin manager with built-ins and the given plugin objects or modules (named by ``__name__``)."""
    named = tuple((getattr(p, "__name__", None) or type(p).__name__, p) for p in plugins)
    return load_plugins(builtins=builtins, entry_points=entry_points, extra=named)


@contextmanager
def fake_distribution(name: str, module_source: str, *, entry_point: str | None = None,
                      version: str = "0.1.0", module: str | None = None) -> Iterator[Path]:
    """Make ``name`` look installed, with ``[jef] entry_point = module`` and the module's source.

    Adds a temporary directory holding ``<module>.py`` and a ``.dist-info`` to
    ``sys.path`` for the duration of the ``with`` block, then removes both and
    forgets the imported module.

    Args:
        name: Distribution name (``jef-plugin-demo``).
        module_source: Python source of the plugin module.
        entry_point: Entry-point name (default: the name after ``jef-plugin-``).
        version: Distribution version.
        module: Import name of the module (default: the name with ``-`` → ``_``).
    """
    module = module or name.replace("-", "_")
    entry_point = entry_point or name.removeprefix("jef-plugin-")
    with tempfile.TemporaryDirectory(prefix="jef-fake-dist-") as tmp:
        root = Path(tmp)
        (root / f"{module}.py").write_text(textwrap.dedent(module_source), encoding="utf-8")
        info = root / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                                       encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[jef]\n{entry_point} = {module}\n", encoding="utf-8")
        sys.path.insert(0, str(root))
        try:
            yield root
        finally:
            sys.path.remove(str(root))
            sys.modules.pop(module, None)


def tiny_pipeline(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """:data:`TINY_PIPELINE` merged with ``overrides`` and validated (``kwargs`` go to :func:`jef.config.resolve`)."""
    return resolve(merge(TINY_PIPELINE, overrides or {}), source="<tiny>", **kwargs)


@attrs.define
class TinyRunResult:
    """What :func:`tiny_run` returns."""

    metrics: dict[str, float]
    hooks_called: list[str]
    run_dir: Path


def tiny_run(pipeline: Mapping[str, Any] | None = None, *, steps: int = 2, run_dir: str | Path | None = None,
             plugins: Plugins | None = None, resume: bool = False) -> TinyRunResult:
    """Run the real training loop on CPU for ``steps`` steps on tiny synthetic data.

    Args:
        pipeline: Overrides of :data:`TINY_PIPELINE` (e.g. ``{"method": "simclr"}``).
        steps: Optimiser steps (``train.max_steps``).
        run_dir: Where checkpoints and logs go (default: a new temporary directory).
        plugins: The plugins to use (default: :func:`fresh_plugins` with entry points).
        resume: Continue from ``run_dir``'s checkpoint.
    """
    from jef.train import train

    plugins = plugins or load_plugins()
    data = merge(pipeline or {}, {"train": {"max_steps": steps}})
    validated = resolve(merge(TINY_PIPELINE, data), source="<tiny_run>", registry=plugins.registry)
    directory = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="jef-tiny-run-"))
    called: list[str] = []

    def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        called.append(hook_name)

    undo = plugins.manager.add_hookcall_monitoring(before, lambda *args: None)
    try:
        metrics = train(validated, run_dir=directory, plugins=plugins, cpu=True, resume=resume)
    finally:
        undo()
    return TinyRunResult(metrics, called, directory)
