"""Export a run's trained backbone as a plain ``state_dict`` that loads without jef (``jef export``).

What is written to the output directory:

* ``backbone.safetensors`` and/or ``backbone.pt``: the backbone's ``state_dict``,
  tensors only (``torch.load(..., weights_only=True)`` reads the ``.pt``).
* ``backbone.json``: what the weights are (run, step, online or EMA target
  weights), how to rebuild the network (for jef's ResNets: the torchvision
  constructor and the stem changes), the input it expects and its feature width.
* ``README.md``: the same, with code that loads the weights.

jef's ResNets are torchvision ResNets with ``fc`` replaced by ``nn.Identity``, so
their keys are ``torchvision.models.resnet18()``'s without ``fc.*``: a torchvision
model with the same stem and ``fc = nn.Identity()`` loads them strictly and gives
the same features. Any other backbone (``small_cnn``, a plugin's) needs jef and
its plugin to be rebuilt: :func:`load_exported` does that from ``backbone.json``.

Only the backbone is exported: not the projector or predictor, not the EMA
target (unless asked for with ``target=True``, BYOL's or DINO's teacher), not
the objective's state (queues, prototypes, DINO centre) nor the optimiser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

import jef
from jef.files import atomic_write
from jef.tools.runs import LoadedRun, load_run

__all__ = ["FORMATS", "ExportError", "describe_backbone", "export_backbone", "load_exported", "open_run", "readme_text",
           "resnet_changes", "torchvision_snippet"]

#: ``--format`` choices and the weight files each writes.
FORMATS = {"safetensors": ("backbone.safetensors",), "torch": ("backbone.pt",),
           "both": ("backbone.safetensors", "backbone.pt")}


class ExportError(Exception):
    """Something a user of ``jef export`` or ``jef embed`` must change; the message says what."""


def open_run(path: str | Path, *, plugins: Any = None, device: str | torch.device = "cpu") -> LoadedRun:
    """:func:`jef.tools.runs.load_run`, with a checkpoint that does not fit or data that cannot be built as an ExportError."""
    try:
        return load_run(path, plugins=plugins, device=device)
    except RuntimeError as error:  # load_run's messages name the files and say what to do
        raise ExportError(str(error)) from error


def _backbone(run: LoadedRun, target: bool) -> nn.Module:
    if not target:
        return run.backbone
    if run.pipeline.target.name != "ema":
        raise ExportError(f"{run.directory}: --target exports the EMA (momentum) target backbone, but this run's "
                          f"target is {run.pipeline.target.name!r}, which uses the online backbone itself; "
                          f"drop --target")
    return run.built.model.target_backbone


def _torchvision_recipe(run: LoadedRun) -> dict[str, Any] | None:
    """How to rebuild the backbone with torchvision alone, or None when it is not one of jef's ResNets."""
    from jef.builtin.backbones import build_resnet18, build_resnet50

    slot = run.pipeline.backbone
    arch = {build_resnet18: "resnet18", build_resnet50: "resnet50"}.get(slot.entry.factory)
    if arch is None:  # a plugin may register its own "resnet18": only jef's own factories are known here
        return None
    changes = resnet_changes(slot.options.small_images, run.built.ctx.in_channels)
    return {"constructor": f"torchvision.models.{arch}", "arch": arch, "small_images": slot.options.small_images,
            "changes": changes}


def resnet_changes(small_images: bool, channels: int) -> list[str]:
    """The attribute assignments that turn ``torchvision.models.resnetXX()`` into jef's backbone (as code)."""
    changes = []
    if small_images:  # jef.builtin.backbones' CIFAR stem
        changes += [f"conv1 = torch.nn.Conv2d({channels}, 64, kernel_size=3, stride=1, padding=1, bias=False)",
                    "maxpool = torch.nn.Identity()"]
    elif channels != 3:
        changes.append(f"conv1 = torch.nn.Conv2d({channels}, 64, kernel_size=7, stride=2, padding=3, bias=False)")
    return [*changes, "fc = torch.nn.Identity()"]


