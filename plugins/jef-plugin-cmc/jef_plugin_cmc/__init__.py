"""Contrastive Multiview Coding (CMC) as a jef method: L and ab views, two encoders, NCE against two banks.

CMC [1] learns a representation by contrasting two *views* of each image, here its CIE ``L`` (lightness) and
``ab`` (colour) channels, each embedded by its own encoder ``f_L``, ``f_ab``. Each view's ℓ2-normalised 128-d
feature is scored against a memory bank of the *other* view's features, with NCE against ``m`` noise rows as
in InstDisc [2], and the objective is the sum of both directions (Eq. 8)::

    L(V1, V2) = L_{V1}^{V2} + L_{V2}^{V1}

In jef's terms: the augmenter ``cmc_views`` makes the two views (view 0: L, view 1: ab; for grey images jef's
low/high-pass split); the online network (backbone + projector) embeds view 0 and the named encoder ``ab``
embeds view 1 (``target: {name: tower, encoder: ab}``); there is no energy D; the functional ``cmc_nce`` is the
whole objective, with terms ``l_to_ab`` and ``ab_to_l``.

References:
    [1] Tian, Krishnan, Isola. Contrastive Multiview Coding. ECCV 2020. arXiv:1906.05849.
    [2] Wu, Xiong, Yu, Lin. Unsupervised Feature Learning via Non-Parametric Instance Discrimination. CVPR 2018.
        arXiv:1805.01978.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl
from jef_plugin_cmc.colour import lab_views, low_high_pass, srgb_to_lab
from jef_plugin_cmc.nce import CMCNCE, CMCNCEOptions, build_cmc_nce
from jef_plugin_cmc.views import CMCViews, CMCViewsOptions, build_cmc_views

__all__ = ["CMCNCE", "CMCNCEOptions", "CMCViews", "CMCViewsOptions", "build_cmc_nce", "build_cmc_views",
           "lab_views", "low_high_pass", "srgb_to_lab"]
__version__ = "0.1.0"
#: ``method: cmc``: two ResNet-18 encoders (L, ab), linear 128-d heads, NCE against two banks.
RECIPE = Path(__file__).with_name("cmc.yaml")
PAPER = "[1] Tian, Krishnan, Isola, Contrastive Multiview Coding (CMC), ECCV 2020, arXiv:1906.05849"


@hookimpl
def jef_register_methods(register):
    """Register the ``cmc`` recipe."""
    register("cmc", RECIPE, description="CMC: an L encoder and an ab encoder, each view's feature scored by NCE "
             "against a memory bank of the other view's features (L->ab + ab->L)", paper=PAPER)


@hookimpl
def jef_register_augmenters(register):
    """Register ``cmc_views``."""
    register("cmc_views", build_cmc_views, options=CMCViewsOptions,
             description="CMC's views: one random resized crop + flip per image, split into L | ab (RGB, CIE "
                         "L*a*b*, D65) or Gaussian low pass | residual (grey; jef's choice)", paper=PAPER)


@hookimpl
def jef_register_functionals(register):
    """Register ``cmc_nce``."""
    register("cmc_nce", build_cmc_nce, options=CMCNCEOptions,
             description="CMC's two-view NCE: the view-0 (L) feature against a bank of view-1 (ab) features and "
                         "the reverse, m noise rows per step, Z fixed on the first batch, banks momentum-updated "
                         "after each step", paper=PAPER)
