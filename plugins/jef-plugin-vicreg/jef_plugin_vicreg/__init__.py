"""VICReg as a jef method: a recipe over jef's shared parts.

VICReg [1] trains two branches of one network on two views with

    ℓ = λ·s(Z, Z') + μ·[v(Z) + v(Z')]/2 + ν·[c(Z) + c(Z')]

(as the official code weighs the terms; the paper writes μ·[v(Z) + v(Z')]):
an invariance term ``s`` (the mean squared error between the two views'
embeddings), a variance term ``v`` (a hinge keeping each dimension's
standard deviation above 1) and a covariance term ``c`` (the squared
off-diagonal covariances, over the embedding width). In jef's terms ``s`` is
the energy D (``mse``, averaged over both view orders: exactly
``F.mse_loss``) and ``v`` and ``c`` are the functionals A/B ``variance`` and
``covariance`` (jef built-ins, over the global batch gathered across
processes). The target branch is the online branch itself (``shared``).

References:
    [1] Bardes, Ponce, LeCun. VICReg: Variance-Invariance-Covariance
        Regularization for Self-Supervised Learning. ICLR 2022.
        arXiv:2105.04906.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl

__version__ = "0.1.0"
RECIPE = Path(__file__).with_name("recipe.yaml")
PAPER = "[1] Bardes, Ponce, LeCun, VICReg, ICLR 2022, arXiv:2105.04906"


@hookimpl
def jef_register_methods(register):
    """Register the ``vicreg`` recipe."""
    register("vicreg", RECIPE, description="VICReg: invariance (MSE) + variance + covariance regularisation",
             paper=PAPER)
