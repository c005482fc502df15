"""Turn plain YAML data into attrs option objects, with errors a user can act on.

Every error names the YAML path (``train.optimizer.lr``), what was expected,
what was found and, for misspellings, the closest valid key.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from jef.registry import closest


class ConfigError(ValueError):
    """A pipeline is invalid. The message names the file and the YAML path."""

    def __init__(self, message: str, *, path: str = "", source: str = "") -> None:
        self.path, self.source, self.reason = path, source, message
        where = ": ".join(part for part in (source, path) if part)
        super().__init__(f"{where}: {message}" if where else message)

    def located(self, source: str) -> ConfigError:
        """The same error with the file named."""
        return ConfigError(self.reason, path=self.path, source=source)


def join(path: str, key: str | int) -> str:
    """``join("train", "lr") == "train.lr"``; list indices are written as ``functionals.0``."""
    return f"{path}.{key}" if path else str(key)


def build_options(cls: type, data: Mapping[str, Any] | None, path: str) -> Any:
    """Validate ``data`` against the attrs class ``cls`` and instantiate it.

    Raises:
        ConfigError: unknown key (with suggestion), wrong type, or a value a
            validator rejects.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of options, got {_describe(data)}", path=path)
    _resolve(cls)
    fields = {field.name: field for field in attrs.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            hint = closest(str(key), list(fields))
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            valid = ", ".join(fields) or "none"
            raise ConfigError(f"unknown key {key!r}{suggestion} (valid keys: {valid})", path=join(path, key))
        kwargs[key] = coerce(value, fields[key].type, join(path, key))
    missing = [name for name, field in fields.items()
               if field.default is attrs.NOTHING and name not in kwargs]
    if missing:
        raise ConfigError(f"missing required key(s): {', '.join(missing)}", path=path)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(_validator_message(error), path=_validator_path(error, path)) from error


def coerce(value: Any, annotation: Any, path: str) -> Any:
    """Check ``value`` against a type annotation, converting where YAML is loose (int -> float, list -> tuple)."""
    if annotation is None or annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        errors = []
        # Try exact types first so that 1 stays an int in `int | float` and None matches None.
        for option in sorted(args, key=lambda a: a is not type(value)):
            try:
                return coerce(value, option, path)
            except ConfigError as error:
                errors.append(error)
        raise ConfigError(f"expected {_type_name(annotation)}, got {_describe(value)}", path=path)
    if origin is typing.Literal:
        if value in args:
            return value
        hint = closest(str(value), [str(a) for a in args])
        raise ConfigError(f"expected one of {', '.join(map(repr, args))}, got {value!r}"
                          + (f"; did you mean {hint!r}?" if hint else ""), path=path)
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"expected null, got {_describe(value)}", path=path)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list ({_type_name(annotation)}), got {_describe(value)}", path=path)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"expected a list of {len(args)} values, got {len(value)}", path=path)
            return tuple(coerce(v, a, join(path, i)) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [coerce(v, item, join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or annotation is tuple) else items
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {_describe(value)}", path=path)
        return dict(value)
    if isinstance(annotation, type) and attrs.has(annotation):
        return build_options(annotation, value, path)
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
    else:
        return value
    raise ConfigError(f"expected {_type_name(annotation)}, got {_describe(value)}", path=path)


def to_plain(options: Any) -> Any:
    """An attrs instance (or nested data) as YAML-friendly plain data."""
    if attrs.has(type(options)):
        return {field.name: to_plain(getattr(options, field.name)) for field in attrs.fields(type(options))}
    if isinstance(options, list | tuple):
        return [to_plain(v) for v in options]
    if isinstance(options, Mapping):
        return {k: to_plain(v) for k, v in options.items()}
    return options


def _resolve(cls: type) -> None:
    try:
        attrs.resolve_types(cls)
    except NameError as error:
        raise TypeError(f"options class {cls.__qualname__}: cannot resolve annotation ({error}); "
                        f"define it without string annotations") from error


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
            annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
    return f"{type(value).__name__} {shown}"


def _validator_message(error: Exception) -> str:
    """attrs validators write ``'lr' must be > 0.0: -1.0``; say it as ``must be > 0.0, got -1.0``."""
    text = str(error.args[0]) if error.args else str(error)
    match = re.match(r"^'(\w+)' (.*?)(?:: (.*))?$", text, re.DOTALL)
    if match:
        reason, value = match.group(2), match.group(3)
        if len(error.args) >= 4:
            value = repr(error.args[-1])
        return f"{reason}, got {value}" if value is not None else reason
    return text


def _validator_path(error: Exception, path: str) -> str:
    text = str(error.args[0]) if error.args else ""
    match = re.match(r"^'(\w+)' ", text)
    return join(path, match.group(1)) if match else path
