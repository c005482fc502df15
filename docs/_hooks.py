"""mkdocs hooks: the reference pages that are generated from the code at build time.

``mkdocs.yml`` names this file under ``hooks:``. Its :func:`on_page_markdown`
replaces placeholders in a page's Markdown before it is rendered:

* ``<!-- jef:components -->``: every registered component, one section per
  kind, with provider, description, paper and options table
  (:func:`components_markdown`);
* ``<!-- jef:cli -->``: the ``jef`` command line's help, top level and every
  sub-command (:func:`cli_markdown`);
* ``<!-- jef:options SECTION -->``: the options of a pipeline section that is
  not a plugin component, ``target``, ``train`` or ``eval``, with nested
  options spelt as YAML paths (:func:`options_markdown`);
* ``<!-- jef:hooks GROUP -->``: one mkdocstrings ``::: jef.hookspecs.NAME``
  directive per hook of the group (``setup``, ``registration``, ``run``), so a
  new hook appears in the hook reference without editing the page
  (:func:`hooks_markdown`).

The generators are plain functions so that ``tests/test_docs.py`` can call
them. An unknown placeholder fails the build.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

import attrs

#: ``<!-- jef:NAME [ARGUMENT] -->``
PLACEHOLDER = re.compile(r"<!--\s*jef:([\w-]+)(?:[ \t]+([^>]*?))?\s*-->")

#: Section titles of the component reference, in the order of :data:`jef.registry.KINDS`.
KIND_TITLES = {
    "method": "Methods",
    "augmenter": "Augmenters",
    "backbone": "Backbones",
    "head": "Heads (projectors and predictors)",
    "energy": "Energies D",
    "functional": "Functionals A/B",
    "target": "Targets",
    "masker": "Maskers",
    "tokenizer": "Tokenizers",
    "dataset": "Datasets",
    "monitor": "Monitors",
    "logger": "Loggers",
}

#: Width argparse formats help to, so the page does not depend on the terminal of whoever builds it.
HELP_COLUMNS = "88"

_PLUGINS: Any = None


def _plugins() -> Any:
    """The plugins installed in the building environment, loaded once per process."""
    global _PLUGINS
    if _PLUGINS is None:
        from jef.plugins import load_plugins

        _PLUGINS = load_plugins()
    return _PLUGINS


# -- formatting helpers --------------------------------------------------------------


def yaml_value(value: Any) -> str:
    """A default value as it would be written in a pipeline file: ``null``, ``true``, ``[0.08, 1.0]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        import yaml

        plain = value and re.fullmatch(r"[\w./~+-]+", value) and yaml.safe_load(value) == value
        return value if plain else repr(value)  # 'no' is false in YAML: quote it
    if isinstance(value, float):
        mantissa, e, exponent = repr(value).partition("e")
        if e and "." not in mantissa:  # PyYAML reads 1e-06 as a string, 1.0e-06 as a number
            return f"{mantissa}.0e{exponent}"
    return repr(value)


def type_name(text: str) -> str:
    """``Literal['a', 'b']`` -> ``'a' | 'b'``; other type names as they are."""
    return re.sub(r"Literal\[([^\]]*)\]", lambda m: " | ".join(x.strip() for x in m.group(1).split(",")), text)


def escape_cell(text: str) -> str:
    """Escape ``|`` outside code spans so a table cell stays one cell; no line breaks."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def component_anchor(kind: str, name: str, plugin: str | None = None) -> str:
    """The HTML id of one component's heading: ``head-mlp`` (``head-myplugin-mlp`` when names clash)."""
    return _slug(f"{kind}-{plugin}-{name}") if plugin else _slug(f"{kind}-{name}")


def option_rows(cls: type, prefix: str = "") -> list[dict[str, Any]]:
    """``{name, type, default, doc, required}`` for each field of an attrs class.

    Fields whose type is itself an attrs class are expanded into their own
    fields, named by YAML path (``optimizer.lr``).
    """
    from jef.components import describe_options

    attrs.resolve_types(cls)
    rows = []
    for row, field in zip(describe_options(cls), attrs.fields(cls), strict=True):
        name = prefix + row["name"]
        if isinstance(field.type, type) and attrs.has(field.type):
            rows += option_rows(field.type, name + ".")
            continue
        rows.append({**row, "name": name, "required": field.default is attrs.NOTHING})
    return rows


def options_table(cls: type, prefix: str = "") -> str:
    """A Markdown table of an attrs options class: option, type, default, meaning."""
    rows = option_rows(cls, prefix)
    if not rows:
        return "No options."
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for row in rows:
        default = "*required*" if row["required"] else f"`{yaml_value(row['default'])}`"
        lines.append(f"| `{row['name']}` | `{type_name(row['type'])}` | {default} | {escape_cell(row['doc'])} |")
    return "\n".join(lines)


# -- generators ------------------------------------------------------------------------


