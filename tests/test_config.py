"""Pipeline files: merging with the recipe, overrides, and the errors a user reads."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import attrs
import pytest

from jef import hookimpl
from jef.cli import main
from jef.config import apply_overrides, load_pipeline, merge, resolve
from jef.plugins import load_plugins
from jef.config.validate import ConfigError


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

    @hookimpl
    def jef_register_energies(self, register):
        register("fragile", lambda options, ctx: None, options=_FragileOptions)


@attrs.frozen
class _FragileOptions:
    """An options class with a bug: a lookup its validators should have guarded."""

    mode: str = "a"

    def __attrs_post_init__(self):
        {"a": 1}[self.mode]


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
    assert message.startswith("command line override 'train.epochs': must look like key.path=value")


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


# -- malformed files: each ends in one clear message naming the file -----------------------


def raw_error_of(tmp_path, registry, raw: bytes, overrides=()):
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as error:
        load_pipeline(path, list(overrides), registry=registry)
    return str(error.value).replace(str(path), "FILE")


def test_invalid_yaml_gives_line_column_and_the_line(tmp_path, registry):
    message = raw_error_of(tmp_path, registry, b"method: toy\ntrain: {epochs: 1\nseed: 3\n")
    assert message == ("FILE: invalid YAML at line 3, column 5: expected ',' or '}', but got ':' "
                       "(is the '{' at line 2, column 8 left unclosed?)\n    seed: 3\n        ^")
    message = raw_error_of(tmp_path, registry, b"method: toy\ntrain:\n\tepochs: 1\n")
    assert message.startswith("FILE: invalid YAML at line 3, column 1: found character '\\t' that cannot start any "
                              "token; YAML indents with spaces, not tabs")


def test_python_tags_are_refused_not_run(tmp_path, registry, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = raw_error_of(tmp_path, registry,
                           b"method: toy\nbackbone: !!python/object/apply:os.system ['touch marker']\n")
    assert message.startswith("FILE: invalid YAML at line 2, column 11: could not determine a constructor for the tag "
                              "'!!python/object/apply:os.system'; pipeline files hold plain data and are read with "
                              "yaml.safe_load, which refuses Python objects and custom tags: remove the tag")
    assert not (tmp_path / "marker").exists()


def test_duplicate_keys_are_refused(tmp_path, registry):
    message = raw_error_of(tmp_path, registry, b"method: toy\ntrain: {epochs: 2, epochs: 3}\n")
    assert message.startswith("FILE: invalid YAML at line 2, column 20: found duplicate key 'epochs' (first at line 2)")
    # A merge key is no duplicate: the keys after it override the merged ones, as YAML says.
    path = write(tmp_path, "base: &base {epochs: 2}\n")
    path.write_text("method: toy\ntrain: {<<: {epochs: 2, batch_size: 32}, epochs: 3}\n")
    train = load_pipeline(path, registry=registry).train
    assert (train.epochs, train.batch_size) == (3, 32)


def test_a_missing_file_and_a_directory(tmp_path, registry):
    with pytest.raises(ConfigError) as error:
        load_pipeline(tmp_path / "missing.yaml", registry=registry)
    assert str(error.value) == f"{tmp_path / 'missing.yaml'}: cannot read pipeline file: No such file or directory; " \
                               f"check the path"
    with pytest.raises(ConfigError) as error:
        load_pipeline(tmp_path, registry=registry)
    assert str(error.value) == f"{tmp_path}: cannot read pipeline file: it is a directory; pass a pipeline YAML file " \
                               f"(a run directory keeps its own as pipeline.yaml)"


def test_a_file_that_is_not_utf8(tmp_path, registry):
    message = raw_error_of(tmp_path, registry, "method: toy\nseed: 1  # café\n".encode("latin-1"))
    assert message == ("FILE: not UTF-8 text: byte 0xe9 at line 2 cannot be decoded; a pipeline is a YAML text file: "
                       "save it as UTF-8 (is this the right file?)")
    message = raw_error_of(tmp_path, registry, b"method: toy\x00\n")
    assert message.startswith("FILE: invalid YAML at line 1, column 12: character U+0000 is not allowed in YAML")


def test_an_empty_file(tmp_path, registry):
    for text in (b"", b"# nothing but a comment\n"):
        message = raw_error_of(tmp_path, registry, text)
        assert message == ("FILE: the file is empty (or holds only comments); a pipeline names at least its method, "
                           "e.g. `method: simclr` (`jef list method` lists them)")
    # Overrides can still say everything.
    assert load_pipeline(tmp_path / "pipeline.yaml", ["method=toy"], registry=registry).method.name == "toy"


def test_a_top_level_that_is_not_a_mapping(tmp_path, registry):
    assert raw_error_of(tmp_path, registry, b"- method: toy\n") == (
        "FILE: a pipeline file must be a mapping of slots such as `method: simclr`, got list [{'method': 'toy'}]")


@pytest.mark.parametrize(("override", "expected"), [
    ("train..epochs=1", "must look like key.path=value, e.g. train.optimizer.lr=0.1 or "
                        "functionals.0.temperature=0.2"),
    ("=3", "must look like key.path=value"),
    ("train.epochs=[1", "value is not valid: invalid YAML at line 1, column 3: "
                        "expected ',' or ']', but got '<stream end>'"),
    ("method.x=1", "cannot set 'x' inside method, which is str 'toy', not a mapping"),
    ("train.epochs=!!python/object/apply:os.system [x]", "value is not valid: invalid YAML at line 1, column 1: "
                                                         "could not determine a constructor for the tag"),
    ("train.optimizer.lr=.nan", "train.optimizer.lr: expected a finite number, got float nan"),
])
def test_override_syntax_errors(tmp_path, registry, override, expected):
    # The command line is to blame, not the file.
    message, path = error_of(tmp_path, registry, "method: toy\n", [override])
    assert message.startswith(f"command line override {override!r}: ") and expected in message
    assert str(path) not in message


@pytest.mark.parametrize(("text", "expected"), [
    ("train: {optimizer: {lr: .nan}}", "train.optimizer.lr: expected a finite number, got float nan; "
                                       "write an ordinary number such as 0.1 or 1.0e-6"),
    ("train: {optimizer: {lr: .inf}}", "train.optimizer.lr: expected a finite number, got float inf"),
    ("train: {clip_grad_norm: -.inf}", "train.clip_grad_norm: expected a finite number, got float -inf"),
    ("train: {optimizer: {lr: " + "9" * 400 + "}}",
     "train.optimizer.lr: expected a finite number, got an integer of 400 digits"),
    ("train: {max_steps: .nan}", "train.max_steps: expected an integer, got float nan"),
    ("train: {epochs: 1.0e+400}", "train.epochs: expected an integer, got float inf"),
    ("train: {epochs: 99999999999999999999999}", "train.epochs: expected an integer that fits in 64 bits"),
    ("energy: {weight: .nan}", "energy.weight: expected a loss weight, a finite number >= 0, got float nan"),
    ("functionals: [{name: info_nce, weight: -1}]", "functionals.0.weight: expected a loss weight, a finite number "
                                                   ">= 0, got int -1"),
    ("backbone: {width: .inf}", "backbone.width: expected an integer, got float inf"),
    ("seed: -1", "seed: expected an integer from 0 to 4294967295, got int -1"),
    ("train: {optimizer: {lr: 1e-3}}", "train.optimizer.lr: expected a number, got str '1e-3'; YAML reads an "
                                       "exponent without a dot as text: write 1.0e-3"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(tmp_path, registry, text, expected):
    message, path = error_of(tmp_path, registry, f"method: toy\n{text}\n")
    assert message.startswith(f"{path}: {expected}")


@pytest.mark.parametrize(("train", "expected"), [
    ({"optimizer": {"name": "adamw", "betas": [0.9, 1.5]}}, "train.optimizer.betas: must be < 1.0, got 1.5"),
    ({"optimizer": {"fixed_lr_predictor": True}}, "train.optimizer.fixed_lr_predictor: true, but the pipeline has "
                                                  "no predictor; set it to false or add a predictor"),
    ({"scheduler": {"warmup_epochs": 1.0e300}}, "train.scheduler.warmup_epochs: must be <= 1000000.0, got 1e+300"),
])
def test_values_that_would_fail_when_the_optimiser_is_built_are_refused_up_front(registry, train, expected):
    with pytest.raises(ConfigError) as error:
        resolve({"method": "toy", "train": train}, source="p.yaml", registry=registry)
    assert str(error.value) == f"p.yaml: {expected}"


def test_a_method_recipe_file_is_read_like_a_pipeline(tmp_path):
    from jef.config import read_yaml
    from jef.registry import Provenance, Registry

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("energy: {name: mse}\nenergy: {name: cosine}\n")
    register = Registry(read_recipe=read_yaml).register_callable("method", Provenance("myplugin"))
    with pytest.raises(ValueError) as error:
        register("mine", recipe)
    assert str(error.value).startswith(f"plugin myplugin: method 'mine': cannot read recipe: {recipe}: invalid YAML "
                                       f"at line 2, column 1: found duplicate key 'energy' (first at line 1)")


def test_validator_messages_name_the_key_once(tmp_path, registry):
    message, path = error_of(tmp_path, registry, "method: toy\nprojector: {dims: []}\n")
    assert message == f"{path}: projector.dims: length must be >= 1, got 0"
    message, path = error_of(tmp_path, registry, "method: toy\naugmenter: {scale: [0.9, 0.2]}\n")
    assert message == (f"{path}: augmenter.scale: must be a pair (low, high) with low <= high, low > 0.0 and "
                       f"high <= 1.0, got [0.9, 0.2]")


def test_aliases_that_loop_or_explode_are_refused(tmp_path, registry):
    message = raw_error_of(tmp_path, registry, b"method: toy\ntrain: &t {epochs: 1, optimizer: *t}\n")
    assert message == ("FILE: train.optimizer: an alias refers to a value that contains it (a recursive structure); "
                       "a pipeline cannot contain itself")
    laughs = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
    message = raw_error_of(tmp_path, registry, f"{laughs}method: *l8\n".encode())
    assert message == "FILE: more than 10000 values (counting every use of an alias); a pipeline holds a few hundred"


def test_a_bug_in_a_plugins_options_class_names_the_slot_and_plugin(registry):
    with pytest.raises(ConfigError) as error:
        resolve({"method": "toy", "energy": {"name": "fragile", "mode": "b"}}, source="p.yaml", registry=registry)
    assert str(error.value) == ("p.yaml: energy: the options class of energy 'fragile' from plugin recipes failed on "
                                "these options with KeyError: 'b'; check the values against `jef list energy` and "
                                "report the message to the plugin's authors")
    assert isinstance(error.value.__cause__, KeyError)


def test_failing_train_on_a_bad_pipeline_leaves_the_run_directory_alone(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    before = {}
    for name in ("pipeline.yaml", "checkpoint.pt", "metrics.jsonl"):
        (run_dir / name).write_bytes(f"earlier run's {name}".encode())
        os.utime(run_dir / name, (1_000_000, 1_000_000))
        before[name] = (run_dir / name).read_bytes()
    bad = tmp_path / "bad.yaml"
    for text, overrides in (("method: simclr\ntrain: {epochs: 1\n", []),
                            ("method: simclr\ntrain: {optimizer: {lr: .nan}}\n", []),
                            ("method: simclr\n", ["train.epochs=0"])):
        bad.write_text(text)
        for resume in ([], ["--resume"]):
            code = main(["train", str(bad), "--run-dir", str(run_dir), "--cpu", *resume, *overrides])
            err = capsys.readouterr().err
            blamed = f"command line override {overrides[0]!r}: " if overrides else f"{bad}: "
            assert code == 2 and err.startswith(f"jef: error: {blamed}") and "Traceback" not in err
            assert sorted(p.name for p in run_dir.iterdir()) == sorted(before)
            for name, content in before.items():
                assert (run_dir / name).read_bytes() == content
                assert (run_dir / name).stat().st_mtime == 1_000_000


def _documented_pairs() -> list[tuple[str, str]]:
    """(file, message) text-block pairs of the "Reading pipeline errors" section of docs/pipelines.md."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "pipelines.md").read_text(encoding="utf-8")
    section = page.split("## Reading pipeline errors", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```text\n(.*?)```", section, re.DOTALL)
    return [(blocks[i], blocks[i + 1]) for i in range(len(blocks) - 1)
            if blocks[i + 1].startswith("jef: error: pipeline.yaml") and not blocks[i].startswith("jef: error:")]


def test_the_documented_syntax_errors_are_the_real_ones(tmp_path, monkeypatch):
    pairs = _documented_pairs()
    assert len(pairs) >= 3
    monkeypatch.chdir(tmp_path)
    plugins = load_plugins()
    for text, documented in pairs:
        Path("pipeline.yaml").write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as error:
            load_pipeline("pipeline.yaml", registry=plugins.registry)
        assert f"jef: error: {error.value}" == documented.rstrip("\n")