def _input_spec(run: LoadedRun) -> dict[str, Any]:
    """What the backbone expects: for jef's ``views`` augmenter, its ``eval_view`` spelt out."""
    from jef.augment.views import ViewsAugmenter

    augmenter, channels = run.built.augmenter, run.built.ctx.in_channels
    spec: dict[str, Any] = {"channels": channels, "augmenter": run.pipeline.augmenter.name}
    if isinstance(augmenter, ViewsAugmenter):
        size = augmenter.size
        spec.update(size=size, range="float in [0, 1] (uint8 / 255)",
                    eval_view=f"centre square crop, bilinear resize (antialiased when shrinking) to {size} x {size}")
        mean, std = augmenter.options.channel_stats(channels)
        spec["normalize"] = {"mean": list(mean), "std": list(std)} if augmenter.options.normalize else None
    else:
        spec["eval_view"] = f"the eval_view of augmenter {run.pipeline.augmenter.name!r} (see its plugin's docs)"
    return spec


def describe_backbone(run: LoadedRun, *, target: bool = False, files: tuple[str, ...] = ()) -> dict[str, Any]:
    """The content of ``backbone.json``: what the weights are and how to rebuild the network."""
    from jef.config.validate import to_plain

    slot, module = run.pipeline.backbone, _backbone(run, target)
    return {
        "format": "jef-backbone/1", "jef_version": jef.__version__, "files": list(files),
        "run": str(run.directory), "step": run.step, "epoch": run.epoch,
        "weights": "EMA target (momentum teacher) backbone" if target else "online backbone",
        "backbone": {"name": slot.name, "options": to_plain(slot.options), "plugin": str(slot.entry.provenance)},
        "in_channels": run.built.ctx.in_channels, "image_size": run.built.ctx.image_size,
        "out_dim": int(getattr(module, "out_dim", 0)) or None,
        "torchvision": _torchvision_recipe(run),
        "input": _input_spec(run),
        "not_exported": ["projector", "predictor",
                         "online backbone (export without --target)" if target else "EMA target (use --target)",
                         "objective state (queues, memory banks, prototypes, centres)", "optimiser"],
    }


