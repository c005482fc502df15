"""Malformed pipeline files end in one clear jef error, never a traceback from deep inside.

Hypothesis feeds the real loader three families of bad input: YAML syntax
garbage (random text and bytes, tabs, brackets, aliases, unsafe tags,
duplicate keys), well-formed YAML of the wrong shape (every known key given
values of the wrong type, unknown keys, junk slot entries), and mutations of
real pipelines (the recipes of the installed methods and ``examples/*.yaml``).
Every outcome must be success or a :class:`ConfigError` that names the file;
pipelines that load must hold only finite numbers, read back the same from
what ``jef config show`` prints, and build (on the meta device, so no memory
is spent, with their optimiser and schedule) or fail with a ConfigError. A sample goes through
``jef config show`` in-process: exit status 2, one ``jef: error:`` line
block, no traceback.

The runs are derandomised (the same examples on every run) and sized to take
a few seconds each on a loaded 2-core machine; ``JEF_FUZZ_SCALE=20`` runs
twenty times as many, drawn at random, to hunt further.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import io
import math
import os
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jef.cli import main
from jef.components import DataSplits, RunContext
from jef.config import LIST_SLOTS, SLOTS, TOP_LEVEL, load_pipeline, resolve
from jef.run.optim import build_optimizer, lr_lambdas
from jef.builtin.targets import EmaTargetOptions as TargetOptions
from jef.config.options import EvalOptions, ModelOptions, TrainOptions
from jef.model.build import build
from jef.plugins import load_plugins
from jef.config.overrides import override_source
from jef.config.validate import ConfigError
from jef.registry import BuildError

ROOT = Path(__file__).resolve().parents[1]


#: ``JEF_FUZZ_SCALE=20`` runs twenty times the examples, drawn at random instead of the fixed ones (a long hunt).
SCALE = int(os.environ.get("JEF_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    """Deterministic (the same examples every run), no example database written, no per-example deadline."""
    return settings(max_examples=examples * SCALE, derandomize=SCALE == 1, deadline=None, database=None,
                    print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@functools.cache
def registry():
    return load_plugins().registry


@functools.cache
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="jef-fuzz-"))


@pytest.fixture(scope="module", autouse=True)
def _remove_workdir():
    yield
    shutil.rmtree(workdir(), ignore_errors=True)
    workdir.cache_clear()


@functools.cache
def valid_pipelines() -> dict[str, dict[str, Any]]:
    """Real pipelines to mutate (copies only): the installed methods' recipes, as files naming them, and examples/."""
    found = {f"recipe:{name}": {"method": name, **copy.deepcopy(registry().get("method", name).factory)}
             for name in registry().names("method")}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        found[f"example:{path.name}"] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return found


def load(raw: bytes | str, overrides: tuple[str, ...] = ()) -> Any:
    """Load ``raw`` as a pipeline file: the Pipeline, or the ConfigError (checked to be a clear one)."""
    path = workdir() / "pipeline.yaml"
    path.write_bytes(raw.encode("utf-8") if isinstance(raw, str) else raw)
    try:
        return load_pipeline(path, list(overrides), registry=registry())
    except ConfigError as error:
        assert_clear(str(error), path, overrides)
        return error


def assert_clear(message: str, path: Path, overrides: tuple[str, ...] = ()) -> None:
    """A message a user can act on: who is to blame first (the file, or one of the command line's overrides), a
    reason, no Python internals, a readable length."""
    blamed = [f"{override_source(o)}: " for o in overrides if message.startswith(f"{override_source(o)}: ")]
    prefix = blamed[0] if blamed else f"{path}: "
    assert message.startswith(prefix), message
    assert message[len(prefix):].strip(), message
    assert "Traceback" not in message and "File \"" not in message, message
    assert len(message) < 2000, message


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return torch.zeros(3, 16, 16, dtype=torch.uint8), -1, index


SPLITS = DataSplits(_Images(), None, None, channels=3, image_size=16, name="tiny")


def check_loaded(pipeline: Any) -> None:
    """What loaded is sound: finite numbers only, and what ``jef config show`` prints loads back the same."""
    plain = pipeline.to_dict()
    assert all(math.isfinite(value) for value in floats(plain)), plain
    assert resolve(plain, registry=registry()).to_dict() == plain


def floats(node: Any) -> list[float]:
    if isinstance(node, float):
        return [node]
    if isinstance(node, dict | list | tuple):
        return [f for value in (node.values() if isinstance(node, dict) else node) for f in floats(value)]
    return []


