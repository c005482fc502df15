"""Pipeline files: merging with the recipe, overrides, and the errors a user reads."""

from __future__ import annotations

import textwrap

import pytest

from jef import hookimpl
from jef.config import apply_overrides, load_pipeline, merge, resolve
from jef.plugins import load_plugins
from jef.validate import ConfigError


@pytest.fixture(scope="module")
def registry():
    return load_plugins(entry_points=False, extra=(("recipes", _RecipePlugin()),)).registry


class _RecipePlugin:
    @hookimpl
    def jef_register_methods(self, register):
        register("toy", {"backbone": {"name": "small_cnn", "width": 8},
                         "energy": {"name": "scaled_cosine", "temperature": 0.3},
                         "functionals": [{"name": "info_nce", "temperature": 0.3}],
                         "train": {"batch_size": 64}})


def write(tmp_path, text):
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, registry, text, overrides=()):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_pipeline(path, list(overrides), registry=registry)
    return str(error.value), path


def test_recipe_then_file_then_overrides(tmp_path, registry):
    path = write(tmp_path, """
        method: toy
        energy: {temperature: 0.5}
        train: {epochs: 3}
    """)
    pipeline = load_pipeline(path, ["train.batch_size=32", "functionals.0.temperature=0.7"], registry=registry)
    assert pipeline.method.name == "toy"
    assert pipeline.backbone.options.width == 8  # from the recipe
    assert pipeline.energy.options.temperature == 0.5  # the file wins over the recipe
    assert pipeline.train.epochs == 3
    assert pipeline.train.batch_size == 32  # the command line wins over both
    assert pipeline.functionals[0].options.temperature == 0.7


def test_changing_a_slot_name_replaces_its_options(registry):
    pipeline = resolve({"method": "toy", "backbone": {"name": "resnet18"}}, registry=registry)
    assert pipeline.backbone.name == "resnet18"
    assert not hasattr(pipeline.backbone.options, "width")


def test_unknown_key_names_file_path_and_suggestion(tmp_path, registry):
    message, path = error_of(tmp_path, registry, """
        method: toy
        functionals:
          - {name: info_nce, temprature: 0.1}
    """)
    assert message.startswith(f"{path}: functionals.0.temprature: unknown key 'temprature'; "
                              "did you mean 'temperature'?")


def test_unknown_top_level_key(tmp_path, registry):
    message, _ = error_of(tmp_path, registry, "method: toy\ntrian: {epochs: 1}\n")
    assert "trian: unknown key 'trian'; did you mean 'train'?" in message


def test_unknown_component_suggests_closest(tmp_path, registry):
    message, path = error_of(tmp_path, registry, "method: toy\nbackbone: {name: resnet19}\n")
    assert message.startswith(f"{path}: backbone.name: unknown backbone 'resnet19'; did you mean 'resnet18'?")


def test_unknown_method(tmp_path, registry):
    message, _ = error_of(tmp_path, registry, "method: tyo\n")
    assert "method: unknown method 'tyo'; did you mean 'toy'?" in message


def test_wrong_type(tmp_path, registry):
    message, path = error_of(tmp_path, registry, "method: toy\ntrain: {epochs: ten}\n")
    assert message == f"{path}: train.epochs: expected an integer, got str 'ten'"


def test_bad_value_from_validator(tmp_path, registry):
    message, _ = error_of(tmp_path, registry, "method: toy\ntrain: {optimizer: {lr: -1.0}}\n")
    assert "train.optimizer.lr" in message and "-1.0" in message


def test_bad_choice(tmp_path, registry):
    message, _ = error_of(tmp_path, registry, "method: toy\ntrain: {precision: bf61}\n")
    assert "train.precision: expected one of 'no', 'bf16', 'fp16', got 'bf61'; did you mean 'bf16'?" in message


def test_override_errors(tmp_path, registry):
    message, _ = error_of(tmp_path, registry, "method: toy\n", ["functionals.3.temperature=0.1"])
    assert "functionals.3: expected a list index below 1, got '3'" in message
    message, _ = error_of(tmp_path, registry, "method: toy\n", ["train.epochs"])
    assert "override 'train.epochs' must look like key.path=value" in message


def test_empty_objective_is_an_error(registry):
    with pytest.raises(ConfigError, match="the objective is empty"):
        resolve({}, registry=registry)


def test_invalid_yaml_and_missing_file(tmp_path, registry):
    message, path = error_of(tmp_path, registry, "method: [unclosed\n")
    assert message.startswith(f"{path}: invalid YAML")
    with pytest.raises(ConfigError, match="cannot read pipeline file"):
        load_pipeline(tmp_path / "missing.yaml", registry=registry)


def test_requires_names_the_missing_or_old_plugin(registry):
    with pytest.raises(ConfigError, match=r"requires\.0: this pipeline requires jef-plugin-nope>=0\.1, "
                                          r"which is not installed; run: pip install"):
        resolve({"method": "toy", "requires": ["jef-plugin-nope>=0.1"]}, registry=registry)
    with pytest.raises(ConfigError, match=r"requires jef>=999, but jef 0\.1\.0 is installed"):
        resolve({"method": "toy", "requires": ["jef>=999"]}, registry=registry)
    assert resolve({"method": "toy", "requires": ["jef>=0.1"]}, registry=registry).requires == ["jef>=0.1"]


def test_merge_and_overrides_helpers():
    assert merge({"a": {"name": "x", "k": 1}}, {"a": {"k": 2}}) == {"a": {"name": "x", "k": 2}}
    assert merge({"a": {"name": "x", "k": 1}}, {"a": {"name": "y"}}) == {"a": {"name": "y"}}
    assert apply_overrides({"a": [{"t": 1}]}, ["a.0.t=0.5", "b.c=[1, 2]"]) == {"a": [{"t": 0.5}], "b": {"c": [1, 2]}}


def test_resolved_pipeline_round_trips(registry):
    pipeline = resolve({"method": "toy"}, registry=registry)
    again = resolve(pipeline.to_dict(), registry=registry)
    assert again.to_dict() == pipeline.to_dict()


def test_override_of_a_slot_name_replaces_the_slot(registry):
    pipeline = resolve({"method": "toy"}, ["backbone.name=resnet18", "method=toy"], registry=registry)
    assert pipeline.backbone.name == "resnet18" and not hasattr(pipeline.backbone.options, "width")
