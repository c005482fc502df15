"""How to rebuild jef's built-in backbones with torchvision or timm alone: the recipes ``jef export`` writes.

jef's ``resnet18`` and ``resnet50`` are torchvision ResNets with ``fc`` replaced by ``nn.Identity`` (and, for
small images, the CIFAR stem): their keys are torchvision's, so a torchvision model with the same changes
loads them strictly. jef's ``vit`` names its parameters as timm's ``VisionTransformer`` does and computes what
it computes (pre-norm blocks, LayerNorm eps 1e-6, exact GELU, the CLS position inside the position
embedding), so timm loads an export strictly; torchvision's ``VisionTransformer`` loads it after the keys are
renamed, when the backbone pools the CLS token and has no layer scale (torchvision has neither mean pooling nor
layer scale). Each recipe is data for ``backbone.json`` and code for the export's ``README.md``; the tests run
that code without jef and compare the features.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

__all__ = ["TO_TORCHVISION_VIT", "backbone_recipes", "resnet_changes", "snippets"]

#: ``(jef's key pattern, torchvision's)``: the inverse of :func:`jef.builtin.vit.convert_torchvision_state_dict`.
TO_TORCHVISION_VIT: list[tuple[str, str]] = [
    (r"cls_token", "class_token"),
    (r"pos_embed", "encoder.pos_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"conv_proj.\1"),
    (r"norm\.(weight|bias)", r"encoder.ln.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.encoder_layer_\1.ln_1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.encoder_layer_\1.ln_2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.encoder_layer_\1.self_attention.out_proj.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"encoder.layers.encoder_layer_\1.mlp.0.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"encoder.layers.encoder_layer_\1.mlp.3.\2"),
]

#: timm's ``vit_{size}_patch{p}_224`` models, by ``(width, depth, heads, patch)``.
_TIMM_NAMES = {(192, 12, 3, 16): "vit_tiny_patch16_224", (384, 12, 6, 8): "vit_small_patch8_224",
               (384, 12, 6, 16): "vit_small_patch16_224", (384, 12, 6, 32): "vit_small_patch32_224",
               (768, 12, 12, 8): "vit_base_patch8_224", (768, 12, 12, 16): "vit_base_patch16_224",
               (768, 12, 12, 32): "vit_base_patch32_224", (1024, 24, 16, 16): "vit_large_patch16_224",
               (1024, 24, 16, 32): "vit_large_patch32_224"}


def resnet_changes(small_images: bool, channels: int) -> list[str]:
    """The attribute assignments that turn ``torchvision.models.resnetXX()`` into jef's backbone (as code)."""
    changes = []
    if small_images:  # jef.builtin.backbones' CIFAR stem
        changes += [f"conv1 = torch.nn.Conv2d({channels}, 64, kernel_size=3, stride=1, padding=1, bias=False)",
                    "maxpool = torch.nn.Identity()"]
    elif channels != 3:
        changes.append(f"conv1 = torch.nn.Conv2d({channels}, 64, kernel_size=7, stride=2, padding=3, bias=False)")
    return [*changes, "fc = torch.nn.Identity()"]


def _resnet_recipe(arch: str, small_images: bool, channels: int) -> dict[str, Any]:
    return {"constructor": f"torchvision.models.{arch}", "arch": arch, "small_images": small_images,
            "kwargs": {"weights": None}, "changes": resnet_changes(small_images, channels), "key_renames": [],
            "drop_keys": []}


