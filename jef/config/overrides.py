"""``key.path=value`` overrides of a pipeline, as ``jef train pipeline.yaml train.epochs=5`` takes them."""

from __future__ import annotations

import copy
from typing import Any

from jef.config.validate import ConfigError, describe, join
from jef.config.yaml import check_size, parse_yaml

__all__ = ["apply_overrides", "override_source"]


def apply_overrides(data: dict[str, Any], overrides: list[str], *, origins: Any = None) -> dict[str, Any]:
    """Apply ``a.b.0.c=value`` strings; values are parsed as YAML (``0.1``, ``[1, 2]``, ``null``).

    Args:
        data: The merged pipeline data (not changed: a copy is returned).
        overrides: The ``key.path=value`` strings, applied in order.
        origins: A :class:`jef.config.provenance.Origins` to record each value as the command line's.

    Raises:
        ConfigError: an override that is malformed or cannot be applied; its source is
            ``command line override '<text>'``.
    """
    data = copy.deepcopy(data)
    for override in overrides:
        try:
            _apply(data, override, origins)
        except ConfigError as error:
            raise ConfigError(error.reason, path=error.path,
                              source=override_source(override)) from error.__cause__
    return data


def _apply(data: dict[str, Any], override: str, origins: Any) -> None:
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(part.strip() for part in parts):
        raise ConfigError("must look like key.path=value, e.g. train.optimizer.lr=0.1 or "
                          "functionals.0.temperature=0.2")
    parts = [part.strip() for part in parts]
    paths = [join("", parts[0])]
    for part in parts[1:]:
        paths.append(join(paths[-1], part))
    try:
        value = parse_yaml(raw)
        check_size(value, paths[-1])
    except ConfigError as error:
        raise ConfigError(f"value is not valid: {error.reason}", path=error.path) from error.__cause__
    node: Any = data
    for part, path in zip(parts[:-1], paths, strict=False):
        node = _step_into(node, part, path)
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, paths[-1])] = value
    elif isinstance(node, dict):
        if last == "name" and node.get("name", value) != value:
            node.clear()  # another component: the old one's options do not apply
            if origins is not None and len(paths) > 1:
                origins.drop(paths[-2])
        node[last] = value
    else:
        raise ConfigError(f"cannot set {_quote(last, 40)} inside {paths[-2]}, which is {describe(node)}, "
                          f"not a mapping")
    if origins is not None:
        origins.set(paths[-1], value, "command line", override=override)


def override_source(override: str) -> str:
    """How errors name an override as their source: ``command line override 'train.lr=0.1'``."""
    return f"command line override {_quote(override)}"


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
