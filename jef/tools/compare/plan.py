"""What a compare runs: the shared pipeline file, the methods and seeds, and one resolved pipeline per run.

The user's file holds the choices every method shares (data, backbone, train budget, eval, seed) and no
``method:``. Each run's pipeline is that file with ``method: M`` and ``seed: S``, then the overrides, merged as
``jef train`` merges (:func:`jef.config.resolve`: core defaults, the method's recipe, the file, the overrides):
the recipe supplies the parts the file leaves out (augmenter, heads, target, energy, functionals, optimiser).
Every run's pipeline is resolved before anything trains, so a typo fails in seconds, not after hours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from jef.config import ConfigError, Pipeline, read_yaml, resolve
from jef.config.pipeline import MAX_SEED
from jef.names import closest
from jef.registry import Registry, RegistryError

__all__ = ["BASELINES", "CompareError", "Plan", "RunSpec", "make_plan", "slug"]

#: The baselines ``--baselines`` can add, in the order their rows appear.
BASELINES = ("random", "pixels")


class CompareError(Exception):
    """The compare cannot start: the message says what is wrong and what to pass instead."""


@attrs.frozen
class RunSpec:
    """One training run of the compare.

    Attributes:
        method: The method's name as given to ``--methods``.
        seed: The run's seed.
        directory: Its run directory, ``DIR/runs/<method>/seed<seed>``.
        pipeline: Its resolved pipeline.
    """

    method: str
    seed: int
    directory: Path
    pipeline: Pipeline

    @property
    def name(self) -> str:
        """``method/seedS``: the run's name in curves and messages."""
        return f"{self.method}/seed{self.seed}"


@attrs.frozen
class Plan:
    """Everything a compare runs, checked.

    Attributes:
        source: The shared pipeline file.
        output: The output directory.
        methods: The methods, in the order given.
        seeds: The seeds, in the order given.
        runs: One run per method and seed, methods first.
        baselines: The baselines asked for (of :data:`BASELINES`).
    """

    source: Path
    output: Path
    methods: list[str]
    seeds: list[int]
    runs: list[RunSpec]
    baselines: list[str]


def slug(name: str) -> str:
    """A directory-safe form of a method name (``plugin:name`` qualified names included)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "method"


def _key(override: str) -> str:
    return override.partition("=")[0].strip()


def _duplicates(items: Sequence[Any]) -> list[Any]:
    return sorted({item for item in items if list(items).count(item) > 1}, key=str)


def check_methods(methods: Sequence[str], registry: Registry) -> None:
    """Each name is a registered method, given once; an unknown one gets the list of methods and a did-you-mean."""
    if not methods:
        raise CompareError("no method given; name two or more with --methods, e.g. --methods simclr byol "
                           "(`jef list method` lists them)")
    if twice := _duplicates(methods):
        raise CompareError(f"--methods names {', '.join(map(repr, twice))} more than once; give each method once")
    names = sorted({entry.name for entry in registry.entries("method")})
    for method in methods:
        try:
            registry.get("method", method)
        except RegistryError as error:
            if method in names or ":" in method:  # ambiguous, or a qualified name: the registry says why
                raise CompareError(f"--methods {method}: {error}") from None
            hint = closest(method, names)
            raise CompareError(f"unknown method {method!r}" + (f"; did you mean {hint!r}?" if hint else "")
                               + f" (methods, as `jef list method` lists them: {', '.join(names) or 'none'})"
                               ) from None


def check_seeds(seeds: Sequence[int]) -> None:
    """Seeds are distinct integers a pipeline accepts."""
    if twice := _duplicates(seeds):
        raise CompareError(f"--seeds repeats {', '.join(map(str, twice))}; a seed run twice gives the same numbers "
                           f"twice and shrinks the spread; give each seed once, e.g. --seeds 0 1 2")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise CompareError(f"--seeds {seed}: a seed is an integer from 0 to {MAX_SEED}")


def make_plan(pipeline: str | Path, methods: Sequence[str], *, output: str | Path, registry: Registry,
              seeds: Sequence[int] | None = None, overrides: Sequence[str] = (),
              method_overrides: Mapping[str, Sequence[str]] | None = None,
              baselines: Sequence[str] = ()) -> Plan:
    """Read the shared pipeline and resolve one pipeline per method and seed.

    Args:
        pipeline: The shared pipeline file (no ``method:``).
        methods: Registered method names.
        output: The compare's output directory.
        registry: The registry methods and components are looked up in.
        seeds: The seeds (default: the file's ``seed``, else 0).
        overrides: ``key.path=value`` overrides of every run.
        method_overrides: ``{method: [key.path=value]}`` overrides of that method's runs only, applied after
            ``overrides``.
        baselines: Of :data:`BASELINES`.

    Raises:
        CompareError: A ``method:`` in the file or the overrides, an unknown or repeated method or seed, an
            unknown baseline, a run's pipeline that does not resolve (the method and the YAML path named).
        ConfigError: The file cannot be read (named).
    """
    source = Path(pipeline)
    user = read_yaml(source)
    if "method" in user:
        raise CompareError(f"{source}: sets `method: {user['method']}`; a compare pipeline holds only the choices "
                           f"the methods share (data, backbone, train, eval, seed): remove `method:` and name the "
                           f"methods with --methods, e.g. --methods simclr byol")
    overrides, method_overrides = list(overrides), {k: list(v) for k, v in (method_overrides or {}).items()}
    for override in [*overrides, *(o for extra in method_overrides.values() for o in extra)]:
        if _key(override) == "method":
            raise CompareError(f"override {override!r}: the method of each run comes from --methods")
        if _key(override) == "seed":
            raise CompareError(f"override {override!r}: the seeds of the runs come from --seeds, e.g. --seeds 0 1")
    check_methods(methods, registry)
    for method in method_overrides:
        if method not in methods:
            raise CompareError(f"--set {method} ...: {method!r} is not one of --methods ({', '.join(methods)})")
    seeds = list(seeds) if seeds else [user.get("seed", 0)]
    check_seeds(seeds)
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown or _duplicates(baselines):
        raise CompareError(f"--baselines {' '.join(baselines)}: choose each of {', '.join(BASELINES)} at most once")
    output = Path(output).expanduser()
    runs = []
    for method in methods:
        for seed in seeds:
            try:
                resolved = resolve({**user, "method": method, "seed": seed},
                                   [*overrides, *method_overrides.get(method, [])], source=str(source),
                                   registry=registry)
            except ConfigError as error:
                raise CompareError(f"method {method}: {error}") from error
            runs.append(RunSpec(method, seed, output / "runs" / slug(method) / f"seed{seed}", resolved))
    return Plan(source, output, list(methods), seeds, runs, list(baselines))
