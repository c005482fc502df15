"""I-JEPA as a jef method: a recipe over jef's masked-path parts.

I-JEPA [1] predicts, from one large context block of an image, the representations of a few target blocks.
A context encoder (the backbone) sees only the context block, less the target blocks; a target encoder, its
EMA copy (momentum 0.996 → 1), sees the whole image, and the targets are its output tokens of each target
block, layer-normed. A narrow ViT predictor takes the context tokens and one mask token per position of a
target block (with that position's embedding) and predicts that block's targets::

    s_y(i) = LN( f_target(x) )_i                       for i in target block B_k
    ŝ_y(i) = g( f_context(x_context), {m + p_j : j ∈ B_k} )_i
    L      = mean over k and i ∈ B_k of  smooth-L1(ŝ_y(i), s_y(i))

In jef's terms: the masker is ``multi_block`` (one context block and K = 4 target blocks, one block size per
batch), the token head (predictor slot) ``vit_predictor`` with ``queries: per_set`` (one predictor pass per
target block), the target maker ``token_targets`` with ``blocks: 0, norm: layer``, the energy D ``smooth_l1``
(β = 1, mean over dimensions) at the target positions. No augmentation but the crop; no functional term A/B.

References:
    [1] Assran, Duval, Misra, Bojanowski, Vincent, Rabbat, LeCun, Ballas. Self-Supervised Learning from
        Images with a Joint-Embedding Predictive Architecture. CVPR 2023. arXiv:2301.08243.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl

__version__ = "0.1.0"
RECIPE = Path(__file__).with_name("ijepa.yaml")
PAPER = "[1] Assran et al., I-JEPA, CVPR 2023, arXiv:2301.08243"


@hookimpl
def jef_register_methods(register):
    """Register the ``ijepa`` recipe (ViT-B/16)."""
    register("ijepa", RECIPE, description="I-JEPA (ViT-B/16): from one context block a narrow ViT predictor "
             "regresses an EMA target encoder's layer-normed tokens of 4 target blocks (smooth L1)", paper=PAPER)
