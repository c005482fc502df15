"""Built-in energies D: per-sample distances between an online output and a target embedding.

The objective averages ``D(p_a^n, t_b^n)`` over samples and over ordered view
pairs (a, b) (see :class:`jef.model.joint.Objective`). Each energy here is a thin
``nn.Module`` over a pure function of :mod:`jef.functional.energies`, whose
docstrings hold the formulas' paper references.
"""

from typing import Literal

import attrs
from attrs import validators as v
from torch import Tensor, nn

from jef.components import NoOptions, RunContext
from jef.functional import cosine_distance, mse, scaled_cosine, smooth_l1, soft_cross_entropy
from jef.hookspecs import Register, hookimpl

__all__ = ["CosineEnergy", "CrossEntropyEnergy", "CrossEntropyOptions", "MSEEnergy", "ScaledCosineEnergy",
           "ScaledCosineOptions", "SmoothL1Energy", "SmoothL1Options", "build_cosine", "build_cross_entropy", "build_mse", "build_scaled_cosine", "build_smooth_l1",
           "jef_register_energies"]


@attrs.frozen(kw_only=True)
class ScaledCosineOptions:
    """Options of the ``scaled_cosine`` energy."""

    temperature: float = attrs.field(
        default=0.1, validator=v.gt(0.0),
        metadata={"doc": "τ in -cos/τ; set it equal to the info_nce functional's temperature for NT-Xent"},
    )


@attrs.frozen(kw_only=True)
class CrossEntropyOptions:
    """Options of the ``cross_entropy`` energy."""

    temperature: float = attrs.field(
        default=0.1, validator=v.gt(0.0),
        metadata={"doc": "τ dividing the online logits before the softmax (SwAV's τ, DINO's student temperature)"},
    )


@attrs.frozen(kw_only=True)
class SmoothL1Options:
    """Options of the ``smooth_l1`` energy (data2vec: beta 2, sum, inverse_sqrt_dim; I-JEPA: beta 1, mean)."""

    beta: float = attrs.field(default=1.0, validator=v.ge(0.0), metadata={
        "doc": "where the square turns linear (0: L1)"})
    reduce: Literal["mean", "sum"] = attrs.field(default="mean", metadata={"doc": "over the dimensions"})
    scale: Literal["none", "inverse_sqrt_dim"] = attrs.field(default="none", metadata={
        "doc": "inverse_sqrt_dim: times 1/sqrt(d), as data2vec"})


class CosineEnergy(nn.Module):
    """``1 - cos(a, b)`` per sample: BYOL's, SimSiam's loss up to constants (:func:`jef.functional.cosine_distance`)."""


    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """``[N, d], [N, d] -> [N]``."""
        return cosine_distance(a, b)


class MSEEnergy(nn.Module):
    """Squared error averaged over dimensions per sample (:func:`jef.functional.mse`), batch mean ``F.mse_loss``."""


    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """``[N, d], [N, d] -> [N]``."""
        return mse(a, b)


class SmoothL1Energy(nn.Module):
    """Smooth-L1 error per row (:func:`jef.functional.smooth_l1`): data2vec's and I-JEPA's regression loss."""

    def __init__(self, beta: float = 1.0, reduce: str = "mean", scale: str = "none") -> None:
        super().__init__()
        self.beta, self.reduce, self.scale = float(beta), reduce, scale

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """``[N, d], [N, d] -> [N]``."""
        factor = a.shape[-1] ** -0.5 if self.scale == "inverse_sqrt_dim" else 1.0
        return smooth_l1(a, b, self.beta, reduce=self.reduce, scale=factor)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduce={self.reduce}, scale={self.scale}"


class ScaledCosineEnergy(nn.Module):
    """``-cos(a, b) / τ`` per sample, the positive-pair term of NT-Xent: :func:`jef.functional.scaled_cosine`.

    Args:
        temperature: ``τ > 0``.
    """


    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """``[N, d], [N, d] -> [N]``."""
        return scaled_cosine(a, b, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class CrossEntropyEnergy(nn.Module):
    """``-Σ_k t_k log softmax(p/τ)_k`` per sample: :func:`jef.functional.soft_cross_entropy`.

    Predicted logits against target distributions: the energy of SwAV
    (targets: the sinkhorn functional's codes) and DINO (targets: the
    centring functional's teacher probabilities). The
    targets must be distributions, so a functional that makes them (one with
    a ``targets`` method) has to be in the pipeline: ``needs_target_maker``
    tells the pipeline builder to check that.

    Args:
        temperature: ``τ > 0``.
    """

    needs_target_maker = True

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """``[N, K] logits, [N, K] distributions -> [N]``."""
        return soft_cross_entropy(a, b, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def build_cosine(options: NoOptions, ctx: RunContext) -> CosineEnergy:
    """The ``cosine`` energy."""
    return CosineEnergy()


def build_mse(options: NoOptions, ctx: RunContext) -> MSEEnergy:
    """The ``mse`` energy."""
    return MSEEnergy()


def build_smooth_l1(options: SmoothL1Options, ctx: RunContext) -> SmoothL1Energy:
    """The ``smooth_l1`` energy."""
    return SmoothL1Energy(options.beta, options.reduce, options.scale)


def build_scaled_cosine(options: ScaledCosineOptions, ctx: RunContext) -> ScaledCosineEnergy:
    """The ``scaled_cosine`` energy."""
    return ScaledCosineEnergy(options.temperature)


def build_cross_entropy(options: CrossEntropyOptions, ctx: RunContext) -> CrossEntropyEnergy:
    """The ``cross_entropy`` energy."""
    return CrossEntropyEnergy(options.temperature)


@hookimpl
def jef_register_energies(register: Register) -> None:
    """Register ``cosine``, ``mse``, ``smooth_l1``, ``scaled_cosine`` and ``cross_entropy``."""
    register("cosine", build_cosine, options=NoOptions,
             description="cosine distance 1 - cos(p, t) per sample",
             paper="Grill et al., Bootstrap Your Own Latent (BYOL), arXiv:2006.07733")
    register("mse", build_mse, options=NoOptions,
             description="squared error averaged over dimensions per sample",
             paper="Bardes et al., VICReg (invariance term), arXiv:2105.04906")
    register("smooth_l1", build_smooth_l1, options=SmoothL1Options,
             description="smooth-L1 (Huber) error per row, mean or sum over dimensions (data2vec, I-JEPA)",
             paper="Baevski et al., data2vec, arXiv:2202.03555; Assran et al., I-JEPA, arXiv:2301.08243")
    register("scaled_cosine", build_scaled_cosine, options=ScaledCosineOptions,
             description="-cos(p, t)/τ: the positive term of NT-Xent (pair with the info_nce functional)",
             paper="Chen et al., A Simple Framework for Contrastive Learning (SimCLR), arXiv:2002.05709")
    register("cross_entropy", build_cross_entropy, options=CrossEntropyOptions,
             description="-Σ t log softmax(p/τ): logits against target distributions made by a functional "
                         "(SwAV codes, DINO teacher probabilities)",
             paper="Caron et al., SwAV, arXiv:2006.09882; Caron et al., DINO, arXiv:2104.14294")
