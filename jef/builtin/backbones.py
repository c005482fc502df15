"""Built-in backbones: torchvision ResNets and a small CNN for quick CPU runs.

Every backbone maps ``[B, ctx.in_channels, H, W]`` images to ``[B, out_dim]``
representations ``h`` and exposes ``out_dim`` without a forward pass, so the
pipeline can size the projector before seeing data.
"""

import attrs

from jef.config.options import size_limit
import torch
from torch import Tensor, nn

from jef.builtin.cpu_bf16_conv import guard_strided_convs
from jef.components import RunContext
from jef.hookspecs import Register, hookimpl

__all__ = [
    "ResNetOptions",
    "SmallCNN",
    "SmallCNNOptions",
    "build_resnet18",
    "build_resnet50",
    "build_small_cnn",
    "jef_register_backbones",
]

_RESNET_PAPER = "He et al., Deep Residual Learning for Image Recognition, arXiv:1512.03385"


@attrs.frozen(kw_only=True)
class ResNetOptions:
    """Options of the ResNet backbones."""

    small_images: bool = attrs.field(
        default=False,
        metadata={"doc": "CIFAR stem: 3x3 stride-1 first conv and no max-pool (for images of ~32 px)"},
    )
    zero_init_residual: bool = attrs.field(
        default=False,
        metadata={"doc": "zero-init the last BN of each residual block so blocks start as identities"},
    )


def _resnet(arch: str, out_dim: int, options: ResNetOptions, ctx: RunContext) -> nn.Module:
    """Build a torchvision ResNet as a headless backbone.

    The ImageNet stem (7x7 stride-2 conv then a stride-2 max-pool) divides the
    resolution by 4 before the first block, which leaves 8x8 maps on 32 px
    images; the CIFAR variant of He et al. (arXiv:1512.03385, sec. 4.2) keeps
    full resolution instead, as SimCLR does for CIFAR-10 (arXiv:2002.05709, B.9).

    Args:
        arch: torchvision constructor name (``"resnet18"``, ``"resnet50"``).
        out_dim: Width of the pooled features, set as ``model.out_dim``.
        options: Stem and initialisation options.
        ctx: Run context; ``ctx.in_channels`` sizes the first conv.

    Returns:
        The ResNet with ``fc`` replaced by ``nn.Identity`` and ``out_dim`` set.
    """
    if ctx.in_channels < 1:
        raise ValueError(f"{arch}: ctx.in_channels must be >= 1, got {ctx.in_channels}")
    # Imported here: torchvision.models takes seconds to import, which every `jef` command and process would pay.
    from torchvision import models

    # weights=None: nothing may be downloaded, and SSL pre-training starts from scratch anyway.
    model = getattr(models, arch)(weights=None, zero_init_residual=options.zero_init_residual)
    if options.small_images or ctx.in_channels != 3:
        width = model.conv1.out_channels
        if options.small_images:
            conv1 = nn.Conv2d(ctx.in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        else:
            conv1 = nn.Conv2d(ctx.in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        # Same init torchvision gives its own convs, so the replaced stem is not the odd one out.
        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = conv1
    model.fc = nn.Identity()
    model.out_dim = out_dim
    guard_strided_convs(model)  # bf16 on the CPU: see jef.builtin.cpu_bf16_conv
    return model


def build_resnet18(options: ResNetOptions, ctx: RunContext) -> nn.Module:
    """ResNet-18 backbone (512-d features)."""
    return _resnet("resnet18", 512, options, ctx)


def build_resnet50(options: ResNetOptions, ctx: RunContext) -> nn.Module:
    """ResNet-50 backbone (2048-d features)."""
    return _resnet("resnet50", 2048, options, ctx)


@attrs.frozen(kw_only=True)
class SmallCNNOptions:
    """Options of the small CNN."""

    width: int = attrs.field(
        default=32,
        validator=[attrs.validators.ge(1), size_limit],
        metadata={"doc": "channels of the first block; blocks use width x (1, 2, 4, 8)"},
    )
    first_stride: int = attrs.field(
        default=2, validator=attrs.validators.in_([1, 2]),
        metadata={"doc": "stride of the first block: 1 keeps full resolution for small images (about 3x the cost)"},
    )


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks and global average pooling, for smoke tests and CPU runs.

    Every block halves the resolution: most of a CNN's cost sits in its
    full-resolution layers, and halving from the first block keeps a
    forward+backward of a 128-image batch of 28x28 digits in tens of
    milliseconds on two CPU cores. Padding 1 with stride 2 maps any side
    ``n >= 1`` to ``ceil(n / 2)``, so every input size works.

    Args:
        in_channels: Channels of the input images.
        width: Channels of the first block; the others use 2x, 4x and 8x.

    Attributes:
        out_dim: ``8 * width``.
    """

    def __init__(self, in_channels: int, width: int = 32, first_stride: int = 2) -> None:
        super().__init__()
        if in_channels < 1:  # the images' channels (ctx.in_channels), which no option validates
            raise ValueError(f"small_cnn: in_channels must be >= 1, got {in_channels}")
        layers: list[nn.Module] = []
        channels = in_channels
        for mult in (1, 2, 4, 8):
            out = width * mult
            # No conv bias: the BatchNorm right after would subtract it again.
            stride = first_stride if mult == 1 else 2
            layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[B, C, H, W]`` images to ``[B, out_dim]`` features."""
        return torch.flatten(self.pool(self.features(x)), 1)


def build_small_cnn(options: SmallCNNOptions, ctx: RunContext) -> SmallCNN:
    """Small CNN backbone (``8 * width`` features)."""
    backbone = SmallCNN(ctx.in_channels, options.width, options.first_stride)
    guard_strided_convs(backbone)  # bf16 on the CPU: see jef.builtin.cpu_bf16_conv
    return backbone


@hookimpl
def jef_register_backbones(register: Register) -> None:
    """Register ``resnet18``, ``resnet50`` and ``small_cnn``."""
    register("resnet18", build_resnet18, options=ResNetOptions,
             description="ResNet-18 from torchvision, headless (512-d)", paper=_RESNET_PAPER)
    register("resnet50", build_resnet50, options=ResNetOptions,
             description="ResNet-50 from torchvision, headless (2048-d)", paper=_RESNET_PAPER)
    register("small_cnn", build_small_cnn, options=SmallCNNOptions,
             description="4-block strided CNN with global average pooling, for quick CPU runs")
