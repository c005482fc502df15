"""data2vec for images as a jef method: a recipe over jef's masked-path parts.

data2vec [1] trains a student ViT to regress, at masked patches, the contextual representations an EMA
teacher computes from the whole image. The student sees the image with about 60 % of its patches replaced
by a learned mask token (BEiT's block-wise masking [2]); the teacher (the ``ema`` target, momentum
0.999 → 0.9998) sees it unmasked. The target of patch ``i`` is::

    y_i = LN( (1/K) Σ_{l = L-K+1..L} IN(b_l)_i )        K = 6

with ``b_l`` the output of the teacher's block ``l``, ``IN`` a parameter-free instance norm (each channel over
the image's tokens) and ``LN`` a parameter-free layer norm. A linear head maps each student token to ``p_i``;
the loss is the smooth-L1 error (β = 2) summed over the ``D`` dimensions, scaled by ``1/√D``, averaged over
the masked patches.

In jef's terms: the masker is ``block``, the token head (predictor slot) ``token_linear``, the target maker
(a functional with ``targets``) ``token_targets`` with ``blocks: 6``, the energy D ``smooth_l1`` with
``beta: 2, reduce: sum, scale: inverse_sqrt_dim`` at the masked positions, no functional term A/B. Every part
is a core component, shared with I-JEPA and MAE; the collapse monitor reports the targets' spread
(``collapse/target_std``), the signal data2vec's code stops on.

References:
    [1] Baevski, Hsu, Xu, Babu, Gu, Auli. data2vec: A General Framework for Self-supervised Learning in
        Speech, Vision and Language. ICML 2022. arXiv:2202.03555.
    [2] Bao, Dong, Piao, Wei. BEiT: BERT Pre-Training of Image Transformers. ICLR 2022. arXiv:2106.08254.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl

__version__ = "0.1.0"
RECIPE = Path(__file__).with_name("data2vec.yaml")
PAPER = "[1] Baevski et al., data2vec, ICML 2022, arXiv:2202.03555"


@hookimpl
def jef_register_methods(register):
    """Register the ``data2vec`` recipe (ViT-B/16)."""
    register("data2vec", RECIPE, description="data2vec (images, ViT-B/16): a student regresses an EMA "
             "teacher's averaged, normalised top-6 block outputs at block-masked patches (smooth L1)",
             paper=PAPER)
