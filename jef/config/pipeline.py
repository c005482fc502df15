"""Pipeline files: YAML -> merged with the method recipe -> overrides -> validated :class:`Pipeline`.

One level of defaults: jef's core defaults, then the method recipe, then the
user's file, then ``key.path=value`` overrides. A slot whose ``name`` the
user changes is replaced whole (another component has other options); a slot
whose name stays is merged key by key. Lists are replaced whole.
"""

from __future__ import annotations

import copy
import importlib.metadata
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from jef.config.options import EvalOptions, TargetOptions, TrainOptions
from jef.config.validate import ConfigError, build_options, describe, join, short, to_plain
from jef.registry import Entry, Registry, RegistryError

#: Single-component slots and the registry kind they draw from.
SLOTS: dict[str, str] = {"data": "dataset", "augmenter": "augmenter", "backbone": "backbone",
                         "projector": "head", "predictor": "head", "energy": "energy"}
#: List slots and their kind.
LIST_SLOTS: dict[str, str] = {"functionals": "functional", "monitors": "monitor"}
#: Slots that carry a loss ``weight`` beside their options.
WEIGHTED = {"energy", "functionals"}
TOP_LEVEL = ("method", "requires", "seed", "run_dir", *SLOTS, *LIST_SLOTS, "target", "train", "eval")
#: Seeds go to torch and numpy; numpy takes 32-bit ones.
MAX_SEED = 2**32 - 1
#: Pipelines are small; these bound what aliases can expand to and how deep data may nest.
MAX_VALUES, MAX_DEPTH = 10_000, 32
#: A larger "pipeline file" is a data file or checkpoint given by mistake.
MAX_FILE_BYTES = 4 * 2**20

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


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (plain data, no Python objects) that also refuses duplicate keys.

    PyYAML keeps the last of two equal keys silently; in a pipeline that hides
    one of two settings. Values that the YAML grammar accepts but Python cannot
    build (``2018-13-45``, a 5000-digit integer) become YAML errors with a position.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden by later keys
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # unhashable: the base class reports it
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"found duplicate key {short(key)} (first at line {first.start_mark.line + 1}); "
                        f"keep one of them", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, KeyError, AttributeError, TypeError, IndexError) as error:
            # PyYAML's scalar constructors fail this way on text their tag cannot take (`!!bool maybe`).
            shown = short(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            reason = "too many digits" if "digits" in str(error) else f"{type(error).__name__}: {error}"
            raise yaml.constructor.ConstructorError(None, None, f"cannot read {shown} as {tag} ({reason})",
                                                    node.start_mark) from error


def parse_yaml(text: str) -> Any:
    """Parse YAML text as plain data (``yaml.safe_load`` semantics, duplicate keys refused).

    Raises:
        ConfigError: with the line and column of a syntax error and what to do.
    """
    try:
        _check_nesting(text)
        return yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML {_yaml_problem(error, text)}") from error
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply for a pipeline (hundreds of levels of brackets or "
                          "indentation)") from None


def _check_nesting(text: str) -> None:
    """Refuse deep nesting from the parser's events, before PyYAML's recursive composer meets it."""
    depth = 0
    for event in yaml.parse(text, Loader=_StrictSafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise yaml.MarkedYAMLError(problem=f"nested more than {MAX_DEPTH} levels deep; a pipeline is a few "
                                                   f"levels deep", problem_mark=event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """``at line 3, column 5: <problem>`` with the line and a caret, from a PyYAML error."""
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        char = chr(error.character) if isinstance(error.character, int) else error.character
        problem = f"character U+{ord(char):04X} is not allowed in YAML (is this a text file?)"
    elif isinstance(error, yaml.MarkedYAMLError) and (error.problem_mark or error.context_mark):
        mark = error.problem_mark or error.context_mark
        line, column = mark.line + 1, mark.column + 1
        problem = (error.problem or error.context or "syntax error").replace("tag:yaml.org,2002:", "!!")
        opened = error.context_mark
        if error.context and error.context.startswith("while parsing a flow") and opened and error.problem:
            bracket = "{" if "mapping" in error.context else "["
            problem += f" (is the '{bracket}' at line {opened.line + 1}, column {opened.column + 1} left unclosed?)"
        elif error.context and error.problem and opened and error.problem_mark and \
                opened.line != error.problem_mark.line:
            problem += f" ({error.context} at line {opened.line + 1})"
    else:
        return f": {error}"
    problem += _yaml_hint(problem)
    # PyYAML quotes the offending token whole (a tag, a key); a pasted blob must not flood the message.
    problem = re.sub(r"'([^'\n]{60})[^'\n]{20,}([^'\n]{10})'", r"'\1...\2'", problem)
    lines = text.splitlines()
    if not 0 < line <= len(lines) or not lines[line - 1].strip():
        return f"at line {line}, column {column}: {problem}"
    # The line as an editor shows it (at most 160 characters around the column), control characters replaced.
    start = max(0, column - 1 - 100)
    excerpt = "".join(c if c.isprintable() or c == "\t" else "?" for c in lines[line - 1][start:start + 160])
    shown = f"\n    {excerpt}\n    {' ' * min(column - 1 - start, len(excerpt))}^"
    return f"at line {line}, column {column}: {problem}{shown}"


def _yaml_hint(problem: str) -> str:
    if "'\\t'" in problem:
        return "; YAML indents with spaces, not tabs"
    if "could not determine a constructor for the tag" in problem:
        return ("; pipeline files hold plain data and are read with yaml.safe_load, which refuses Python objects "
                "and custom tags: remove the tag")
    return ""


def _check_size(data: Any, path: str = "") -> None:
    """Refuse data that aliases make recursive or huge, or that nests deeper than any pipeline.

    YAML aliases share one object between several places; a structure that
    contains itself, or one that expands to millions of values, would hang
    the merge or the error messages further on.
    """
    budget = MAX_VALUES

    def walk(node: Any, path: str, depth: int, open_: set[int]) -> None:
        nonlocal budget
        if not isinstance(node, dict | list):
            return
        if id(node) in open_:
            raise ConfigError("an alias refers to a value that contains it (a recursive structure); "
                              "a pipeline cannot contain itself", path=path)
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested more than {MAX_DEPTH} levels deep; a pipeline is a few levels deep", path=path)
        open_.add(id(node))
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            budget -= 1
            if budget < 0:
                raise ConfigError(f"more than {MAX_VALUES} values (counting every use of an alias); "
                                  f"a pipeline holds a few hundred")
            walk(value, join(path, key), depth + 1, open_)
        open_.discard(id(node))

    walk(data, path, 0, set())


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a pipeline file (``yaml.safe_load``), with the file named in every error.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 text, is not valid
            YAML (with line and column) or is not a mapping.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError("cannot read pipeline file: it is a directory; pass a pipeline YAML file "
                              "(a run directory keeps its own as pipeline.yaml)", source=str(path))
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"cannot read pipeline file: it is {size / 2**20:.0f} MiB, not a pipeline (a few KB of "
                              f"YAML); is this a checkpoint or a data file?", source=str(path))
        raw = path.read_bytes()
    except OSError as error:
        hint = "; check the path" if isinstance(error, FileNotFoundError) else ""
        raise ConfigError(f"cannot read pipeline file: {error.strerror or error}{hint}", source=str(path)) from error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{raw[error.start]:02x} at line {line} cannot be decoded; "
                          f"a pipeline is a YAML text file: save it as UTF-8 (is this the right file?)",
                          source=str(path)) from None
    try:
        data = parse_yaml(text)
    except ConfigError as error:
        raise error.located(str(path)) from error.__cause__
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"a pipeline file must be a mapping of slots such as `method: simclr`, got "
                          f"{describe(data)}", source=str(path))
    return data


