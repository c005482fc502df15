"""MoCo v1, v2 and v3 as jef methods: recipes over jef's shared parts, plus MoCo v3's functional.

MoCo's InfoNCE for a query ``q`` (online branch), its positive key ``k+``
(momentum encoder, the ``ema`` target) and negatives ``n``::

    ℓ(q) = −cos(q, k+)/τ + log( exp(cos(q, k+)/τ) + Σ_n exp(cos(q, n)/τ) )

In jef's terms the first part is the energy D (``scaled_cosine``) and the
second the functional A/B. MoCo v1 [1] and v2 [2] take the negatives from a
FIFO queue of past keys (the built-in ``queue_info_nce``); MoCo v3 [3] takes
them from the other view's keys of the global batch (``moco_v3_info_nce``,
provided here) and adds a predictor. ``moco_v3`` is the paper's ViT-S/16
recipe; ``moco_v3_resnet`` its ResNet setting.

References:
    [1] He, Fan, Wu, Xie, Girshick. Momentum Contrast for Unsupervised Visual
        Representation Learning. CVPR 2020. arXiv:1911.05722.
    [2] Chen, Fan, Girshick, He. Improved Baselines with Momentum Contrastive
        Learning. 2020. arXiv:2003.04297.
    [3] Chen, Xie, He. An Empirical Study of Training Self-Supervised Vision
        Transformers. ICCV 2021. arXiv:2104.02057.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl
from jef_plugin_moco.v3 import MocoV3InfoNCEOptions, build_moco_v3_info_nce

__version__ = "0.1.0"
HERE = Path(__file__).parent
PAPERS = {
    "moco_v1": "He et al., MoCo, CVPR 2020, arXiv:1911.05722",
    "moco_v2": "Chen et al., MoCo v2, 2020, arXiv:2003.04297",
    "moco_v3": "Chen, Xie, He, MoCo v3, ICCV 2021, arXiv:2104.02057",
    "moco_v3_resnet": "Chen, Xie, He, MoCo v3, ICCV 2021, arXiv:2104.02057",
}
DESCRIPTIONS = {
    "moco_v1": "MoCo: momentum key encoder, FIFO queue of negatives, shuffling BN",
    "moco_v2": "MoCo v2: MoCo with an MLP head, blur and a cosine schedule",
    "moco_v3": "MoCo v3 on ViT-S/16 as the paper (sin-cos positions, frozen patch projection, AdamW): momentum "
               "encoder, predictor, symmetric loss with in-batch negatives, no queue",
    "moco_v3_resnet": "MoCo v3 on ResNet (the paper's ResNet-50 setting on resnet18: LARS, tau 1.0): momentum "
                      "encoder, predictor, symmetric loss with in-batch negatives, no queue",
}


@hookimpl
def jef_register_methods(register):
    """Register ``moco_v1``, ``moco_v2``, ``moco_v3`` (ViT) and ``moco_v3_resnet`` from the recipe files here."""
    for name, paper in PAPERS.items():
        register(name, HERE / f"{name}.yaml", description=DESCRIPTIONS[name], paper=paper)


@hookimpl
def jef_register_functionals(register):
    """Register ``moco_v3_info_nce``."""
    register("moco_v3_info_nce", build_moco_v3_info_nce, options=MocoV3InfoNCEOptions,
             description="MoCo v3's InfoNCE log-sum-exp over the other view's keys of the global batch",
             paper=PAPERS["moco_v3"])
