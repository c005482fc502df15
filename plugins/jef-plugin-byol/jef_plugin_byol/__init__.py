"""BYOL as a jef method: a recipe over jef's shared parts.

BYOL [1] trains an online network (backbone, projector, predictor q) to
predict the projection of the other view made by a target network whose
weights are an exponential moving average of the online ones. With
``q̄ = q/‖q‖`` and ``z̄' = z'/‖z'‖`` the loss of one direction is the
normalised MSE, and the paper symmetrises it by summing both directions::

    L_θ = ‖q̄_θ(v) − z̄'_ξ(v')‖² = 2 − 2·cos(q_θ(v), z'_ξ(v'))
    L^BYOL = L_θ + L̃_θ  (views swapped)

In jef's terms: the energy D is ``cosine`` (1 − cos per sample), averaged
over the two ordered view pairs, so ``L^BYOL = 2·(D(1,2) + D(2,1)) = 4·mean``:
the recipe's weight 4 reproduces the paper's loss exactly (and its gradient
scale, which matters for the norms and biases that LARS steps without
adaptation). There is no functional A/B. The target is ``ema`` with
τ = 0.996 → 1 on a cosine schedule.

References:
    [1] Grill et al. Bootstrap Your Own Latent: A New Approach to
        Self-Supervised Learning. NeurIPS 2020. arXiv:2006.07733.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl

__version__ = "0.1.0"
RECIPE = Path(__file__).with_name("recipe.yaml")
PAPER = "[1] Grill et al., BYOL, NeurIPS 2020, arXiv:2006.07733"


@hookimpl
def jef_register_methods(register):
    """Register the ``byol`` recipe."""
    register("byol", RECIPE, description="BYOL: predict a momentum (EMA) target's projection, no negatives",
             paper=PAPER, multi_crop=True)
