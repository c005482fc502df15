"""The hardened YAML reader of pipeline files and method recipes.

``yaml.safe_load`` semantics (plain data, no Python objects), and more: duplicate keys are refused, nesting and
alias expansion are bounded, a file that is no pipeline (a directory, a checkpoint, binary data) is named as such,
and every error gives the line and column with the offending line and a caret. It knows nothing of components or
plugins, so that the name table (:mod:`jef.registry`) can read recipes with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from jef.config.validate import ConfigError, describe, join, short

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_VALUES", "check_size", "parse_yaml", "read_yaml"]

#: Pipelines are small; these bound what aliases can expand to and how deep data may nest.
MAX_VALUES, MAX_DEPTH = 10_000, 32
#: A larger "pipeline file" is a data file or checkpoint given by mistake.
MAX_FILE_BYTES = 4 * 2**20


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


def check_size(data: Any, path: str = "") -> None:
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
