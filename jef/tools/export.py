"""Export a run's trained backbone as a plain ``state_dict`` that loads without jef (``jef export``).

What is written to the output directory:

* ``backbone.safetensors`` and/or ``backbone.pt``: the backbone's ``state_dict``,
  tensors only (``torch.load(..., weights_only=True)`` reads the ``.pt``).
* ``backbone.py`` (jef's own modules: ``small_cnn``, ``vit``): the backbone's class as jef defines it, with
  torch imports only (:mod:`jef.tools.standalone`).
* ``backbone.json``: what the weights are (run, step, online or EMA target
  weights), how to rebuild the network without jef (``architecture``: the class in
  ``backbone.py``, the torchvision or the timm constructor, with its arguments and
  changes; for jef's ViTs also timm's and torchvision's ``VisionTransformer``,
  :mod:`jef.tools.rebuild`), the input it expects and its feature width.
* ``README.md``: the same, with code that loads the weights.

Every built-in backbone loads without jef: jef's ResNets are torchvision ResNets with ``fc`` replaced by
``nn.Identity``, the ``timm`` backbone (jef-plugin-timm) is a timm model, and ``small_cnn`` and ``vit`` are
rebuilt from ``backbone.py``. A plugin's own backbone needs jef and its plugin to be rebuilt:
:func:`load_exported` does that from ``backbone.json``.

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
from jef.tools.rebuild import backbone_recipes, resnet_changes, snippets
from jef.tools.runs import LoadedRun, load_run
from jef.tools.standalone import architecture, architecture_snippet

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


def describe_backbone(run: LoadedRun, *, target: bool = False, files: tuple[str, ...] = (),
                      arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``backbone.json``: what the weights are and how to rebuild the network.

    ``arch``: the ``architecture`` entry (:func:`jef.tools.standalone.architecture`; computed when not given).
    """
    from jef.config.validate import to_plain

    slot, module = run.pipeline.backbone, _backbone(run, target)
    if arch is None:
        arch = architecture(module, options=slot.options)[0]
    return {
        "format": "jef-backbone/1", "jef_version": jef.__version__, "files": list(files),
        "run": str(run.directory), "step": run.step, "epoch": run.epoch,
        "weights": "EMA target (momentum teacher) backbone" if target else "online backbone",
        "backbone": {"name": slot.name, "options": to_plain(slot.options), "plugin": str(slot.entry.provenance)},
        "in_channels": run.built.ctx.in_channels, "image_size": run.built.ctx.image_size,
        "out_dim": int(getattr(module, "out_dim", 0)) or None,
        "architecture": arch,
        **backbone_recipes(slot, module, run.built.ctx.in_channels),
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
    arch, source = architecture(module, options=run.pipeline.backbone.options)
    code = ("backbone.py",) if source is not None else ()
    paths = [directory / name for name in (*names, *code, "backbone.json", "README.md")]
    if not force and (existing := [str(p) for p in paths if p.exists()]):
        raise ExportError(f"{', '.join(existing)} already exist(s); pass --force to overwrite, or choose another "
                          f"--output directory")
    for stale in {*FORMATS["both"], "backbone.py"} - {*names, *code} if force else ():  # nothing stale is left
        (directory / stale).unlink(missing_ok=True)
    # Own contiguous CPU copies: safetensors refuses tensors that share memory or live on a GPU.
    state = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in module.state_dict().items()}
    info = describe_backbone(run, target=target, files=names, arch=arch)
    if source is not None:
        atomic_write(directory / "backbone.py", lambda tmp: tmp.write_text(source, encoding="utf-8"))
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
    """Python code that loads the export into a torchvision model without jef (None where torchvision cannot)."""
    return snippets(info).get("torchvision")


_WITHOUT_JEF = {
    "architecture-python": "With PyTorch alone: `backbone.py` defines the network as jef does, importing only torch.",
    "architecture-timm": "With timm (`pip install timm`): the backbone is a timm model.",
    "timm": "With timm (`pip install timm`): the keys are timm's `VisionTransformer`'s, so it loads them strictly "
            "and computes the same features.",
    "torchvision": "With torchvision alone: the keys renamed to torchvision's `VisionTransformer`'s.",
}


def readme_text(info: dict[str, Any]) -> str:
    """``README.md`` of an export: what it is and how to load it."""
    backbone, inputs = info["backbone"], info["input"]
    lines = [f"# Exported backbone: {backbone['name']}", "",
             f"The {info['weights']} of run `{info['run']}` at step {info['step']} (epoch {info['epoch']}), "
             f"written by jef {info['jef_version']}. Backbone `{backbone['name']}` from {backbone['plugin']}, "
             f"options `{json.dumps(backbone['options'])}`: {info['in_channels']}-channel images to "
             f"{info['out_dim']}-d features. Files: {', '.join(info['files'])} (a plain state_dict), "
             + ("backbone.py (the network's code, torch only), " if (info.get("architecture") or {}).get("file")
                else "") + "backbone.json (this, as data).", ""]
    code = snippets(info)
    arch = info.get("architecture") or {}
    if arch.get("library") in ("python", "timm"):  # a ResNet's: the torchvision code of snippets()
        code = {f"architecture-{arch['library']}": architecture_snippet(info), **code}
    if len(code) == 1:
        lines += ["## Load it without jef", "", "```python", next(iter(code.values())).rstrip("\n"), "```", ""]
    elif code:
        lines += ["## Load it without jef", ""]
        for library, snippet in code.items():
            lines += [_WITHOUT_JEF[library], "", "```python", snippet.rstrip("\n"), "```", ""]
    else:
        lines += [f"`{backbone['name']}` is not one of jef's own modules nor a torchvision or timm model: "
                  f"rebuilding it needs jef and the plugin that provides it ({backbone['plugin']}).", ""]
    if code and info.get("torchvision") is None and info.get("timm"):
        lines += ["torchvision's `VisionTransformer` has neither mean pooling nor layer scale, which this backbone "
                  "uses: load it with timm (or jef).", ""]
    lines += ["## Load it with jef", "", "```python", "from jef.tools.export import load_exported", "",
              'backbone = load_exported(".")  # this directory', "```", "", "## Inputs", ""]
    if "size" in inputs:
        norm = inputs["normalize"]
        lines.append(f"{inputs['channels']}-channel float images in [0, 1]: {inputs['eval_view']}"
                     + (f", then normalised with mean {norm['mean']} and std {norm['std']}." if norm else "."))
    else:
        lines.append(f"{inputs['channels']}-channel images prepared as {inputs['eval_view']}.")
    if info.get("timm"):
        lines += ["", f"The position embedding is made for {info['timm']['kwargs']['img_size']} px images. For "
                  f"other sizes (multiples of the patch size), jef resizes it bicubically; timm's "
                  f"`dynamic_img_size=True` does too, antialiased when shrinking, so its features at smaller "
                  f"sizes differ slightly from jef's."]
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
