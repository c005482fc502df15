"""``jef new-plugin``: generate an installable plugin package that works out of the box.

The package has a ``pyproject.toml`` with the ``jef`` entry point, a module
with a working example component (or a whole method), a README and tests
(discovery, contract checks, a two-step training run) that pass as generated.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from string import Template

import jef

#: What ``--kind`` accepts, with the example each kind generates.
KINDS: dict[str, str] = {
    "method": "alignment + uniformity (Wang & Isola, 2020): an energy, a functional and the recipe",
    "energy": "a Huber distance between normalised embeddings",
    "functional": "uniformity over the global batch (gathered across processes)",
    "backbone": "a small MLP on the pixels",
    "augmenter": "random flips and Gaussian noise, per sample, on the device",
}
USAGE = {
    "method": "Use it in a pipeline with `method: ${name}`.",
    "energy": "Use it in a pipeline with `energy: {name: ${name}}`.",
    "functional": "Add it to a pipeline: `functionals: [{name: ${name}, weight: 1.0}]`.",
    "backbone": "Use it in a pipeline with `backbone: {name: ${name}}`.",
    "augmenter": "Use it in a pipeline with `augmenter: {name: ${name}}`.",
}
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


def plugin_names(name: str) -> dict[str, str]:
    """The names a plugin called ``name`` goes by: entry point, distribution, package, title.

    Raises:
        ValueError: when ``name`` is not lower-case letters, digits and ``_``/``-``, starting with a letter.
    """
    normalised = name.strip().lower().replace("-", "_").removeprefix("jef_plugin_")
    if not NAME_PATTERN.fullmatch(normalised):
        raise ValueError(f"plugin name {name!r}: use lower-case letters, digits, '_' or '-', starting with a "
                         f"letter (e.g. 'barlow' or 'my_method')")
    return {"name": normalised, "dist": "jef-plugin-" + normalised.replace("_", "-"),
            "package": "jef_plugin_" + normalised, "title": normalised.replace("_", " ").title()}


def default_directory() -> Path:
    """``plugins/`` when run from a checkout of jef (it has one), else the current directory."""
    return Path("plugins") if Path("plugins").is_dir() else Path(".")


def new_plugin(name: str, kind: str = "method", directory: str | Path | None = None) -> Path:
    """Write ``<directory>/jef-plugin-<name>/`` and return its path.

    The files are written to a temporary directory beside the target and
    renamed into place, so a failure never leaves a half-made plugin.

    Raises:
        ValueError: bad name or kind.
        FileExistsError: the target exists.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    names = plugin_names(name)
    parent = Path(directory) if directory is not None else default_directory()
    target = parent / names["dist"]
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another name or --directory")
    values = {**names, "kind": kind, "jef_version": ".".join(jef.__version__.split(".")[:2])}
    values["usage"] = Template(USAGE[kind]).substitute(values)
    templates = resources.files("jef.tools") / "templates"
    files = {
        "pyproject.toml": templates / "pyproject.toml.tmpl",
        "README.md": templates / "README.md.tmpl",
        f"{names['package']}/__init__.py": templates / kind / "__init__.py.tmpl",
        f"tests/test_{names['name']}.py": templates / kind / "test_plugin.py.tmpl",
    }
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{names['dist']}.", dir=parent))
    try:
        for relative, template in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Template(template.read_text(encoding="utf-8")).substitute(values), encoding="utf-8")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def generated_files(target: Path) -> list[str]:
    """The files of a generated plugin, relative and sorted (for messages and tests)."""
    return sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