def load_pipeline(path: str | Path, overrides: list[str] | None = None, *,
                  registry: Registry | None = None) -> Pipeline:
    """Read, merge and validate a pipeline file. See :func:`resolve`."""
    data = read_yaml(path)
    if not data and not overrides:
        raise ConfigError("the file is empty (or holds only comments); a pipeline names at least its method, "
                          "e.g. `method: simclr` (`jef list method` lists them)", source=str(path))
    return resolve(data, overrides or [], source=str(path), registry=registry)


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
        if not isinstance(user, Mapping):
            raise ConfigError(f"a pipeline must be a mapping of slots such as `method: simclr`, got {describe(user)}")
        overrides = list(overrides or [])
        for override in overrides:
            if not isinstance(override, str):
                raise ConfigError(f"an override must be a string key.path=value, got {describe(override)}")
        _check_size(dict(user))
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
        parts = key.strip().split(".")
        if not sep or not all(part.strip() for part in parts):
            raise ConfigError(f"override {_quote(override)} must look like key.path=value, e.g. train.optimizer.lr=0.1 "
                              f"or functionals.0.temperature=0.2")
        parts = [part.strip() for part in parts]
        paths = [join("", parts[0])]
        for part in parts[1:]:
            paths.append(join(paths[-1], part))
        try:
            value = parse_yaml(raw)
            _check_size(value, paths[-1])
        except ConfigError as error:
            raise ConfigError(f"override {_quote(override)}: value is not valid: {error.reason}",
                              path=error.path) from error.__cause__
        node: Any = data
        for part, path in zip(parts[:-1], paths, strict=False):
            node = _step_into(node, part, path)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, paths[-1])] = value
        elif isinstance(node, dict):
            if last == "name" and node.get("name", value) != value:
                node.clear()  # another component: the old one's options do not apply
            node[last] = value
        else:
            raise ConfigError(f"override {_quote(override)}: cannot set {_quote(last, 40)} inside {paths[-2]}, which "
                              f"is {describe(node)}, not a mapping")
    return data


def _quote(text: str, limit: int = 80) -> str:
    """``repr(text)``, its middle cut out when long (a pasted value must not flood the message)."""
    return repr(text) if len(text) <= limit else repr(f"{text[:limit - 20]}...{text[-10:]}")


def _step_into(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"cannot set {part!r} inside {describe(node)}, which is not a mapping", path=path)
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _index(node: list[Any], part: str, path: str) -> int:
    if not (part.isascii() and part.isdigit() and len(part) < 10) or int(part) >= len(node):
        raise ConfigError(f"expected a list index below {len(node)}, got {_quote(part, 40)}", path=path)
    return int(part)


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
    rest = {k: v for k, v in data.items() if k not in ("name", "weight")}
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
    except ConfigError:
        raise
    except Exception as error:
        # The plugin's options class failed in a way its validators should have reported; say whose it is.
        raise ConfigError(f"the options class of {kind} {entry.name!r} from plugin {entry.provenance} failed on "
                          f"these options with {type(error).__name__}: {error}; check the values against "
                          f"`jef list {kind}` and report the message to the plugin's authors", path=path) from error
    return Slot(kind, entry, options, float(weight))


def _validate(data: dict[str, Any], method: Entry | None, registry: Registry, source: str) -> Pipeline:
    for key in data:
        if key not in TOP_LEVEL:
            from jef.registry import closest

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
    return Pipeline(
        source=source, method=method, requires=requires, seed=seed, run_dir=run_dir, **slots, **lists,
        target=build_options(TargetOptions, data.get("target"), "target"),
        train=train,
        eval=build_options(EvalOptions, data.get("eval"), "eval"))


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
