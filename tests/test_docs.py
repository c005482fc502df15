"""The documentation cannot drift from the code.

* ``mkdocs build --strict`` passes (broken links, anchors, pages missing from
  the nav, unreadable snippets and failing generators are all errors).
* Every example in ``docs/`` is run, page by page, except ``docs/plugins.md``
  (the "Writing a plugin" tutorial has its own end-to-end test):

  - ```` ```yaml ```` blocks are resolved as pipelines with
    ``jef.config.resolve(yaml.safe_load(text), registry=load_plugins().registry)``.
    A block whose first line is ``# fragment`` is only parsed. A block whose
    first line is ``# error`` must fail with a ``ConfigError``, and the
    ```` ```text ```` block right after it must show that error.
  - ```` ```python ```` blocks are executed in a fresh namespace, in a temporary
    working directory, and every ``test_*`` function they define is called
    (``tmp_path`` is passed when asked for). ``# fragment`` blocks are only
    compiled.
  - ```` ```bash ```` / ```` ```console ```` blocks: every line running ``jef``
    that is read-only (``jef plugins``, ``jef list``, ``jef config show``,
    ``--version``, ``--help``) is run through ``jef.cli.main`` and must exit 0,
    with ``VAR=value`` prefixes set in the environment. Lines that train
    (``jef train``, also under ``accelerate launch -m jef``) are not run, but
    their pipeline file and overrides are resolved and their options parsed.
    Other lines (``make``, ``pip``, ``apt-get``, ``tensorboard``) are skipped.
  - A ```` ```text ```` block is an output sample and is not run; one that comes
    right after a python or bash block (nothing but blank lines between) is that
    block's expected output and is compared with it. In expected output
    ``...`` matches anything and runs of whitespace match any whitespace.
  - A block with ``title="NAME"`` is also written to the working directory as
    ``NAME`` (which is on ``sys.path``), so later blocks can use it:
    ``jef config show photos.yaml``, ``import jef_plugin_spread``.
    ``examples/`` of the repository is available there too.

* Error messages shown in the docs are checked against the real ones
  (tests/test_documented_messages.py, with ``docs_text.assert_documented``), and the generated reference pages are checked
  to contain every hook, component and command.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jef.config import resolve
from jef.plugins import load_plugins
from jef.config.validate import ConfigError

from docs_text import BLOCKS, DOCS, READ_ONLY_COMMANDS, ROOT, Block, assert_output, read_blocks


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.fixture(scope="module")
def hooks_module():
    """``docs/_hooks.py``, the generators behind the reference pages."""
    spec = importlib.util.spec_from_file_location("jef_docs_hooks", DOCS / "_hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode, old = True, sys.dont_write_bytecode  # keep docs/ free of __pycache__
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = old
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once with ``mkdocs build --strict``."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[test]' installs it)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory on ``sys.path`` with ``examples/`` of the repository."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:  # modules written by the page: forget them
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        if module_file.startswith(str(tmp_path)):
            del sys.modules[name]


def write_titled_files(page: str, directory: Path) -> None:
    for block in read_blocks(DOCS / page):
        if block.title and block.first_line != "# error":
            (directory / block.title).write_text(block.text + "\n", encoding="utf-8")


# -- running the examples ---------------------------------------------------------------


def run_yaml(block: Block, expected: Block | None, plugins) -> None:
    data = yaml.safe_load(block.text)
    if block.first_line.startswith("# fragment"):
        return
    source = block.title or "pipeline.yaml"
    if block.first_line.startswith("# error"):
        with pytest.raises(ConfigError) as error:
            resolve(data, source=source, registry=plugins.registry)
        assert expected is not None, f"{block.id}: an '# error' block must be followed by a text block"
        assert_output(expected.text, f"jef: error: {error.value}", block.id)
        return
    resolve(data, source=source, registry=plugins.registry)


def run_python(block: Block, expected: Block | None, tmp_path: Path) -> None:
    code = compile(block.text, f"<{block.id}>", "exec")
    if block.first_line.startswith("# fragment"):
        return
    namespace = {"__name__": f"docs_example_{block.line}"}
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(code, namespace)
        for name, function in list(namespace.items()):
            if name.startswith("test_") and callable(function):
                wanted = inspect.signature(function).parameters
                function(**({"tmp_path": tmp_path} if "tmp_path" in wanted else {}))
    if expected is not None:
        assert_output(expected.text, stdout.getvalue(), block.id)


def command_lines(text: str) -> list[str]:
    """Shell lines, continuation lines joined, prompts removed."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip().removeprefix("$ ") for line in joined.split("\n") if line.strip()]


