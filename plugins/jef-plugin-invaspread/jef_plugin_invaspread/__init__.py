"""Invariant and Spreading Instance Feature [1] as a jef method: an instance-wise softmax over the batch.

Every image of a batch is its own class and the batch's un-augmented features ``f_k`` are the classifier's
weights. The augmented sample ``x̂_i`` must be recognised as instance ``i`` (invariance) and every other
un-augmented sample ``x_j`` must not (spreading)::

    J = − Σ_i log P(i | x̂_i) − Σ_i Σ_{j≠i} log(1 − P(i | x_j))

with ``P(i | ·)`` a softmax of ``f_kᵀ · / τ`` over the batch's ``f_k`` (:mod:`jef_plugin_invaspread.loss`).
jef minimises ``J / m``, the mean over anchors, over the global batch.

In jef's terms there is no energy D (``energy: null``): the positive term is one column of a softmax whose
normaliser is the batch's, and the negatives' ``log(1 − P)`` shares that normaliser. The functional A/B is this
plugin's ``invaspread`` on the projector output ``z`` of the two views (view 0 is ``x``, view 1 is ``x̂``); the
target is ``shared`` (one network, no stop-gradient).

References:
    [1] Ye, Zhang, Yuen, Chang. Unsupervised Embedding Learning via Invariant and Spreading Instance Feature.
        CVPR 2019. arXiv:1904.03436.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl
from jef.hookspecs import Register
from jef_plugin_invaspread.functional import InvaSpread, InvaSpreadOptions, build_invaspread
from jef_plugin_invaspread.loss import invaspread_loss, invaspread_terms

__all__ = ["InvaSpread", "InvaSpreadOptions", "build_invaspread", "invaspread_loss", "invaspread_terms"]
__version__ = "0.1.0"
#: ``method: invaspread``: ResNet-18, two views, a linear 128-d embedding, SGD.
RECIPE = Path(__file__).with_name("invaspread.yaml")
PAPER = "[1] Ye, Zhang, Yuen, Chang, Invariant and Spreading Instance Feature, CVPR 2019, arXiv:1904.03436"


@hookimpl
def jef_register_methods(register):
    """Register ``invaspread``: exactly two views, so no multi-crop."""
    register("invaspread", RECIPE, description="Invariant and Spreading Instance Feature: instance-wise softmax "
             "over the global batch's view-0 features, -log P(i|x̂_i) - Σ_{j≠i} log(1 - P(i|x_j)), τ = 0.1; "
             "ResNet-18, linear 128-d embedding, SGD", paper=PAPER)


@hookimpl
def jef_register_functionals(register: Register) -> None:
    """Register ``invaspread``."""
    register("invaspread", build_invaspread, options=InvaSpreadOptions,
             description="Invariant and Spreading loss J/m: view 1's z classified among the gathered global "
                         "batch's view-0 z (softmax, τ), plus -log(1 - P(i|x_j)) for every other instance i of "
                         "each view-0 anchor; mean over local anchors, gradients through every candidate",
             paper=PAPER)
