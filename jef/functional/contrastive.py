"""Contrastive (InfoNCE) losses and their parts.

For an anchor ``a_i`` with positive ``p_i`` and a candidate set ``C_i``
(which contains ``p_i``), InfoNCE [2] with cosine similarity and temperature
``τ`` is the cross-entropy of picking the positive among the candidates::

    ℓ_i = -cos(a_i, p_i)/τ + log Σ_{c ∈ C_i} exp(cos(a_i, c)/τ)

jef splits it into an energy (the first term, :func:`scaled_cosine`) and a
functional (the log-sum-exp, :func:`info_nce_denominator`). NT-Xent [1] is
InfoNCE over the ``2N`` embeddings of a batch of two views, every embedding
being an anchor whose candidates are all the others; memory-bank and queue
methods [3, 4] append stored embeddings as extra ``negatives``.

Half-precision inputs are computed in float32, with autocast disabled.

References:
    [1] Chen et al., A Simple Framework for Contrastive Learning of Visual
        Representations (SimCLR), 2020, arXiv:2002.05709.
    [2] van den Oord et al., Representation Learning with Contrastive
        Predictive Coding (CPC / InfoNCE), 2018, arXiv:1807.03748.
    [3] Wu et al., Unsupervised Feature Learning via Non-Parametric Instance
        Discrimination (InstDisc), 2018, arXiv:1805.01978.
    [4] He et al., Momentum Contrast (MoCo), 2020, arXiv:1911.05722.
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

__all__ = ["cosine_similarity_matrix", "info_nce", "info_nce_denominator", "nt_xent"]


def cosine_similarity_matrix(a: Tensor, b: Tensor) -> Tensor:
    """All-pairs cosine similarity ``S[i, j] = cos(a_i, b_j)``.

    Args:
        a: ``[N, d]`` embeddings.
        b: ``[M, d]`` embeddings.

    Returns:
        ``[N, M]`` similarities (float32 for half-precision inputs).

    Raises:
        ValueError: If either is not 2-D or their widths differ.
    """
    check_same_dim("cosine_similarity_matrix", a, b, ("a", "b"))
    with full_precision(a):
        return normalize(a) @ normalize(b).T


def _exclusion_mask(fn: str, n: int, m: int, device: torch.device, self_mask_offset: int | None,
                    exclude: Tensor | None) -> Tensor | None:
    """Boolean ``[n, m]`` mask of the (anchor, candidate) entries to leave out, or None."""
    if self_mask_offset is not None and exclude is not None:
        raise ValueError(f"{fn}: give self_mask_offset or exclude, not both")
    if self_mask_offset is not None:
        offset = int(self_mask_offset)
        if offset < 0 or offset + n > m:
            raise ValueError(
                f"{fn}: self_mask_offset={offset} excludes candidates [{offset}, {offset + n}) for {n} "
                f"anchors, outside the {m} candidates"
            )
        # Built directly: checking it like a caller's `exclude` would read the device at every step.
        mask = torch.zeros(n, m, dtype=torch.bool, device=device)
        rows = torch.arange(n, device=device)
        mask[rows, rows + offset] = True
        return mask
    if exclude is None:
        return None
    if exclude.dim() != 1 or exclude.shape[0] != n or exclude.is_floating_point():
        raise ValueError(
            f"{fn}: exclude must be an integer tensor of shape [N]=[{n}] (one candidate index per anchor, "
            f"-1 for none), got {exclude.dtype} of shape {tuple(exclude.shape)}"
        )
    exclude = exclude.to(device=device, dtype=torch.long)
    if n and int(exclude.max()) >= m:
        raise ValueError(f"{fn}: exclude holds index {int(exclude.max())} but there are only {m} candidates")
    mask = torch.zeros(n, m, dtype=torch.bool, device=device)
    keep = exclude >= 0  # a negative index means "this anchor excludes nothing"
    mask[torch.arange(n, device=device)[keep], exclude[keep]] = True
    return mask


def _denominator(fn: str, anchors_n: Tensor, candidates: Tensor | None, tau: float, negatives: Tensor | None,
                 self_mask_offset: int | None, exclude: Tensor | None, extra_logits: Tensor | None = None) -> Tensor:
    """Per-anchor log-sum-exp over candidates (minus exclusions), negatives and ``extra_logits``."""
    columns = [] if extra_logits is None else [extra_logits]
    mask = None
    if candidates is not None:
        logits = anchors_n @ normalize(candidates).T / tau
        mask = _exclusion_mask(fn, logits.shape[0], logits.shape[1], logits.device, self_mask_offset, exclude)
        if mask is not None:
            # -inf contributes exp(-inf) = 0 to the sum and gets zero gradient.
            logits = logits.masked_fill(mask, float("-inf"))
        columns.append(logits)
    if negatives is not None:
        columns.append(anchors_n @ normalize(negatives).T / tau)
    logits = torch.cat(columns, dim=1)
    # Each anchor excludes at most one entry, so only a single column can be emptied.
    if logits.shape[1] == 0 or (logits.shape[1] == 1 and mask is not None and bool(mask.any())):
        raise ValueError(f"{fn}: an anchor has no candidate left after exclusion; give more candidates")
    return torch.logsumexp(logits, dim=1)


def info_nce_denominator(anchors: Tensor, candidates: Tensor, temperature: float, *,
                         self_mask_offset: int | None = None, exclude: Tensor | None = None,
                         negatives: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Log-sum-exp part of InfoNCE: ``log Σ_{c ∈ C_i} exp(cos(a_i, c)/τ)``.

    The batch-level ("uniformity") term of InfoNCE [2] and NT-Xent [1]; the
    energy :func:`~jef.functional.scaled_cosine` supplies the other term.

    Args:
        anchors: ``[N, d]`` anchor embeddings.
        candidates: ``[M, d]`` candidate embeddings (usually the positives and
            in-batch negatives, e.g. the gathered global batch).
        temperature: ``τ > 0``.
        self_mask_offset: Anchor ``i`` excludes candidate ``offset + i`` (its
            own embedding when the anchors sit at rows ``[offset, offset+N)``
            of the candidates).
        exclude: Alternatively, ``[N]`` integer tensor: the candidate index
            anchor ``i`` excludes, or ``-1`` for none.
        negatives: Optional ``[K, d]`` extra candidates shared by every anchor
            and never excluded (memory bank [3], queue [4]).
        reduction: ``"mean"`` over anchors, ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        Scalar, or ``[N]`` when ``reduction="none"``.

    Raises:
        ValueError: On mismatched widths, bad exclusion indices, a
            non-positive temperature, or an anchor left without candidates.
    """
    fn = "info_nce_denominator"
    check_same_dim(fn, anchors, candidates, ("anchors", "candidates"))
    if negatives is not None:
        check_same_dim(fn, anchors, negatives, ("anchors", "negatives"))
    tau = check_temperature(fn, temperature)
    check_reduction(fn, reduction)
    with full_precision(anchors):
        lse = _denominator(fn, normalize(anchors), candidates, tau, negatives, self_mask_offset, exclude)
    return reduce(lse, reduction)


