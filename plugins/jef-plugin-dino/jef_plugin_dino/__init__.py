"""DINO as a jef method: self-distillation with no labels, as a recipe plus a head and a functional.

DINO [1] trains a student network (jef's online branch) to match the output
distribution of a teacher (the ``ema`` target: a momentum copy of the student
with its own projector) over ``K`` dimensions. For student logits ``s_a`` of
every view ``a`` (global and local crops) and teacher logits ``t_b`` of the
global views ``b``::

    P_s(a) = softmax(s_a / τ_s)            P_t(b) = softmax((t_b − c) / τ_t)
    L = mean over (a, b), a ≠ b, of  mean_n  −Σ_k P_t(b)_k · log P_s(a)_k

with the centre ``c`` an EMA of the teacher's batch mean and ``τ_t < τ_s``.

In jef's terms the energy D is the core ``cross_entropy`` (temperature τ_s);
the functional A/B ``centering`` (this plugin) *makes the targets* P_t and
keeps the centre; ``dino_head`` (this plugin) is the projector: an MLP, an
ℓ2-normalised bottleneck and a weight-normalised last layer, frozen during
the first epoch. Local views go through the student only (multi-crop).

Two recipes: ``dino`` is the paper's ViT-S/16 setting (``dino.yaml``), ``dino_resnet`` its ResNet setting on
``resnet18`` (``dino_resnet.yaml``).

References:
    [1] Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin. Emerging
        Properties in Self-Supervised Vision Transformers (DINO). ICCV 2021.
        arXiv:2104.14294.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl
from jef_plugin_dino.centering import Centering, CenteringOptions, build_centering
from jef_plugin_dino.head import DinoHead, DinoHeadOptions, build_dino_head

__all__ = ["Centering", "CenteringOptions", "DinoHead", "DinoHeadOptions", "build_centering", "build_dino_head"]
__version__ = "0.1.0"
HERE = Path(__file__).parent
#: The default recipe, ``method: dino``: ViT-S/16.
RECIPE = HERE / "dino.yaml"
#: ``method: dino_resnet``: the ResNet setting.
RESNET_RECIPE = HERE / "dino_resnet.yaml"
PAPER = "[1] Caron et al., DINO, ICCV 2021, arXiv:2104.14294"


@hookimpl
def jef_register_methods(register):
    """Register ``dino`` (ViT-S/16) and ``dino_resnet``; both make local views, so they declare multi-crop."""
    register("dino", RECIPE, description="DINO on ViT-S/16 as the paper (AdamW, weight decay 0.04 -> 0.4, "
             "teacher temperature 0.04 -> 0.07, 2 x 224 + 10 x 96 px crops): a student matches an EMA "
             "teacher's centred, sharpened distribution; multi-crop", paper=PAPER, multi_crop=True)
    register("dino_resnet", RESNET_RECIPE, description="DINO on ResNet (the paper's ResNet-50 setting on "
             "resnet18: SGD, 2 + 6 crops): a student matches an EMA teacher's centred, sharpened "
             "distribution; multi-crop", paper=PAPER, multi_crop=True)


@hookimpl
def jef_register_heads(register):
    """Register the ``dino_head`` projector."""
    register("dino_head", build_dino_head, options=DinoHeadOptions,
             description="DINO head: MLP (GELU) → ℓ2-normalised bottleneck → weight-normalised linear to K logits; "
                         "last layer frozen for the first epoch", paper=PAPER)


@hookimpl
def jef_register_functionals(register):
    """Register the ``centering`` functional."""
    register("centering", build_centering, options=CenteringOptions,
             description="DINO's teacher targets: softmax((t − c)/τ_t), centre c an EMA of the teacher's batch "
                         "mean (makes targets for the cross_entropy energy; no term of its own)", paper=PAPER)
