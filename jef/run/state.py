"""The state of a training run, handed to every run hook, and the registration of a run's own hook objects."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import attrs
import torch
from accelerate import Accelerator

from jef.run.accelerate_compat import cache_package_checks
from jef.components import RunContext
from jef.config import ConfigError, Pipeline
from jef.run.faults import NonFiniteWatch
from jef.hookspecs import hookimpl
from jef.names import hook_problems
from jef.plugins import Plugins

__all__ = ["RUN_HOOKS", "NameTheRaiser", "Run", "run_plugins"]

cache_package_checks()  # every training loop builds a Run: Accelerate's per-step package checks are asked once


@attrs.define(eq=False)
class Run:
    """The state of a run, handed to every run hook."""

    ctx: RunContext
    pipeline: Pipeline
    accelerator: Accelerator
    model: torch.nn.Module
    augmenter: torch.nn.Module
    optimizer: Any
    scheduler: Any
    directory: Path | None
    generator: torch.Generator
    splits: Any = None  # the DataSplits (monitors that evaluate read the labelled splits)
    monitors: list[Any] = attrs.field(factory=list)  # their state_dict(), if any, is checkpointed
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    pending: dict[str, float] = attrs.field(factory=dict)
    stop_reason: str | None = None
    checkpoint_step: int | None = None  # the step of the last checkpoint written (or resumed from)
    skipped_steps: int = 0  # steps dropped for a non-finite loss (train.on_nonfinite: skip)
    skipped_in_a_row: int = 0
    stopping: bool = False  # every process agreed to stop (set by the loop at its sync points)
    nonfinite: NonFiniteWatch = attrs.field(factory=NonFiniteWatch)  # train.on_nonfinite: stop

    def log(self, metrics: dict[str, Any]) -> None:
        """Queue metrics for the next metrics line (the latest value of each key wins).

        Tensors are kept on the device (a detached copy) and read when the line is written, at a log step, so
        logging from a step hook makes the host wait for the device only at log steps.
        """
        self.pending.update({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()})

    def request_stop(self, reason: str) -> None:
        """Stop the run, on every process, keeping a checkpoint (e.g. a monitor that saw a collapse).

        In one process the run stops after the current step; with several, the processes agree at the loop's
        next sync point (a ``train.log_every`` step or the epoch's end), so within ``train.log_every`` steps.
        """
        self.stop_reason = reason
        self.accelerator.set_trigger()

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The model without Accelerate's wrappers (DDP, mixed precision)."""
        return self.accelerator.unwrap_model(self.model)


#: The hooks called during a run; an error raised in one gets a note naming the plugin (:class:`NameTheRaiser`).
RUN_HOOKS = ("jef_run_start", "jef_train_step", "jef_after_backward", "jef_step_end", "jef_epoch_end", "jef_run_end")


def _wrap(hook_name: str) -> Any:
    def wrapper(self: NameTheRaiser, run: Run) -> Any:
        try:
            return (yield)
        except Exception as error:  # not KeyboardInterrupt / SystemExit: those are no plugin's bug
            self.name_the_raiser(error, hook_name, run)
            raise

    wrapper.__name__ = wrapper.__qualname__ = hook_name
    return hookimpl(wrapper=True, tryfirst=True)(wrapper)


class NameTheRaiser:
    """Run plugin wrapping every run hook: an error raised in one gets a note (``BaseException.add_note``).

    The note names the hook and the plugin whose implementation raised, or, when the error came from a
    component of the pipeline (a functional evaluated in the training step, a monitor's hook), that component's
    slot and plugin: ``functionals[1] (variance from plugin builtin.functionals)``. The error and its traceback
    are otherwise untouched: Python prints the note after the error's last line, where a user reads.
    """

    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins

    def name_the_raiser(self, error: BaseException, hook_name: str, run: Run) -> None:
        """Add the note to ``error`` (once: an error passing through nested hook calls is named where it arose)."""
        if any(note.startswith("jef: raised in ") for note in getattr(error, "__notes__", ())):
            return
        impls = [impl for impl in getattr(self.plugins.manager.hook, hook_name).get_hookimpls()
                 if not (impl.wrapper or impl.hookwrapper)]
        codes = {}
        for impl in impls:
            for function in (impl.function, inspect.unwrap(impl.function)):
                codes.setdefault(getattr(function, "__code__", None), impl)
        slots = _component_slots(run)
        raiser, component = None, None
        tb = error.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if raiser is None:
                raiser = codes.get(frame.f_code)
            elif component is None and id(frame.f_locals.get("self")) in slots:
                component = slots[id(frame.f_locals["self"])]
            tb = tb.tb_next
        if raiser is None:
            who = ", ".join(sorted({self._plugin(impl, slots) for impl in impls})) or "no plugin"
            error.add_note(f"jef: raised in hook {hook_name}, implemented by {who}")
            return
        where = self._plugin(raiser, slots)
        if component is not None and component != where:
            error.add_note(f"jef: raised in {component}, called in hook {hook_name} of {where}")
        else:
            error.add_note(f"jef: raised in hook {hook_name} of {where}")

    def _plugin(self, impl: Any, slots: dict[int, str]) -> str:
        """``plugin 'spread' (jef-plugin-spread 0.1.0)``, or the slot of a run object (a monitor)."""
        if id(impl.plugin) in slots:
            return slots[id(impl.plugin)]
        info = self.plugins.infos.get(impl.plugin_name)
        made_by = f" ({info.distribution} {info.version or '?'})" if info is not None and info.distribution else ""
        return f"plugin {impl.plugin_name!r}{made_by}"


for _hook in RUN_HOOKS:
    setattr(NameTheRaiser, _hook, _wrap(_hook))


def _component_slots(run: Run) -> dict[int, str]:
    """``{id(component): "functionals[1] (variance from plugin X)"}`` for the pipeline's built components."""
    pipeline, model = run.pipeline, run.unwrapped_model
    objective = getattr(model, "objective", None)
    pairs: list[tuple[str, Any, Any]] = [("augmenter", pipeline.augmenter, run.augmenter)]
    for key in ("backbone", "projector", "predictor"):
        pairs.append((key, getattr(pipeline, key, None), getattr(model, key, None)))
    pairs.append(("energy", pipeline.energy, getattr(objective, "energy", None)))
    pairs.append(("target", pipeline.target, getattr(model, "target", None)))
    for i, (slot, module) in enumerate(zip(pipeline.functionals, getattr(objective, "functionals", []),
                                           strict=False)):
        pairs.append((f"functionals[{i}]", slot, module))
    for i, (slot, monitor) in enumerate(zip(pipeline.monitors, run.monitors, strict=False)):
        pairs.append((f"monitors[{i}]", slot, monitor))
    return {id(obj): f"{key} ({slot.name} from plugin {slot.entry.provenance})"
            for key, slot, obj in pairs if slot is not None and obj is not None}


@contextmanager
def run_plugins(plugins: Plugins, objects: list[Any], pipeline: Pipeline | None = None) -> Iterator[Any]:
    """Register the run's objects that implement hooks (components, monitors), and :class:`NameTheRaiser`.

    Yields the hooks the loop calls (``hook.jef_train_step(run=..., batch=...)``): every plugin's run hooks but
    those of installed plugins (entry points) that ``pipeline`` does not select, so that an installed plugin
    takes over only the runs that use its method or one of its components. Built-ins, ``--plugin`` files,
    plugin objects added in Python and the run's own objects always take part; without a pipeline, all do.
    The run's objects are unregistered afterwards.

    Raises:
        ConfigError: A run object's ``jef_*`` attribute is misspelt or lacks ``@jef.hookimpl``
            (:func:`jef.names.hook_problems`); the message names the object, its slot when known, and the hook.
    """
    raiser = NameTheRaiser(plugins)
    names = [plugins.manager.register(raiser, name=f"run:NameTheRaiser:{id(raiser)}")]
    try:
        for obj in objects:
            if obj is not None and any(name.startswith("jef_") and callable(getattr(type(obj), name, None))
                                       for name in dir(type(obj))):
                if problems := hook_problems(obj, plugins.manager):
                    raise ConfigError(f"{_run_object(obj, plugins, pipeline)}: {'; '.join(problems)}")
                names.append(plugins.manager.register(obj, name=f"run:{type(obj).__name__}:{id(obj)}"))
        left_out = _unselected(plugins, pipeline)
        # pluggy's subset callers follow later registrations (a plugin added during the run takes part).
        yield SimpleNamespace(**{hook: plugins.manager.subset_hook_caller(hook, left_out) for hook in RUN_HOOKS})
    finally:
        for name in names:
            plugins.manager.unregister(name=name)


def _unselected(plugins: Plugins, pipeline: Pipeline | None) -> list[Any]:
    """The installed plugins (entry points) that ``pipeline`` does not select.

    A pipeline selects the plugin that provides its method and those that provide its components.
    """
    if pipeline is None:
        return []
    chosen = {slot.entry.provenance.plugin for _, slot in pipeline.slots()}
    if pipeline.method is not None:
        chosen.add(pipeline.method.provenance.plugin)
    return [plugins.manager.get_plugin(name) for name, info in plugins.infos.items()
            if info.origin == "entry_point" and name not in chosen and plugins.manager.has_plugin(name)]


def _run_object(obj: Any, plugins: Plugins, pipeline: Pipeline | None) -> str:
    """``monitors[0] (grumpy from plugin faulty), class Grumpy``: a run object, with its slot when that is clear.

    The slot is clear when the object's class comes from a plugin module that provides exactly one of the
    pipeline's components.
    """
    cls, module = type(obj).__qualname__, type(obj).__module__
    owners = sorted(name for name, plugin in plugins.manager.list_name_plugin()
                    if isinstance(plugin, ModuleType) and f"{module}.".startswith(f"{plugin.__name__}."))
    slots = [] if pipeline is None else [(path, slot) for path, slot in pipeline.slots()
                                         if slot.entry.provenance.plugin in owners]
    if len(slots) == 1:
        (path, slot), = slots
        key, _, index = path.partition(".")
        label = f"{key}[{index}]" if index else key
        return f"{label} ({slot.name} from plugin {slot.entry.provenance}), class {cls}"
    made_by = f"from plugin {', '.join(owners)}" if owners else f"(module {module})"
    return f"the run's object of class {cls} {made_by}"
