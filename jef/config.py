"""Pipeline files: YAML -> merged with the method recipe -> overrides -> validated :class:`Pipeline`.

One level of defaults: jef's core defaults, then the method recipe, then the
user's file, then ``key.path=value`` overrides. A slot whose ``name`` the
user changes is replaced whole (another component has other options); a slot
whose name stays is merged key by key. Lists are replaced whole.
"""

from __future__ import annotations

import copy
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from jef.options import EvalOptions, TargetOptions, TrainOptions
from jef.registry import Entry, Registry, RegistryError
from jef.validate import ConfigError, build_options, join, to_plain

#: Single-component slots and the registry kind they draw from.
SLOTS: dict[str, str] = {"data": "dataset", "augmenter": "augmenter", "backbone": "backbone",
                         "projector": "head", "predictor": "head", "energy": "energy"}
#: List slots and their kind.
LIST_SLOTS: dict[str, str] = {"functionals": "functional", "monitors": "monitor"}
#: Slots that carry a loss ``weight`` beside their options.
WEIGHTED = {"energy", "functionals"}
TOP_LEVEL = ("method", "requires", "seed", "run_dir", *SLOTS, *LIST_SLOTS, "target", "train", "eval")

#: What a pipeline gets when neither the method nor the user says otherwise.
CORE_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "fashion_mnist_mini"},
    "augmenter": {"name": "views"},
    "backbone": {"name": "small_cnn"},
    "projector": {"name": "mlp", "dims": [512, 128]},
    "predictor": None,
    "target": {"name": "shared"},
    "energy": None,
    "functionals": [],
    "monitors": [{"name": "collapse"}],
}


@attrs.frozen
class Slot:
    """One selected component: its registry entry, validated options and loss weight."""

    kind: str
    entry: Entry
    options: Any
    weight: float = 1.0

    @property
    def name(self) -> str:
        """The component's registered name."""
        return self.entry.name

    def plain(self) -> dict[str, Any]:
        """The slot as it would be written in YAML, every option spelt out."""
        data: dict[str, Any] = {"name": self.entry.name}
        if self.kind in ("energy", "functional"):
            data["weight"] = self.weight
        data.update(to_plain(self.options))
        return data


@attrs.frozen
class Pipeline:
    """A fully resolved, validated pipeline."""

    source: str
    method: Entry | None
    requires: list[str]
    seed: int
    run_dir: str | None
    data: Slot
    augmenter: Slot
    backbone: Slot
    projector: Slot | None
    predictor: Slot | None
    energy: Slot | None
    functionals: list[Slot]
    monitors: list[Slot]
    target: TargetOptions
    train: TrainOptions
    eval: EvalOptions

    def to_dict(self) -> dict[str, Any]:
        """The resolved pipeline as plain data (what ``jef config show`` prints and runs save)."""
        def slot(s: Slot | None) -> Any:
            return None if s is None else s.plain()

        return {
            "method": self.method.name if self.method else None, "requires": list(self.requires),
            "seed": self.seed, "run_dir": self.run_dir,
            **{name: slot(getattr(self, name)) for name in SLOTS},
            "functionals": [s.plain() for s in self.functionals],
            "monitors": [s.plain() for s in self.monitors],
            "target": to_plain(self.target), "train": to_plain(self.train), "eval": to_plain(self.eval),
        }

    def slots(self) -> list[tuple[str, Slot]]:
        """Every selected component with its YAML path."""
        pairs = [(name, getattr(self, name)) for name in SLOTS if getattr(self, name) is not None]
        pairs += [(join(name, i), s) for name in LIST_SLOTS for i, s in enumerate(getattr(self, name))]
        return pairs


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a pipeline file (``yaml.safe_load``), with the file named in every error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read pipeline file: {error.strerror}", source=str(path)) from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML: {error}", source=str(path)) from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"a pipeline file must be a mapping of slots, got {type(data).__name__}",
                          source=str(path))
    return data


def load_pipeline(path: str | Path, overrides: list[str] | None = None, *,
                  registry: Registry | None = None) -> Pipeline:
    """Read, merge and validate a pipeline file. See :func:`resolve`."""
    return resolve(read_yaml(path), overrides or [], source=str(path), registry=registry)


