"""Pipeline files: YAML -> merged with the method recipe -> overrides -> validated :class:`Pipeline`.

The YAML reader is :mod:`jef.config.yaml`, the overrides are :mod:`jef.config.overrides`; this module merges and
validates.

One level of defaults: jef's core defaults, then the method recipe, then the
user's file, then ``key.path=value`` overrides. A slot whose ``name`` the
user changes is replaced whole (another component has other options); a slot
whose name stays is merged key by key. Lists are replaced whole.
"""

from __future__ import annotations

import copy
import difflib
import importlib.metadata
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from jef.config.encoders import Encoder, parse_encoders
from jef.config.options import EvalOptions, ModelOptions, TrainOptions
from jef.config.overrides import apply_overrides, override_source
from jef.config.provenance import COMMAND_LINE, FILE, RECIPE, Origins, leaf_paths
from jef.config.validate import ConfigError, build_options, describe, join, short, to_plain
from jef.config.yaml import check_size, read_yaml
from jef.names import closest
from jef.registry import Entry, Registry, RegistryError

#: Single-component slots and the registry kind they draw from.
SLOTS: dict[str, str] = {"data": "dataset", "augmenter": "augmenter", "backbone": "backbone",
                         "projector": "head", "predictor": "head", "energy": "energy", "masker": "masker"}
#: List slots and their kind.
LIST_SLOTS: dict[str, str] = {"functionals": "functional", "monitors": "monitor", "loggers": "logger"}
#: Slots that carry a loss ``weight`` beside their options.
WEIGHTED = {"energy", "functionals"}
#: Keys of the backbone slot beside its options, whatever the backbone (:mod:`jef.model.weights` reads them).
BACKBONE_KEYS = ("weights", "weights_strict")
TOP_LEVEL = ("method", "requires", "seed", "run_dir", *SLOTS, *LIST_SLOTS, "encoders", "target", "model", "train",
             "eval")
#: Seeds go to torch and numpy; numpy takes 32-bit ones.
MAX_SEED = 2**32 - 1

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
    "masker": None,
    "functionals": [],
    "monitors": [{"name": "collapse"}],
    "loggers": [{"name": "tensorboard"}],  # train.tensorboard: false drops it
}


