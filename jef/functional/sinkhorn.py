"""Sinkhorn–Knopp: soft equipartitioned assignments of samples to prototypes (SwAV's codes).

Given scores ``S[n, k]`` of ``B`` samples against ``K`` prototypes, SwAV [1]
computes codes ``Q`` solving the entropy-regularised optimal transport

    max_Q  Tr(Qᵀ S) + ε H(Q)   subject to   Q 1_K = 1_B / B,   Qᵀ 1_B = 1_K / K

whose solution is ``diag(u) exp(S/ε) diag(v)``; a few alternating row and
column normalisations [2] find ``u`` and ``v``. The returned codes are scaled
by ``B`` so that each sample's code sums to 1 and each prototype receives
about ``B/K`` of the mass.

Numerics: ``exp(S/ε)`` with cosine scores and ε = 0.05 reaches ``e^20``,
beyond float16's range, so the scores are upcast to float32 and their
maximum (over every process) is subtracted before the exponential; the
constant cancels in the first normalisation.

Across processes, every sum over samples is all-reduced through the
``reduce_sum`` callable, so ``W`` processes holding ``B/W`` samples each
compute the codes one process computes on the global batch. The function
itself does no communication: callers pass :func:`jef.dist.all_reduce_sum`
and :func:`jef.dist.all_reduce_max`.

References:
    [1] Caron et al., Unsupervised Learning of Visual Features by Contrasting
        Cluster Assignments (SwAV), NeurIPS 2020, arXiv:2006.09882.
    [2] Cuturi, Sinkhorn Distances: Lightspeed Computation of Optimal
        Transport, NeurIPS 2013, arXiv:1306.0895.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from jef.functional._checks import check_embeddings, full_precision, upcast

__all__ = ["sinkhorn_knopp"]


def _identity(tensor: Tensor) -> Tensor:
    return tensor


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3, *,
                   reduce_sum: Callable[[Tensor], Tensor] = _identity,
                   reduce_max: Callable[[Tensor], Tensor] = _identity) -> Tensor:
    """Soft codes ``[B, K]`` for scores ``[B, K]`` (SwAV [1], Algorithm in its Sec. 3.1 and App. A.1).

    Args:
        scores: ``[B, K]`` similarities of this process's samples to the prototypes
            (any float dtype; no gradient flows through the codes).
        epsilon: Entropic regularisation ``ε > 0``; smaller gives sharper codes.
        iterations: Alternating normalisations (3 in SwAV).
        reduce_sum: Sums a tensor over processes (identity for one process).
        reduce_max: Element-wise maximum over processes (identity for one process).

    Returns:
        ``[B, K]`` float32 codes; each row sums to 1, and over the global batch
        each column sums to about ``B_global / K``.

    Raises:
        ValueError: For a non-2-D input, ``ε <= 0`` or ``iterations < 1``.
    """
    check_embeddings("sinkhorn_knopp", "scores", scores)
    if not epsilon > 0:
        raise ValueError(f"sinkhorn_knopp: epsilon must be > 0, got {epsilon!r}")
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"sinkhorn_knopp: iterations must be an integer >= 1, got {iterations!r}")
    with full_precision(scores):
        logits = upcast(scores) / epsilon
        # One constant for every process: per-process constants would not cancel.
        q = torch.exp(logits - reduce_max(logits.max())).T  # [K, B]
        n_prototypes = q.shape[0]
        n_samples = reduce_sum(torch.tensor(float(q.shape[1]), device=q.device))
        q = q / reduce_sum(q.sum())
        tiny = torch.finfo(q.dtype).tiny  # a prototype (or sample) whose mass underflowed stays 0, not NaN
        for _ in range(int(iterations)):
            q = q / reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(tiny) / n_prototypes  # 1/K per prototype
            q = q / q.sum(dim=0, keepdim=True).clamp_min(tiny) / n_samples  # 1/B per sample
        return (q * n_samples).T
