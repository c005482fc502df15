"""DINO's projection head ``dino_head``: MLP, ℓ2-normalised bottleneck, weight-normalised output layer.

The head of DINO [1] (Sec. 3.1 and its code's ``DINOHead``) maps the
backbone's representation to ``K`` logits::

    x → (Linear → [BN] → GELU) × (n_layers − 1) → Linear → bottleneck (256)
      → ℓ2-normalise → weight-normalised Linear (no bias) → K logits

The last layer is ``g · v/‖v‖`` per output row
(:func:`torch.nn.utils.parametrizations.weight_norm`). With
``norm_last_layer`` the magnitude ``g`` is fixed at 1 and never trained, so
every logit is a cosine between the normalised bottleneck and a unit row,
bounded in [−1, 1]: the paper's code notes that training ``g`` can perform
better but can make training unstable. The paper also freezes the last layer during the first epoch
(``freeze_last_layer_epochs``): its gradients are dropped after the backward
pass (the ``jef_after_backward`` run hook). The layer still takes part in
the forward pass, so DDP sees its gradients and reports no unused parameter.

The teacher's projector is jef's EMA copy of this module (the ``ema`` target
with ``projector: true``): a deep copy whose parameters, ``g`` and ``v``
included, follow ϑ ← mϑ + (1 − m)θ in the same order as the student's.

References:
    [1] Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin. Emerging
        Properties in Self-Supervised Vision Transformers (DINO). ICCV 2021.
        arXiv:2104.14294.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from jef import hookimpl
from jef.components import RunContext
from jef.functional import l2_normalize

__all__ = ["DinoHead", "DinoHeadOptions", "build_dino_head"]

#: Standard deviation of the truncated-normal initialisation of the MLP's weights (the paper's code).
INIT_STD = 0.02


#: The widest layer a head may have: 2^24 logits is 256 times DINO's K (a larger one is a typo, and its
#: weights would overflow torch's storage size before any step).
MAX_WIDTH = 2**24


@attrs.frozen(kw_only=True)
class DinoHeadOptions:
    """Options of the ``dino_head`` projector."""

    out_dim: int = attrs.field(
        default=4096, validator=[v.ge(1), v.le(MAX_WIDTH)],
        metadata={"doc": "K, the logits the teacher's distribution is over (the paper: 65536 on ImageNet)"},
    )
    hidden_dim: int = attrs.field(default=2048, validator=[v.ge(1), v.le(MAX_WIDTH)],
                                  metadata={"doc": "width of the hidden layers"})
    bottleneck_dim: int = attrs.field(
        default=256, validator=[v.ge(1), v.le(MAX_WIDTH)],
        metadata={"doc": "width of the ℓ2-normalised bottleneck before the last layer"}
    )
    n_layers: int = attrs.field(
        default=3, validator=[v.ge(1), v.le(64)],
        metadata={"doc": "linear layers of the MLP up to the bottleneck (1: a single linear map)"},
    )
    batch_norm: bool = attrs.field(
        default=False, metadata={"doc": "BatchNorm after each hidden linear layer (the paper's use_bn_in_head)"}
    )
    norm_last_layer: bool = attrs.field(
        default=True,
        metadata={"doc": "fix the weight-norm magnitude g of the last layer at 1 (not trained); false trains it"},
    )
    freeze_last_layer_epochs: int = attrs.field(
        default=1, validator=v.ge(0), metadata={"doc": "epochs during which the last layer gets no update"}
    )


class DinoHead(nn.Module):
    """DINO's projection head [1].

    Args:
        in_dim: Input width (the backbone's).
        out_dim: ``K``, the number of logits.
        hidden_dim: Width of the hidden layers.
        bottleneck_dim: Width of the normalised bottleneck.
        n_layers: Linear layers up to the bottleneck (``>= 1``).
        batch_norm: BatchNorm after each hidden linear layer.
        norm_last_layer: Fix the last layer's weight-norm magnitude at 1.
        freeze_last_layer_epochs: Epochs during which the last layer's
            gradients are dropped before the optimiser step.

    Attributes:
        mlp: The layers up to the bottleneck.
        last_layer: The weight-normalised ``bottleneck_dim → out_dim`` map.
        out_dim: ``K``.
    """

    def __init__(self, in_dim: int, out_dim: int = 4096, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 n_layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True,
                 freeze_last_layer_epochs: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(n_layers - 1):
            layers.append(nn.Linear(width, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            width = hidden_dim
        layers.append(nn.Linear(width, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                nn.init.zeros_(module.bias)
        # The last layer keeps PyTorch's default initialisation, as in the paper's code: weight normalisation
        # makes only the direction of each row matter.
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.norm_last_layer = norm_last_layer
        self.freeze_last_layer_epochs = freeze_last_layer_epochs

    def bottleneck(self, x: Tensor) -> Tensor:
        """The ℓ2-normalised bottleneck ``[B, bottleneck_dim]`` (float32 or wider) of ``[B, in_dim]`` inputs."""
        # In at least float32: under fp16 autocast F.normalize's eps would underflow to zero (NaN for a zero row).
        return l2_normalize(self.mlp(x))

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[B, in_dim]`` to ``[B, out_dim]`` logits."""
        return self.last_layer(self.bottleneck(x))

    @hookimpl
    def jef_after_backward(self, run: Any) -> None:
        """Drop the last layer's gradients while ``run.epoch < freeze_last_layer_epochs``.

        With no gradient the optimiser leaves the layer alone (no momentum or
        weight-decay step either). This is the online head; the teacher's copy
        follows it through the EMA and so stays put too.
        """
        if run.epoch < self.freeze_last_layer_epochs:
            for parameter in self.last_layer.parameters():
                parameter.grad = None

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, out_dim={self.out_dim}, norm_last_layer={self.norm_last_layer}, "
                f"freeze_last_layer_epochs={self.freeze_last_layer_epochs}")


def build_dino_head(options: DinoHeadOptions, ctx: RunContext) -> DinoHead:
    """The ``dino_head`` projector on ``ctx.in_dim`` inputs."""
    if ctx.in_dim is None:
        raise ValueError("dino_head needs ctx.in_dim (the backbone's width), but it is None; build heads with "
                         "attrs.evolve(ctx, in_dim=backbone.out_dim)")
    if ctx.in_dim < 1:  # the backbone's width, which no option validates
        raise ValueError(f"dino_head: ctx.in_dim must be >= 1, got {ctx.in_dim}")
    return DinoHead(ctx.in_dim, options.out_dim, hidden_dim=options.hidden_dim,
                    bottleneck_dim=options.bottleneck_dim, n_layers=options.n_layers,
                    batch_norm=options.batch_norm, norm_last_layer=options.norm_last_layer,
                    freeze_last_layer_epochs=options.freeze_last_layer_epochs)
