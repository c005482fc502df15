"""``jef train FILE --sweep key.path=v1,v2,...``: one run per value, one after another, in sibling run directories.

Each value is a ``key.path=value`` override added after the command line's own, so every run is the pipeline
``jef train FILE ... key.path=value`` would train, and trains through the same code (the train command's
``train_one``, which calls :func:`jef.run.loop.train`). The runs go to ``D/<last key>=<value>`` where ``D`` is the
run directory the pipeline alone would use (``--run-dir``, else the pipeline's ``run_dir``, else
``runs/<file stem>``): ``--sweep train.optimizer.lr=0.1,0.3`` trains ``runs/p/lr=0.1`` and ``runs/p/lr=0.3``.
Every pipeline is loaded before the first run starts, so a bad value fails at once. A run that fails stops the
sweep: the runs after it would most often fail the same way, and a stopped sweep says how to go on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from jef.config import ConfigError, Pipeline, load_pipeline
from jef.config.yaml import parse_yaml
from jef.registry import Registry
from jef.run.directory import run_directory

__all__ = ["SweepRun", "format_sweep_table", "parse_sweep", "plan_sweep", "run_sweep"]


@attrs.frozen
class SweepRun:
    """One run of a sweep.

    Attributes:
        name: Its run directory's name, ``<last key>=<value>`` (``lr=0.1``).
        override: The ``key.path=value`` override it adds.
        pipeline: Its resolved pipeline.
        directory: Its run directory.
    """

    name: str
    override: str
    pipeline: Pipeline
    directory: Path


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """Split ``key.path=v1,v2`` into the key and the values as written (each read as a YAML scalar).

    Raises:
        ConfigError: not ``key.path=v1,v2,...``, an empty or repeated value, or a value with brackets (the values
            are split at every comma, so lists and mappings cannot be swept).
    """
    source = f"--sweep {spec!r}"
    key, sep, raw = spec.partition("=")
    key = key.strip()
    if not sep or not key or not all(part.strip() for part in key.split(".")):
        raise ConfigError("must look like key.path=v1,v2,..., e.g. --sweep train.optimizer.lr=0.1,0.3",
                          source=source)
    if any(char in raw for char in "[]{}"):
        raise ConfigError("values with brackets (lists, mappings) cannot be swept: the values are split at every "
                          "comma; sweep plain values (numbers, words, true/false, null), or run jef train once per "
                          "list", source=source)
    values = [text.strip() for text in raw.split(",")]
    if not all(values):
        raise ConfigError("an empty value: write the values separated by single commas, e.g. 0.1,0.3",
                          source=source)
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ConfigError(f"{', '.join(repeated)} given more than once; each value is one run", source=source)
    for value in values:
        try:
            parsed = parse_yaml(value)
        except ConfigError as error:
            raise ConfigError(f"value {value!r}: {error.reason}", source=source) from error
        if isinstance(parsed, dict | list):
            raise ConfigError(f"value {value!r} is not a plain value; sweep numbers, words, true/false or null",
                              source=source)
    return key, values


def run_name(key: str, value: str) -> str:
    """The run directory name of one value: ``lr=0.1`` (characters a file name should not hold become ``_``)."""
    return f"{key.rpartition('.')[2]}={re.sub(r'[^A-Za-z0-9._+-]', '_', value)}"


def plan_sweep(path: str | Path, overrides: list[str], spec: str, *, registry: Registry,
               run_dir: str | Path | None) -> list[SweepRun]:
    """Load the pipeline of every value of the sweep, and name their run directories.

    Args:
        path: The pipeline file.
        overrides: The command line's other ``key.path=value`` overrides.
        spec: The ``--sweep`` argument.
        registry: The name table.
        run_dir: ``--run-dir``: the directory the runs go under (default: the pipeline's own run directory).

    Raises:
        ConfigError: a bad ``--sweep``, a key also overridden, or a value whose pipeline is invalid (it names
            the override).
    """
    key, values = parse_sweep(spec)
    if any(override.partition("=")[0].strip() == key for override in overrides):
        raise ConfigError(f"{key} is both overridden and swept; drop the override", source=f"--sweep {spec!r}")
    names = [run_name(key, value) for value in values]
    clash = sorted({name for name in names if names.count(name) > 1})
    if clash:
        raise ConfigError(f"values {', '.join(values)} give run directories of the same name ({', '.join(clash)}); "
                          f"write each value once", source=f"--sweep {spec!r}")
    pipelines = [load_pipeline(path, [*overrides, f"{key}={value}"], registry=registry) for value in values]
    parent = run_directory(pipelines[0], run_dir)
    return [SweepRun(name, f"{key}={value}", pipeline, parent / name)
            for name, value, pipeline in zip(names, values, pipelines, strict=True)]


def run_sweep(runs: list[SweepRun], train_one: Callable[[Pipeline, Path], dict[str, float]],
              echo: Callable[[str], None], warn: Callable[[str], None]) -> list[tuple[SweepRun, dict[str, float]]]:
    """Train the runs one after another; stop at the first that fails.

    Args:
        runs: From :func:`plan_sweep`.
        train_one: Trains one pipeline into a run directory and returns its final metrics.
        echo: Prints a line (the main process's stdout).
        warn: Prints a line on stderr: why the sweep stopped.

    Returns:
        Each run with its final metrics.

    Raises:
        Exception: what the failing run raised, after ``warn`` named the run, the runs that finished and how to
            go on.
    """
    done: list[tuple[SweepRun, dict[str, float]]] = []
    for i, run in enumerate(runs, 1):
        echo(f"jef: sweep run {i}/{len(runs)}: {run.override} -> {run.directory}")
        try:
            done.append((run, train_one(run.pipeline, run.directory)))
        except BaseException:  # Ctrl-C too: say where the sweep stopped
            key = run.override.partition("=")[0]
            rest = ",".join(other.override.partition("=")[2] for other in runs[i - 1:])
            finished = ", ".join(r.name for r, _ in done) or "none"
            if done:
                echo(format_sweep_table(done))
            warn(f"jef: the sweep stopped at run {run.name} ({i} of {len(runs)}, {run.directory}); finished: "
                 f"{finished}. To go on, run the same command with --sweep {key}={rest} (and --resume to "
                 f"continue {run.name} from its checkpoint, or --overwrite to start it again)")
            raise
    return done


def format_sweep_table(results: list[tuple[SweepRun, dict[str, float]]]) -> str:
    """The final metrics of each run, one row per run: ``run  knn_top1  loss ...``."""
    keys = sorted({key for _, metrics in results for key in metrics})
    names = [run.name for run, _ in results]
    width = max(len("run"), *(len(name) for name in names))
    widths = [max(len(key), 8) for key in keys]

    def row(first: str, cells: list[str]) -> str:
        return "  ".join([f"{first:<{width}}", *(f"{cell:>{w}}" for cell, w in zip(cells, widths, strict=True))])

    lines = [f"sweep: final metrics of {len(results)} run(s)", row("run", keys)]
    for run, metrics in results:
        lines.append(row(run.name, [_number(metrics.get(key)) for key in keys]))
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, int | float) else str(value)
