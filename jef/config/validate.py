"""Turn plain YAML data into attrs option objects, with errors a user can act on.

Every error names the YAML path (``train.optimizer.lr``), what was expected,
what was found and, for misspellings, the closest valid key.
"""

from __future__ import annotations

import math
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from jef.names import closest


class ConfigError(ValueError):
    """A pipeline is invalid. The message names the file and the YAML path."""

    def __init__(self, message: str, *, path: str = "", source: str = "") -> None:
        self.path, self.source, self.reason = path, source, message
        where = ": ".join(part for part in (source, path) if part)
        super().__init__(f"{where}: {message}" if where else message)

    def located(self, source: str) -> ConfigError:
        """The same error with the file named."""
        return ConfigError(self.reason, path=self.path, source=source)


#: Integers a pipeline may hold: jef hands them to torch and numpy, which take 64-bit integers.
INT_LIMIT = 2**63


def join(path: str, key: str | int) -> str:
    """``join("train", "lr") == "train.lr"``; list indices are written as ``functionals.0``."""
    text = key if isinstance(key, str) else short(key)
    if len(text) > 60:  # a pasted blob as a key
        text = f"{text[:45]}...{text[-10:]}"
    return f"{path}.{text}" if path else text


def build_options(cls: type, data: Mapping[str, Any] | None, path: str) -> Any:
    """Validate ``data`` against the attrs class ``cls`` and instantiate it.

    Raises:
        ConfigError: unknown key (with suggestion), wrong type, or a value a
            validator rejects.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of options, got {describe(data)}", path=path)
    _resolve(cls)
    fields = {field.name: field for field in attrs.fields(cls) if field.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            hint = closest(key, list(fields)) if isinstance(key, str) else None
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            valid = ", ".join(fields) or "none"
            raise ConfigError(f"unknown key {short(key)}{suggestion} (valid keys: {valid})", path=join(path, key))
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
                errors.append((option, error))
        # A value of the right kind but a bad content (nan in `float | None`) is best told by that option.
        for option, error in errors:
            if _same_kind(option, value):
                raise error
        raise ConfigError(f"expected {_type_name(annotation)}, got {describe(value)}", path=path)
    if origin is typing.Literal:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off (yes/on) as a boolean: `precision: no`
            spelt = next((word for word in (("yes", "on") if value else ("no", "off")) if word in args), None)
            if spelt is not None:
                return spelt
        if isinstance(value, str | int | float | bool | None) and value in args:
            return value
        hint = closest(value, [str(a) for a in args]) if isinstance(value, str) else None
        raise ConfigError(f"expected one of {', '.join(map(repr, args))}, got {short(value)}"
                          + (f"; did you mean {hint!r}?" if hint else ""), path=path)
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"expected null, got {describe(value)}", path=path)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list ({_type_name(annotation)}), got {describe(value)}", path=path)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"expected a list of {len(args)} values, got {len(value)}", path=path)
            return tuple(coerce(v, a, join(path, i)) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [coerce(v, item, join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or annotation is tuple) else items
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {describe(value)}", path=path)
        return dict(value)
    if isinstance(annotation, type) and attrs.has(annotation):
        return build_options(annotation, value, path)
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _finite(value, path)
    elif annotation is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= INT_LIMIT:
                raise ConfigError(f"expected an integer that fits in 64 bits, got {describe(value)}", path=path)
            return value
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
    raise ConfigError(f"expected {_type_name(annotation)}, got {describe(value)}{_number_hint(annotation, value)}",
                      path=path)


def _same_kind(annotation: Any, value: Any) -> bool:
    """Whether ``value`` has the outer shape ``annotation`` asks for (its content may still be wrong)."""
    origin = typing.get_origin(annotation)
    if value is None or annotation is type(None):
        return False
    if origin is typing.Literal:
        return any(type(value) is type(a) for a in typing.get_args(annotation))
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, list | tuple)
    if origin in (dict, Mapping) or annotation in (dict, Mapping) or (
            isinstance(annotation, type) and attrs.has(annotation)):
        return isinstance(value, Mapping)
    if annotation in (int, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(annotation, type) and isinstance(value, annotation)


def _finite(value: int | float, path: str) -> float:
    """``value`` as a finite float: NaN, infinities and integers beyond float range are mistakes, not settings."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"expected a finite number, got {describe(value)}; write an ordinary number "
                          f"such as 0.1 or 1.0e-6", path=path)
    return number


def _number_hint(annotation: Any, value: Any) -> str:
    """YAML 1.1 reads ``1e-6`` (no dot) as a string: say how to write the number."""
    if annotation not in (int, float) or not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    match = re.fullmatch(r"\s*([+-]?\d+)([eE][+-]?\d+)\s*", value)
    if match and annotation is float:
        return f"; YAML reads an exponent without a dot as text: write {match.group(1)}.0{match.group(2)}"
    if match:
        return "; write the integer in digits, e.g. 1000"
    return "; write it without quotes to make it a number" if math.isfinite(number) else ""


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


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # Python refuses to print integers of more than 4300 digits (YAML's 0x... reaches them cheaply).
        if x.bit_length() > 14_000:
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
        if x.bit_length() > 128:
            return f"<an integer of {len(str(abs(x)))} digits>"
        return super().repr_int(x, level)


_SHORT = _ShortRepr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 40, 40, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6


def short(value: Any) -> str:
    """``repr(value)`` cut to a readable length; safe on recursive or alias-expanded YAML data."""
    return _SHORT.repr(value)


def describe(value: Any) -> str:
    """``str 'ten'``, ``list [1, 2]``, ``null``: a value as an error message shows it."""
    if value is None:
        return "null"
    if isinstance(value, int) and value.bit_length() > 128:
        return short(value)[1:-1]
    return f"{type(value).__name__} {short(value)}"


def _validator_message(error: Exception) -> str:
    """attrs validators write ``'lr' must be > 0.0: -1.0``; say it as ``must be > 0.0, got -1.0``."""
    text = str(error.args[0]) if error.args else str(error)
    match = re.match(r"^'(\w+)' (.*?)(?:: (.*))?$", text, re.DOTALL)
    if match:
        reason, value = match.group(2), match.group(3)
        if len(error.args) >= 4:
            value = short(error.args[-1])
        if value is None or re.search(r"\bgot\b", reason):  # the validator already shows the value
            return reason
        return f"{reason}, got {value}"
    match = re.match(r"^Length of '(\w+)' (.*?): (.*)$", text, re.DOTALL)  # attrs' min_len / max_len
    if match:
        return f"length {match.group(2)}, got {match.group(3)}"
    return text


def _validator_path(error: Exception, path: str) -> str:
    """The offending field: attrs validators pass it as their second argument, or name it in the message."""
    if len(error.args) >= 2 and isinstance(error.args[1], attrs.Attribute):
        return join(path, error.args[1].name)
    text = str(error.args[0]) if error.args else ""
    match = re.match(r"^(?:Length of )?'(\w+)' ", text)
    return join(path, match.group(1)) if match else path
