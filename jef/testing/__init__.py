"""Helpers for testing jef and jef plugins.

* :func:`fresh_plugins` -- a plugin manager with exactly the plugins you name.
* :func:`fake_distribution` -- an installed-looking distribution with a ``jef``
  entry point, made in a temporary directory (offline entry-point tests).
* :func:`tiny_run` -- the real training loop on CPU on tiny synthetic images,
  recording which hooks were called.
* :func:`temporary_plugin` -- add a plugin to loaded plugins for a ``with`` block.
* :func:`build_objective`, :func:`build_pipeline` -- a pipeline's objective, or everything a run builds,
  made by the registered factories (:mod:`jef.testing.building`); :class:`Objective` and :class:`Term`
  for objectives assembled from modules a test made.
* :func:`run_in_processes`, :func:`train_in_processes`, :func:`record_runs` -- jobs, tiny runs and recorded
  tiny runs in several gloo processes (:mod:`jef.testing.distributed`); :func:`free_port` -- a rendezvous port
  no other pytest-xdist worker can be handed at the same time.
* Contract checks (:mod:`jef.testing.contracts`): :func:`check_energy`,
  :func:`check_functional`, :func:`check_functional_under_gather`,
  :func:`check_augmenter`, :func:`check_backbone`, :func:`check_head`, :func:`check_masker`,
  :func:`check_token_head` and
  :func:`check_component` raise :class:`ContractError` explaining how a
  component breaks its kind's contract; :func:`build_component` builds a
  registered component with small defaults.
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

from jef.config import CORE_DEFAULTS, merge, resolve
from jef.hookspecs import hookimpl
from jef.plugins import PluginInfo, Plugins, add_plugin, load_plugins
from jef.testing.building import Objective, Term, build_objective, build_pipeline
from jef.testing.contracts import ContractError, build_component, check_component, check_energy, check_functional
from jef.testing.distributed import free_port, record_runs, run_in_processes, train_in_processes
from jef.testing.faults import train_killed_at
from jef.testing.gather_contract import check_functional_under_gather
from jef.testing.mask_contracts import check_masker, check_token_head
from jef.testing.module_contracts import check_augmenter, check_backbone, check_head

__all__ = [
    "LEARNING_SETTINGS",
    "Objective",
    "Term",
    "build_objective",
    "build_pipeline",
    "assert_discovered",
    "assert_learns",
    "installed_plugins",
    "InterruptAt",
    "free_port",
    "record_runs",
    "run_in_processes",
    "TINY_PIPELINE",
    "ContractError",
    "TinyRunResult",
    "build_component",
    "check_augmenter",
    "check_backbone",
    "check_component",
    "check_energy",
    "check_functional",
    "check_functional_under_gather",
    "check_head",
    "check_masker",
    "check_token_head",
    "fake_distribution",
    "fresh_plugins",
    "temporary_plugin",
    "tiny_pipeline",
    "tiny_run",
    "train_killed_at",
    "train_in_processes",
]

#: What makes a run tiny: small synthetic data, a small backbone and heads, one short epoch, no progress bar.
TINY_SETTINGS: dict[str, Any] = {
    "data": {"name": "synthetic", "train_size": 64, "test_size": 32, "image_size": 16, "num_classes": 4},
    "backbone": {"name": "small_cnn", "width": 8},
    "projector": {"dims": [32, 16]},
    "train": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1},
              "progress": False, "tensorboard": False, "log_every": 1},
    "eval": {"knn": {"k": 5}},
}
#: The objective of a tiny run that names no method (SimCLR's parts).
TINY_OBJECTIVE: dict[str, Any] = {
    "energy": {"name": "scaled_cosine", "temperature": 0.5},
    "functionals": [{"name": "info_nce", "temperature": 0.5}],
}
#: A complete pipeline small enough to train in seconds on a CPU.
TINY_PIPELINE: dict[str, Any] = {**TINY_SETTINGS, **TINY_OBJECTIVE}


class InterruptAt:
    """A plugin that interrupts a run after optimiser step ``step``, as Ctrl-C would (resume tests)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def jef_step_end(self, run: Any, outputs: Any, terms: Any) -> None:
        if run.step == self.step:
            raise KeyboardInterrupt


