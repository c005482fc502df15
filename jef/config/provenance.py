"""Where each value of a resolved pipeline came from, and the annotated YAML ``jef config show`` prints.

A pipeline is merged from layers (:mod:`jef.config.pipeline`): jef's core defaults, the method recipe, the
pipeline file's ``base:`` file, the file, then ``key.path=value`` overrides on the command line. :class:`Origins`
records, for each leaf that a layer wrote, which layer wrote it last; a value no layer wrote is an option's
default. :func:`annotated_yaml` prints plain data as block YAML with a trailing ``# <origin>`` comment on each
value line that a layer wrote (defaults stay unmarked), and :func:`selected_view` hides the options of components
that are not selected.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from jef.config.validate import join

__all__ = ["COMMAND_LINE", "DEFAULT", "FILE", "RECIPE", "Origins", "annotated_yaml", "leaf_paths", "selected_view"]

#: The origin labels, from the weakest layer to the strongest (a base file's label is ``base <its path>``).
DEFAULT, RECIPE, FILE, COMMAND_LINE = "default", "recipe", "file", "command line"
#: Optimiser options that only some optimisers read (:func:`jef.run.optim.build_optimizer`).
OPTIMIZER_ONLY = {"momentum": ("sgd", "lars"), "betas": ("adamw",), "trust_coefficient": ("lars",)}


def _rank(label: str) -> int:
    if label.startswith("base "):
        return 2
    return {DEFAULT: 0, RECIPE: 1, FILE: 3, COMMAND_LINE: 4}.get(label, 0)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


class Origins:
    """The layer that last wrote each leaf of a merged pipeline, keyed by YAML path (``train.optimizer.lr``).

    Attributes:
        labels: YAML path -> origin label (``recipe``, ``base base.yaml``, ``file``, ``command line``). A list's
            own path is recorded as well as its items', so that a list shown on one line has an origin.
        overrides: YAML path -> the ``key.path=value`` text that set it, for errors that blame the command line.
    """

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}
        self.overrides: dict[str, str] = {}

    def drop(self, path: str) -> None:
        """Forget ``path`` and everything under it (a slot replaced by another component)."""
        for table in (self.labels, self.overrides):
            for key in [key for key in table if _under(key, path)]:
                del table[key]

    def set(self, path: str, value: Any, label: str, override: str | None = None) -> None:
        """Record that ``label`` wrote ``value`` at ``path``, replacing what was there."""
        self.drop(path)
        self._mark(path, value, label)
        if override is not None:
            self.overrides[path] = override

    def _mark(self, path: str, value: Any, label: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                self._mark(join(path, key), item, label)
            return
        self.labels[path] = label
        if isinstance(value, list | tuple):
            for i, item in enumerate(value):
                self._mark(join(path, i), item, label)

    def label(self, path: str, *, whole: bool = False) -> str:
        """The origin of the value at ``path`` (``default`` when no layer wrote it).

        Args:
            path: The YAML path.
            whole: The value is shown whole on one line (a list): the strongest origin of it and its items.
        """
        if whole:
            labels = [label for key, label in self.labels.items() if _under(key, path)]
            return max(labels, key=_rank) if labels else DEFAULT
        if path in self.labels:
            return self.labels[path]
        parent, _, last = path.rpartition(".")
        if last == "name" and parent in self.labels:  # a slot written as its name alone: `energy: mse`
            return self.labels[parent]
        return DEFAULT

    def override_at(self, path: str) -> str | None:
        """The command-line override behind an error at ``path``: one that set it, a value around it or under it."""
        if not path:
            return None
        for key, override in self.overrides.items():
            if _under(path, key) or _under(key, path):
                return override
        return None


def leaf_paths(data: Any, path: str = "") -> list[str]:
    """Every settable YAML path of plain data: mapping keys and list items, lists of scalars as one value."""
    if isinstance(data, Mapping):
        return [leaf for key, value in data.items() for leaf in leaf_paths(value, join(path, key))]
    if isinstance(data, list | tuple) and any(isinstance(item, Mapping | list | tuple) for item in data):
        return [leaf for i, item in enumerate(data) for leaf in leaf_paths(item, join(path, i))]
    return [path] if path else []


def selected_view(data: Mapping[str, Any], slots: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """The resolved pipeline without the options of what is not selected, and the YAML paths hidden.

    Hidden: component slots set to null (no predictor, no masker), the options of evaluation protocols that are
    off (``eval.linear`` shows ``enabled: false`` only) and optimiser options the chosen optimiser does not read
    (``betas`` unless ``adamw``, ``trust_coefficient`` unless ``lars``, ``momentum`` under ``adamw``).

    Args:
        data: :meth:`jef.config.pipeline.Pipeline.to_dict`'s plain data.
        slots: The names of the single-component slots (:data:`jef.config.pipeline.SLOTS`).
    """
    shown = copy.deepcopy(dict(data))
    hidden = []
    for name in slots:
        if name in shown and shown[name] is None:
            del shown[name]
            hidden.append(name)
    for name, protocol in (shown.get("eval") or {}).items():
        if isinstance(protocol, dict) and protocol.get("enabled") is False and len(protocol) > 1:
            shown["eval"][name] = {"enabled": False}
            hidden.append(f"eval.{name}.*")
    optimizer = (shown.get("train") or {}).get("optimizer")
    if isinstance(optimizer, dict):
        for key, users in OPTIMIZER_ONLY.items():
            if key in optimizer and optimizer.get("name") not in users:
                del optimizer[key]
                hidden.append(f"train.optimizer.{key}")
    return shown, hidden


def annotated_yaml(data: Mapping[str, Any], label: Callable[..., str]) -> str:
    """``data`` as block YAML with ``# <origin>`` after each value a layer wrote; it loads back as ``data``.

    Lists of plain values are written on one line (``dims: [2048, 128]``), so each value has one line to mark.

    Args:
        data: Plain data (mappings, lists, scalars).
        label: ``label(path, whole=False)``, e.g. :meth:`Origins.label`; ``default`` leaves a line unmarked.
    """
    rows: list[tuple[str, str]] = []
    _mapping(data, "", 0, rows, label)
    width = min(max((len(text) for text, mark in rows if mark), default=0), 60)
    return "\n".join(f"{text:<{width}}  # {mark}" if mark else text for text, mark in rows)


def _mapping(data: Mapping[str, Any], path: str, indent: int, rows: list[tuple[str, str]],
             label: Callable[..., str]) -> None:
    for key, value in data.items():
        _entry(f"{' ' * indent}{_flow(key)}:", value, join(path, key), indent, rows, label)


def _entry(head: str, value: Any, path: str, indent: int, rows: list[tuple[str, str]],
           label: Callable[..., str]) -> None:
    """One ``key:`` (or ``-``) line and what it holds, nested lines indented by two more spaces."""
    nested = isinstance(value, list | tuple) and any(isinstance(item, Mapping | list | tuple) for item in value)
    if isinstance(value, Mapping) and value:
        rows.append((head, ""))
        _mapping(value, path, indent + 2, rows, label)
    elif nested:
        rows.append((head, ""))
        for i, item in enumerate(value):
            _item(item, join(path, i), indent + 2, rows, label)
    else:
        mark = label(path, whole=isinstance(value, list | tuple))
        rows.append((f"{head} {_flow(value)}", "" if mark == DEFAULT else mark))


def _item(item: Any, path: str, indent: int, rows: list[tuple[str, str]], label: Callable[..., str]) -> None:
    """A list item: ``- key: value`` with its other keys under it, or ``- value``."""
    if isinstance(item, Mapping) and item:
        start = len(rows)
        _mapping(item, path, indent, rows, label)
        text, mark = rows[start]
        rows[start] = (f"{' ' * (indent - 2)}- {text[indent:]}", mark)
    else:
        _entry(f"{' ' * (indent - 2)}-", item, path, indent, rows, label)


def _flow(value: Any) -> str:
    """One value as YAML on one line (a list in brackets); JSON (which YAML reads) where YAML would wrap."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31, allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...")
    return text if "\n" not in text else json.dumps(value, ensure_ascii=False)
