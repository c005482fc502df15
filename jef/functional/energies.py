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
"""

from __future__ import annotations

import torch
from torch import Tensor

from jef.functional._checks import check_same_shape, check_temperature, full_precision, normalize, upcast

__all__ = ["cosine_distance", "cosine_similarity", "mse", "scaled_cosine", "soft_cross_entropy"]


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
