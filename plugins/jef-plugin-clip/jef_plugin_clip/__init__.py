"""CLIP as a jef method: an image tower, a text tower and the symmetric InfoNCE between them.

CLIP [1] embeds each image ``I_i`` and its caption ``T_i`` with two networks, ℓ2-normalises both and scores
every image against every caption of the batch::

    logits = exp(t) · I Tᵀ                       t learnable, exp(t) from 1/0.07, clamped at 100
    L = ½ (CE(logits, diag) + CE(logitsᵀ, diag))  the mean of the row (image→text) and column (text→image) terms

In jef's terms the online branch is the image tower (backbone → projector, one view per image), the target is
the pipeline's ``text`` encoder (``target: {name: tower, encoder: text}``: a second network with its own
gradients, not a copy), there is no energy D, and the functional A/B is ``clip_contrastive``. The functional
owns the learnable ``t`` (a parameter of the objective, so the optimiser, the checkpoint and Accelerate see
it) and clamps it after every optimiser step in ``jef_step_end`` (:class:`jef.model.learnable.LearnableScale`). Under several processes each rank scores
its local images against the global batch's captions and the reverse, through an autograd gather
(:func:`jef.functional.crossmodal.clip_loss`; open_clip's "local loss + gather with gradient" [2]).

References:
    [1] Radford et al. Learning Transferable Visual Models From Natural Language Supervision. ICML 2021.
        arXiv:2103.00020.
    [2] Cherti et al. Reproducible scaling laws for contrastive language-image learning. CVPR 2023.
        arXiv:2212.07143.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from attrs import validators as v
from torch import Tensor

from jef import hookimpl
from jef.components import RunContext, StepOutputs
from jef.functional.crossmodal import clip_loss
from jef.model.learnable import LearnableScale

__all__ = ["ClipContrastive", "ClipOptions", "build_clip", "image_and_text"]
__version__ = "0.1.0"

RECIPE = Path(__file__).with_name("clip.yaml")
PAPER = "[1] Radford et al., CLIP, ICML 2021, arXiv:2103.00020"


@attrs.frozen(kw_only=True)
class ClipOptions:
    """Options of ``clip_contrastive`` (defaults: the paper's)."""

    temperature: float = attrs.field(default=0.07, validator=[v.gt(0.0), v.le(1.0)],
                                     metadata={"doc": "initial temperature: exp(t) starts at 1 / temperature"})
    max_scale: float = attrs.field(default=100.0, validator=[v.ge(1.0), v.le(1e4)],
                                   metadata={"doc": "exp(t) is clamped to at most this after every step"})
    learnable: bool = attrs.field(default=True, metadata={"doc": "learn t (false: a fixed temperature)"})

    def __attrs_post_init__(self) -> None:
        if 1.0 / self.temperature > self.max_scale:
            raise ValueError(f"1 / temperature = {1.0 / self.temperature:g} is above max_scale {self.max_scale:g}; "
                             f"raise max_scale or the temperature")


def image_and_text(out: StepOutputs, who: str) -> tuple[Tensor, Tensor]:
    """The image embeddings (the online branch's first view) and the text embeddings (the target branch's).

    Raises:
        ValueError: A branch without an embedding, or the two of different sizes.
    """
    if not out.online.z or not out.target.z:
        raise ValueError(f"{who}: needs an image embedding (online branch) and a text embedding (target: "
                         f"{{name: tower, encoder: text}}); one of them is missing")
    if len(out.online.z) != 1:
        raise ValueError(f"{who}: the online branch has {len(out.online.z)} views; image-text training pairs one "
                         f"view of each image with its caption: set augmenter.n_global: 1")
    return out.online.z[0], out.target.z[0]


class ClipContrastive(LearnableScale):
    """CLIP's symmetric cross-entropy between image and text embeddings of the global batch."""

    #: It pairs one view of each image with its caption: more online views are refused, not silently dropped.
    single_view = True

    def __init__(self, options: ClipOptions) -> None:
        super().__init__(1.0 / options.temperature, options.max_scale, options.learnable, "clip/logit_scale")

    def forward(self, out: StepOutputs) -> Tensor:
        image, text = image_and_text(out, "clip_contrastive")
        return clip_loss(image, text, self.logit_scale)


def build_clip(options: ClipOptions, ctx: RunContext) -> ClipContrastive:
    """The ``clip_contrastive`` functional."""
    return ClipContrastive(options)


@hookimpl
def jef_register_methods(register):
    """Register the ``clip`` recipe."""
    register("clip", RECIPE, description="CLIP: image tower + text tower, symmetric InfoNCE over the global batch, "
             "learnable temperature clamped at 100; needs image-text data", paper=PAPER)


@hookimpl
def jef_register_functionals(register):
    """Register ``clip_contrastive``."""
    register("clip_contrastive", build_clip, options=ClipOptions,
             description="CLIP's loss: mean of image->text and text->image cross-entropies of exp(t)·I·Tᵀ over the "
                         "global batch (autograd gather), t learnable from log(1/0.07), clamped at log 100",
             paper=PAPER)
