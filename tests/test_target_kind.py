"""`target:` is a registry kind like the others: built-ins, a third-party target maker, clear errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from jef import hookimpl
from jef.components import Branch, NoOptions
from jef.config import ConfigError, resolve
from jef.plugins import load_plugins
from jef.testing import build_pipeline, fresh_plugins, tiny_run, TINY_PIPELINE


class FrozenRandomTarget:
    """A target that is a frozen copy of the backbone at initialisation and never moves (a random teacher)."""

    projected = False

    def __init__(self) -> None:
        self.steps_seen = 0

    def attach(self, model):
        model.frozen_backbone = copy.deepcopy(model.backbone).requires_grad_(False)

    def embed(self, model, views, online):
        with torch.no_grad():
            h = [model.frozen_backbone(view) for view in views[:model.n_global]]
        return Branch(h=h, z=h)

    @hookimpl
    def jef_step_end(self, run, outputs, terms):
        self.steps_seen += 1


class RandomTeacherPlugin:
    def __init__(self) -> None:
        self.made: list[FrozenRandomTarget] = []

    @hookimpl
    def jef_register_targets(self, register):
        def build(options, ctx):
            self.made.append(FrozenRandomTarget())
            return self.made[-1]

        register("frozen_random", build, options=NoOptions, description="a frozen random copy of the backbone")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def test_the_built_in_targets_are_registered_components(plugins):
    entries = {entry.name: entry for entry in plugins.registry.entries("target")}
    assert set(entries) == {"shared", "stopgrad", "ema", "tower"}
    assert {entry.provenance.plugin for entry in entries.values()} == {"builtin.targets"}
    pipeline = resolve({**TINY_PIPELINE, "target": {"name": "ema", "momentum": 0.9}}, registry=plugins.registry)
    assert pipeline.to_dict()["target"] == {"name": "ema", "momentum": 0.9, "final_momentum": 1.0,
                                            "schedule": "cosine", "projector": True, "shuffle_bn": False}
    assert ("target", pipeline.target) in pipeline.slots()


def test_a_plugin_adds_a_target_maker_that_trains_and_receives_run_hooks():
    teacher = RandomTeacherPlugin()
    plugins = fresh_plugins(teacher)
    # No projector: the online output and the frozen target are both backbone features.
    result = tiny_run({"target": {"name": "frozen_random"}, "projector": None}, steps=3, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
    assert teacher.made[-1].steps_seen == 3  # registered for the run like any component with run hooks
    built = build_pipeline(plugins, {**TINY_PIPELINE, "target": {"name": "frozen_random"}, "projector": None})
    assert built.components["target"] is teacher.made[-1] and hasattr(built.model, "frozen_backbone")


def test_an_option_of_another_target_says_whose_it_is(plugins):
    with pytest.raises(ConfigError, match=r"target.momentum: unknown key 'momentum' \(valid keys: none\); "
                                          r"'momentum' applies only to the ema target"):
        resolve({**TINY_PIPELINE, "target": {"name": "shared", "momentum": 0.9}}, registry=plugins.registry)


def test_a_misspelt_target_suggests_the_closest(plugins):
    with pytest.raises(ConfigError, match=r"target.name: .*'emma'.*did you mean 'ema'"):
        resolve({**TINY_PIPELINE, "target": {"name": "emma"}}, registry=plugins.registry)


def test_every_builtin_module_with_hooks_is_listed_and_only_those():
    import importlib
    import pkgutil

    import jef.builtin
    from jef.builtin import BUILTIN_PLUGINS

    with_hooks = set()
    for info in pkgutil.iter_modules(jef.builtin.__path__):
        module = importlib.import_module(f"jef.builtin.{info.name}")
        if any(name.startswith("jef_") and hasattr(getattr(module, name), "jef_impl") for name in dir(module)):
            with_hooks.add(info.name)
    assert set(BUILTIN_PLUGINS) == with_hooks, "list a built-in plugin module in jef.builtin.BUILTIN_PLUGINS"
    plugins = load_plugins(entry_points=False)
    assert [name for name in plugins.infos if name.startswith("builtin.")] == [f"builtin.{m}" for m in BUILTIN_PLUGINS]