def build_on_meta(pipeline: Any) -> None:
    """Build the model from a loaded pipeline without allocating (or initialising) any weights."""
    check_loaded(pipeline)
    # The pipeline's epochs: factories check what lasts epochs against them (DINO's teacher-temperature warm-up).
    ctx = RunContext(batch_size=4, global_batch_size=4, steps_per_epoch=2, total_steps=2, train_size=8,
                     epochs=pipeline.train.epochs)
    try:
        with torch.device("meta"):
            built = build(pipeline, ctx, SPLITS)
            optimizer = build_optimizer(built.model, pipeline.train.optimizer, ctx.global_batch_size)
        factors = [f(step) for f in lr_lambdas(optimizer, pipeline.train.scheduler, 2, 2) for step in (0, 2)]
        assert all(math.isfinite(factor) for factor in factors), factors
    except ConfigError as error:
        assert str(error).startswith(f"{pipeline.source}: "), error
    except BuildError as error:
        # A factory that refuses its options with a ValueError: the command line shows it as a message (no
        # traceback), naming the file, the slot and the plugin. Any other cause is a bug in the component.
        assert isinstance(error.__cause__, ValueError), error
        assert str(error).startswith(f"{pipeline.source}: "), error


# -- values ---------------------------------------------------------------------------

SMALL_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-10, max_value=10), st.integers(min_value=-2**80, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e308]),
    SMALL_TEXT, st.sampled_from(["yes", "no", "1e-6", "1.0e-6", "simclr", "", " ", "~", "null", "a:b", ":"]),
    st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2100, 1, 1)), st.binary(max_size=4),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(SMALL_TEXT, st.integers(-3, 3)), inner, max_size=3)),
    max_leaves=8)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# -- (a) YAML syntax garbage ----------------------------------------------------------

TOKENS = ["method", "simclr", "train", "epochs", "optimizer", "lr", "backbone", "functionals", "name", "info_nce",
          ":", ": ", " ", "  ", "\n", "\n  ", "\t", "[", "]", "{", "}", ",", "- ", "&a ", "*a", "*b", "&b ", "<<: ",
          "'", '"', "#", "|", ">", "? ", "---", "...", "%YAML 1.1\n", "%TAG ! tag:x\n",
          "!!python/object/apply:os.system ", "!!python/name:os.system", "!!binary ", "!!set ", "!!int ", "!!bool ",
          "!!timestamp ", "!custom ", "@", "`",
          "1e400", "9" * 30, "9" * 4400, ".nan", ".inf", "-.inf", "0x", "2018-13-45", "\x00", "\x85", "\ufeff", "é"]
YAML_GARBAGE = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80),
    st.lists(st.sampled_from(TOKENS), max_size=25).map("".join),
    st.integers(1, 120).map(lambda n: "method: simclr\ntrain: " + "[" * n + "]" * n),
    st.integers(1, 120).map(lambda n: "".join(f"{' ' * i}k{i}:\n" for i in range(n)) + " " * n + "v"),
)
SECOND = ["method: byol", "train: {epochs: 2}", "train:\n  epochs: 1\n  epochs: 2", "backbone: {name: x, name: y}"]


@fuzz(200)
@given(YAML_GARBAGE)
def test_yaml_garbage_ends_in_a_clear_error(raw):
    load(raw)


@fuzz(20)
@given(st.sampled_from(sorted(valid_pipelines())), st.sampled_from(SECOND), st.data())
def test_duplicate_keys_and_aliases_of_real_pipelines(name, second, data):
    text = dump(valid_pipelines()[name])
    duplicated = load(text + second + "\n")
    assert isinstance(duplicated, ConfigError) and "duplicate key" in str(duplicated), duplicated
    # A billion-laughs alias chain stays cheap and is refused with a message.
    depth = data.draw(st.integers(2, 9))
    laughs = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, depth))
    slot = data.draw(st.sampled_from(["method", "requires", "functionals", "train", "projector"]))
    outcome = load(f"{laughs}{slot}: *l{depth - 1}\n")
    assert isinstance(outcome, ConfigError), outcome


# -- (b) well-formed YAML of the wrong shape -----------------------------------------------


