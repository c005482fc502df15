"""A FIFO queue of past keys as negatives: the maths of MoCo v1/v2 [1, 2], without state.

MoCo [1] keeps the ℓ2-normalised keys of the last ``K`` samples (computed by
the momentum encoder) in a queue and uses them as negatives. For a query
``q``, its positive key ``k+`` and the queue ``{n_1 … n_K}``::

    ℓ(q) = −cos(q, k+)/τ + log( exp(cos(q, k+)/τ) + Σ_k exp(cos(q, n_k)/τ) )

jef splits it into the energy ``scaled_cosine`` (the first term) and the
log-sum-exp computed here by :func:`queue_info_nce_denominator`. After each
step the step's keys replace the oldest entries (:func:`enqueue`). MoCo v2 [2]
keeps the same loss, with an MLP projector, blur and a cosine schedule.

References:
    [1] He, Fan, Wu, Xie, Girshick. Momentum Contrast for Unsupervised Visual
        Representation Learning (MoCo). CVPR 2020. arXiv:1911.05722.
    [2] Chen, Fan, Girshick, He. Improved Baselines with Momentum Contrastive
        Learning (MoCo v2). 2020. arXiv:2003.04297.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jef.functional._checks import (
    check_reduction,
    check_same_dim,
    check_same_shape,
    check_temperature,
    full_precision,
    normalize,
    reduce,
)

__all__ = ["enqueue", "queue_info_nce_denominator", "random_unit_queue"]


def random_unit_queue(size: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """``[size, dim]`` random unit vectors: the queue before any key arrives, as in MoCo [1].

    Args:
        size: ``K``, the number of entries.
        dim: Embedding width.
        generator: Random source (seed it so that every process starts with the same queue).
    """
    if size < 1 or dim < 1:
        raise ValueError(f"random_unit_queue: size and dim must be >= 1, got size={size}, dim={dim}")
    return normalize(torch.randn(size, dim, generator=generator))


@torch.no_grad()
def enqueue(queue: Tensor, pointer: int | Tensor, keys: Tensor) -> int | Tensor:
    """Write ``keys`` into ``queue`` in place, oldest entries first (FIFO with wrap-around) [1].

    Key ``j`` of ``M`` goes to row ``(pointer + j) % K``; the queue is a ring
    buffer, so ``K`` need not be a multiple of ``M``. When ``M > K`` only the
    last ``K`` keys are kept (the earlier ones would be overwritten in the same
    step anyway). Keys are stored detached, in the queue's dtype; the caller
    normalises them.

    Args:
        queue: ``[K, d]`` buffer, modified in place.
        pointer: Row of the oldest entry, the next to overwrite, in ``[0, K)``: an int, or a 0-d integer
            tensor on the queue's device (a buffer), which is then used without reading it on the host.
        keys: ``[M, d]`` new keys.

    Returns:
        The new pointer, ``(pointer + M) % K``, of the same kind as ``pointer``.

    Raises:
        ValueError: The widths differ or ``pointer`` is out of range.
    """
    size = queue.shape[0]
    if keys.dim() != 2 or queue.dim() != 2 or keys.shape[1] != queue.shape[1]:
        raise ValueError(f"enqueue: keys must be [M, {queue.shape[-1]}] to fit the [K, d]={list(queue.shape)} "
                         f"queue, got {list(keys.shape)}")
    if not isinstance(pointer, Tensor) and not 0 <= pointer < size:  # a tensor is not read (no device sync)
        raise ValueError(f"enqueue: pointer must be in [0, {size}), got {pointer}")
    count = keys.shape[0]
    kept = keys[-size:] if count > size else keys
    start = (pointer + count - kept.shape[0]) % size  # where the first kept key goes
    rows = (start + torch.arange(kept.shape[0], device=queue.device)) % size
    queue[rows] = kept.detach().to(device=queue.device, dtype=queue.dtype)
    return (pointer + count) % size


def queue_info_nce_denominator(queries: Tensor, keys: Tensor, queue: Tensor, temperature: float, *,
                               reduction: str = "mean") -> Tensor:
    """``log( exp(cos(q_i, k_i)/τ) + Σ_k exp(cos(q_i, n_k)/τ) )``: MoCo's softmax denominator [1].

    Together with the energy ``−cos(q_i, k_i)/τ`` (:func:`~jef.functional.scaled_cosine`)
    it is MoCo's InfoNCE: the cross-entropy of picking the positive key among
    itself and the ``K`` queued negatives.

    Args:
        queries: ``[N, d]`` online outputs ``q``.
        keys: ``[N, d]`` positive keys, row ``i`` paired with query ``i``.
        queue: ``[K, d]`` negatives (no gradient flows to them).
        temperature: ``τ > 0`` (0.07 in MoCo v1 [1], 0.2 in v2 [2]).
        reduction: ``"mean"`` over queries, ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        Scalar, or ``[N]`` when ``reduction="none"``.
    """
    fn = "queue_info_nce_denominator"
    check_same_shape(fn, queries, keys, ("queries", "keys"))
    check_same_dim(fn, queries, queue, ("queries", "queue"))
    tau = check_temperature(fn, temperature)
    check_reduction(fn, reduction)
    with full_precision(queries):
        q = normalize(queries)
        positive = (q * normalize(keys)).sum(dim=-1, keepdim=True) / tau
        # Re-normalised although stored as unit vectors: costs K·d against the N·K·d product, and keeps the
        # cosine exact when the queue is kept in a lower precision than the queries.
        negatives = q @ normalize(queue.detach()).to(q.dtype).T / tau
        lse = torch.logsumexp(torch.cat([positive, negatives], dim=1), dim=1)
    return reduce(lse, reduction)
