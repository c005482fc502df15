"""Collapse diagnostics for joint-embedding training.

Joint-embedding methods can reach a trivial minimum where every image maps to
the same point (*complete collapse*) or the embeddings span only a few
directions (*dimensional collapse*, Jing et al., arXiv:2110.09348). Both are
cheap to watch on a single batch of embeddings. Methods that assign samples to
``K`` classes (SwAV's prototypes, DINO's output dimensions) collapse in two
more ways, seen on the assignments: every sample in one class (low class
usage) or every sample spread uniformly over all classes (entropy ``log K``).

Alignment and uniformity (Wang & Isola, arXiv:2005.10242) describe the two
things a contrastive embedding must achieve at once: positive pairs close
together, and the embeddings of different images spread over the sphere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CollapseWarning", "alignment", "assignment_entropy", "class_usage", "effective_rank", "embedding_std",
           "row_spread", "uniformity"]


class CollapseWarning(UserWarning):
    """Emitted when a run's embeddings look collapsed."""


def _as_matrix(z: Tensor, name: str) -> Tensor:
    """Check ``z`` is ``[N, d]`` with ``N >= 2`` and return it detached in float32."""
    if z.dim() != 2:
        raise ValueError(f"{name} expects embeddings of shape [N, d], got {tuple(z.shape)}")
    if z.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 embeddings, got {z.shape[0]}")
    # float32: bf16/fp16 lose too much precision in the norms and the SVD (which rejects half types).
    return z.detach().float()


def embedding_std(z: Tensor) -> Tensor:
    """Mean per-dimension standard deviation of the l2-normalised embeddings.

    For embeddings spread uniformly on the unit sphere each coordinate has std
    ``1/sqrt(d)``; the value drops to 0 when all embeddings coincide (Chen &
    He, SimSiam, arXiv:2011.10566, sec. 4.1 and Fig. 2).

    Args:
        z: Embeddings ``[N, d]``, ``N >= 2``.

    Returns:
        A 0-dim float32 tensor on ``z``'s device.
    """
    z = F.normalize(_as_matrix(z, "embedding_std"), dim=1)
    return z.std(dim=0).mean()


