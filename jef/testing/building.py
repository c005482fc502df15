"""Build a pipeline's objective or model in a test, the way a run builds them.

A plugin's tests check its objective against the paper's formula. Building that objective by hand (each
factory called, its terms put together in tuples) repeats what :func:`jef.model.build.build` does and
drifts from it; :func:`build_objective` asks the pipeline instead::

    objective = build_objective(plugins, {"method": "simclr", "energy": {"temperature": 0.3}})
    loss, terms, outputs = objective(StepOutputs(online=branch, target=branch, n_global=2))

:class:`~jef.model.joint.Objective` and :class:`~jef.components.Term` are re-exported for tests that
assemble an objective from modules they made themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jef.components import RunContext, Term
from jef.config import Pipeline, resolve
from jef.model.build import Built, build
from jef.model.joint import Objective
from jef.plugins import Plugins

__all__ = ["Objective", "Term", "build_objective", "build_pipeline"]


def _pipeline(plugins: Plugins, pipeline: Pipeline | Mapping[str, Any]) -> Pipeline:
    return pipeline if isinstance(pipeline, Pipeline) else resolve(dict(pipeline), registry=plugins.registry)


def build_objective(plugins: Plugins, pipeline: Pipeline | Mapping[str, Any],
                    ctx: RunContext | None = None) -> Objective:
    """The objective (energy and functionals, with their weights) of ``pipeline``, built by their factories.

    Args:
        plugins: Loaded plugins.
        pipeline: A resolved pipeline, or a mapping as in YAML (``{"method": "byol"}``), resolved here.
        ctx: The context the factories read (default: :class:`~jef.components.RunContext` defaults; a queue or
            a bank sizes itself from ``in_dim`` and ``train_size``, so pass them for those).

    Returns:
        The :class:`~jef.model.joint.Objective`; calling it on :class:`~jef.components.StepOutputs` gives a
        :class:`~jef.components.StepResult`.
    """
    resolved = _pipeline(plugins, pipeline)
    ctx = ctx or RunContext()
    energy = resolved.energy
    term = Term(energy.name, energy.entry.factory(energy.options, ctx), energy.weight) if energy else None
    functionals = [Term(slot.name, slot.entry.factory(slot.options, ctx), slot.weight)
                   for slot in resolved.functionals]
    return Objective(term, functionals)


def build_pipeline(plugins: Plugins, pipeline: Pipeline | Mapping[str, Any],
                   ctx: RunContext | None = None) -> Built:
    """Everything a run builds from ``pipeline`` (data, augmenter, model, monitors, components), untrained.

    ``built.model`` is the :class:`~jef.model.joint.JointEmbedding`; ``built.components["target"]`` its target
    maker (an :class:`~jef.model.targets.EmaTarget` moves the momentum copy with ``update(m)``).
    """
    return build(_pipeline(plugins, pipeline), ctx or RunContext())
