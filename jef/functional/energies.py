"""Energies: per-sample distances ``D(a_n, b_n)`` between paired embeddings.

Each function takes two ``[N, d]`` tensors whose row ``n`` come from two views
of the same image and returns ``[N]``. Half-precision inputs are computed in
float32 (the result is float32).

References:
    [1] Chen et al., A Simple Framework for Contrastive Learning of Visual
        Representations (SimCLR), 2020, arXiv:2002.05709.
    [2] Grill et al., Bootstrap Your Own Latent (BYOL), 2020, arXiv:2006.07733.
    [3] Chen & He, Exploring Simple Siamese Representation Learning (SimSiam),
        2021, arXiv:2011.10566.
    [4] Caron et al., Unsupervised Learning of Visual Features by Contrasting
        Cluster Assignments (SwAV), 2020, arXiv:2006.09882.
    [5] Caron et al., Emerging Properties in Self-Supervised Vision
        Transformers (DINO), 2021, arXiv:2104.14294.
    [6] Baevski et al., data2vec: A General Framework for Self-supervised Learning in Speech, Vision and
        Language, ICML 2022, arXiv:2202.03555.
    [7] Assran et al., Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture
        (I-JEPA), CVPR 2023, arXiv:2301.08243.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jef.functional._checks import check_same_shape, check_temperature, full_precision, normalize, upcast

__all__ = ["cosine_distance", "cosine_similarity", "mse", "scaled_cosine", "smooth_l1", "soft_cross_entropy"]


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity ``cos(a_n, b_n)``.

    Args:
        a: ``[N, d]`` embeddings.
        b: ``[N, d]`` embeddings paired row by row with ``a``.

    Returns:
        ``[N]`` similarities in ``[-1, 1]`` (0 for an all-zero row).

    Raises:
        ValueError: If the shapes are not equal ``[N, d]``.
    """
    check_same_shape("cosine_similarity", a, b)
    with full_precision(a):
        return (normalize(a) * normalize(b)).sum(dim=-1)


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """Cosine distance ``1 - cos(a_n, b_n)``, in ``[0, 2]``.

    Up to a factor 2 and a constant this is the normalised-MSE of BYOL [2]
    (``||â - b̂||² = 2 - 2 cos``) and the negative cosine of SimSiam [3].

    Args:
        a: ``[N, d]`` embeddings.
        b: ``[N, d]`` embeddings paired with ``a``.

    Returns:
        ``[N]`` distances.
    """
    check_same_shape("cosine_distance", a, b)
    with full_precision(a):
        return 1.0 - (normalize(a) * normalize(b)).sum(dim=-1)


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Squared error averaged over dimensions, ``mean_j (a_nj - b_nj)²``.

    Averaging over dimensions (not summing) makes the mean over samples equal
    ``F.mse_loss(a, b)``.

    Args:
        a: ``[N, d]`` embeddings.
        b: ``[N, d]`` embeddings paired with ``a``.

    Returns:
        ``[N]`` per-sample errors (computed in at least float32: squares of
        half-precision values overflow easily).
    """
    check_same_shape("mse", a, b)
    with full_precision(a):
        return (upcast(a) - upcast(b)).pow(2).mean(dim=-1)


def smooth_l1(a: Tensor, b: Tensor, beta: float = 1.0, *, reduce: str = "mean", scale: float = 1.0) -> Tensor:
    """Smooth-L1 (Huber) error per row: ``x²/(2β)`` for ``|x| < β``, else ``|x| − β/2``, with ``x = a − b``.

    data2vec [6] sums it over the ``d`` dimensions and scales it by ``1/√d`` (β = 2 for images); I-JEPA [7]
    averages it over dimensions (β = 1, ``F.smooth_l1_loss``'s mean). ``β = 0`` is the L1 error.

    Args:
        a: ``[N, d]`` predictions.
        b: ``[N, d]`` targets paired with ``a``.
        beta: ``β >= 0``, where the square turns linear.
        reduce: ``"mean"`` or ``"sum"`` over dimensions.
        scale: A factor on the result (data2vec: ``1/√d``).

    Returns:
        ``[N]`` per-row errors, in at least float32.
    """
    check_same_shape("smooth_l1", a, b)
    if beta < 0 or reduce not in ("mean", "sum"):
        raise ValueError(f"smooth_l1: beta must be >= 0 and reduce 'mean' or 'sum', got beta={beta}, "
                         f"reduce={reduce!r}")
    with full_precision(a):
        diff = (upcast(a) - upcast(b)).abs()
        error = torch.where(diff < beta, 0.5 * diff.pow(2) / max(beta, 1e-12), diff - 0.5 * beta)
        return (error.sum(dim=-1) if reduce == "sum" else error.mean(dim=-1)) * scale


def scaled_cosine(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Negative temperature-scaled cosine ``-cos(a_n, b_n) / τ``.

    The positive-pair (numerator) part of NT-Xent [1]: averaged over the two
    ordered view pairs and added to the InfoNCE denominator
    (:func:`jef.functional.info_nce_denominator`) it gives NT-Xent exactly.

    Args:
        a: ``[N, d]`` embeddings.
        b: ``[N, d]`` embeddings paired with ``a``.
        temperature: ``τ > 0``.

    Returns:
        ``[N]`` energies in ``[-1/τ, 1/τ]``.
    """
    check_same_shape("scaled_cosine", a, b)
    tau = check_temperature("scaled_cosine", temperature)
    with full_precision(a):
        return -(normalize(a) * normalize(b)).sum(dim=-1) / tau


def soft_cross_entropy(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy of soft targets, ``-Σ_k t_nk · log softmax(l_n / τ)_k``.

    SwAV's swapped prediction [4] (targets: Sinkhorn codes, ``l`` the
    prototype scores, τ = 0.1) and DINO's distillation loss [5] (targets:
    the teacher's centred, sharpened probabilities, ``l`` the student's
    logits, τ = 0.1) are this energy averaged over their view pairs.

    Args:
        logits: ``[N, K]`` unnormalised predictions (carry the gradient).
        targets: ``[N, K]`` target distributions (each row non-negative, summing to 1).
        temperature: ``τ > 0`` dividing the logits.

    Returns:
        ``[N]`` cross-entropies (float32 for half-precision inputs).
    """
    check_same_shape("soft_cross_entropy", logits, targets, ("logits", "targets"))
    tau = check_temperature("soft_cross_entropy", temperature)
    with full_precision(logits):
        return -(upcast(targets) * torch.log_softmax(upcast(logits) / tau, dim=-1)).sum(dim=-1)
