"""Built-in sub-command ``jef compare``: train several methods on one shared pipeline, over seeds, and compare them."""

from __future__ import annotations

import argparse
import sys

from jef.hookspecs import RegisterCommand, hookimpl

# Not imported from jef.tools.compare: every `jef` call builds this parser, and that package imports torch.
BASELINE_CHOICES = ("random", "pixels")


@hookimpl
def jef_register_commands(register: RegisterCommand) -> None:
    register("compare", compare_command, arguments=compare_arguments,
             description="Train several methods on the same data, backbone and budget (a pipeline without "
                         "`method:`), over seeds; write a table (compare.json, compare.csv) and an HTML page "
                         "with their curves. An interrupted compare resumes.")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is at least 0, got {value}")
    return value


def compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", metavar="PIPELINE",
                        help="pipeline YAML without `method:`: the choices every method shares (data, backbone, "
                             "train budget, eval, seed)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="override the shared pipeline for every run, e.g. train.max_steps=200")
    parser.add_argument("--methods", "-m", nargs="+", required=True, metavar="METHOD",
                        help="the methods to compare (`jef list method` lists them)")
    parser.add_argument("--seeds", nargs="+", type=_seed, metavar="SEED",
                        help="train each method once per seed (default: the pipeline's seed, else 0)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
                        help="where runs/<method>/seed<s>/, compare.json, compare.csv and compare.html go; "
                             "the same DIR again resumes the compare")
    parser.add_argument("--baselines", nargs="+", choices=BASELINE_CHOICES, default=[], metavar="NAME",
                        help="add untrained reference rows: random (the backbone at random initialisation) and/or "
                             "pixels (the eval view's pixels, flattened), evaluated with the same protocols")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("METHOD", "key.path=value"),
                        dest="method_overrides",
                        help="override one method's runs only (repeatable), e.g. --set byol predictor.dims=[64,32]")
    parser.add_argument("--cpu", action="store_true", help="train and evaluate on the CPU even when a GPU is present")


def compare_command(args: argparse.Namespace) -> int:
    from jef.run.faults import RunInterrupted
    from jef.tools.compare import CompareError, compare, make_plan

    # `--methods a b key=value`: nargs="+" takes the trailing overrides too; they are overrides, not methods.
    methods = [m for m in args.methods if "=" not in m]
    overrides = [*args.overrides, *(m for m in args.methods if "=" in m)]
    method_overrides: dict[str, list[str]] = {}
    for method, override in args.method_overrides:
        method_overrides.setdefault(method, []).append(override)
    try:
        plan = make_plan(args.pipeline, methods, output=args.output, registry=args.plugins.registry,
                         seeds=args.seeds, overrides=overrides, method_overrides=method_overrides,
                         baselines=args.baselines)
    except CompareError as error:
        return _fail(error)
    try:
        page, ok = compare(plan, plugins=args.plugins, cpu=args.cpu)
    except RunInterrupted as stopped:
        print(f"jef: {stopped}; run the same command again to resume the compare", file=sys.stderr)
        return stopped.exit_status
    print(f"wrote {plan.output / 'compare.json'}, {plan.output / 'compare.csv'} and {page}")
    return 0 if ok else 1


def _fail(error: object) -> int:
    print(f"jef: error: {error}", file=sys.stderr)
    return 2
