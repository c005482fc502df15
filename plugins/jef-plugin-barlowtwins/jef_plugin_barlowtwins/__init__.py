"""Barlow Twins as a jef method: a recipe over jef's shared parts.

Barlow Twins [1] embeds two views with one network, standardises each
embedding dimension over the batch and computes the cross-correlation
matrix ``C`` between the views; the loss

    ℓ = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²

makes each dimension invariant to the augmentations (diagonal to 1) and
different dimensions non-redundant (off-diagonal to 0). Both parts are
statistics of the batch, so in jef's terms there is no energy D and the whole
loss is one functional A/B, the built-in ``cross_correlation`` (over the
global batch gathered across processes). The target branch is the online
branch itself (``shared``).

References:
    [1] Zbontar, Jing, Misra, LeCun, Deny. Barlow Twins: Self-Supervised
        Learning via Redundancy Reduction. ICML 2021. arXiv:2103.03230.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl

__version__ = "0.1.0"
RECIPE = Path(__file__).with_name("recipe.yaml")
PAPER = "[1] Zbontar et al., Barlow Twins, ICML 2021, arXiv:2103.03230"


@hookimpl
def jef_register_methods(register):
    """Register the ``barlowtwins`` recipe."""
    register("barlowtwins", RECIPE, description="Barlow Twins: cross-correlation of the two views towards the "
             "identity (redundancy reduction)", paper=PAPER)
