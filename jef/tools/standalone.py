"""The ``architecture`` of an export: how to rebuild the backbone with torch, torchvision or timm alone.

``jef export`` writes it into ``backbone.json`` (and, for jef's own modules, ``backbone.py``), so that every
built-in backbone loads without jef:

* jef's own modules (``small_cnn``'s :class:`~jef.builtin.backbones.SmallCNN`, ``vit``'s
  :class:`~jef.builtin.vit.ViT`, ``text_transformer``'s :class:`~jef.builtin.text.TextTransformer`):
  ``{"library": "python", "file": "backbone.py", "class": "ViT", "kwargs": {...}}``. ``backbone.py`` is the
  class's source and its helpers' as jef defines them, cut out of jef's modules with :mod:`inspect`, with torch
  imports only: ``getattr(backbone_py, class)(**kwargs)`` is the same network with the same ``state_dict`` keys.
* jef's ResNets: ``{"library": "torchvision", "name": "resnet18", "kwargs": {"weights": null},
  "modifications": [...]}``, each modification an attribute replaced by a ``torch.nn`` module:
  ``{"attribute": "fc", "class": "Identity", "args": [], "kwargs": {}}`` (and the CIFAR stem's ``conv1`` and
  ``maxpool``, or a ``conv1`` for other than 3 channels).
* a timm model (the ``timm`` backbone of jef-plugin-timm: a module whose only child is a model timm created,
  holding all its weights): ``{"library": "timm", "name": "resnet18", "kwargs": {"num_classes": 0,
  "in_chans": 3, ...}, "key_prefix": "model."}``, for ``timm.create_model(name, **kwargs)``.

Every architecture also has ``key_prefix`` (strip it from the weights' keys) and ``drop_keys`` (keys to leave
out), empty for all but timm's. Before it is written, the recipe is built on the ``meta`` device and its keys and
shapes compared with the backbone's: one that would not load strictly is not written (the backbone then needs
jef). Any other backbone (a plugin's own module) has ``architecture: null``.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["architecture", "architecture_snippet", "standalone_source"]

_HEADER = '''"""{name} as jef {version} defines it ({modules}), self-contained: it needs torch only, not jef.

Written by `jef export` next to the weights (MIT licence, as jef). Load them with

    model = {name}(**kwargs)    # kwargs: backbone.json's architecture.kwargs
    model.load_state_dict(state_dict)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
'''

_TOKENS = '''

class Tokens(NamedTuple):
    """What ``ViT.forward_tokens`` returns (jef's ``jef.components.Tokens``, as a named tuple)."""

    patches: Tensor
    cls: Tensor | None
    grid: tuple[int, int]
    blocks: dict[int, Tensor] = {}
    mask: Tensor | None = None
