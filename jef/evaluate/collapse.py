"""Collapse diagnostics for joint-embedding training.

Joint-embedding methods can reach a trivial minimum where every image maps to
the same point (*complete collapse*) or the embeddings span only a few
directions (*dimensional collapse*, Jing et al., arXiv:2110.09348). Both are
cheap to watch on a single batch of embeddings. Methods that assign samples to
``K`` classes (SwAV's prototypes, DINO's output dimensions) collapse in two
more ways, seen on the assignments: every sample in one class (low class
usage) or every sample spread uniformly over all classes (entropy ``log K``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CollapseWarning", "assignment_entropy", "class_usage", "effective_rank", "embedding_std"]


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