def export_backbone(run: LoadedRun, directory: str | Path, *, fmt: str = "safetensors", target: bool = False,
                    force: bool = False) -> list[Path]:
    """Write the backbone's weights, ``backbone.json`` and ``README.md`` into ``directory``, each atomically.

    Args:
        run: The opened run (:func:`open_run`).
        directory: Output directory (created if missing).
        fmt: ``"safetensors"``, ``"torch"`` or ``"both"``.
        target: Export the EMA target backbone instead (runs with ``target: ema`` only).
        force: Overwrite files that exist (and remove the other format's weight file, left from an earlier export).

    Returns:
        The files written.

    Raises:
        ExportError: Unknown format, files in the way without ``force``, or ``target`` without an EMA target.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ExportError(f"--output {directory} is a file; give a directory to write the backbone into")
    module = _backbone(run, target)
    names = FORMATS[fmt]
    paths = [directory / name for name in (*names, "backbone.json", "README.md")]
    if not force and (existing := [str(p) for p in paths if p.exists()]):
        raise ExportError(f"{', '.join(existing)} already exist(s); pass --force to overwrite, or choose another "
                          f"--output directory")
    for stale in set(FORMATS["both"]) - set(names) if force else ():  # no old weights next to the new ones
        (directory / stale).unlink(missing_ok=True)
    # Own contiguous CPU copies: safetensors refuses tensors that share memory or live on a GPU.
    state = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in module.state_dict().items()}
    info = describe_backbone(run, target=target, files=names)
    if "backbone.safetensors" in names:
        from safetensors.torch import save_file

        metadata = {key: json.dumps(info[key]) for key in ("backbone", "in_channels", "out_dim", "weights", "step")}
        atomic_write(directory / "backbone.safetensors", lambda tmp: save_file(state, str(tmp), metadata=metadata))
    if "backbone.pt" in names:
        atomic_write(directory / "backbone.pt", lambda tmp: torch.save(state, tmp))
    text = json.dumps(info, indent=2) + "\n"
    atomic_write(directory / "backbone.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    readme = readme_text(info)
    atomic_write(directory / "README.md", lambda tmp: tmp.write_text(readme, encoding="utf-8"))
    return paths


def torchvision_snippet(info: dict[str, Any]) -> str | None:
    """Python code that loads the export into a torchvision ResNet without jef (None for other backbones)."""
    recipe = info["torchvision"]
    if recipe is None:
        return None
    weights = ('load_file("backbone.safetensors")' if "backbone.safetensors" in info["files"]
               else 'torch.load("backbone.pt", weights_only=True)')
    lines = ["import torch", "import torchvision"]
    if "backbone.safetensors" in info["files"]:
        lines.append("from safetensors.torch import load_file")
    lines += ["", f"model = {recipe['constructor']}(weights=None)"]
    lines += [f"model.{change}" for change in recipe["changes"]]
    lines += [f"model.load_state_dict({weights})  # strict: every key matches", "model.eval()"]
    return "\n".join(lines) + "\n"


def readme_text(info: dict[str, Any]) -> str:
    """``README.md`` of an export: what it is and how to load it."""
    backbone, inputs = info["backbone"], info["input"]
    lines = [f"# Exported backbone: {backbone['name']}", "",
             f"The {info['weights']} of run `{info['run']}` at step {info['step']} (epoch {info['epoch']}), "
             f"written by jef {info['jef_version']}. Backbone `{backbone['name']}` from {backbone['plugin']}, "
             f"options `{json.dumps(backbone['options'])}`: {info['in_channels']}-channel images to "
             f"{info['out_dim']}-d features. Files: {', '.join(info['files'])} (a plain state_dict), "
             f"backbone.json (this, as data).", ""]
    snippet = torchvision_snippet(info)
    if snippet:
        lines += ["## Load it without jef", "", "```python", snippet.rstrip("\n"), "```", ""]
    else:
        lines += [f"`{backbone['name']}` is not a torchvision model: rebuilding it needs jef and the plugin that "
                  f"provides it ({backbone['plugin']}).", ""]
    lines += ["## Load it with jef", "", "```python", "from jef.tools.export import load_exported", "",
              'backbone = load_exported(".")  # this directory', "```", "", "## Inputs", ""]
    if "size" in inputs:
        norm = inputs["normalize"]
        lines.append(f"{inputs['channels']}-channel float images in [0, 1]: {inputs['eval_view']}"
                     + (f", then normalised with mean {norm['mean']} and std {norm['std']}." if norm else "."))
    else:
        lines.append(f"{inputs['channels']}-channel images prepared as {inputs['eval_view']}.")
    lines += ["", "Not exported: " + "; ".join(info["not_exported"]) + ".", ""]
    return "\n".join(lines)


def load_exported(directory: str | Path, *, plugins: Any = None) -> nn.Module:
    """Rebuild an exported backbone with jef (any backbone, a plugin's too) and load its weights.

    Args:
        directory: What :func:`export_backbone` wrote.
        plugins: Loaded plugins (default: :func:`jef.plugins.get_plugins`); the backbone's plugin must be installed.

    Returns:
        The backbone in eval mode, on the CPU.
    """
    from jef.components import RunContext
    from jef.plugins import get_plugins
    from jef.config.validate import build_options

    directory = Path(directory).expanduser()
    if not (directory / "backbone.json").is_file():
        raise FileNotFoundError(f"{directory}: no backbone.json; pass the directory `jef export` wrote")
    info = json.loads((directory / "backbone.json").read_text(encoding="utf-8"))
    entry = (plugins or get_plugins()).registry.get("backbone", info["backbone"]["name"])
    options = build_options(entry.options, info["backbone"]["options"], "backbone")
    module = entry.factory(options, RunContext(in_channels=info["in_channels"], image_size=info["image_size"]))
    if "backbone.safetensors" in info["files"]:
        from safetensors.torch import load_file

        state = load_file(str(directory / "backbone.safetensors"))
    else:
        state = torch.load(directory / "backbone.pt", map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.eval()
