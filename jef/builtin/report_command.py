"""Built-in sub-command ``jef report``: an HTML report of one run, or several compared."""

from __future__ import annotations

import argparse
import sys

from jef.hookspecs import RegisterCommand, hookimpl


@hookimpl
def jef_register_commands(register: RegisterCommand) -> None:
    register("report", report_command, arguments=report_arguments,
             description="Write an HTML report of a run (curves, views, embeddings, neighbours, pipeline); "
                         "several runs are compared side by side.")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directory written by `jef train`")
    parser.add_argument("--output", "-o", metavar="DIR",
                        help="where report.html and the PNGs go (default: RUN_DIR/report for one run, "
                             "./jef-report for several)")
    parser.add_argument("--max-points", type=_positive, default=2000, metavar="N",
                        help="embed at most N images of each split for the embedding map and the "
                             "neighbours (a fixed random subset; default 2000)")
    # No `choices`: the list lives in jef.tools.report.model, which imports matplotlib; every `jef` call builds this parser.
    parser.add_argument("--projection", default="pca", metavar="NAME",
                        help="2-D projection of the embedding map: pca (default), tsne (needs scikit-learn) or "
                             "umap (needs umap-learn)")
    parser.add_argument("--no-model", action="store_true",
                        help="only what the logs say: skip the views, embedding map and neighbours, which load "
                             "the model and the data")
    parser.add_argument("--cpu", action="store_true", help="run the backbone on the CPU even when a GPU is present")


def report_command(args: argparse.Namespace) -> int:
    from jef.tools.report import ReportError, write_report

    try:
        path = write_report(args.runs, args.output, model=not args.no_model, max_points=args.max_points,
                            projection=args.projection, device="cpu" if args.cpu else None, plugins=args.plugins)
    except ReportError as error:
        print(f"jef: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