def row_spread(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean per-dimension standard deviation of rows, unnormalised: ``mean_j sqrt(var_n(x_nj) + eps)``.

    data2vec's ``target_var`` and ``pred_var`` (Baevski et al., arXiv:2202.03555, official code): its targets are
    layer-normed, so the value is near 1 when healthy and falls towards 0 when the teacher maps every patch to
    one vector, the trivial solution its EMA must not start from.

    Args:
        x: Rows ``[N, d]``, ``N >= 2`` (masked-token targets or predictions).
    """
    x = _as_matrix(x, "row_spread")
    return (x.var(dim=0) + eps).sqrt().mean()


def effective_rank(z: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe effective rank of a batch of embeddings.

    ``exp(H(p))`` with ``p_k = sigma_k / sum(sigma) + eps`` over the singular
    values ``sigma`` of ``z`` (Garrido et al., RankMe, arXiv:2210.02885,
    eq. 1). It ranges from ~1 (all embeddings on one line) to ``min(N, d)``
    (isotropic embeddings).

    Args:
        z: Embeddings ``[N, d]``, ``N >= 2``.
        eps: Added to each ``p_k`` so ``log`` stays finite on zero singular values.

    Returns:
        A 0-dim float32 tensor on ``z``'s device.
    """
    sigma = torch.linalg.svdvals(_as_matrix(z, "effective_rank"))
    # All-zero embeddings have no direction at all; call that rank 0 rather than divide by 0.
    total = sigma.sum()
    if total <= 0:
        return torch.zeros((), device=sigma.device)
    p = sigma / total + eps
    return torch.exp(-(p * torch.log(p)).sum())


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment of positive pairs: ``E ||z1_n - z2_n||^alpha`` over the l2-normalised embeddings.

    ``L_align`` of Wang & Isola, Understanding Contrastive Representation
    Learning through Alignment and Uniformity on the Hypersphere,
    arXiv:2005.10242, eq. 4 (``alpha = 2`` as in their experiments). Row ``n``
    of ``z1`` and of ``z2`` are two views of the same image. 0 when the views
    coincide (which a collapsed embedding also achieves), 4 at most
    (``alpha = 2``: antipodal views).

    Args:
        z1: Embeddings of one view ``[N, d]``, ``N >= 2``.
        z2: Embeddings of another view of the same images ``[N, d]``.
        alpha: The exponent ``alpha > 0``.

    Returns:
        A 0-dim float32 tensor on ``z1``'s device.
    """
    a = F.normalize(_as_matrix(z1, "alignment"), dim=1)
    b = F.normalize(_as_matrix(z2, "alignment"), dim=1)
    if a.shape != b.shape:
        raise ValueError(f"alignment expects two views of the same images, got shapes {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if alpha <= 0:
        raise ValueError(f"alignment: alpha must be > 0, got {alpha}")
    return (a - b).norm(dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity: ``log E_{i != j} exp(-t ||z_i - z_j||^2)`` over the l2-normalised embeddings.

    ``L_uniform`` of Wang & Isola, arXiv:2005.10242, eq. 5 (``t = 2`` as in
    their experiments), the log of the mean Gaussian potential over the
    ``N (N - 1) / 2`` distinct pairs of a batch. 0 when all embeddings
    coincide (complete collapse); lower is more uniform, down to about ``-t * 2``
    for embeddings spread uniformly over a high-dimensional sphere.

    Args:
        z: Embeddings ``[N, d]``, ``N >= 2``.
        t: The potential's scale ``t > 0``.

    Returns:
        A 0-dim float32 tensor on ``z``'s device.
    """
    if t <= 0:
        raise ValueError(f"uniformity: t must be > 0, got {t}")
    z = F.normalize(_as_matrix(z, "uniformity"), dim=1)
    # pdist: the distinct pairs i < j, as in the paper's reference code (the diagonal's exp(0) = 1 stays out).
    return torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()


def _as_distributions(p: Tensor, name: str) -> Tensor:
    """Check ``p`` is ``[N, K]`` with ``N >= 1`` and ``K >= 2``; return it detached in float32."""
    if p.dim() != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"{name} expects assignments of shape [N, K] with N >= 1 and K >= 2, got {tuple(p.shape)}")
    return p.detach().float()


def assignment_entropy(p: Tensor) -> Tensor:
    """Mean per-sample entropy of soft assignments, divided by ``log K`` (so in [0, 1]).

    0 means every sample is assigned to one class with certainty; 1 means
    every sample is spread uniformly over all ``K`` classes, DINO's uniform
    collapse (Caron et al., DINO, arXiv:2104.14294, Sec. 5.3, Fig. 7).

    Args:
        p: ``[N, K]`` rows that are probability distributions.

    Returns:
        A 0-dim float32 tensor on ``p``'s device.
    """
    p = _as_distributions(p, "assignment_entropy")
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1).mean()
    return entropy / torch.log(torch.tensor(float(p.shape[1]), device=p.device))


def class_usage(p: Tensor) -> Tensor:
    """Fraction of the classes a batch could use that are some sample's most likely class.

    The number of distinct ``argmax`` classes divided by ``min(N, K)``: 1 when
    every sample (or every class) has its own, ``1/min(N, K)`` when every sample
    goes to the same class (SwAV's prototype usage; Caron et al., SwAV,
    arXiv:2006.09882). Ties count as the first class, so uniform rows all land
    in class 0.

    Args:
        p: ``[N, K]`` scores or probabilities.

    Returns:
        A 0-dim float32 tensor on ``p``'s device.
    """
    p = _as_distributions(p, "class_usage")
    used = torch.unique(p.argmax(dim=1)).numel()
    return torch.tensor(used / min(p.shape), device=p.device)
