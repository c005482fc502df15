"""SimCLR as a jef method: a recipe over jef's shared parts.

NT-Xent, the loss of SimCLR [1], is for an anchor ``i`` with positive ``j``::

    ℓ_i = −sim(z_i, z_j)/τ + log Σ_{k≠i} exp(sim(z_i, z_k)/τ)

averaged over the 2N anchors of a batch of N images. In jef's terms the first
part is the energy D (``scaled_cosine``: −cos/τ, per sample) and the second
the functional A/B (``info_nce``: the log-sum-exp denominator over every
other embedding of the *global* batch, gathered across processes). The target
branch is the online branch itself (``shared``).

References:
    [1] Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive
        Learning of Visual Representations. ICML 2020. arXiv:2002.05709.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl

__version__ = "0.1.0"
RECIPE = Path(__file__).with_name("recipe.yaml")
PAPER = "[1] Chen et al., SimCLR, ICML 2020, arXiv:2002.05709"


@hookimpl
def jef_register_methods(register):
    """Register the ``simclr`` recipe."""
    register("simclr", RECIPE, description="SimCLR: contrastive learning with in-batch negatives (NT-Xent)",
             paper=PAPER, multi_crop=True)
