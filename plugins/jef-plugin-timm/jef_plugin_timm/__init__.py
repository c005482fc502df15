"""timm models as jef backbones: ``backbone: {name: timm, model: vit_small_patch16_224}``.

An adapter, not a method: it registers one backbone, ``timm``, that builds any model of the timm library
(Wightman, PyTorch Image Models, https://github.com/huggingface/pytorch-image-models) with
``num_classes=0``, so that its output is the pooled representation ``h`` jef's backbones return, and with
the data's number of channels. Weights come only from a local file (``pretrained_file``), loaded by timm's
own pretrained loader, which leaves the classifier out and adapts the first layer to the channels; the
plugin never lets timm download.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import attrs
from torch import Tensor, nn

from jef import Register, hookimpl

__version__ = "0.1.0"


def _model_name(instance: Any, attribute: Any, value: str) -> None:
    import timm

    if not timm.is_model(value):
        close = difflib.get_close_matches(value, timm.list_models(), n=3, cutoff=0.6)
        hint = f"close names {', '.join(close)}; " if close else ""
        raise ValueError(f"'{attribute.name}' must be a timm model name ({hint}timm.list_models('*vit*') lists "
                         f"them)", attribute, None, value)


#: Constructor arguments jef sets itself, or that could make timm download.
_RESERVED = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
             "num_classes", "in_chans", "img_size")


def _free_kwargs(instance: Any, attribute: Any, value: dict[str, Any]) -> None:
    if taken := [key for key in value if key in _RESERVED]:
        raise ValueError(f"'{attribute.name}' cannot hold {', '.join(taken)} (jef sets num_classes and in_chans, "
                         f"image_size sets img_size, and weights come only from pretrained_file, so nothing is "
                         f"downloaded)", attribute, None, value)


def _existing_file(instance: Any, attribute: Any, value: str | None) -> None:
    if value is not None and not Path(value).is_file():
        raise ValueError(f"'{attribute.name}' must be an existing local .safetensors or .pth file (nothing is "
                         f"downloaded)", attribute, None, value)


@attrs.frozen(kw_only=True)
class TimmOptions:
    """Options of the ``timm`` backbone."""

    model: str = attrs.field(default="resnet18", validator=_model_name,
                             metadata={"doc": "timm model name (timm.list_models() lists them)"})
    pretrained_file: str | None = attrs.field(default=None, validator=_existing_file,
                                              metadata={"doc": "local .safetensors/.pth weights (no download)"})
    image_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)),
                                         metadata={"doc": "passed as img_size (ViTs); None: the model's default"})
    kwargs: dict[str, Any] = attrs.field(factory=dict, validator=_free_kwargs,
                                         metadata={"doc": "more constructor arguments (depth, drop_path_rate...)"})


class TimmBackbone(nn.Module):
    """A timm model without its classifier: ``[N, C, H, W] -> [N, num_features]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.out_dim = int(model.num_features)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


def build_timm(options: TimmOptions, ctx: Any) -> TimmBackbone:
    """Create ``options.model`` with timm, from ``pretrained_file`` when one is given."""
    import timm

    kwargs = dict(options.kwargs)
    if options.image_size is not None:
        kwargs["img_size"] = options.image_size
    if options.pretrained_file is not None:
        # timm's pretrained path with a local file: the classifier is left out and the stem adapted to in_chans.
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(options.pretrained_file)})
    try:
        model = timm.create_model(options.model, num_classes=0, in_chans=ctx.in_channels, **kwargs)
    except TypeError as error:  # a keyword this architecture does not take (img_size on a ResNet, a typo in kwargs)
        raise ValueError(f"timm model {options.model!r} does not take the arguments {sorted(kwargs)} "
                         f"({error}); image_size applies to models with a patch grid (ViT, DeiT, Swin), and kwargs "
                         f"must be that model's constructor arguments") from error
    return TimmBackbone(model)


@hookimpl
def jef_register_backbones(register: Register) -> None:
    """Register the ``timm`` backbone."""
    register("timm", build_timm, options=TimmOptions,
             description="any timm model (ViT, ConvNeXt, ResNet...) without its classifier; weights from a local file",
             paper="Wightman, PyTorch Image Models (timm), https://github.com/huggingface/pytorch-image-models")
