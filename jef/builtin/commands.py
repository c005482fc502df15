"""Built-in sub-commands: train, plugins, list, config show."""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

from jef.components import describe_options
from jef.config import Pipeline, load_pipeline
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


def train_command(args: argparse.Namespace) -> int:
    from jef.run.faults import RunInterrupted
    from jef.run.loop import train

    pipeline = load_pipeline(args.pipeline, args.overrides, registry=args.plugins.registry)
    resume = "force" if args.force_resume else args.resume
    try:
        metrics = train(pipeline, run_dir=args.run_dir, resume=resume, overwrite=args.overwrite,
                        plugins=args.plugins, cpu=True if args.cpu else None)
    except RunInterrupted as stopped:  # not an error: the job was asked to stop and saved its state
        if int(os.environ.get("RANK", "0")) == 0:  # every process stops with it; one says so
            print(f"jef: {stopped}", file=sys.stderr)
        return stopped.exit_status
    if int(os.environ.get("RANK", "0")) == 0:  # one summary, not one per process
        print(format_metrics(metrics))
    return 0


def format_metrics(metrics: dict[str, float]) -> str:
    """Final metrics, with the kNN of the trained and the random backbone side by side."""
    lines = ["final metrics:"] + [f"  {key:<28} {value:.4f}" for key, value in sorted(metrics.items())
                                  if not key.startswith("knn_top1")]
    if "knn_top1" in metrics:
        lines.append(f"kNN top-1 (k-NN on frozen backbone features): trained {metrics['knn_top1']:.4f}"
                     + (f"   random init {metrics['knn_top1_random']:.4f}" if "knn_top1_random" in metrics else ""))
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


def config_command(args: argparse.Namespace) -> int:
    from jef.model.build import check  # torch: only once the file reads as a pipeline

    pipeline = load_pipeline(args.pipeline, args.overrides, registry=args.plugins.registry)
    check(pipeline)  # every component but the data is built: a pipeline that shows is one that builds
    print(describe_pipeline(pipeline))
    return 0


def describe_pipeline(pipeline: Pipeline) -> str:
    """The resolved pipeline as YAML, headed by the objective and who supplied each slot."""
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
    lines.append("")
    lines.append(yaml.safe_dump(pipeline.to_dict(), sort_keys=False).rstrip())
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