def jef_arguments(line: str) -> tuple[dict[str, str], list[str]] | None:
    """``(environment, arguments)`` of a line that runs jef, or None."""
    words = shlex.split(line, comments=True)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words[:1] == ["jef"]:
        return env, words[1:]
    if "-m" in words and words[words.index("-m") + 1:words.index("-m") + 2] == ["jef"]:
        return env, words[words.index("-m") + 2:]
    return None


def check_training_line(arguments: list[str], plugins) -> None:
    """Do not train: check the options parse and the pipeline with its overrides resolves."""
    from jef.cli import build_parser
    from jef.config import load_pipeline

    parser = build_parser(plugins)
    parser.exit = lambda status=0, message=None: pytest.fail(f"jef {' '.join(arguments)}: {message}")
    args, extra = parser.parse_known_args(arguments)
    assert all("=" in item and not item.startswith("-") for item in extra), extra
    if getattr(args, "pipeline", None):
        load_pipeline(args.pipeline, [*args.overrides, *extra], registry=plugins.registry)


def run_shell(block: Block, expected: Block | None, plugins, monkeypatch) -> None:
    from jef.cli import main

    stdout, ran_all = io.StringIO(), True
    for line in command_lines(block.text):
        parsed = jef_arguments(line)
        if parsed is None:
            ran_all = False  # make, pip, apt-get, tensorboard: not run here
            continue
        env, arguments = parsed
        read_only = (arguments[:1] and arguments[0] in READ_ONLY_COMMANDS) or \
            {"--help", "-h", "--version"} & set(arguments)
        if not read_only:
            ran_all = False
            if arguments[:1] == ["train"]:
                check_training_line(arguments, plugins)
            continue
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            with contextlib.redirect_stdout(stdout):
                try:
                    status = main(arguments)
                except SystemExit as exit_:  # --help, --version
                    status = exit_.code or 0
        assert status == 0, f"{block.id}: `{line}` exited with {status}"
    if expected is not None and ran_all:
        assert_output(expected.text, stdout.getvalue(), block.id)


@pytest.mark.parametrize("block,expected", BLOCKS, ids=[b.id for b, _ in BLOCKS])
def test_docs_example(block, expected, plugins, workdir, monkeypatch):
    write_titled_files(block.page, workdir)
    if block.lang == "yaml":
        run_yaml(block, expected, plugins)
    elif block.lang == "python":
        run_python(block, expected, workdir)
    elif block.lang in ("bash", "console", "shell", "sh"):
        run_shell(block, expected, plugins, monkeypatch)
    elif block.lang in ("toml", "ini", "json"):
        pass  # configuration samples, shown for reading
    else:
        pytest.fail(f"{block.id}: no rule for ```{block.lang} blocks; add one to tests/test_docs.py")


def test_the_examples_are_found():
    langs = {b.lang for b, _ in BLOCKS}
    assert {"yaml", "python", "bash"} <= langs
    assert sum(b.first_line == "# error" for b, _ in BLOCKS) >= 5


# -- the site ----------------------------------------------------------------------------


def page_html(site: Path, page: str) -> Path:
    """The built page ``page`` (``reference/hooks``): ``page.html`` (``use_directory_urls: false``) or ``page/index.html``."""
    flat = site / f"{page}.html"
    return flat if flat.is_file() else site / page / "index.html"


def test_mkdocs_build_strict(site):
    assert (site / "index.html").is_file()