#: Settings for a short run that must learn: four greyscale 16x16 texture classes, a small CNN, AdamW, the
#: collapse monitor every 5 steps and kNN (k=20) of the trained and the random backbone. 120 steps take seconds.
LEARNING_SETTINGS: dict[str, Any] = {
    "data": {"name": "synthetic", "channels": 1, "image_size": 16, "train_size": 512, "test_size": 256,
             "num_classes": 4},
    "backbone": {"name": "small_cnn", "width": 8},
    "monitors": [{"name": "collapse", "every": 5}],
    "train": {"epochs": 100, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.003, "scale_lr": "none"}},
    "eval": {"knn": {"k": 20, "baseline": True}},
}


def assert_learns(pipeline: Mapping[str, Any], *, plugins: Plugins | None = None, steps: int = 120,
                  margin: float = 0.05) -> TinyRunResult:
    """Train :data:`LEARNING_SETTINGS` merged with ``pipeline`` and assert that it learned without collapsing.

    Learned means the trained backbone's kNN top-1 beats the random backbone's by more than ``margin``;
    collapsing means the collapse monitor warned.
    """
    import warnings

    from jef.evaluate.collapse import CollapseWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CollapseWarning)
        result = tiny_run(merge(LEARNING_SETTINGS, pipeline), steps=steps, plugins=plugins)
    collapses = [str(w.message) for w in caught if issubclass(w.category, CollapseWarning)]
    assert not collapses, f"the run collapsed: {collapses[0]}"
    trained, random = result.metrics["knn_top1"], result.metrics["knn_top1_random"]
    assert trained > random + margin, (f"kNN top-1 {trained:.3f} does not beat the random backbone's "
                                       f"{random:.3f} by {margin}")
    return result


def installed_plugins(entry_point: str) -> Plugins:
    """Every installed plugin (entry points included); skips the calling test when ``entry_point`` is missing.

    For a plugin's own tests: ``@pytest.fixture(scope="module") def plugins(): return installed_plugins("swav")``.
    """
    import pytest

    plugins = load_plugins()
    if plugins.infos.get(entry_point) is None:
        pytest.skip(f"jef-plugin-{entry_point} is not installed")
    return plugins


