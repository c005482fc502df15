"""A guard around a oneDNN bug: bfloat16 strided convolutions on the CPU return weight gradients from unwritten memory.

On the CPU, the bfloat16 backward of a padded ``Conv2d`` whose stride exceeds an
input side (a 3x3, stride-2, padding-1 convolution of a 1x1 map: the last block
of ``small_cnn`` on an 8-pixel multi-crop view, ``layer4`` of a ResNet on a
16-pixel crop) returns a weight gradient in which the kernel taps that only
ever see padding are never written: they hold whatever the allocator's block
held before (measured with torch 2.14's oneDNN, 16 or more input channels:
zeros, 1e35 or NaN, different from run to run). That made bf16 runs of SwAV
and DINO's shrunk recipes non-deterministic, and NaN in about half of them.
float32 and float16 take other kernels and are not affected; neither are the
forward pass and the gradient with respect to the input.

A stride-1 convolution is not affected, and subsampling its output is
exactly the strided convolution: output ``o`` of a stride-``s`` convolution is
output ``o * s`` of the stride-1 one. :class:`StrideSafeConv2d` computes an
affected convolution that way; it costs nothing measurable, as only maps
smaller than the stride take that path. jef's backbones are built with
their strided convolutions guarded, and at the start of every run this
built-in plugin guards each strided ``nn.Conv2d`` of the model (a plugin's
backbone, heads; same parameters, same ``state_dict``). A custom training
loop with a backbone of its own calls :func:`guard_strided_convs` on it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jef.hookspecs import hookimpl

__all__ = ["StrideSafeConv2d", "guard_strided_convs", "takes_unit_stride"]


def _bfloat16(x: Tensor, weight: Tensor) -> bool:
    """True when the convolution will run in bfloat16 (its operands are, or CPU autocast will cast them)."""
    if torch.bfloat16 in (x.dtype, weight.dtype):
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def takes_unit_stride(x: Tensor, weight: Tensor, stride: tuple[int, ...]) -> bool:
    """True for a convolution the oneDNN bug can reach: bfloat16 on the CPU, an input side below its stride."""
    if x.device.type != "cpu" or not _bfloat16(x, weight):
        return False
    return any(side < s for side, s in zip(x.shape[-len(stride):], stride, strict=True))


class StrideSafeConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose bfloat16 CPU convolutions of maps smaller than the stride run at stride 1, subsampled.

    The result is the strided convolution's (the same products and sums); only the kernel differs, one whose
    weight gradient is written everywhere.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # noqa: A002 - torch's name
        if not takes_unit_stride(input, weight, self.stride):
            return super()._conv_forward(input, weight, bias)
        padding: Any = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)  # noqa: A001
            padding = 0
        out = F.conv2d(input, weight, bias, 1, padding, self.dilation, self.groups)
        return out[..., ::self.stride[0], ::self.stride[1]]


def guard_strided_convs(module: nn.Module) -> int:
    """Make every strided plain ``nn.Conv2d`` in ``module`` a :class:`StrideSafeConv2d`, in place.

    Parameters, buffers, hooks and ``state_dict`` keys are unchanged (only the class is). Subclasses of
    ``nn.Conv2d`` are left alone: their forward may differ.

    Returns:
        How many convolutions were changed.
    """
    changed = 0
    for sub in module.modules():
        if type(sub) is nn.Conv2d and any(s > 1 for s in sub.stride):
            sub.__class__ = StrideSafeConv2d
            changed += 1
    return changed


@hookimpl
def jef_run_start(run: Any) -> None:
    """Guard the run's model (backbone, heads and target) before its first step."""
    guard_strided_convs(run.unwrapped_model)