@attrs.frozen
class Slot:
    """One selected component: its registry entry, validated options and loss weight.

    A backbone slot may also name a local state dict to start from (``weights``, see :mod:`jef.model.weights`)
    and whether every backbone key must be in it (``weights_strict``).
    """

    kind: str
    entry: Entry
    options: Any
    weight: float = 1.0
    weights: str | None = None
    weights_strict: bool = True

    @property
    def name(self) -> str:
        """The component's registered name."""
        return self.entry.name

    def __getattr__(self, option: str) -> Any:
        """An option's value: ``pipeline.target.momentum`` is ``pipeline.target.options.momentum``."""
        if option.startswith("_") or option == "options":  # copy and pickle probe dunders before __init__
            raise AttributeError(option)
        try:
            return getattr(self.options, option)
        except AttributeError:
            raise AttributeError(f"{self.kind} {self.entry.name!r} has no option {option!r}") from None

    def plain(self) -> dict[str, Any]:
        """The slot as it would be written in YAML, every option spelt out."""
        data: dict[str, Any] = {"name": self.entry.name}
        if self.kind in ("energy", "functional"):
            data["weight"] = self.weight
        if self.weights is not None:  # only then: runs saved before the key existed still resume unchanged
            data.update(weights=self.weights, weights_strict=self.weights_strict)
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
    target: Slot
    train: TrainOptions
    eval: EvalOptions
    masker: Slot | None = None
    #: Where metrics go beside ``metrics.jsonl`` (:mod:`jef.builtin.loggers`); built on the main process only.
    loggers: list[Slot] = attrs.field(factory=list)
    #: Named encoders beside the online branch (:mod:`jef.config.encoders`), in file order.
    encoders: dict[str, Encoder] = attrs.field(factory=dict)
    #: How the joint model calls its backbone (``model:``).
    model: ModelOptions = attrs.field(factory=ModelOptions)
    #: Which layer set each value (:mod:`jef.config.provenance`); what ``jef config show`` marks. Not compared.
    origins: Origins = attrs.field(factory=Origins, eq=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved pipeline as plain data (what ``jef config show`` prints and runs save)."""
        def slot(s: Slot | None) -> Any:
            return None if s is None else s.plain()

        # Encoders only when there are some: the pipelines runs saved before the key existed read back the same.
        encoders = {"encoders": {name: e.plain() for name, e in self.encoders.items()}} if self.encoders else {}
        return {
            "method": self.method.name if self.method else None, "requires": list(self.requires),
            "seed": self.seed, "run_dir": self.run_dir,
            **{name: slot(getattr(self, name)) for name in SLOTS},
            "functionals": [s.plain() for s in self.functionals],
            "monitors": [s.plain() for s in self.monitors],
            "loggers": [s.plain() for s in self.loggers], **encoders,
            "target": self.target.plain(), "model": to_plain(self.model), "train": to_plain(self.train),
            "eval": to_plain(self.eval),
        }

    def slots(self) -> list[tuple[str, Slot]]:
        """Every selected component with its YAML path."""
        pairs = [(name, getattr(self, name)) for name in SLOTS if getattr(self, name) is not None]
        pairs += [(join(name, i), s) for name in LIST_SLOTS for i, s in enumerate(getattr(self, name))]
        pairs += [pair for encoder in self.encoders.values() for pair in encoder.slots()]
        return [*pairs, ("target", self.target)]



def load_pipeline(path: str | Path, overrides: list[str] | None = None, *, registry: Registry) -> Pipeline:
    """Read, merge and validate a pipeline file (and its ``base:`` file, if it names one). See :func:`resolve`."""
    data = read_yaml(path)
    if not data and not overrides:
        raise ConfigError("the file is empty (or holds only comments); a pipeline names at least its method, "
                          "e.g. `method: simclr` (`jef list method` lists them)", source=str(path))
    data, base, label = read_base(path, data)
    return resolve(data, overrides or [], source=str(path), registry=registry, base=base, base_label=label)


def read_base(path: str | Path, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """Split ``base: other.yaml`` off a pipeline file's data and read that file (relative to the including one).

    One level only: a base file that names a base of its own is refused.

    Returns:
        The file's data without ``base``, the base file's data (None without ``base:``) and its origin label
        (``base other.yaml``).

    Raises:
        ConfigError: ``base`` is not a file name, the base file cannot be read or is no mapping, or has a base.
    """
    if "base" not in data:
        return data, None, ""
    data = dict(data)
    name = data.pop("base")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"expected the path of another pipeline file to start from (relative to this one), "
                          f"e.g. `base: common.yaml`, got {describe(name)}", path="base", source=str(path))
    target = (Path(path).parent / Path(name).expanduser()).resolve()
    if not target.exists():
        raise ConfigError(f"base file {name!r} not found (looked for {target}: a base path is relative to the "
                          f"folder of {Path(path).name}); fix the path or create the file", path="base",
                          source=str(path))
    try:
        base = read_yaml(target)
    except ConfigError as error:
        raise ConfigError(f"base file {name!r} ({target}): {error.reason}", path="base", source=str(path)) from error
    if "base" in base:
        raise ConfigError(f"base file {name!r} ({target}) names a base of its own ({base['base']!r}); only one "
                          f"level of base: is allowed: merge the two base files into one, or point {Path(path).name} "
                          f"at the innermost one", path="base", source=str(path))
    return data, base, f"base {name}"


def resolve(user: Mapping[str, Any], overrides: list[str] | None = None, *, source: str = "<pipeline>",
            registry: Registry, base: Mapping[str, Any] | None = None, base_label: str = "base") -> Pipeline:
    """Merge core defaults, the method recipe, a base file, the user's data and overrides, then validate.

    Args:
        user: The user's pipeline as plain data.
        overrides: ``key.path=value`` strings applied last.
        source: The file (or a description) named in errors.
        registry: The name table to look components up in, e.g. ``jef.plugins.get_plugins().registry`` (the
            pipeline layer loads no plugins itself; :func:`jef.load_pipeline` uses the process-wide ones).
        base: The data of the file's ``base:`` file (:func:`read_base`), merged between the recipe and ``user``.
        base_label: The base's origin in :attr:`Pipeline.origins` (``base other.yaml``).

    Raises:
        ConfigError: anything invalid, with ``source`` and the YAML path named; an error in a value a
            command-line override set names that override instead of the file (and, for a key that does not
            exist, the full path of the closest one that does).
    """
    origins = Origins()
    try:
        if not isinstance(user, Mapping):
            raise ConfigError(f"a pipeline must be a mapping of slots such as `method: simclr`, got {describe(user)}")
        if "base" in user and base is None:
            raise ConfigError("`base:` names another pipeline file and is read with the file (`jef train FILE`, "
                              "jef.load_pipeline); for data, merge the two yourself with jef.config.merge",
                              path="base")
        overrides = list(overrides or [])
        for override in overrides:
            if not isinstance(override, str):
                raise ConfigError(f"an override must be a string key.path=value, got {describe(override)}")
        check_size(dict(user))
        # The method decides the recipe, so an override of it applies first; the others apply last.
        first = [o for o in overrides if o.partition("=")[0].strip() == "method"]
        user = apply_overrides(dict(user), first)
        effective = merge(base, user) if base is not None else user
        # Requirements first: a missing plugin explains an unknown method better than the lookup can.
        check_requirements(effective.get("requires") or [])
        merged = copy.deepcopy(CORE_DEFAULTS)
        method = None
        if effective.get("method") is not None:
            method = _lookup(registry, "method", effective["method"], "method")
            merged = merge(merged, method.factory, origins=origins, label=RECIPE)
        if base is not None:
            merged = merge(merged, base, origins=origins, label=base_label)
        # The method override again, now traced: it wins over the file like the others.
        merged = apply_overrides(merge(merged, user, origins=origins, label=FILE),
                                 first + [o for o in overrides if o not in first], origins=origins)
        return attrs.evolve(_validate(merged, method, registry, source), origins=origins)
    except ConfigError as error:
        if error.source.startswith(COMMAND_LINE):
            raise
        override = origins.override_at(error.path)
        if override is None:
            raise error.located(source) from error.__cause__
        others = [o for o in overrides if o != override]
        raise _blame_override(error, override, lambda: resolve(
            user, others, source=source, registry=registry, base=base, base_label=base_label)) from error


def _blame_override(error: ConfigError, override: str, without: Any) -> ConfigError:
    """``error``, caused by ``override``, as the command line's; a key that does not exist gets the nearest path.

    Args:
        error: The validation error at a path the override set.
        override: The ``key.path=value`` text.
        without: Resolves the pipeline without the override (its valid paths are the suggestions).
    """
    reason = error.reason
    key = override.partition("=")[0].strip()
    if reason.startswith("unknown key") and error.path:
        try:
            paths = leaf_paths(without().to_dict())
        except ConfigError:
            paths = []
        last = key.rpartition(".")[2]
        same = [path for path in paths if path.rpartition(".")[2] == last]
        ranked = sorted(same, key=lambda path: -difflib.SequenceMatcher(None, key, path).ratio())
        hint = ranked[0] if ranked else closest(key, paths)
        if hint:
            also = f" (or {', '.join(ranked[1:4])})" if len(ranked) > 1 else ""
            reason = re.sub(r"; did you mean '[^']*'\?", "", reason, count=1)
            head, _, rest = reason.partition(" (valid keys")
            reason = f"{head}; did you mean {hint}?{also}" + (f" (valid keys{rest}" if rest else "")
    return ConfigError(reason, path=error.path, source=override_source(override))


def merge(base: Mapping[str, Any], over: Mapping[str, Any], *, origins: Origins | None = None,
          label: str = "", path: str = "") -> dict[str, Any]:
    """Merge ``over`` onto ``base``; a slot whose ``name`` changes is replaced, lists are replaced.

    Args:
        base: The weaker data.
        over: The stronger data.
        origins: Where to record that ``label`` wrote each value of ``over`` (:mod:`jef.config.provenance`).
        label: The origin of ``over`` (``recipe``, ``file``).
        path: The YAML path of ``base`` and ``over`` in the pipeline (for ``origins``).
    """
    result = dict(base)
    for key, value in over.items():
        old = result.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping) and (
                "name" not in value or "name" not in old or value["name"] == old["name"]):
            result[key] = merge(old, value, origins=origins, label=label, path=join(path, key))
        else:
            result[key] = copy.deepcopy(value)
            if origins is not None:
                origins.set(join(path, key), value, label)
    return result



def _lookup(registry: Registry, kind: str, name: Any, path: str) -> Entry:
    if not isinstance(name, str):
        raise ConfigError(f"expected {_a(kind)} name (a string), got {describe(name)}; `jef list {kind}` lists them",
                          path=path)
    try:
        return registry.get(kind, name)
    except RegistryError as error:
        raise ConfigError(str(error), path=path) from error


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _slot(registry: Registry, kind: str, data: Any, path: str, weighted: bool) -> Slot:
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping) or "name" not in data:
        raise ConfigError(f"expected a mapping with a 'name' key choosing {_a(kind)}, such as {{name: ...}}, got "
                          f"{describe(data)}", path=path)
    entry = _lookup(registry, kind, data["name"], join(path, "name"))
    slot_keys = ("name", "weight", *(BACKBONE_KEYS if kind == "backbone" else ()))
    rest = {k: v for k, v in data.items() if k not in slot_keys}
    weight = 1.0
    if "weight" in data:
        if not weighted:
            raise ConfigError(f"{_a(kind)} takes no 'weight'", path=join(path, "weight"))
        weight = data["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
            raise ConfigError(f"expected a loss weight, a finite number >= 0, got {describe(weight)}",
                              path=join(path, "weight"))
    try:
        options = build_options(entry.options, rest, path)
    except ConfigError as error:
        hint = _whose_option(registry, entry, rest)
        if hint and error.reason.startswith("unknown key"):
            raise ConfigError(f"{error.reason}; {hint}", path=error.path) from error
        raise
    except Exception as error:
        # The plugin's options class failed in a way its validators should have reported; say whose it is.
        raise ConfigError(f"the options class of {kind} {entry.name!r} from plugin {entry.provenance} failed on "
                          f"these options with {type(error).__name__}: {error}; check the values against "
                          f"`jef list {kind}` and report the message to the plugin's authors", path=path) from error
    weights, strict = _backbone_weights(data, path) if kind == "backbone" else (None, True)
    return Slot(kind, entry, options, float(weight), weights, strict)


def _backbone_weights(data: Mapping[str, Any], path: str) -> tuple[str | None, bool]:
    """The backbone slot's ``weights`` (a file path, or None) and ``weights_strict``."""
    weights, strict = data.get("weights"), data.get("weights_strict", True)
    if weights is not None and (not isinstance(weights, str) or not weights.strip()):
        raise ConfigError(f"expected the path of a local state dict (.safetensors, or a torch file such as .pt), "
                          f"got {describe(weights)}", path=join(path, "weights"))
    if not isinstance(strict, bool):
        raise ConfigError(f"expected true (every backbone key must be in the weights file) or false (missing keys "
                          f"are a warning), got {describe(strict)}", path=join(path, "weights_strict"))
    if "weights_strict" in data and weights is None:
        raise ConfigError("applies to the weights loaded from backbone.weights, which is not set; set weights: PATH "
                          "or drop weights_strict", path=join(path, "weights_strict"))
    return weights, strict


def _option_names(options: type) -> set[str]:
    return {field.name for field in attrs.fields(options)} if attrs.has(options) else set()


def _whose_option(registry: Registry, entry: Entry, options: Mapping[str, Any]) -> str:
    """For an option of another component of the kind (``momentum`` on a ``shared`` target): whose it is."""
    known = _option_names(entry.options)
    for key in options:
        if not isinstance(key, str) or key in known:
            continue
        owners = sorted({other.name for other in registry.entries(entry.kind)
                         if other.name != entry.name and key in _option_names(other.options)})
        if owners:
            shown = ", ".join(owners[:4]) + (" ..." if len(owners) > 4 else "")
            return f"{key!r} applies only to the {shown} {entry.kind}"
    return ""


def _validate(data: dict[str, Any], method: Entry | None, registry: Registry, source: str) -> Pipeline:
    for key in data:
        if key not in TOP_LEVEL:
            hint = closest(key, list(TOP_LEVEL)) if isinstance(key, str) else None
            raise ConfigError(f"unknown key {short(key)}" + (f"; did you mean {hint!r}?" if hint else "")
                              + f" (valid keys: {', '.join(TOP_LEVEL)})", path=join("", key))
    requires = data.get("requires") or []
    check_requirements(requires)
    slots = {}
    for name, kind in SLOTS.items():
        value = data.get(name)
        if value is None:
            if name in ("data", "augmenter", "backbone"):
                raise ConfigError(f"a pipeline needs {_a(kind)}", path=name)
            slots[name] = None
        else:
            slots[name] = _slot(registry, kind, value, name, name in WEIGHTED)
    lists = {}
    for name, kind in LIST_SLOTS.items():
        value = data.get(name) or []
        if not isinstance(value, list):
            raise ConfigError(f"expected a list of {kind}s such as [{{name: ...}}], got {describe(value)}", path=name)
        lists[name] = [_slot(registry, kind, item, join(name, i), name in WEIGHTED) for i, item in enumerate(value)]
    if slots["energy"] is None and not lists["functionals"]:
        raise ConfigError("the objective is empty: set an energy or at least one functional", path="energy")
    train = build_options(TrainOptions, data.get("train"), "train")
    if train.optimizer.fixed_lr_predictor and slots["predictor"] is None:
        raise ConfigError("true, but the pipeline has no predictor; set it to false or add a predictor",
                          path="train.optimizer.fixed_lr_predictor")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"expected an integer from 0 to {MAX_SEED}, got {describe(seed)}", path="seed")
    run_dir = data.get("run_dir")
    if run_dir is not None and (not isinstance(run_dir, str) or not run_dir.strip()):
        raise ConfigError(f"expected a directory path, got {describe(run_dir)}", path="run_dir")
    encoders = parse_encoders(data.get("encoders"),
                              lambda kind, value, path: _slot(registry, kind, value, path, False))
    target = _slot(registry, "target", data.get("target") or {"name": "shared"}, "target", False)
    _check_target_encoder(target, encoders)
    return Pipeline(
        source=source, method=method, requires=requires, seed=seed, run_dir=run_dir, **slots, **lists,
        target=target, train=train, eval=build_options(EvalOptions, data.get("eval"), "eval"),
        encoders=encoders, model=build_options(ModelOptions, data.get("model"), "model"))


def _check_target_encoder(target: Slot, encoders: Mapping[str, Encoder]) -> None:
    """A target that embeds with a named encoder (an ``encoder`` option, the ``tower`` target) names one there is."""
    name = getattr(target.options, "encoder", None)
    if name is None or name in encoders:
        return
    known = ", ".join(encoders) or "none: add one under `encoders:`"
    hint = closest(name, list(encoders)) if isinstance(name, str) and encoders else None
    raise ConfigError(f"target {target.name!r} embeds with encoder {name!r}, which the pipeline does not define"
                      + (f"; did you mean {hint!r}?" if hint else "") + f" (encoders: {known})",
                      path="target.encoder")


def check_requirements(requires: Any) -> None:
    """Fail clearly when a ``requires:`` entry is not installed or too old."""
    from packaging.requirements import InvalidRequirement, Requirement

    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise ConfigError(f"expected a list of requirement strings like [jef-plugin-x>=0.1], got "
                          f"{describe(requires)}", path="requires")
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
