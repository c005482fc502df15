"""Built-in sub-commands ``jef embed`` (features of a dataset to a file) and ``jef export`` (the backbone's weights).

Both open a run directory written by ``jef train`` (or a checkpoint inside
one). The work is in :mod:`jef.tools.embed` and :mod:`jef.tools.export`; this module only
parses arguments and prints what was written.
"""

from __future__ import annotations

import argparse
import sys

from jef.hookspecs import RegisterCommand, hookimpl


@hookimpl
def jef_register_commands(register: RegisterCommand) -> None:
    register("embed", embed_command, arguments=embed_arguments,
             description="Write the features of every image of a dataset, image folder or data YAML, from a "
                         "trained run, to a .safetensors, .npz or .pt file.")
    register("export", export_command, arguments=export_arguments,
             description="Write a run's trained backbone as a plain state_dict (safetensors and/or torch) with "
                         "its architecture (backbone.json, and backbone.py for jef's own modules), so that it "
                         "loads without jef.")


def _device(cpu: bool) -> str:
    import torch

    return "cpu" if cpu or not torch.cuda.is_available() else "cuda"


def _fail(error: Exception) -> int:
    print(f"jef: error: {error}", file=sys.stderr)
    return 2


# -- embed -------------------------------------------------------------------------------------------


def embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run directory of `jef train`, or a checkpoint in it")
    parser.add_argument("data", metavar="DATA",
                        help="a dataset name (the run's own options if it is the run's dataset), a directory of "
                             "images (labelled by subdirectory or not), or a YAML file with a `data:` slot")
    parser.add_argument("--output", "-o", required=True, metavar="FILE",
                        help="output file: .safetensors, .npz or .pt (the suffix chooses the format)")
    parser.add_argument("--split", choices=["train", "test", "all"], default="all",
                        help="which split to embed (default: all, train then test)")
    parser.add_argument("--layer", choices=["backbone", "projector"], default="backbone",
                        help="backbone: representations h (default); projector: embeddings z")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per forward pass")
    parser.add_argument("--workers", type=int, default=0, metavar="N", help="data loader processes (decoding)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    parser.add_argument("--force", action="store_true", help="overwrite the output file if it exists")


def embed_command(args: argparse.Namespace) -> int:
    from jef.tools.embed import check_output, embed, save_embeddings
    from jef.tools.export import ExportError, open_run

    try:
        if args.batch_size < 1 or args.workers < 0:
            raise ExportError("--batch-size must be at least 1 and --workers at least 0")
        output = check_output(args.output, force=args.force)  # before the work, not after it
        device = _device(args.cpu)
        run = open_run(args.run, plugins=args.plugins, device=device)
        result = embed(run, args.data, split=args.split, layer=args.layer, batch_size=args.batch_size,
                       device=device, num_workers=args.workers, registry=args.plugins.registry)
        save_embeddings(result, output, force=args.force)
    except ExportError as error:
        return _fail(error)
    count, dim = result.features.shape
    names = ", file names" if result.file_names is not None else ""
    print(f"wrote {count} x {dim} {args.layer} features (labels, indices{names}) of {args.data} "
          f"[{args.split}] from step {run.step} to {output}")
    return 0


# -- export ------------------------------------------------------------------------------------------


def export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run directory of `jef train`, or a checkpoint in it")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="directory to write the files into")
    parser.add_argument("--format", choices=["safetensors", "torch", "both"], default="safetensors",
                        help="backbone.safetensors (default), backbone.pt, or both")
    parser.add_argument("--target", action="store_true",
                        help="export the EMA (momentum) target backbone, e.g. BYOL's or DINO's teacher, instead of "
                             "the online one (runs with target: ema only)")
    parser.add_argument("--force", action="store_true", help="overwrite files that exist in DIR")


def export_command(args: argparse.Namespace) -> int:
    from jef.tools.export import ExportError, export_backbone, open_run

    try:
        run = open_run(args.run, plugins=args.plugins)
        written = export_backbone(run, args.output, fmt=args.format, target=args.target, force=args.force)
    except ExportError as error:
        return _fail(error)
    which = "EMA target" if args.target else "online"
    print(f"wrote the {which} backbone {run.pipeline.backbone.name!r} of {run.directory} (step {run.step}): "
          + ", ".join(str(path) for path in written))
    return 0
