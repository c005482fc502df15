"""SigLIP as a jef method: CLIP's two towers with the pairwise sigmoid loss.

SigLIP [1] replaces CLIP's softmax over the batch with an independent binary classification of every
image-text pair: with ℓ2-normalised image and text embeddings ``x_i`` and ``y_j``::

    logits_ij = exp(t') · x_i·y_j + b           t' from log 10, b from -10, both learnable
    L = -(1/N) Σ_i Σ_j log σ(z_ij · logits_ij)   z_ij = +1 for the matching pair, -1 otherwise

No normalisation over the batch is needed, and the loss sums over pairs, so it splits over processes without
approximation: each rank scores its images against every rank's texts, one rank's block at a time
(:func:`jef.functional.crossmodal.siglip_loss`; the paper passes the blocks between neighbouring devices, with
the same result).

In jef's terms the layout is CLIP's (online branch = image tower, target = the ``text`` encoder through
``target: {name: tower, encoder: text}``, no energy D); the functional A/B ``siglip_sigmoid`` owns ``t'`` and
``b`` and clamps ``exp(t')`` at ``max_scale`` after every step (:class:`jef.model.learnable.LearnableScale`).

References:
    [1] Zhai, Mustafa, Kolesnikov, Beyer. Sigmoid Loss for Language Image Pre-Training. ICCV 2023.
        arXiv:2303.15343.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef import hookimpl
from jef.components import RunContext, StepOutputs
from jef.functional.crossmodal import siglip_loss
from jef.model.learnable import LearnableScale

__all__ = ["SiglipOptions", "SiglipSigmoid", "build_siglip"]
__version__ = "0.1.0"

RECIPE = Path(__file__).with_name("siglip.yaml")
PAPER = "[1] Zhai et al., SigLIP, ICCV 2023, arXiv:2303.15343"


@attrs.frozen(kw_only=True)
class SiglipOptions:
    """Options of ``siglip_sigmoid`` (defaults: the paper's initialisation)."""

    scale: float = attrs.field(default=10.0, validator=[v.gt(0.0), v.le(1e4)],
                               metadata={"doc": "exp(t') at step 0"})
    bias: float = attrs.field(default=-10.0, validator=[v.ge(-1e4), v.le(1e4)],
                              metadata={"doc": "b at step 0 (negative: most pairs do not match)"})
    max_scale: float = attrs.field(default=100.0, validator=[v.ge(1.0), v.le(1e4)],
                                   metadata={"doc": "exp(t') is clamped to at most this after every step"})
    learnable: bool = attrs.field(default=True, metadata={"doc": "learn t' and b (false: both fixed)"})


class SiglipSigmoid(LearnableScale):
    """SigLIP's pairwise sigmoid loss between image and text embeddings of the global batch."""

    #: It pairs one view of each image with its caption: more online views are refused, not silently dropped.
    single_view = True

    def __init__(self, options: SiglipOptions) -> None:
        super().__init__(options.scale, options.max_scale, options.learnable, "siglip/logit_scale")
        self.bias = nn.Parameter(torch.tensor(float(options.bias)), requires_grad=options.learnable)

    def forward(self, out: StepOutputs) -> Tensor:
        if not out.online.z or not out.target.z or len(out.online.z) != 1:
            raise ValueError(f"siglip_sigmoid: needs one image view (online branch; augmenter.n_global: 1, it has "
                             f"{len(out.online.z)}) and a text embedding (target: {{name: tower, encoder: text}})")
        return siglip_loss(out.online.z[0], out.target.z[0], self.logit_scale, self.bias)


def build_siglip(options: SiglipOptions, ctx: RunContext) -> SiglipSigmoid:
    """The ``siglip_sigmoid`` functional."""
    return SiglipSigmoid(options)


@hookimpl
def jef_register_methods(register):
    """Register the ``siglip`` recipe."""
    register("siglip", RECIPE, description="SigLIP: image tower + text tower, pairwise sigmoid loss over the global "
             "batch (exact under several processes), learnable scale and bias; needs image-text data", paper=PAPER)


@hookimpl
def jef_register_functionals(register):
    """Register ``siglip_sigmoid``."""
    register("siglip_sigmoid", build_siglip, options=SiglipOptions,
             description="SigLIP's loss: -mean_i Σ_j log σ(z_ij (exp(t')·x_i·y_j + b)) over the global batch, chunked "
                         "per process; t' from log 10 and b from -10, learnable", paper=PAPER)
