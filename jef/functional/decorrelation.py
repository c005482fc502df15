"""Decorrelation losses: VICReg's variance and covariance terms, Barlow Twins' cross-correlation.

Both methods keep embeddings from collapsing by constraining statistics of
the batch rather than contrasting samples. VICReg [1] holds the standard
deviation of each dimension above ``γ`` (:func:`variance_hinge`) and pushes
the covariance between dimensions to zero (:func:`covariance_penalty`).
Barlow Twins [2] drives the cross-correlation matrix between the two views'
standardised embeddings towards the identity (:func:`cross_correlation`,
:func:`cross_correlation_loss`).

These are batch statistics: under data parallelism the caller must gather
the global batch first (the registered functionals in
:mod:`jef.builtin.decorrelation` do). Half-precision inputs are computed in
float32 with autocast disabled: ``var + eps`` with ``eps = 1e-4`` and the
squares of the covariance lose everything in float16 (the eps-underflow
failure mode of lightly #1259).

References:
    [1] Bardes, Ponce, LeCun, VICReg: Variance-Invariance-Covariance
        Regularization for Self-Supervised Learning, ICLR 2022,
        arXiv:2105.04906.
    [2] Zbontar, Jing, Misra, LeCun, Deny, Barlow Twins: Self-Supervised
        Learning via Redundancy Reduction, ICML 2021, arXiv:2103.03230.
"""

from __future__ import annotations

from torch import Tensor

from jef.functional._checks import check_embeddings, check_same_shape, full_precision, upcast

__all__ = ["barlow_twins_loss", "covariance_penalty", "cross_correlation", "cross_correlation_loss", "off_diagonal",
           "variance_hinge"]


def _check_batch(fn: str, name: str, z: Tensor, least: int) -> None:
    """Require ``[N, d]`` embeddings with at least ``least`` samples (statistics need several)."""
    check_embeddings(fn, name, z)
    if z.shape[0] < least:
        raise ValueError(f"{fn}: {name} needs at least {least} samples to estimate batch statistics, "
                         f"got shape {tuple(z.shape)}")


def off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened.

    Args:
        m: ``[d, d]`` matrix.

    Returns:
        ``[d*(d-1)]`` tensor of the entries ``m[i, j]`` with ``i != j``.

    Raises:
        ValueError: If ``m`` is not a square 2-D tensor.
    """
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"off_diagonal: m must be a square [d, d] matrix, got shape {tuple(m.shape)}")
    d = m.shape[0]
    # Dropping the last element leaves d-1 rows of d+1 entries, each starting just after a diagonal entry.
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def variance_hinge(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """VICReg's variance term ``v(Z) = mean_j relu(γ − sqrt(Var(z_j) + ε))`` [1, eq. 1].

    The variance has Bessel's correction (``N - 1``), as ``torch.var`` in the
    official code. Taking the square root (not the variance) keeps the
    gradient from vanishing as a dimension approaches collapse.

    Args:
        z: ``[N, d]`` embeddings, ``N >= 2``.
        gamma: Target standard deviation ``γ`` (1 in the paper).
        eps: ``ε`` inside the square root, for numerical stability (1e-4 in [1]).

    Returns:
        Scalar (float32 for half-precision inputs).

    Raises:
        ValueError: With fewer than 2 samples, or a negative ``eps``.
    """
    _check_batch("variance_hinge", "z", z, 2)
    if not eps >= 0:
        raise ValueError(f"variance_hinge: eps must be >= 0, got {eps!r}")
    with full_precision(z):
        std = (upcast(z).var(dim=0, unbiased=True) + eps).sqrt()
        return (gamma - std).clamp(min=0).mean()


def covariance_penalty(z: Tensor) -> Tensor:
    """VICReg's covariance term ``c(Z) = (1/d) Σ_{i≠j} C(Z)_ij²`` [1, eq. 3-4].

    ``C(Z)`` is the covariance matrix with Bessel's correction,
    ``(Z − Z̄)ᵀ(Z − Z̄) / (N − 1)``. Dividing by ``d`` (not ``d²``) keeps the
    term's scale comparable across embedding widths, as in the paper.

    Args:
        z: ``[N, d]`` embeddings, ``N >= 2``.

    Returns:
        Scalar (float32 for half-precision inputs).

    Raises:
        ValueError: With fewer than 2 samples.
    """
    _check_batch("covariance_penalty", "z", z, 2)
    with full_precision(z):
        z = upcast(z)
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (z.shape[0] - 1)
        return off_diagonal(cov).pow(2).sum() / z.shape[1]


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """Barlow Twins' cross-correlation matrix ``C = ẑ1ᵀ ẑ2 / N`` [2, eq. 2].

    Each dimension is standardised over the batch with the *biased* variance
    (divide by ``N``) and ``ε`` added to it, as ``BatchNorm1d(affine=False)``
    in training mode does in the official code; so ``C_ij`` is the Pearson
    correlation between dimension ``i`` of view 1 and ``j`` of view 2 (up to
    ``ε``), in ``[-1, 1]``.

    Args:
        z1: ``[N, d]`` embeddings of the first view, ``N >= 2``.
        z2: ``[N, d]`` embeddings of the second view, paired row by row.
        eps: ``ε`` added to the variance (BatchNorm's default 1e-5).

    Returns:
        ``[d, d]`` matrix (float32 for half-precision inputs).

    Raises:
        ValueError: On mismatched shapes, fewer than 2 samples, or a negative ``eps``.
    """
    fn = "cross_correlation"
    check_same_shape(fn, z1, z2, ("z1", "z2"))
    _check_batch(fn, "z1", z1, 2)
    if not eps >= 0:
        raise ValueError(f"{fn}: eps must be >= 0, got {eps!r}")
    with full_precision(z1):
        def standardise(z: Tensor) -> Tensor:
            z = upcast(z)
            return (z - z.mean(dim=0)) / (z.var(dim=0, unbiased=False) + eps).sqrt()

        return standardise(z1).T @ standardise(z2) / z1.shape[0]


def cross_correlation_loss(c: Tensor, lambd: float = 0.0051) -> Tensor:
    """Barlow Twins' redundancy-reduction loss ``Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²`` [2, eq. 1].

    The first (invariance) term makes each dimension agree across the views;
    the second (redundancy reduction) decorrelates different dimensions.
    ``barlow_twins_loss`` is this function's old name, kept as an alias.

    Args:
        c: ``[d, d]`` cross-correlation matrix (:func:`cross_correlation`).
        lambd: ``λ``, the off-diagonal weight (5·10⁻³ in [2]; the official
            code's default is 0.0051).

    Returns:
        Scalar.

    Raises:
        ValueError: If ``c`` is not square or ``λ`` is negative.
    """
    if not lambd >= 0:
        raise ValueError(f"cross_correlation_loss: lambd must be >= 0, got {lambd!r}")
    if c.dim() != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"cross_correlation_loss: c must be a square [d, d] matrix, got shape {tuple(c.shape)}")
    with full_precision(c):
        c = upcast(c)
        return (1 - c.diagonal()).pow(2).sum() + lambd * off_diagonal(c).pow(2).sum()


#: The old name of :func:`cross_correlation_loss` (named after the method, not what it computes); it still works.
barlow_twins_loss = cross_correlation_loss