def test_the_site_works_from_disk(site):
    """``use_directory_urls: false``: pages are ``page.html``, and index.html links to them by that name, so
    ``site/index.html`` opened as a file (no web server) navigates."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!relative", ""))
    assert config.get("use_directory_urls") is False
    assert (site / "quickstart.html").is_file() and (site / "reference" / "hooks.html").is_file()
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="quickstart.html"' in index and 'href="quickstart/"' not in index


#: Longest line a fenced code block of docs/*.md may have when the site's CSS does not wrap code.
CODE_COLUMNS = 100


def test_long_code_lines_wrap_or_fit():
    """Code blocks wrap (docs/stylesheets/extra.css, in mkdocs.yml's extra_css), or no line is over CODE_COLUMNS."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!relative", ""))
    css = DOCS / "stylesheets" / "extra.css"
    wraps = ("stylesheets/extra.css" in (config.get("extra_css") or []) and css.is_file()
             and re.search(r"pre\s*>\s*code\s*\{[^}]*white-space:\s*pre-wrap", css.read_text(encoding="utf-8")))
    if wraps:
        return
    long = [f"{block.id}: {len(line)} columns" for path in sorted(DOCS.rglob("*.md")) for block in read_blocks(path)
            for line in block.text.split("\n") if len(line) > CODE_COLUMNS]
    assert not long, f"code lines over {CODE_COLUMNS} columns and no CSS that wraps them: {long}"


def test_every_hook_has_a_section_in_the_hook_reference(site):
    from jef import hookspecs

    html = (page_html(site, "reference/hooks")).read_text(encoding="utf-8")
    hooks = sorted(name for name in dir(hookspecs) if name.startswith("jef_"))
    missing = [name for name in hooks if f'id="jef.hookspecs.{name}"' not in html]
    assert not missing, f"hooks without a section in the hook reference: {missing}"


def test_every_component_is_in_the_component_reference(site, plugins, hooks_module):
    html = (page_html(site, "reference/components")).read_text(encoding="utf-8")
    entries = [e for e in plugins.registry.entries() if e.kind != "command"]
    assert entries
    names = [(e.kind, e.name) for e in entries]
    missing = []
    for entry in entries:
        clash = names.count((entry.kind, entry.name)) > 1
        anchor = hooks_module.component_anchor(entry.kind, entry.name, entry.provenance.plugin if clash else None)
        if f'id="{anchor}"' not in html:
            missing.append(f"{entry.kind} {entry.name}")
    assert not missing, f"components missing from the component reference: {missing}"


def test_every_command_is_in_the_cli_reference(site, plugins):
    html = (page_html(site, "reference/cli")).read_text(encoding="utf-8")
    missing = [e.name for e in plugins.registry.entries("command")
               if f'id="jef-{e.name}"' not in html or f"usage: jef {e.name}" not in html]
    assert not missing, f"commands missing from the CLI reference: {missing}"


def test_the_recipe_on_the_simclr_page_is_the_plugins_file(site):
    recipe = (ROOT / "plugins/jef-plugin-simclr/jef_plugin_simclr/recipe.yaml").read_text(encoding="utf-8")
    html = (page_html(site, "methods/simclr")).read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", html)
    assert "name: scaled_cosine" in text and recipe.splitlines()[0][:40] in text.replace("&#39;", "'")


# -- the generators, without mkdocs -------------------------------------------------------


def test_generated_references_name_everything(plugins, hooks_module):
    components = hooks_module.components_markdown(plugins)
    for entry in plugins.registry.entries():
        if entry.kind != "command":
            assert f"`{entry.name}`" in components, entry
    cli = hooks_module.cli_markdown(plugins)
    for entry in plugins.registry.entries("command"):
        assert f"## `jef {entry.name}`" in cli
    assert "usage: jef" in cli
    for section in ("target", "train", "eval"):
        table = hooks_module.options_markdown(section)
        assert f"`{section}." in table


def test_generated_option_tables_cover_every_option(hooks_module):
    import attrs

    from jef.builtin.targets import EmaTargetOptions as TargetOptions
    from jef.config.options import EvalOptions, ModelOptions, TrainOptions

    def paths(cls, prefix):
        for field in attrs.fields(cls):
            if isinstance(field.type, type) and attrs.has(field.type):
                yield from paths(field.type, f"{prefix}{field.name}.")
            else:
                yield prefix + field.name

    for section, cls in (("target", TargetOptions), ("model", ModelOptions), ("train", TrainOptions),
                         ("eval", EvalOptions)):
        table = hooks_module.options_markdown(section)
        for path in paths(cls, f"{section}."):
            assert f"`{path}`" in table, path


def test_defaults_in_tables_read_back_as_yaml(hooks_module):
    for value in (1e-6, 0.3, None, True, "no", "relu", (0.08, 1.0), [1, 2], "~/.cache/jef"):
        text = hooks_module.yaml_value(value)
        assert yaml.safe_load(text) == (list(value) if isinstance(value, tuple) else value), text


def test_an_unknown_placeholder_fails_the_build(hooks_module):
    with pytest.raises(ValueError, match="unknown docs placeholder"):
        hooks_module.render("<!-- jef:componets -->")


# -- pages that the docs tests must keep complete ------------------------------------------


def test_every_top_level_key_is_in_the_pipeline_reference():
    from jef.config import TOP_LEVEL

    text = (DOCS / "pipelines.md").read_text(encoding="utf-8")
    missing = [key for key in TOP_LEVEL if f"| `{key}` |" not in text]
    assert not missing, f"top-level keys missing from the table in docs/pipelines.md: {missing}"


def test_every_method_has_a_page(plugins):
    index = (DOCS / "methods" / "index.md").read_text(encoding="utf-8")
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for entry in plugins.registry.entries("method"):
        page = DOCS / "methods" / f"{entry.name}.md"
        assert page.is_file(), f"method {entry.name!r} has no page docs/methods/{entry.name}.md"
        assert f"[`{entry.name}`]({entry.name}.md)" in index, f"method {entry.name!r} is not in methods/index.md"
        assert f"methods/{entry.name}.md" in nav
        text = page.read_text(encoding="utf-8")
        assert "arXiv" in text and "--8<--" in text, f"{page.name}: cite the paper and include the recipe file"
