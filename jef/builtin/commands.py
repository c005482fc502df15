"""Built-in sub-commands: train, plugins, list, config show."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from jef.components import describe_options
from jef.config import SLOTS, Pipeline, load_pipeline
from jef.config.provenance import annotated_yaml, selected_view
from jef.hookspecs import RegisterCommand, hookimpl
from jef.registry import KINDS


@hookimpl
def jef_register_commands(register: RegisterCommand) -> None:
    register("train", train_command, arguments=train_arguments,
             description="Train a pipeline file (YAML); key.path=value arguments override it.")
    register("plugins", plugins_command, arguments=plugins_arguments,
             description="List installed plugins: version, status, hooks and what they provide.")
    register("list", list_command, arguments=list_arguments,
             description="List registered components with their options and defaults.")
    register("config", config_command, arguments=config_arguments,
             description="Show a pipeline fully resolved, with the plugin behind each slot.")
    register("new-plugin", new_plugin_command, arguments=new_plugin_arguments,
             description="Generate an installable plugin package with a working example and its tests.")


# -- train -------------------------------------------------------------------


def train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a value of the file")
    parser.add_argument("--run-dir", help="directory for checkpoints and logs (default: run_dir or runs/<file>)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run already in the run directory: it is moved aside to NAME.old-<time> "
                             "(without this, a run directory holding a run is refused)")
    parser.add_argument("--force-resume", action="store_true",
                        help="resume even though the pipeline differs from the checkpoint's (the differences are "
                             "listed as a warning)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--sweep", action="append", metavar="key.path=v1,v2",
                        help="train one run per value, one after another, into RUN_DIR/<last key>=<value> "
                             "(e.g. runs/p/lr=0.1), then print a table of their final metrics; one key per "
                             "command, plain values only; --resume and --overwrite apply to each run")


def train_command(args: argparse.Namespace) -> int:
    from jef.run.directory import run_directory
    from jef.run.faults import RunInterrupted

    main = int(os.environ.get("RANK", "0")) == 0  # every process runs; one prints
    try:
        if args.sweep:
            return _sweep(args, main)
        pipeline = load_pipeline(args.pipeline, args.overrides, registry=args.plugins.registry)
        metrics = train_one(args, pipeline, args.run_dir)
    except RunInterrupted as stopped:  # not an error: the job was asked to stop and saved its state
        if main:  # every process stops with it; one says so
            print(f"jef: {stopped}", file=sys.stderr)
        return stopped.exit_status
    if main:  # one summary, not one per process
        print(format_metrics(metrics, run_directory(pipeline, args.run_dir)))
    return 0


def train_one(args: argparse.Namespace, pipeline: Pipeline, run_dir: Any) -> dict[str, float]:
    """Train ``pipeline`` into ``run_dir`` as ``args`` say (``--resume``, ``--overwrite``, ``--cpu``)."""
    from jef.run.loop import train

    resume = "force" if args.force_resume else args.resume
    return train(pipeline, run_dir=run_dir, resume=resume, overwrite=args.overwrite, plugins=args.plugins,
                 cpu=True if args.cpu else None)


def _sweep(args: argparse.Namespace, main: bool) -> int:
    """``--sweep key.path=v1,v2``: one run per value, through :func:`train_one` (:mod:`jef.tools.sweep`)."""
    from jef.config import ConfigError
    from jef.tools.sweep import format_sweep_table, plan_sweep, run_sweep

    if len(args.sweep) > 1:
        raise ConfigError(f"one --sweep per command (got {len(args.sweep)}: {', '.join(args.sweep)}); for a grid, "
                          f"run one sweep per value of the other key, each into its own --run-dir", source="--sweep")
    runs = plan_sweep(args.pipeline, args.overrides, args.sweep[0], registry=args.plugins.registry,
                      run_dir=args.run_dir)

    def echo(line: str, stream: Any = None) -> None:
        if main:
            print(line, file=stream or sys.stdout, flush=True)

    def one(pipeline: Pipeline, directory: Any) -> dict[str, float]:
        metrics = train_one(args, pipeline, directory)
        echo(format_metrics(metrics, directory))
        return metrics

    results = run_sweep(runs, one, echo, lambda line: echo(line, sys.stderr))
    echo(format_sweep_table(results))
    return 0


def format_metrics(metrics: dict[str, float], run_dir: Any = None) -> str:
    """Final metrics, then the trained backbone against its baselines (kNN and linear probe), and the run directory."""
    from jef.evaluate.results import baseline_table

    table = baseline_table(metrics)
    # The table holds the top-1s; the baselines' other numbers are in evaluation.json.
    shown = {key for key in metrics if key.startswith(("knn_top1", "linear_top1"))
             or key.endswith(("_random", "_pixels"))} if table else set()
    lines = ["final metrics:"] + [f"  {key:<28} {value:.4f}" for key, value in sorted(metrics.items())
                                  if key not in shown]
    if table:
        lines += ["test accuracy of frozen features (top-1):", *table]
    if run_dir is not None:
        lines.append(f"run directory: {run_dir}")
    return "\n".join(lines)


# -- plugins -------------------------------------------------------------------


def plugins_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--all", action="store_true", help="include jef's built-in plugins")


def plugins_command(args: argparse.Namespace) -> int:
    from jef.run.log import plugin_listing

    rows = [row for row in plugin_listing(args.plugins) if args.all or not row["builtin"]]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no plugins installed (jef's built-ins are shown with --all)")
    for row in rows:
        version = f" {row['version']}" if row["version"] else ""
        dist = f" [{row['distribution']}{version}]" if row["distribution"] else ""
        print(f"{row['name']}{dist}: {row['status'].upper()}")
        if row["error"]:
            print(f"  error: {row['error']}")
        for kind, names in row["provides"].items():
            print(f"  {kind}: {', '.join(names)}")
        if row["hooks"]:
            print(f"  hooks: {', '.join(row['hooks'])}")
    return 0


# -- list ----------------------------------------------------------------------

PLURALS = {"energy": "energies"}


def list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", choices=list(KINDS), help="only this kind of component")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def list_command(args: argparse.Namespace) -> int:
    entries = args.plugins.registry.entries(args.kind)
    rows = [{"kind": e.kind, "name": e.name, "plugin": str(e.provenance), "description": e.description,
             "paper": e.paper, "options": describe_options(e.options)} for e in entries]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    kind = None
    for row in rows:
        if row["kind"] != kind:
            kind = row["kind"]
            print(f"\n{PLURALS.get(kind, kind + 's')}:")
        print(f"  {row['name']}  ({row['plugin']})" + (f" - {row['description']}" if row["description"] else ""))
        for option in row["options"]:
            doc = f"  # {option['doc']}" if option["doc"] else ""
            print(f"      {option['name']}: {option['type']} = {option['default']!r}{doc}")
    return 0


# -- config show -------------------------------------------------------------------


def config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show"], help="show: print the resolved pipeline")
    parser.add_argument("pipeline", help="pipeline YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a value of the file")
    parser.add_argument("--all", action="store_true",
                        help="also show the options of what is not selected (an evaluation that is off, the "
                             "options of other optimisers, empty slots), as a run saves them")


def config_command(args: argparse.Namespace) -> int:
    from jef.model.build import check  # torch: only once the file reads as a pipeline

    pipeline = load_pipeline(args.pipeline, args.overrides, registry=args.plugins.registry)
    check(pipeline)  # every component but the data is built: a pipeline that shows is one that builds
    print(describe_pipeline(pipeline, every_option=args.all))
    return 0


def describe_pipeline(pipeline: Pipeline, *, every_option: bool = False) -> str:
    """The resolved pipeline as YAML, headed by the objective and who supplied each slot.

    Each value a layer set is marked at the end of its line: ``# recipe``, ``# base FILE``, ``# file`` or
    ``# command line``; a default is unmarked. Unless ``every_option``, the options of what is not selected are
    left out (:func:`jef.config.provenance.selected_view`) and a header line names them.
    """
    lines = [f"# {pipeline.source}, fully resolved", "#", "# objective  L = " + objective_formula(pipeline), "#"]
    if pipeline.encoders:
        lines += [f"# {line}" for line in tower_lines(pipeline)] + ["#"]
    labels = [(f"{path} (D)" if path == "energy" else f"{path} (A/B)" if path.startswith("functionals") else path,
               slot) for path, slot in pipeline.slots()]
    width = max([20, *(len(label) for label, _ in labels)])
    if pipeline.method is not None:
        lines.append(f"# {'method':<{width}} {pipeline.method.name:<22} {pipeline.method.provenance}")
    for label, slot in labels:
        lines.append(f"# {label:<{width}} {slot.name:<22} {slot.entry.provenance}")
    data, hidden = (pipeline.to_dict(), []) if every_option else selected_view(pipeline.to_dict(), SLOTS)
    lines += ["#", "# marks: where a value was set: recipe (the method's), base FILE (the file's base: file), file,",
              "#        command line (an override); a value without a mark is a default"]
    if hidden:
        lines.append(f"# not selected, not shown (--all shows them): {', '.join(hidden)}")
    lines.append("")
    lines.append(annotated_yaml(data, pipeline.origins.label))
    return "\n".join(lines)


def tower_lines(pipeline: Pipeline) -> list[str]:
    """One line per encoder, the online one first: what it reads and its parts, and which one the target is."""
    claimed = {i for encoder in pipeline.encoders.values() for i in encoder.views or ()}
    online = "views no encoder claims" if claimed else "every view"
    head = f" -> {pipeline.projector.name}" if pipeline.projector is not None else ""
    lines = [f"{'online':<8} reads {online}: {pipeline.backbone.name}{head}"]
    target = getattr(pipeline.target.options, "encoder", None)
    for name, encoder in pipeline.encoders.items():
        source = f"field {encoder.field!r}" if encoder.field is not None else f"views {list(encoder.views or ())}"
        parts = [slot.name for slot in (encoder.tokenizer, encoder.backbone, encoder.projector) if slot is not None]
        role = " (the target)" if name == target else ""
        lines.append(f"{name:<8} reads {source}: {' -> '.join(parts)}{role}")
    return lines


def objective_formula(pipeline: Pipeline) -> str:
    """E.g. ``1.0·mean D[scaled_cosine](p_a, t_b) + 1.0·F[info_nce]``."""
    parts = []
    if pipeline.energy is not None:
        parts.append(f"{pipeline.energy.weight:g}·mean_(a,b) D[{pipeline.energy.name}](p_a, t_b)")
    parts += [f"{slot.weight:g}·F[{slot.name}](H)" for slot in pipeline.functionals]
    return " + ".join(parts)


# -- new-plugin ------------------------------------------------------------------


def new_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    from jef.tools.scaffold import KINDS

    parser.add_argument("name", help="plugin name, e.g. 'barlow' (makes jef-plugin-barlow)")
    parser.add_argument("--kind", choices=list(KINDS), default="method",
                        help="what the example provides: " + "; ".join(f"{k}: {v}" for k, v in KINDS.items()))
    parser.add_argument("--directory", help="where to create it (default: plugins/ if present, else .)")


def new_plugin_command(args: argparse.Namespace) -> int:
    from jef.tools.scaffold import generated_files, new_plugin

    try:
        target = new_plugin(args.name, args.kind, args.directory)
    except (ValueError, FileExistsError) as error:
        print(f"jef: error: {error}", file=sys.stderr)
        return 2
    print(f"created {target}/")
    for name in generated_files(target):
        print(f"  {name}")
    print(f"next:\n  pip install -e {target}\n  jef plugins\n  pytest {target / 'tests'}")
    return 0