'''


def _mlp_ratio(width: int, hidden: int) -> float:
    """A ``mlp_ratio`` for which ``int(width * mlp_ratio) == hidden``, as the blocks compute their hidden width."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def _small_cnn_kwargs(module: nn.Module, options: Any) -> dict[str, Any]:
    first = module.features[0]
    return {"in_channels": first.in_channels, "width": first.out_channels, "first_stride": first.stride[0]}


def _vit_kwargs(module: nn.Module, options: Any) -> dict[str, Any]:
    from jef.builtin.vit import DropPath, LayerScale

    block, proj = module.blocks[0], module.patch_embed.proj
    last = module.blocks[-1].drop_path1
    # The value only initialises the scales, which the weights replace; None would leave them out.
    scale = getattr(options, "layer_scale", None) or float(block.ls1.gamma.detach().flatten()[0]) \
        if isinstance(block.ls1, LayerScale) else None
    return {"image_size": module.grid[0] * module.patch_size, "patch_size": module.patch_size,
            "in_channels": proj.in_channels, "width": module.out_dim, "depth": len(module.blocks),
            "heads": block.attn.heads, "mlp_ratio": _mlp_ratio(module.out_dim, block.mlp.fc1.out_features),
            "pool": module.pool, "drop_path": last.p if isinstance(last, DropPath) else 0.0,
            "layer_scale": scale,
            "pos_embed": "sincos" if "pos_embed" in dict(module.named_buffers()) else "learned",
            "frozen_patch_embed": not proj.weight.requires_grad, "mask_token": hasattr(module, "mask_token")}


def _text_kwargs(module: nn.Module, options: Any) -> dict[str, Any]:
    block = module.blocks[0]
    return {"vocab_size": module.vocab_size, "context_length": module.context_length, "width": module.out_dim,
            "depth": len(module.blocks), "heads": block.attn.heads,
            "mlp_ratio": _mlp_ratio(module.out_dim, block.mlp.fc1.out_features), "causal": block.attn.causal,
            "pool": module.pool}


def _own_modules() -> dict[type, tuple[list[Any], str, Callable[[nn.Module, Any], dict[str, Any]]]]:
    """jef's backbone classes: ``class: (what backbone.py defines, in order; extra source; kwargs of a module)``."""
    from jef.builtin import backbones, text, vit

    blocks = [vit.Attention, vit.Mlp, vit.LayerScale, vit.DropPath, vit.Block]
    return {
        backbones.SmallCNN: ([backbones.SmallCNN], "", _small_cnn_kwargs),
        vit.ViT: ([vit.sincos_position_embedding, vit.PatchEmbed, *blocks, vit.ViT], _TOKENS, _vit_kwargs),
        text.TextTransformer: ([*blocks, text.TextTransformer], f"\n\nPAD = {text.PAD!r}  # the padding id\n",
                               _text_kwargs),
    }


def standalone_source(cls: type) -> str | None:
    """The source of ``backbone.py`` for one of jef's backbone classes (None for any other class).

    The classes and functions are jef's own source, unchanged; the file imports only ``math``, ``typing``,
    ``collections.abc`` and torch.
    """
    import jef

    own = _own_modules().get(cls)
    if own is None:
        return None
    objects, extra, _ = own
    modules = ", ".join(dict.fromkeys(obj.__module__ for obj in objects))
    parts = [_HEADER.format(name=cls.__name__, version=jef.__version__, modules=modules), extra]
    parts += ["\n\n" + inspect.getsource(obj) for obj in objects]
    return "".join(parts).rstrip("\n") + "\n"


def _module_of(source: str) -> types.ModuleType:
    """``backbone.py`` executed as a module of its own (its classes need a module for their annotations)."""
    module = types.ModuleType("jef_export_backbone")
    exec(compile(source, "backbone.py", "exec"), module.__dict__)  # noqa: S102 - jef's own source, just written
    return module


def _resnet_modifications(module: nn.Module) -> list[dict[str, Any]]:
    """What replaces torchvision's ``conv1``, ``maxpool`` and ``fc`` in jef's ResNet ``module``."""
    changes = []
    conv = module.conv1
    if (conv.in_channels, conv.kernel_size, conv.stride, conv.padding) != (3, (7, 7), (2, 2), (3, 3)):
        changes.append({"attribute": "conv1", "class": "Conv2d", "args": [conv.in_channels, conv.out_channels],
                        "kwargs": {"kernel_size": conv.kernel_size[0], "stride": conv.stride[0],
                                   "padding": conv.padding[0], "bias": conv.bias is not None}})
    if isinstance(module.maxpool, nn.Identity):
        changes.append({"attribute": "maxpool", "class": "Identity", "args": [], "kwargs": {}})
    return [*changes, {"attribute": "fc", "class": "Identity", "args": [], "kwargs": {}}]


def _timm_model(module: nn.Module) -> tuple[str, nn.Module] | None:
    """``(key prefix, model)`` when ``module`` is a timm model, or wraps one as its only child with all weights."""
    if isinstance(getattr(module, "pretrained_cfg", None), dict):
        return "", module
    children = list(module.named_children())
    if len(children) != 1 or any(True for _ in module.parameters(recurse=False)) or \
            any(True for _ in module.buffers(recurse=False)):
        return None
    name, child = children[0]
    return (f"{name}.", child) if isinstance(getattr(child, "pretrained_cfg", None), dict) else None


def _build(arch: dict[str, Any], source: str | None) -> nn.Module:
    """The architecture's module, as the loading recipe builds it (call it on the ``meta`` device)."""
    if arch["library"] == "python":
        return getattr(_module_of(source or ""), arch["class"])(**arch["kwargs"])
    if arch["library"] == "torchvision":
        import torchvision

        model = getattr(torchvision.models, arch["name"])(**arch["kwargs"])
        for change in arch["modifications"]:
            setattr(model, change["attribute"], getattr(nn, change["class"])(*change["args"], **change["kwargs"]))
        return model
    import timm

    return timm.create_model(arch["name"], **arch["kwargs"])


def _fits(arch: dict[str, Any], source: str | None, state: dict[str, torch.Tensor]) -> bool:
    """True when the recipe's module has the keys and shapes of ``state`` after ``key_prefix``/``drop_keys``."""
    expected = {key.removeprefix(arch["key_prefix"]): tuple(value.shape) for key, value in state.items()
                if key not in arch["drop_keys"]}
    try:
        with torch.device("meta"):
            built = _build(arch, source)
    except Exception:  # noqa: BLE001 - a recipe that cannot even be built does not fit
        return False
    return {key: tuple(value.shape) for key, value in built.state_dict().items()} == expected


def architecture(module: nn.Module, *, options: Any = None) -> tuple[dict[str, Any] | None, str | None]:
    """``(backbone.json's architecture, backbone.py's source or None)`` of a built backbone.

    Args:
        module: The backbone as built (jef's, or a plugin's).
        options: The backbone slot's options, or None; a timm model's ``kwargs`` and ``image_size`` are read
            from them, and a ViT's ``layer_scale``.

    Returns:
        ``(None, None)`` for a backbone no library rebuilds without its own code (see the module's docstring).
    """
    state = module.state_dict()
    base = {"key_prefix": "", "drop_keys": []}
    own = _own_modules().get(type(module))
    source = None
    if own is not None:
        arch = {"library": "python", "file": "backbone.py", "class": type(module).__name__,
                "kwargs": own[2](module, options), **base}
        source = standalone_source(type(module))
    elif _is_torchvision_resnet(module):
        arch = {"library": "torchvision", "name": _resnet_name(module), "kwargs": {"weights": None},
                "modifications": _resnet_modifications(module), **base}
    elif (found := _timm_model(module)) is not None:
        prefix, model = found
        kwargs = {"num_classes": int(model.num_classes), "in_chans": _first_conv_channels(model),
                  **dict(getattr(options, "kwargs", None) or {})}
        if getattr(options, "image_size", None) is not None:
            kwargs["img_size"] = options.image_size
        arch = {"library": "timm", "name": model.pretrained_cfg["architecture"], "kwargs": kwargs, **base,
                "key_prefix": prefix}
    else:
        return None, None
    return (arch, source) if _fits(arch, source, state) else (None, None)


def _is_torchvision_resnet(module: nn.Module) -> bool:
    from torchvision.models import ResNet

    return type(module) is ResNet


def _resnet_name(module: nn.Module) -> str | None:
    """``resnet18`` or ``resnet50`` (jef's two), from the blocks per stage and the block type."""
    depths = tuple(len(getattr(module, f"layer{i}")) for i in range(1, 5))
    bottleneck = type(module.layer1[0]).__name__ == "Bottleneck"
    return {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), True): "resnet50",
            ((3, 4, 6, 3), False): "resnet34", ((3, 4, 23, 3), True): "resnet101",
            ((3, 8, 36, 3), True): "resnet152"}.get((depths, bottleneck))


def _first_conv_channels(model: nn.Module) -> int:
    """The input channels of the first convolution (timm's ``in_chans``)."""
    conv = next((sub for sub in model.modules() if isinstance(sub, nn.Conv2d | nn.Conv1d | nn.Conv3d)), None)
    return int(conv.in_channels) if conv is not None else 3


def architecture_snippet(info: dict[str, Any]) -> str | None:
    """Python code that loads the export per its ``architecture``, without jef (None where there is none)."""
    arch = info.get("architecture")
    if not arch:
        return None
    if "backbone.safetensors" in info["files"]:
        imports, weights = ["from safetensors.torch import load_file"], 'load_file("backbone.safetensors")'
    else:
        imports, weights = [], 'torch.load("backbone.pt", weights_only=True)'
    kwargs = ", ".join(f"{key}={value!r}" for key, value in arch["kwargs"].items())
    if arch["library"] == "python":
        lines = ["import importlib.util", "", "import torch", *imports, "",
                 f'spec = importlib.util.spec_from_file_location("backbone", "{arch["file"]}")  # torch only',
                 "backbone = importlib.util.module_from_spec(spec)", "spec.loader.exec_module(backbone)",
                 f"model = backbone.{arch['class']}({kwargs})"]
    elif arch["library"] == "torchvision":
        lines = ["import torch", "import torchvision", *imports, "",
                 f"model = torchvision.models.{arch['name']}({kwargs})"]
        for change in arch["modifications"]:
            arguments = [repr(a) for a in change["args"]] + [f"{k}={v!r}" for k, v in change["kwargs"].items()]
            lines.append(f"model.{change['attribute']} = torch.nn.{change['class']}({', '.join(arguments)})")
    else:
        lines = ["import timm", "import torch", *imports, "", f'model = timm.create_model("{arch["name"]}", {kwargs})']
    lines.append(f"state = {weights}")
    if arch["key_prefix"] or arch["drop_keys"]:
        key = f"key.removeprefix({json.dumps(arch['key_prefix'])})" if arch["key_prefix"] else "key"
        keep = f" if key not in {json.dumps(arch['drop_keys'])}" if arch["drop_keys"] else ""
        lines.append(f"state = {{{key}: value for key, value in state.items(){keep}}}")
    lines += ["model.load_state_dict(state)  # strict: every key matches", "model.eval()"]
    return "\n".join(lines) + "\n"
