"""CPC's context networks over the G×G grid of patch embeddings: causal over rows.

The context ``c_{i,j}`` of patch ``(i, j)`` may depend on the embeddings of rows ``≤ i`` only, since it predicts
the embeddings of rows ``i + k`` (``k ≥ 1``) [1, Sec. 3.3; 2, Sec. 3]. Two networks:

* ``masked_conv`` (CPC v2 [2], a PixelCNN-style stack): a 1×1 convolution to ``hidden`` channels, then
  ``depth`` residual blocks, each ``LN → ReLU → conv(k×k, causal) → LN → ReLU → conv(1×1)``. The ``k×k``
  convolution is padded with ``k − 1`` rows *above* and none below, so output row ``i`` reads input rows
  ``i − k + 1 … i``; stacked, the receptive field grows upwards only. Every column of those rows is read (the
  masks of [2] hide the rows below, not the columns to the right).
* ``gru`` (CPC v1 [1] summarises the past with a GRU): one GRU per column running down the rows, so
  ``c_{i,j}`` summarises ``z_{0..i, j}`` (its own column only).

``layer_norm`` is CPC v2's replacement of batch normalisation by layer normalisation [2, Sec. 4.1]; it is
computed over the channels at each grid position, never across positions or samples: a normalisation across
rows or across the batch (BatchNorm, a GroupNorm over the whole map) would let a context read the rows below it.

References:
    [1] van den Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding. 2018.
        arXiv:1807.03748.
    [2] Hénaff et al. Data-Efficient Image Recognition with Contrastive Predictive Coding. ICML 2020.
        arXiv:1905.09272.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CausalConv", "ChannelNorm", "GRUContext", "MaskedConvContext"]


class ChannelNorm(nn.Module):
    """Layer normalisation over the channels of ``[N, C, H, W]`` at every position (identity when disabled)."""

    def __init__(self, channels: int, enabled: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels) if enabled else None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.norm is None else self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CausalConv(nn.Conv2d):
    """A ``k×k`` convolution whose output row ``i`` reads input rows ``i − k + 1 … i`` (padding above only)."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__(channels, channels, kernel, padding=0)
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel
        # (left, right, top, bottom): the columns centred, the rows all above: nothing below row i is read.
        return super().forward(F.pad(x, (k // 2, (k - 1) // 2, k - 1, 0)))


class _Block(nn.Module):
    def __init__(self, hidden: int, kernel: int, layer_norm: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(ChannelNorm(hidden, layer_norm), nn.ReLU(), CausalConv(hidden, kernel),
                                  ChannelNorm(hidden, layer_norm), nn.ReLU(), nn.Conv2d(hidden, hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class MaskedConvContext(nn.Module):
    """CPC v2's masked-convolution context network.

    Args:
        dim: Width ``d`` of the patch embeddings.
        hidden: Width of the context vectors.
        depth: Residual blocks.
        kernel: Side of each block's causal convolution.
        layer_norm: Layer normalisation over channels in every block.
    """

    def __init__(self, dim: int, hidden: int, depth: int = 2, kernel: int = 3, layer_norm: bool = True) -> None:
        super().__init__()
        self.inp = nn.Conv2d(dim, hidden, 1)
        self.blocks = nn.Sequential(*(_Block(hidden, kernel, layer_norm) for _ in range(depth)))
        self.out_norm = ChannelNorm(hidden, layer_norm)

    def forward(self, z: Tensor) -> Tensor:
        """Contexts ``[B, G, G, hidden]`` of embeddings ``[B, G, G, d]`` (rows, columns)."""
        x = self.blocks(self.inp(z.permute(0, 3, 1, 2)))
        return self.out_norm(x).permute(0, 2, 3, 1)


class GRUContext(nn.Module):
    """CPC v1's autoregressive summary: a GRU down the rows of each column.

    Args:
        dim: Width ``d`` of the patch embeddings.
        hidden: Width of the GRU's state (the context vectors).
        layer_norm: Layer-normalise the embeddings before the GRU.
    """

    def __init__(self, dim: int, hidden: int, layer_norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.gru = nn.GRU(dim, hidden, batch_first=True)

    def forward(self, z: Tensor) -> Tensor:
        """Contexts ``[B, G, G, hidden]`` of embeddings ``[B, G, G, d]``."""
        b, rows, cols, d = z.shape
        columns = self.norm(z).permute(0, 2, 1, 3).reshape(b * cols, rows, d)  # one sequence per column
        states, _ = self.gru(columns)
        return states.reshape(b, cols, rows, -1).permute(0, 2, 1, 3)
