"""Built-in decorrelation functionals (variance, covariance, cross-correlation) over the global batch.

Generic batch-statistics regularisers that any pipeline can add, over the
maths of :mod:`jef.functional.decorrelation` (where the formulas and their
paper references are):

* ``variance`` -- VICReg's hinge on each dimension's standard deviation
  (:func:`~jef.functional.variance_hinge`), averaged over every online view's ``z``.
* ``covariance`` -- VICReg's penalty on off-diagonal covariances
  (:func:`~jef.functional.covariance_penalty`), averaged over every online view's ``z``.
* ``cross_correlation`` -- Barlow Twins' loss on the cross-correlation
  matrix of the two global views' ``z`` (:func:`~jef.functional.cross_correlation_loss`).

They are statistics of the *global* batch: each process gathers the
embeddings of every process with :func:`jef.dist.gather` and computes the
term identically. The gather's backward sums the gradient every process
gives a sample, so after DDP averages parameter gradients the update equals
one process on the global batch (as the official codes get it: VICReg's
with ``FullGatherLayer``, Barlow Twins' with SyncBatchNorm and an all-reduced ``C``).
"""

from __future__ import annotations

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef import dist
from jef.components import NoOptions, RunContext, StepOutputs
from jef.functional import covariance_penalty, cross_correlation, cross_correlation_loss, variance_hinge
from jef.hookspecs import Register, hookimpl

__all__ = [
    "Covariance",
    "CrossCorrelation",
    "CrossCorrelationOptions",
    "Variance",
    "VarianceOptions",
    "jef_register_functionals",
]

VICREG = "Bardes, Ponce, LeCun, VICReg, arXiv:2105.04906"
BARLOW = "Zbontar et al., Barlow Twins, arXiv:2103.03230"


def _gathered_views(fn: str, views: list[Tensor]) -> list[Tensor]:
    """Each view's ``[N, d]`` embeddings gathered over processes (``[W*N, d]``), after shape checks."""
    if not views:
        raise ValueError(f"{fn}: needs at least one online view, got none")
    shapes = [tuple(t.shape) for t in views]
    if any(t.dim() != 2 for t in views) or len(set(shapes)) != 1:
        raise ValueError(f"{fn}: every online z must be [N, d] with the same N and d, got shapes {shapes}")
    return [dist.gather(t) for t in views]


@attrs.frozen(kw_only=True)
class VarianceOptions:
    """Options of the ``variance`` functional."""

    gamma: float = attrs.field(default=1.0, validator=v.gt(0.0),
                               metadata={"doc": "γ, the standard deviation each dimension is held above"})
    eps: float = attrs.field(default=1e-4, validator=v.ge(0.0),
                             metadata={"doc": "ε in sqrt(Var + ε), for stability near collapse"})


class Variance(nn.Module):
    """VICReg's variance term ``mean_j relu(γ − sqrt(Var(z_j) + ε))``, averaged over online views.

    With a ``shared`` target the online views are VICReg's two branches,
    and averaging over them is the official code's ``(v(Z) + v(Z')) / 2``.

    Args:
        gamma: ``γ > 0``.
        eps: ``ε >= 0``.
    """

    def __init__(self, gamma: float = 1.0, eps: float = 1e-4) -> None:
        super().__init__()
        self.gamma, self.eps = float(gamma), float(eps)

    def forward(self, out: StepOutputs) -> Tensor:
        """The scalar variance term for one step."""
        views = _gathered_views("variance", out.online.z)
        return torch.stack([variance_hinge(z, self.gamma, self.eps) for z in views]).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, eps={self.eps}"


class Covariance(nn.Module):
    """VICReg's covariance term ``(1/d) Σ_{i≠j} Cov(z)_ij²``, averaged over online views.

    The official code *sums* the two branches' terms, so VICReg's ``ν = 1``
    is a weight of 2 on this average.
    """

    def forward(self, out: StepOutputs) -> Tensor:
        """The scalar covariance term for one step."""
        views = _gathered_views("covariance", out.online.z)
        return torch.stack([covariance_penalty(z) for z in views]).mean()


@attrs.frozen(kw_only=True)
class CrossCorrelationOptions:
    """Options of the ``cross_correlation`` functional."""

    lambd: float = attrs.field(default=0.0051, validator=v.ge(0.0),
                               metadata={"doc": "λ, weight of the off-diagonal (redundancy) terms"})
    eps: float = attrs.field(default=1e-5, validator=v.ge(0.0),
                             metadata={"doc": "ε added to each dimension's variance when standardising"})


class CrossCorrelation(nn.Module):
    """Barlow Twins' loss on the cross-correlation of the two global views' ``z``.

    ``Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²`` with ``C`` the correlation between
    the batch-standardised ``z`` of views 0 and 1 of the online branch (with
    a ``shared`` target, Barlow Twins' two branches), over the global batch.

    Args:
        lambd: ``λ >= 0``.
        eps: ``ε`` of the standardisation.
    """

    def __init__(self, lambd: float = 0.0051, eps: float = 1e-5) -> None:
        super().__init__()
        self.lambd, self.eps = float(lambd), float(eps)

    def forward(self, out: StepOutputs) -> Tensor:
        """The scalar Barlow Twins loss for one step."""
        if out.n_global < 2 or len(out.online.z) < 2:
            raise ValueError(f"cross_correlation: needs 2 global views (it correlates view 0 with view 1), got "
                             f"n_global={out.n_global} and {len(out.online.z)} online views; set the "
                             f"augmenter's n_global to 2")
        z1, z2 = _gathered_views("cross_correlation", out.online.z[:2])
        return cross_correlation_loss(cross_correlation(z1, z2, self.eps), self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, eps={self.eps}"


def build_variance(options: VarianceOptions, ctx: RunContext) -> Variance:
    """The ``variance`` functional."""
    return Variance(options.gamma, options.eps)


def build_covariance(options: NoOptions, ctx: RunContext) -> Covariance:
    """The ``covariance`` functional."""
    return Covariance()


def build_cross_correlation(options: CrossCorrelationOptions, ctx: RunContext) -> CrossCorrelation:
    """The ``cross_correlation`` functional."""
    return CrossCorrelation(options.lambd, options.eps)


@hookimpl
def jef_register_functionals(register: Register) -> None:
    """Register ``variance``, ``covariance`` and ``cross_correlation``."""
    register("variance", build_variance, options=VarianceOptions,
             description="VICReg variance hinge: keeps each dimension's std above γ over the global batch",
             paper=VICREG)
    register("covariance", build_covariance, options=NoOptions,
             description="VICReg covariance penalty: decorrelates dimensions over the global batch",
             paper=VICREG)
    register("cross_correlation", build_cross_correlation, options=CrossCorrelationOptions,
             description="Barlow Twins: cross-correlation of the two global views towards the identity",
             paper=BARLOW)