def _vit_recipes(module: nn.Module, layer_scale: float | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``(torchvision recipe or None, timm recipe)`` of a built :class:`jef.builtin.vit.ViT`."""
    width, depth, patch = module.out_dim, len(module.blocks), module.patch_size
    heads, hidden = module.blocks[0].attn.heads, module.blocks[0].mlp.fc1.out_features
    channels, image_size = module.patch_embed.proj.in_channels, module.grid[0] * patch
    drop = ["mask_token"] if hasattr(module, "mask_token") else []  # only jef's masked methods use it
    kwargs = {"img_size": image_size, "patch_size": patch, "in_chans": channels, "num_classes": 0,
              "global_pool": "token" if module.pool == "cls" else "avg", "fc_norm": False, "embed_dim": width,
              "depth": depth, "num_heads": heads, "mlp_ratio": hidden / width, "init_values": layer_scale}
    name = _TIMM_NAMES.get((width, depth, heads, patch)) if hidden == 4 * width else None
    implied = {"embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio"} if name else set()
    timm = {"constructor": "timm.models.vision_transformer.VisionTransformer", "kwargs": kwargs,
            "model_name": name, "create_model_kwargs": {k: v for k, v in kwargs.items() if k not in implied},
            "drop_keys": drop}
    if module.pool != "cls" or layer_scale is not None:
        return None, timm
    changes = ["heads = torch.nn.Identity()"]
    if channels != 3:  # torchvision builds a 3-channel patch projection
        changes.insert(0, f"conv_proj = torch.nn.Conv2d({channels}, {width}, kernel_size={patch}, stride={patch})")
    torchvision = {"constructor": "torchvision.models.VisionTransformer",
                   "kwargs": {"image_size": image_size, "patch_size": patch, "num_layers": depth, "num_heads": heads,
                              "hidden_dim": width, "mlp_dim": hidden},
                   "changes": changes, "key_renames": [list(rule) for rule in TO_TORCHVISION_VIT], "drop_keys": drop}
    return torchvision, timm


def backbone_recipes(slot: Any, module: nn.Module, channels: int) -> dict[str, dict[str, Any] | None]:
    """``{"torchvision": ..., "timm": ...}`` for ``backbone.json``: how to rebuild ``module`` without jef.

    Args:
        slot: The pipeline's backbone slot (its entry's factory says whether it is one of jef's own).
        module: The backbone as built.
        channels: The images' channels.

    Returns:
        A recipe per library, None where that library cannot rebuild the backbone (a plugin's backbone: both).
    """
    from jef.builtin.backbones import build_resnet18, build_resnet50
    from jef.builtin.vit import build_vit

    factory = slot.entry.factory  # a plugin may register its own "vit": only jef's own factories are known here
    arch = {build_resnet18: "resnet18", build_resnet50: "resnet50"}.get(factory)
    if arch is not None:
        return {"torchvision": _resnet_recipe(arch, slot.options.small_images, channels), "timm": None}
    if factory is build_vit:
        torchvision, timm = _vit_recipes(module, slot.options.layer_scale)
        return {"torchvision": torchvision, "timm": timm}
    return {"torchvision": None, "timm": None}


def _weights(info: dict[str, Any]) -> tuple[list[str], str]:
    """The imports and the expression that read the export's weights."""
    if "backbone.safetensors" in info["files"]:
        return ["from safetensors.torch import load_file"], 'load_file("backbone.safetensors")'
    return [], 'torch.load("backbone.pt", weights_only=True)'


def _arguments(kwargs: dict[str, Any]) -> str:
    """``key=value, ...`` as Python source, strings in double quotes."""
    return ", ".join(f"{key}={json.dumps(value) if isinstance(value, str) else repr(value)}"
                     for key, value in kwargs.items())


def _call(constructor: str, kwargs: dict[str, Any]) -> str:
    return f"{constructor}({_arguments(kwargs)})"


def _drops(recipe: dict[str, Any]) -> list[str]:
    return [f'state.pop("{key}")  # jef\'s own parameter, which {recipe["constructor"].split(".")[0]} has no use for'
            for key in recipe["drop_keys"]]


def _torchvision_snippet(info: dict[str, Any], recipe: dict[str, Any]) -> str:
    imports, weights = _weights(info)
    lines = ["import torch", "import torchvision", *imports, ""]
    if recipe["key_renames"]:
        rules = [f'    (r"{pattern}", r"{replacement}"),' for pattern, replacement in recipe["key_renames"]]
        lines = ["import re", "", *lines, "RENAMES = [  # jef's (timm's) key pattern, torchvision's", *rules, "]",
                 "", "", "def torchvision_key(key):", "    for pattern, replacement in RENAMES:",
                 "        if re.fullmatch(pattern, key):", "            return re.sub(pattern, replacement, key)",
                 "    return key", "", ""]
    lines.append(f"model = {_call(recipe['constructor'], recipe['kwargs'])}")
    lines += [f"model.{change}" for change in recipe["changes"]]
    if recipe["key_renames"] or recipe["drop_keys"]:
        lines += [f"state = {weights}", *_drops(recipe)]
        if recipe["key_renames"]:
            lines.append("state = {torchvision_key(key): value for key, value in state.items()}")
        weights = "state"
    lines += [f"model.load_state_dict({weights})  # strict: every key matches", "model.eval()"]
    return "\n".join(lines) + "\n"


def _timm_snippet(info: dict[str, Any], recipe: dict[str, Any]) -> str:
    imports, weights = _weights(info)
    lines = ["import torch", *imports, "from timm.models.vision_transformer import VisionTransformer", "",
             f"model = {_call('VisionTransformer', recipe['kwargs'])}"]
    if recipe["model_name"]:
        lines.append(f"# the same: timm.create_model({json.dumps(recipe['model_name'])}, pretrained=False, "
                     f"{_arguments(recipe['create_model_kwargs'])})")
    lines += [f"state = {weights}", *_drops(recipe),
              "model.load_state_dict(state)  # strict: every key matches", "model.eval()"]
    return "\n".join(lines) + "\n"


def snippets(info: dict[str, Any]) -> dict[str, str]:
    """Python code per library (``"timm"``, ``"torchvision"``) that loads the export without jef."""
    code = {}
    if info.get("timm"):
        code["timm"] = _timm_snippet(info, info["timm"])
    if info.get("torchvision"):
        code["torchvision"] = _torchvision_snippet(info, info["torchvision"])
    return code
