"""LeJEPA as a jef method: a prediction term and SIGReg, with no teacher, EMA, stop-gradient or predictor.

LeJEPA [1] embeds 2 global and 6 local views of each image with one network and minimises::

    L = (1 − λ) · L_pred + λ · (1/V) Σ_v SIGReg(Z_v)          λ = 0.05 (the paper: 0.02–0.05)

``L_pred`` pulls every view's embedding towards the mean of the image's global views; SIGReg is a sliced
Epps–Pulley test that pushes each view's embeddings, over the global batch, towards the isotropic Gaussian.
The formulas and their scale are written out in :mod:`jef.functional.sigreg`.

In jef's terms there is no energy D (``energy: null``: the prediction's target is a centre of several views,
which no pairwise energy computes). The functionals A/B are this plugin's ``lejepa_prediction`` (weight
``1 − λ``) and ``sigreg`` (weight ``λ``), both on the projector output ``z`` of every view; the target is
``shared``. Local views go through the same network (multi-crop).

References:
    [1] Balestriero, LeCun. LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics.
        2025. arXiv:2511.08544.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl
from jef_plugin_lejepa.terms import (
    LeJEPAPrediction,
    SIGReg,
    SIGRegOptions,
    build_prediction,
    build_sigreg,
)

__all__ = ["LeJEPAPrediction", "SIGReg", "SIGRegOptions", "build_prediction", "build_sigreg"]
__version__ = "0.1.0"
#: ``method: lejepa``: ViT-S/16, 2 + 6 views, AdamW.
RECIPE = Path(__file__).with_name("lejepa.yaml")
PAPER = "[1] Balestriero, LeCun, LeJEPA, 2025, arXiv:2511.08544"


@hookimpl
def jef_register_methods(register):
    """Register ``lejepa``; it makes local views, so it declares multi-crop."""
    register("lejepa", RECIPE, description="LeJEPA on ViT-S/16 as the paper: (1 - λ)·prediction to the global "
             "views' centre + λ·SIGReg (sliced Epps-Pulley test towards N(0, I)), λ = 0.05; no teacher, EMA, "
             "stop-gradient or predictor; 2 x 224 + 6 x 96 px crops, AdamW", paper=PAPER, multi_crop=True)


@hookimpl
def jef_register_functionals(register):
    """Register ``sigreg`` and ``lejepa_prediction``."""
    register("sigreg", build_sigreg, options=SIGRegOptions,
             description="SIGReg: Epps-Pulley statistic of every view's z projected on M random unit directions "
                         "(seeded by the run's seed and a checkpointed step counter), against N(0, 1), over the "
                         "gathered global batch; mean over views and directions", paper=PAPER)
    register("lejepa_prediction", build_prediction,
             description="LeJEPA's prediction: mean squared distance of every view's z to the mean of the global "
                         "views' z (no stop-gradient)", paper=PAPER)
