"""Pretext-Invariant Representation Learning (PIRL) as a jef method: an image, its jigsaw tiles, one memory bank.

PIRL [1] learns a representation that is *invariant* to a pretext transformation instead of predicting it. The
image ``I`` and its jigsaw transform ``I^t`` (9 tiles of a 3×3 grid of another crop, randomly permuted) are
embedded by ``f`` (the image head) and ``g`` (the jigsaw head: each tile projected, concatenated in the permuted
order, linearly mapped); both are scored by NCE against a memory bank of ``f``'s moving averages, Eq. (5)::

    L(I, I^t) = λ · L_NCE(m_I, g(v_{I^t})) + (1 − λ) · L_NCE(m_I, f(v_I)),        λ = 0.5

In jef's terms: the augmenter ``pirl_views`` makes view 0 (the image) and views 1..9 (the shuffled tiles); the
backbone and projector embed every view (``f`` on view 0, ``g``'s per-tile projection on the tiles); the target
is ``shared`` (the bank plays the target's part); there is no energy D; the functional ``pirl`` owns ``g``'s final
linear map and the bank and is the whole objective, with terms ``jigsaw`` and ``image``.

References:
    [1] Misra, van der Maaten. Self-Supervised Learning of Pretext-Invariant Representations. CVPR 2020.
        arXiv:1912.01991.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl
from jef_plugin_pirl.nce import PIRL, PIRLOptions, build_pirl
from jef_plugin_pirl.views import PIRLViews, PIRLViewsOptions, build_pirl_views

__all__ = ["PIRL", "PIRLOptions", "PIRLViews", "PIRLViewsOptions", "build_pirl", "build_pirl_views"]
__version__ = "0.1.0"
#: ``method: pirl``: ResNet-18, a linear 128-d head, the jigsaw head and NCE against one memory bank.
RECIPE = Path(__file__).with_name("pirl.yaml")
PAPER = ("[1] Misra, van der Maaten, Self-Supervised Learning of Pretext-Invariant Representations (PIRL), "
         "CVPR 2020, arXiv:1912.01991")


@hookimpl
def jef_register_methods(register):
    """Register the ``pirl`` recipe (its 9 tiles are local views: it declares multi-crop support)."""
    register("pirl", RECIPE, description="PIRL: an image and its shuffled 3x3 jigsaw tiles, the image head f and "
             "the jigsaw head g each scored by NCE against a memory bank of f (λ = 0.5)", paper=PAPER,
             multi_crop=True)


@hookimpl
def jef_register_augmenters(register):
    """Register ``pirl_views``."""
    register("pirl_views", build_pirl_views, options=PIRLViewsOptions,
             description="PIRL's views: view 0 an augmented crop of the image, views 1..9 the 3x3 jigsaw tiles "
                         "(random offset in each cell) of a second crop, shuffled by a random permutation per image",
             paper=PAPER)


@hookimpl
def jef_register_functionals(register):
    """Register ``pirl``."""
    register("pirl", build_pirl, options=PIRLOptions,
             description="PIRL's objective: the jigsaw head's linear map over the 9 concatenated tile embeddings, "
                         "λ·NCE(m_I, g) + (1−λ)·NCE(m_I, f) against a memory bank of f, N noise rows per step, "
                         "bank momentum-updated after each step", paper=PAPER)