def typed(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of the annotated type, out-of-range ones included (negative, zero, huge)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of(*[typed(arg) for arg in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if annotation is type(None):
        return st.none()
    if origin in (list, tuple) or annotation in (list, tuple):
        item = args[0] if args else float
        return st.lists(typed(item), max_size=4)
    if isinstance(annotation, type) and attrs.has(annotation):
        return option_patch(annotation)
    return {float: st.one_of(st.sampled_from([0.0, -1.0, 1e-300, 0.5, 1.0, 2.0, 1e308]),
                             st.floats(allow_nan=False, allow_infinity=False)),
            int: st.one_of(st.sampled_from([0, -1, 1, 2, 3, 2**62]), st.integers(-100, 100_000)),
            bool: st.booleans(), str: st.one_of(SMALL_TEXT, st.sampled_from(["", "relu", "train", "test"]))
            }.get(annotation, VALUES)


def option_patch(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """One key of ``cls`` (or of its nested options, or an unknown key) with a value of any type, or of its type."""
    fields = {f.name: f.type for f in attrs.fields(attrs.resolve_types(cls))}

    def patch(name: str) -> st.SearchStrategy[dict[str, Any]]:
        return st.one_of(typed(fields[name]), VALUES).map(lambda v: {name: v})

    if not fields:
        return VALUES.map(lambda v: {"unknwon_key": v})
    one = st.sampled_from(list(fields)).flatmap(patch)
    # Two keys at once reach the checks between keys (betas only matter to adamw).
    return st.one_of(one, st.tuples(one, one).map(lambda pair: {**pair[0], **pair[1]}),
                     VALUES.map(lambda v: {"unknwon_key": v}))


def component(kind: str) -> st.SearchStrategy[Any]:
    """A slot entry: a registered name with one option of any type, a bare name, a junk name or junk."""
    names = registry().names(kind)

    def with_option(name: str) -> st.SearchStrategy[dict[str, Any]]:
        patches = option_patch(registry().get(kind, name).options)
        if kind in ("energy", "functional"):
            patches |= SCALARS.map(lambda weight: {"weight": weight})
        return patches.map(lambda options: {"name": name, **options})

    junk_names = st.one_of(SCALARS, st.sampled_from([f"plugin:{names[0]}", "nosuch", names[0].upper()]))
    return st.one_of(st.sampled_from(names).flatmap(with_option), st.sampled_from(names),
                     st.fixed_dictionaries({"name": junk_names}), VALUES)


SECTIONS = {"target": TargetOptions, "model": ModelOptions, "train": TrainOptions, "eval": EvalOptions}


@functools.cache
def shaped_pipeline() -> st.SearchStrategy[Any]:
    """A method's recipe with one or two top-level keys set to something of the wrong shape, or junk at the top.

    The recipe supplies every other slot, so the error (or success) comes from the key under test.
    """
    top = {"method": SCALARS,
           "requires": st.one_of(st.lists(st.one_of(st.sampled_from(["jef>=0.1", "jef>=999", "jef-plugin-no", "!!",
                                                                        "jef[x]>=0.1"]), SCALARS), max_size=2),
                                 SCALARS),
           "seed": SCALARS, "run_dir": SCALARS,
           **{name: component(kind) for name, kind in SLOTS.items()},
           **{name: st.one_of(st.lists(st.one_of(component(kind), VALUES), max_size=3), VALUES)
              for name, kind in LIST_SLOTS.items()},
           **{name: st.one_of(option_patch(cls), VALUES) for name, cls in SECTIONS.items()},
           "encoders": st.one_of(VALUES, st.dictionaries(
               st.one_of(st.sampled_from(["text", "ab", "9x"]), SCALARS),
               st.one_of(VALUES, st.fixed_dictionaries({}, optional={
                   "field": st.one_of(st.sampled_from(["text", "label", "image"]), SCALARS),
                   "views": st.one_of(st.lists(st.one_of(st.integers(-1, 3), SCALARS), max_size=3), SCALARS),
                   "tokenizer": component("tokenizer"), "backbone": component("backbone"),
                   "projector": component("head"), "colour": VALUES})), max_size=2)),
           "unknwon": VALUES}
    assert set(top) - {"unknwon"} == set(TOP_LEVEL)
    keys = st.lists(st.sampled_from(sorted(top)), min_size=1, max_size=2, unique=True)
    patches = keys.flatmap(lambda chosen: st.fixed_dictionaries({key: top[key] for key in chosen}))
    methods = st.sampled_from(registry().names("method"))
    return st.one_of(st.tuples(methods, patches).map(lambda mp: {"method": mp[0], **mp[1]}), VALUES)


@fuzz(200)
@given(st.data())
def test_wrong_shapes_end_in_a_clear_error(data):
    outcome = load(dump(data.draw(shaped_pipeline())))
    if not isinstance(outcome, ConfigError):
        build_on_meta(outcome)


# -- (c) mutations of real pipelines --------------------------------------------------------


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into nested dicts and lists, the root included."""
    found = [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        found += paths(value, (*prefix, key))
    return found


def mutate(pipeline: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Delete a key, replace a value with one of another type, or insert an unknown key (1 to 3 times)."""
    pipeline = copy.deepcopy(pipeline)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths(pipeline)))
        parent = pipeline
        for key in path[:-1]:
            parent = parent[key]
        node = parent[path[-1]] if path else pipeline
        operation = data.draw(st.sampled_from(["delete", "replace", "insert", "wrap", "unwrap"]))
        if operation == "insert" and isinstance(node, dict | list):
            key = data.draw(st.one_of(SMALL_TEXT, st.sampled_from(["name", "weight", "epochs", "lr", "dims"])))
            value = data.draw(VALUES)
            if isinstance(node, list):
                node.append(value)
            else:
                node[key] = value
        elif not path:
            continue
        elif operation == "delete":
            del parent[path[-1]]
        elif operation == "wrap":
            parent[path[-1]] = data.draw(st.sampled_from([[node], {"name": node}, str(node)]))
        elif operation == "unwrap" and isinstance(node, dict | list) and node:
            parent[path[-1]] = next(iter(node.values())) if isinstance(node, dict) else node[0]
        else:
            kind = type(node)
            parent[path[-1]] = data.draw(VALUES.filter(lambda value, kind=kind: type(value) is not kind))
    return pipeline


@fuzz(100)
@given(st.sampled_from(sorted(valid_pipelines())), st.data())
def test_mutated_real_pipelines_load_or_fail_clearly(name, data):
    outcome = load(dump(mutate(valid_pipelines()[name], data)))
    if not isinstance(outcome, ConfigError):
        check_loaded(outcome)


@fuzz(30)
@given(st.sampled_from(sorted(valid_pipelines())), st.data())
def test_mutated_real_pipelines_that_load_also_build(name, data):
    outcome = load(dump(mutate(valid_pipelines()[name], data)))
    if not isinstance(outcome, ConfigError):
        build_on_meta(outcome)


KEYS = ["train.epochs", "train.optimizer.lr", "functionals.0.temperature", "functionals.9", "backbone.name",
        "method", "method.x", "seed", "train..lr", ".", "", "energy.weight", "monitors.-1", "requires.0"]


@fuzz(100)
@given(st.lists(st.one_of(st.text(max_size=20), st.tuples(st.sampled_from(KEYS), st.sampled_from(["=", ":", ""]),
                                                        st.one_of(st.sampled_from(TOKENS), st.text(max_size=8),
                                                                  VALUES.map(lambda v: dump(v).strip()))).map(
                                                                      "".join)), min_size=1, max_size=3))
def test_overrides_load_or_fail_clearly(overrides):
    load((ROOT / "examples" / "demo.yaml").read_bytes(), tuple(overrides))


# -- what the user sees ------------------------------------------------------------------------

CLI_SAMPLES = [
    "method: [unclosed\n", "method: simclr\n\tbackbone: x\n", "method: simclr\nmethod: byol\n",
    "!!python/object/apply:os.system ['echo hi']\n", b"method: simclr\n\xff\xfe", "- a\n- b\n", "",
    "method: simclr\ntrain: {optimizer: {lr: .nan}}\n", "a: &a [*a]\n", "method: simclr\nseed: -1\n",
    "method: simclr\nprojector: {dims: []}\n", "method: simclr\nfunctionals: [{name: info_nce, weight: .inf}]\n",
]


@pytest.mark.parametrize("raw", CLI_SAMPLES, ids=range(len(CLI_SAMPLES)))
def test_the_cli_prints_one_message_and_exits_2(raw, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(raw.encode() if isinstance(raw, str) else raw)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["config", "show", str(path)])
    assert code == 2
    assert out.getvalue() == ""
    assert err.getvalue().startswith(f"jef: error: {path}: ") and err.getvalue().count("jef: error:") == 1
    assert "Traceback" not in err.getvalue()