def resolve(user: Mapping[str, Any], overrides: list[str] | None = None, *, source: str = "<pipeline>",
            registry: Registry | None = None) -> Pipeline:
    """Merge core defaults, the method recipe, the user's data and overrides, then validate.

    Raises:
        ConfigError: anything invalid, with ``source`` and the YAML path named.
    """
    if registry is None:
        from jef.plugins import get_plugins

        registry = get_plugins().registry
    try:
        overrides = list(overrides or [])
        # The method decides the recipe, so an override of it applies first; the others apply last.
        user = apply_overrides(dict(user), [o for o in overrides if o.partition("=")[0].strip() == "method"])
        # Requirements first: a missing plugin explains an unknown method better than the lookup can.
        check_requirements(user.get("requires") or [])
        merged = copy.deepcopy(CORE_DEFAULTS)
        method = None
        if user.get("method") is not None:
            method = _lookup(registry, "method", user["method"], "method")
            merged = merge(merged, method.factory)
        merged = apply_overrides(merge(merged, user), overrides)
        return _validate(merged, method, registry, source)
    except ConfigError as error:
        raise error.located(source) from error.__cause__


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``over`` onto ``base``; a slot whose ``name`` changes is replaced, lists are replaced."""
    result = dict(base)
    for key, value in over.items():
        old = result.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping) and (
                "name" not in value or "name" not in old or value["name"] == old["name"]):
            result[key] = merge(old, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.0.c=value`` strings; values are parsed as YAML (``0.1``, ``[1, 2]``, ``null``)."""
    data = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} must look like key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: value is not valid YAML: {error}") from error
        parts = key.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            node = _step_into(node, part, ".".join(parts[: depth + 1]))
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key)] = value
        else:
            if last == "name" and node.get("name", value) != value:
                node.clear()  # another component: the old one's options do not apply
            node[last] = value
    return data


def _step_into(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"cannot set a key inside {type(node).__name__}", path=path)
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _index(node: list[Any], part: str, path: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"expected a list index below {len(node)}, got {part!r}", path=path)
    return int(part)


def _lookup(registry: Registry, kind: str, name: Any, path: str) -> Entry:
    if not isinstance(name, str):
        raise ConfigError(f"expected a {kind} name, got {name!r}", path=path)
    try:
        return registry.get(kind, name)
    except RegistryError as error:
        raise ConfigError(str(error), path=path) from error


def _slot(registry: Registry, kind: str, data: Any, path: str, weighted: bool) -> Slot:
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping) or "name" not in data:
        raise ConfigError(f"expected a mapping with a 'name' key choosing a {kind}, got {data!r}", path=path)
    entry = _lookup(registry, kind, data["name"], join(path, "name"))
    rest = {k: v for k, v in data.items() if k not in ("name", "weight")}
    weight = 1.0
    if "weight" in data:
        if not weighted:
            raise ConfigError(f"a {kind} takes no 'weight'", path=join(path, "weight"))
        weight = data["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ConfigError(f"expected a number, got {weight!r}", path=join(path, "weight"))
    return Slot(kind, entry, build_options(entry.options, rest, path), float(weight))


def _validate(data: dict[str, Any], method: Entry | None, registry: Registry, source: str) -> Pipeline:
    for key in data:
        if key not in TOP_LEVEL:
            from jef.registry import closest

            hint = closest(str(key), list(TOP_LEVEL))
            raise ConfigError(f"unknown key {key!r}" + (f"; did you mean {hint!r}?" if hint else "")
                              + f" (valid keys: {', '.join(TOP_LEVEL)})", path=str(key))
    requires = data.get("requires") or []
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise ConfigError("expected a list of requirement strings like 'jef-plugin-x>=0.1'", path="requires")
    check_requirements(requires)
    slots = {}
    for name, kind in SLOTS.items():
        value = data.get(name)
        if value is None:
            if name in ("data", "augmenter", "backbone"):
                raise ConfigError(f"a pipeline needs a {kind}", path=name)
            slots[name] = None
        else:
            slots[name] = _slot(registry, kind, value, name, name in WEIGHTED)
    lists = {}
    for name, kind in LIST_SLOTS.items():
        value = data.get(name) or []
        if not isinstance(value, list):
            raise ConfigError(f"expected a list of {kind}s", path=name)
        lists[name] = [_slot(registry, kind, item, join(name, i), name in WEIGHTED) for i, item in enumerate(value)]
    if slots["energy"] is None and not lists["functionals"]:
        raise ConfigError("the objective is empty: set an energy or at least one functional", path="energy")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"expected an integer, got {seed!r}", path="seed")
    run_dir = data.get("run_dir")
    if run_dir is not None and not isinstance(run_dir, str):
        raise ConfigError(f"expected a directory path, got {run_dir!r}", path="run_dir")
    return Pipeline(
        source=source, method=method, requires=requires, seed=seed, run_dir=run_dir, **slots, **lists,
        target=build_options(TargetOptions, data.get("target"), "target"),
        train=build_options(TrainOptions, data.get("train"), "train"),
        eval=build_options(EvalOptions, data.get("eval"), "eval"))


def check_requirements(requires: Any) -> None:
    """Fail clearly when a ``requires:`` entry is not installed or too old."""
    from packaging.requirements import InvalidRequirement, Requirement

    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise ConfigError("expected a list of requirement strings like 'jef-plugin-x>=0.1'", path="requires")
    for i, text in enumerate(requires):
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            raise ConfigError(f"invalid requirement {text!r}: {error}", path=join("requires", i)) from error
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(f"this pipeline requires {text}, which is not installed; "
                              f"run: pip install '{text}'", path=join("requires", i)) from None
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            raise ConfigError(f"this pipeline requires {text}, but {requirement.name} {installed} is "
                              f"installed; run: pip install -U '{text}'", path=join("requires", i))
