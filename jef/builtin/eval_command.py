"""``jef eval``: the offline protocols (kNN, linear probe, fine-tuning; zero-shot and retrieval with a text encoder)
on a finished run."""

from __future__ import annotations

import argparse
import json
import sys

from jef.hookspecs import RegisterCommand, hookimpl

PROTOCOL_CHOICES = ("knn", "linear", "finetune", "zero_shot", "retrieval", "all")


@hookimpl
def jef_register_commands(register: RegisterCommand) -> None:
    register("eval", eval_command, arguments=eval_arguments,
             description="Evaluate a run's backbone offline (weighted kNN, linear probe, fine-tuning; zero-shot "
                         "classification and image-text retrieval for a model with a text encoder); writes "
                         "evaluation.json in the run directory.")


def eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run directory written by `jef train`, or a "
                        "checkpoint file inside one")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="override the run's saved pipeline, e.g. data.name=fashion_mnist_mini or eval.linear.epochs=50")
    parser.add_argument("--protocol", action="append", choices=PROTOCOL_CHOICES,
                        help="protocol to run (repeatable; default: those enabled in the pipeline's eval section)")
    parser.add_argument("--data", metavar="NAME", help="evaluate on this labelled dataset (same as data.name=NAME)")
    parser.add_argument("--cpu", action="store_true", help="evaluate on the CPU even when a GPU is present")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def eval_command(args: argparse.Namespace) -> int:
    import torch

    from jef.config.validate import ConfigError
    from jef.evaluate.multimodal import can_run
    from jef.evaluate.protocols import (BACKBONE_PROTOCOLS, PROTOCOLS, evaluate_backbone, require_labels,
                                        write_evaluation)
    from jef.tools.runs import load_run

    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    # data.name first: changing the name drops the saved dataset's options, later overrides add the new one's.
    overrides = ([f"data.name={args.data}"] if args.data else []) + list(args.overrides)
    try:
        run = load_run(args.run, overrides, plugins=args.plugins, device=device)
    except RuntimeError as error:  # a checkpoint of another pipeline: the message says which files
        return _fail(error)
    splits, model = run.built.splits, run.built.model
    protocols = None if not args.protocol else list(args.protocol)
    if protocols is not None and "all" in protocols:  # every protocol this model and data can serve
        protocols = [*BACKBONE_PROTOCOLS, *sorted(can_run(model, splits))]
    servable = {*BACKBONE_PROTOCOLS, *can_run(model, splits)}
    if protocols is None and not any(getattr(run.pipeline.eval, name).enabled for name in PROTOCOLS
                                     if name in servable):
        return _fail(f"{run.directory}: every protocol is disabled in the pipeline's eval section; pass "
                     f"--protocol knn|linear|finetune|zero_shot|retrieval|all or eval.knn.enabled=true")
    try:
        if protocols is None or set(protocols) - {"retrieval"}:  # retrieval alone needs no labels
            require_labels(splits)
        results = evaluate_backbone(run.backbone, splits, run.built.augmenter.eval_view, run.pipeline.eval, device,
                                    seed=run.pipeline.seed, protocols=protocols,
                                    num_workers=run.pipeline.train.num_workers, model=model)
    except ConfigError:  # an eval option the model cannot serve: the CLI names its YAML path
        raise
    except ValueError as error:  # data or model that cannot serve a protocol: the message says what is missing
        return _fail(f"{run.directory}: {error}")
    path = write_evaluation(run.directory, results, step=run.step)
    if args.json:
        print(json.dumps({r.key: {"value": r.value, "protocol": r.protocol, "step": run.step} for r in results},
                         indent=2))
        return 0
    print(f"offline evaluation of {run.directory} (checkpoint after {run.step} steps, {run.epoch} epochs) "
          f"on {device}")
    print(format_results(results))
    print(f"wrote {path}")
    return 0


def format_results(results) -> str:
    """A table of key, value and protocol; a protocol shared with the row above is not repeated."""
    width = max([len("key"), *(len(r.key) for r in results)])
    lines = [f"{'key':<{width}}  {'value':<6}  protocol"]
    previous = None
    for result in results:
        protocol = "(same as above)" if result.protocol == previous else result.protocol
        lines.append(f"{result.key:<{width}}  {result.value:.4f}  {protocol}")
        previous = result.protocol
    return "\n".join(lines)


def _fail(error: object) -> int:
    print(f"jef: error: {error}", file=sys.stderr)
    return 2