def components_markdown(plugins: Any = None, method_pages: frozenset[str] = frozenset()) -> str:
    """The component reference: one ``##`` section per kind, one ``###`` entry per component.

    Args:
        plugins: Loaded plugins (default: every installed one).
        method_pages: Methods with a page ``methods/NAME.md`` to link to.
    """
    from jef.config import LIST_SLOTS, SLOTS

    plugins = plugins or _plugins()
    registry = plugins.registry
    slots = {**SLOTS, **LIST_SLOTS}
    out = []
    for kind, title in KIND_TITLES.items():
        entries = registry.entries(kind)
        used_in = [f"`{slot}:`" for slot, k in {**slots, "target": "target"}.items() if k == kind]
        out.append(f"## {title} {{#{_slug(kind)}s}}\n")
        where = f"Selected with {' or '.join(used_in)} in a pipeline. " if used_in else \
            "Selected with `method:` in a pipeline. " if kind == "method" else ""
        out.append(f"{where}{len(entries)} registered. `jef list {kind}` shows the same for your install.\n")
        names = [e.name for e in entries]
        for entry in entries:
            clash = names.count(entry.name) > 1
            anchor = component_anchor(kind, entry.name, entry.provenance.plugin if clash else None)
            shown = entry.qualified_name if clash else entry.name
            out.append(f"### `{shown}` {{#{anchor}}}\n")
            if entry.description:
                text = entry.description.rstrip(".")
                out.append(f"{text[:1].upper()}{text[1:]}.\n")
            facts = [f"- **provided by:** `{entry.provenance}`"]
            if entry.paper:
                facts.append(f"- **paper:** {entry.paper}")
            out.append("\n".join(facts) + "\n")
            if kind == "method":
                slots_set = ", ".join(f"`{key}`" for key in entry.factory) or "nothing"
                page = f" The [method page](../methods/{entry.name}.md) explains it." \
                    if entry.name in method_pages else ""
                out.append(f"The recipe sets {slots_set}; `jef config show` prints it resolved.{page}\n")
            else:
                out.append(options_table(entry.options) + "\n")
    return "\n".join(out)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_markdown(plugins: Any = None) -> str:
    """The help of ``jef`` and of each registered sub-command, as ``text`` blocks."""
    from jef.cli import build_parser

    plugins = plugins or _plugins()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parser = build_parser(plugins)
        out = ["## `jef` {#jef}\n", "```text\n" + parser.format_help().rstrip() + "\n```\n"]
        for name, sub in sorted(_subparsers(parser).items()):
            entry = next((e for e in plugins.registry.entries("command") if name in (e.name, e.qualified_name)),
                         None)
            out.append(f"## `jef {name}` {{#{_slug('jef-' + name)}}}\n")
            if entry is not None:
                out.append(f"Provided by `{entry.provenance}`.\n")
            out.append("```text\n" + sub.format_help().rstrip() + "\n```\n")
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(out)


#: Pipeline sections documented by ``<!-- jef:options SECTION -->``.
SECTIONS = {"target": "jef.builtin.targets:EmaTargetOptions", "model": "jef.config.options:ModelOptions",
            "train": "jef.config.options:TrainOptions",
            "eval": "jef.config.options:EvalOptions"}


def options_markdown(section: str) -> str:
    """The options table of ``target`` (the ``ema`` target's), ``train`` or ``eval``, with YAML paths (``train.optimizer.lr``)."""
    import importlib

    if section not in SECTIONS:
        raise ValueError(f"jef:options: unknown section {section!r} (known: {', '.join(SECTIONS)})")
    module, _, name = SECTIONS[section].partition(":")
    return options_table(getattr(importlib.import_module(module), name), prefix=f"{section}.")


#: Groups of hooks on the hook reference page (``<!-- jef:hooks GROUP -->``).
HOOK_GROUPS = ("setup", "registration", "run")


def hook_group(name: str) -> str:
    """``registration`` for ``jef_register_*``, ``run`` for hooks taking the run, else ``setup``."""
    import inspect

    from jef import hookspecs

    if name.startswith("jef_register_"):
        return "registration"
    return "run" if "run" in inspect.signature(getattr(hookspecs, name)).parameters else "setup"


def hooks_markdown(group: str) -> str:
    """mkdocstrings directives for every hook of ``group``, in source order, one heading each."""
    import inspect

    from jef import hookspecs

    if group not in HOOK_GROUPS:
        raise ValueError(f"jef:hooks: unknown group {group!r} (known: {', '.join(HOOK_GROUPS)})")
    names = [n for n in dir(hookspecs) if n.startswith("jef_") and callable(getattr(hookspecs, n))]
    names.sort(key=lambda n: inspect.getsourcelines(getattr(hookspecs, n))[1])
    options = ("    options:\n      show_root_heading: true\n      show_root_full_path: false\n"
               "      heading_level: 3\n")
    return "\n".join(f"::: jef.hookspecs.{n}\n{options}" for n in names if hook_group(n) == group)


def render(markdown: str, plugins: Any = None, docs_dir: str | None = None) -> str:
    """Replace every ``<!-- jef:... -->`` placeholder in ``markdown``."""

    def replace(match: re.Match[str]) -> str:
        name, argument = match.group(1), (match.group(2) or "").strip()
        if name == "components":
            methods = frozenset(p.stem for p in Path(docs_dir).glob("methods/*.md")) if docs_dir else frozenset()
            return components_markdown(plugins, methods)
        if name == "cli":
            return cli_markdown(plugins)
        if name == "options":
            return options_markdown(argument)
        if name == "hooks":
            return hooks_markdown(argument)
        raise ValueError(f"unknown docs placeholder {match.group(0)!r} (known: jef:components, jef:cli, "
                         f"jef:options SECTION, jef:hooks GROUP)")

    return PLACEHOLDER.sub(replace, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs event: fill the generated parts of a page."""
    try:
        return render(markdown, docs_dir=config["docs_dir"])
    except ValueError as error:
        raise ValueError(f"{page.file.src_uri}: {error}") from error


#: Sphinx roles left in docstrings (``:class:`~jef.components.StepOutputs```), as mkdocstrings renders them.
_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):<code>(~?)([\w.]+)</code>")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs event: show Sphinx roles in docstrings as code (``~`` keeps the last name only, as Sphinx does)."""
    return _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)