def info_nce(anchors: Tensor, positives: Tensor, candidates: Tensor | None, temperature: float, *,
             self_mask_offset: int | None = None, exclude: Tensor | None = None,
             negatives: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """InfoNCE [2]: ``-log softmax`` of each anchor's positive among its candidates.

    ``ℓ_i = -cos(a_i, p_i)/τ + log Σ_{c ∈ C_i} exp(cos(a_i, c)/τ)``, where
    ``C_i`` is ``candidates`` minus the excluded entry, plus ``negatives``.
    For this to be a softmax the positive must be one of the candidates
    (as in SimCLR [1], where every other embedding of the batch is one);
    with ``candidates=None`` the candidate set of anchor ``i`` is its own
    positive plus ``negatives`` (MoCo v1/v2 with a queue [4]).

    Args:
        anchors: ``[N, d]`` anchors (queries).
        positives: ``[N, d]`` positives, row ``i`` paired with anchor ``i``.
        candidates: ``[M, d]`` candidates containing the positives, or None.
        temperature: ``τ > 0``.
        self_mask_offset: See :func:`info_nce_denominator`.
        exclude: See :func:`info_nce_denominator`.
        negatives: ``[K, d]`` extra negatives (memory bank [3], queue [4]).
        reduction: ``"mean"`` over anchors, ``"sum"`` or ``"none"``.

    Returns:
        Scalar, or ``[N]`` when ``reduction="none"``.

    Raises:
        ValueError: On mismatched shapes, bad exclusions, a non-positive
            temperature, or ``candidates=None`` with exclusions.
    """
    fn = "info_nce"
    check_same_shape(fn, anchors, positives, ("anchors", "positives"))
    if candidates is not None:
        check_same_dim(fn, anchors, candidates, ("anchors", "candidates"))
    elif self_mask_offset is not None or exclude is not None:
        raise ValueError(f"{fn}: self_mask_offset/exclude index candidates, but candidates is None")
    if negatives is not None:
        check_same_dim(fn, anchors, negatives, ("anchors", "negatives"))
    tau = check_temperature(fn, temperature)
    check_reduction(fn, reduction)
    with full_precision(anchors):
        anchors_n = normalize(anchors)
        positive = (anchors_n * normalize(positives)).sum(dim=-1) / tau
        extra = positive[:, None] if candidates is None else None
        lse = _denominator(fn, anchors_n, candidates, tau, negatives, self_mask_offset, exclude, extra)
    return reduce(lse - positive, reduction)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, *, reduction: str = "mean") -> Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR [1].

    Every one of the ``2N`` embeddings ``z = [z1; z2]`` is an anchor; its
    positive is the other view of the same image and its candidates are the
    ``2N - 1`` other embeddings. Single-process reference: for a global batch
    across processes use the ``scaled_cosine`` energy with the ``info_nce``
    functional, which gather the candidates.

    Args:
        z1: ``[N, d]`` embeddings of the first view.
        z2: ``[N, d]`` embeddings of the second view.
        temperature: ``τ > 0`` (0.5 for CIFAR-10 and 0.1 for ImageNet with
            large batches in [1]).
        reduction: ``"mean"`` over the ``2N`` anchors, ``"sum"`` or ``"none"``.

    Returns:
        Scalar, or ``[2N]`` (view-1 anchors first) when ``reduction="none"``.
    """
    check_same_shape("nt_xent", z1, z2, ("z1", "z2"))
    z = torch.cat([z1, z2], dim=0)
    return info_nce(z, torch.cat([z2, z1], dim=0), z, temperature, self_mask_offset=0, reduction=reduction)