def assert_discovered(plugins: Plugins, entry_point: str, provides: Mapping[str, list[str]]) -> PluginInfo:
    """Assert that ``jef-plugin-<entry_point>`` loaded through its entry point and registered exactly ``provides``.

    Args:
        plugins: Loaded plugins (see :func:`installed_plugins`).
        entry_point: The plugin's name in the ``jef`` entry-point group.
        provides: ``{kind: [names]}`` it must register, each through its kind's registration hook.

    Returns:
        The plugin's record, for further checks.
    """
    from jef.registry import KINDS

    info = plugins.infos[entry_point]
    assert info.status == "ok", f"plugin {entry_point!r} is {info.status}: {info.error}"
    assert info.distribution == f"jef-plugin-{entry_point}", info.distribution
    assert info.provides == dict(provides), info.provides
    assert {KINDS[kind] for kind in provides} <= set(info.hooks), info.hooks
    return info


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
             plugins: Plugins | None = None, resume: bool | str = False, cpu: bool = True,
             overwrite: bool = False) -> TinyRunResult:
    """Run the real training loop (on the CPU unless ``cpu=False``) for ``steps`` steps on tiny synthetic data.

    Args:
        pipeline: Overrides of :data:`TINY_PIPELINE`; with ``method``, of :data:`TINY_SETTINGS` only, so
            that the method's recipe supplies the objective (e.g. ``{"method": "simclr"}``).
        steps: Optimiser steps (``train.max_steps``).
        run_dir: Where checkpoints and logs go (default: a new temporary directory).
        plugins: The plugins to use (default: :func:`fresh_plugins` with entry points).
        resume: Continue from ``run_dir``'s checkpoint (``"force"``: even with a changed pipeline).
        cpu: Train on the CPU; False uses the GPU when there is one (GPU-only tests).
        overwrite: Move a run already in ``run_dir`` aside first (a run directory holding a run is refused).
    """
    from jef.run.loop import train

    plugins = plugins or load_plugins()
    data = merge(pipeline or {}, {"train": {"max_steps": steps}})
    # With a method, its recipe supplies the objective; the tiny settings only shrink data, model and steps.
    base = TINY_SETTINGS if data.get("method") else TINY_PIPELINE
    # Nameless tiny settings (projector dims, for the core default mlp) would leak into a component the caller
    # or the method's recipe chose by name (DINO's head has no `dims`).
    chosen = dict(_recipe(plugins, data.get("method")))
    chosen.update(data)
    # A slot the recipe or the caller turns off (``projector: null``) drops them too.
    base = {key: value for key, value in base.items()
            if not (isinstance(value, dict) and "name" not in value
                    and (_names_another(chosen.get(key), key) or (key in chosen and chosen[key] is None)))}
    validated = resolve(merge(base, data), source="<tiny_run>", registry=plugins.registry)
    directory = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="jef-tiny-run-"))
    called: list[str] = []

    def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        called.append(hook_name)

    undo = plugins.manager.add_hookcall_monitoring(before, lambda *args: None)
    try:
        metrics = train(validated, run_dir=directory, plugins=plugins, cpu=cpu or None, resume=resume,
                        overwrite=overwrite)
    finally:
        undo()
    return TinyRunResult(metrics, called, directory)


def _names_another(slot: Any, key: str) -> bool:
    """True when ``slot`` names a component other than the core default of ``key``."""
    default = CORE_DEFAULTS.get(key)
    return isinstance(slot, Mapping) and "name" in slot and slot["name"] != (default or {}).get("name")


def _recipe(plugins: Plugins, method: Any) -> Mapping[str, Any]:
    """The recipe of ``method`` when it is a known method name, else nothing."""
    if not isinstance(method, str):
        return {}
    try:
        return plugins.registry.get("method", method).factory
    except LookupError:
        return {}  # resolve() reports unknown or ambiguous names properly


@contextmanager
def temporary_plugin(plugins: Plugins, plugin: Any, name: str | None = None) -> Iterator[PluginInfo]:
    """Add ``plugin`` (a module or object with ``@jef.hookimpl`` functions) to loaded plugins for a ``with`` block.

    Its components are in ``plugins.registry`` inside the block; on exit they
    are removed, the plugin is unregistered from ``plugins.manager`` and its
    record deleted from ``plugins.infos``.

    Args:
        plugins: Loaded plugins, e.g. ``load_plugins(entry_points=False)``.
        plugin: The plugin object.
        name: Its name (default: ``plugin.__name__``, else its class name).

    Yields:
        The plugin's :class:`~jef.plugins.PluginInfo`.

    Raises:
        ValueError: A plugin of that name is already loaded.
        RuntimeError: The plugin is broken (fails to register, misspells a
            hook or leaves one unmarked, or fails in a registration hook);
            raised after cleaning up.
    """
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    if name in plugins.infos or plugins.manager.has_plugin(name):
        # add_plugin would overwrite the existing record, and the clean-up would then remove that plugin.
        raise ValueError(f"temporary_plugin: a plugin named {name!r} is already loaded; pass another name")
    try:
        info = add_plugin(plugins, name, plugin)  # checks its hooks as loading does (jef.names.hook_problems)
        if info.status == "broken":
            raise RuntimeError(f"temporary_plugin: plugin {name!r} is broken: {info.error}")
        yield info
    finally:
        plugins.registry.remove_plugin(name)
        if plugins.manager.has_plugin(name):
            plugins.manager.unregister(name=name)
        plugins.infos.pop(name, None)
