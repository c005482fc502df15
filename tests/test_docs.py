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
  (:func:`assert_documented`), and the generated reference pages are checked
  to contain every hook, component and command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from jef.config import resolve
from jef.plugins import load_plugins
from jef.validate import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The lead's tutorial, tested end to end with the ``jef new-plugin`` generator.
NOT_RUN = {"plugins.md"}
READ_ONLY_COMMANDS = {"plugins", "list", "config"}


# -- reading the pages -----------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
SNIPPET = re.compile(r"""^[ \t]*--8<--[ \t]+["']([^"']+)["'][ \t]*$""", re.MULTILINE)


@dataclass
class Block:
    """One fenced code block of a page."""

    page: str
    lang: str
    title: str | None
    text: str
    line: int
    adjacent: bool  # nothing but blank lines since the previous block

    @property
    def first_line(self) -> str:
        return self.text.lstrip("\n").split("\n", 1)[0].strip()

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}:{self.lang or 'plain'}"


def expand_snippets(text: str) -> str:
    """Replace ``--8<-- "path"`` lines (pymdownx.snippets) with the file, as the site build does."""
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8").rstrip("\n"), text)


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown page, in order, snippets expanded."""
    page = path.relative_to(DOCS).as_posix()
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    i, last_end = 0, None
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match.group("indent"), match.group("fence"), match.group("info").strip()
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        lang = info.split()[0].lstrip(".").lower() if info else ""
        title = re.search(r"""title=["']([^"']+)["']""", info)
        adjacent = last_end is not None and all(not line.strip() for line in lines[last_end + 1:start])
        blocks.append(Block(page, lang, title.group(1) if title else None, expand_snippets("\n".join(body)),
                            start + 1, adjacent))
        last_end = i
        i += 1
    return blocks


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).as_posix() not in NOT_RUN)


def run_blocks() -> list[tuple[Block, Block | None]]:
    """Each block that is run, with the ``text`` block that shows its output (if any)."""
    out = []
    for path in pages():
        blocks = read_blocks(path)
        for index, block in enumerate(blocks):
            if block.lang in ("text", ""):
                continue
            following = blocks[index + 1] if index + 1 < len(blocks) else None
            expected = following if following and following.lang == "text" and following.adjacent else None
            out.append((block, expected))
    return out


BLOCKS = run_blocks()


def output_pattern(expected: str) -> re.Pattern[str]:
    """``...`` matches anything; runs of whitespace match any whitespace."""
    pieces = []
    for piece in expected.strip().split("..."):
        pieces.append(r"\s+".join(re.escape(word) for word in piece.split()))
        if piece[:1].isspace() and pieces[-1]:
            pieces[-1] = r"\s*" + pieces[-1]
    return re.compile(r"[\s\S]*?".join(pieces))


def assert_output(expected: str, actual: str, what: str) -> None:
    assert output_pattern(expected).search(actual), (
        f"{what}: the documented output does not match the real one.\n--- documented:\n{expected}\n"
        f"--- real:\n{actual}")


def text_blocks(page: str) -> list[str]:
    return [b.text for b in read_blocks(DOCS / page) if b.lang == "text"]


def assert_documented(page: str, key: str, actual: str) -> None:
    """A ``text`` block of ``page`` containing ``key`` shows ``actual`` (with ``...`` for what varies)."""
    shown = [text for text in text_blocks(page) if key in text]
    assert shown, f"docs/{page} no longer shows a message containing {key!r}"
    assert any(output_pattern(text).search(actual) for text in shown), (
        f"docs/{page} shows a message containing {key!r} that differs from the real one:\n"
        f"--- documented:\n" + "\n".join(shown) + f"\n--- real:\n{actual}")


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


def test_mkdocs_build_strict(site):
    assert (site / "index.html").is_file()


def test_every_hook_has_a_section_in_the_hook_reference(site):
    from jef import hookspecs

    html = (site / "reference" / "hooks" / "index.html").read_text(encoding="utf-8")
    hooks = sorted(name for name in dir(hookspecs) if name.startswith("jef_"))
    missing = [name for name in hooks if f'id="jef.hookspecs.{name}"' not in html]
    assert not missing, f"hooks without a section in the hook reference: {missing}"


def test_every_component_is_in_the_component_reference(site, plugins, hooks_module):
    html = (site / "reference" / "components" / "index.html").read_text(encoding="utf-8")
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
    html = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    missing = [e.name for e in plugins.registry.entries("command")
               if f'id="jef-{e.name}"' not in html or f"usage: jef {e.name}" not in html]
    assert not missing, f"commands missing from the CLI reference: {missing}"


def test_the_recipe_on_the_simclr_page_is_the_plugins_file(site):
    recipe = (ROOT / "plugins/jef-plugin-simclr/jef_plugin_simclr/recipe.yaml").read_text(encoding="utf-8")
    html = (site / "methods" / "simclr" / "index.html").read_text(encoding="utf-8")
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

    from jef.options import EvalOptions, TargetOptions, TrainOptions

    def paths(cls, prefix):
        for field in attrs.fields(cls):
            if isinstance(field.type, type) and attrs.has(field.type):
                yield from paths(field.type, f"{prefix}{field.name}.")
            else:
                yield prefix + field.name

    for section, cls in (("target", TargetOptions), ("train", TrainOptions), ("eval", EvalOptions)):
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


# -- messages the docs show, checked against the real ones -----------------------------------


def test_the_demo_result_line_is_what_jef_train_prints():
    from jef.builtin.commands import format_metrics

    actual = format_metrics({"knn_top1": 0.7285, "knn_top1_random": 0.6835, "loss": 1.0})
    assert_documented("quickstart.md", "kNN top-1", actual)


def tiny(overrides, plugins):
    from jef.config import merge
    from jef.testing import TINY_PIPELINE

    return resolve(merge(TINY_PIPELINE, overrides), source="pipeline.yaml", registry=plugins.registry)


def test_numba_missing_is_explained_as_documented(plugins, monkeypatch):
    from jef.augment import cpu_kernels
    from jef.registry import BuildError
    from jef.train import train

    monkeypatch.setattr(cpu_kernels, "_import", lambda: None)  # as if numba were not installed
    pipeline = tiny({"augmenter": {"name": "views", "cpu_backend": "numba"}}, plugins)
    with pytest.raises(BuildError) as error:
        train(pipeline, cpu=True, plugins=plugins)
    assert_documented("troubleshooting.md", "need numba", f"jef: error: {error.value}")


def test_the_run_directory_errors_are_documented(tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    from jef.run_dir import RunDirError, RunDirLock, claim_run_dir

    monkeypatch.chdir(tmp_path)
    main_process = SimpleNamespace(is_main_process=True, num_processes=1)
    pipeline = SimpleNamespace(run_dir=None, source="demo.yaml")

    def refusal(run_dir: str) -> str:
        with pytest.raises(RunDirError) as caught, claim_run_dir(pipeline, run_dir, main_process):
            pass
        return f"jef: error: {caught.value}"

    run_dir = Path("runs/demo")
    run_dir.mkdir(parents=True)
    for name in ("checkpoint.pt", "metrics.jsonl", "plugins.json"):
        (run_dir / name).write_text("")
    for page in ("troubleshooting.md", "reliability.md"):
        assert_documented(page, "holds a run already", refusal("runs/demo"))
    held = RunDirLock.acquire(run_dir)  # flock locks an open file: a second open in this process is refused too
    try:
        assert_documented("troubleshooting.md", "another jef process writes", refusal("runs/demo"))
    finally:
        held.release()
    (run_dir / "checkpoint.pt").unlink()
    with pytest.raises(RunDirError) as caught, claim_run_dir(pipeline, "runs/demo", main_process, resume=True):
        pass
    assert_documented("troubleshooting.md", "saved no checkpoint", f"jef: error: {caught.value}")
    shutil.rmtree("runs")
    Path("runs").mkdir()
    Path("runs/demo").write_text("")
    assert_documented("troubleshooting.md", "is a file, not a directory", refusal("runs/demo"))
    assert_documented("troubleshooting.md", "cannot be created: runs/demo is a file", refusal("runs/demo/run"))


def test_fp16_on_cpu_is_refused_as_documented(plugins):
    from jef.train import train

    pipeline = tiny({"train": {"precision": "fp16"}}, plugins)
    with pytest.raises(ValueError) as error:
        train(pipeline, cpu=True, plugins=plugins)
    assert_documented("troubleshooting.md", "fp16 needs a GPU", f"jef: error: {error.value}")


def test_a_launch_of_fewer_processes_than_asked_is_refused_as_documented():
    from jef.launch import check_process_count

    environ = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}
    command = ["accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "jef", "train", "byol-cifar10.yaml"]
    with pytest.raises(ValueError) as error:
        check_process_count(1, source="byol-cifar10.yaml", environ=environ, parent_command=command)
    assert_documented("distributed.md", "the launcher asked for", f"jef: error: {error.value}")


def test_too_little_data_is_refused_as_documented(tmp_path, plugins):
    from jef.train import train

    pipeline = tiny({"data": {"train_size": 100}, "train": {"batch_size": 256}}, plugins)
    with pytest.raises(ValueError) as error:
        train(pipeline, cpu=True, run_dir=tmp_path, plugins=plugins)
    assert_documented("troubleshooting.md", "fewer than one step", f"jef: error: {error.value}")


def test_a_nan_loss_stops_the_run_as_documented(tmp_path):
    import torch

    from jef import hookimpl
    from jef.testing import fresh_plugins, tiny_run

    class NanTerm(torch.nn.Module):
        def forward(self, out):
            return out.online.z[0].sum() * float("nan")

    class NanPlugin:
        @hookimpl
        def jef_register_functionals(self, register):
            register("nan_term", lambda options, ctx: NanTerm())

    with pytest.raises(FloatingPointError) as error:
        tiny_run({"functionals": [{"name": "info_nce", "temperature": 0.5}, {"name": "nan_term"}]},
                 plugins=fresh_plugins(NanPlugin()), run_dir=tmp_path)
    assert "non-finite 'nan_term'" in str(error.value)
    assert_documented("troubleshooting.md", "non-finite", f"jef: error: {error.value}")


def test_the_collapse_warning_is_as_documented():
    from jef.builtin.monitors import CollapseMonitor, CollapseOptions

    message = CollapseMonitor(CollapseOptions())._diagnose(std=0.0004, rank=1.02, dim=128, step=40)
    assert_documented("troubleshooting.md", "representation collapse", message)


def test_a_broken_plugin_is_shown_as_documented(capsys):
    from jef.builtin.commands import plugins_command
    from jef.testing import fake_distribution

    with fake_distribution("jef-plugin-ijepa", "import flash_attn_cuda\n", version="0.2.0"):
        loaded = load_plugins()
    plugins_command(argparse.Namespace(plugins=loaded, json=False, all=False))
    out, err = capsys.readouterr()
    assert_documented("troubleshooting.md", ": BROKEN", err + out)


def test_a_misspelt_hook_is_reported_as_documented(capsys):
    from jef import hookimpl
    from jef.testing import fresh_plugins

    class Typo:
        @hookimpl
        def jef_register_energys(self, register):
            pass

    loaded = fresh_plugins(Typo())
    assert loaded.infos["Typo"].status == "broken"
    assert_documented("troubleshooting.md", "unknown hook", capsys.readouterr().err)


def test_a_name_clash_is_reported_as_documented():
    from jef import hookimpl
    from jef.builtin.energies import build_mse
    from jef.testing import fresh_plugins

    class Losses:
        __name__ = "losses"  # the plugin's name, as an entry point would give it

        @hookimpl
        def jef_register_energies(self, register):
            register("mse", build_mse)

    loaded = fresh_plugins(Losses())
    with pytest.raises(ConfigError) as error:
        resolve({"energy": {"name": "mse"}}, source="pipeline.yaml", registry=loaded.registry)
    assert_documented("troubleshooting.md", "provided by several plugins", f"jef: error: {error.value}")
    chosen = resolve({"energy": {"name": "losses:mse"}}, registry=loaded.registry)
    assert chosen.energy.entry.provenance.plugin == "losses"


def test_resuming_without_a_checkpoint_is_reported_as_documented(tmp_path, monkeypatch):
    from jef.checkpoint import CHECKPOINT_NAME, load_checkpoint

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        load_checkpoint(Path("runs") / "demo" / CHECKPOINT_NAME)
    assert_documented("troubleshooting.md", "nothing to resume", f"jef: error: {error.value}")
