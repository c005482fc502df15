"""The triplet loss of FaceNet [1] and its two mining rules, as pure tensor functions.

For an anchor ``a``, a positive ``p`` (the same identity) and a negative ``n`` (another identity), with
embeddings on the unit sphere and the squared Euclidean distance ``d(x, y) = ‖x̂ − ŷ‖²`` ([1], eq. 1–2)::

    ℓ(a, p, n) = max(d(a, p) − d(a, n) + α, 0)          α = 0.2 (the margin of [1])

Which negative (and, for ``batch_hard``, which positive) each anchor is paired with is the *mining*:

* ``semi_hard`` ([1], Sec. 3.2, eq. 4): for every (anchor, positive) pair, the hardest negative that is still
  farther than the positive, ``n* = argmin {d(a, n) : d(a, n) > d(a, p)}``. When it lies in the band
  ``d(a, p) < d(a, n) < d(a, p) + α`` it is the hardest semi-hard negative of [1]; when it lies beyond the band,
  no negative is semi-hard and ``ℓ = 0``, as in [1]. When *no* negative is farther than the positive, the
  farthest negative is taken, ``n* = argmax d(a, n)`` (the easiest of the hard ones, so ``ℓ > α``). This is
  exactly TensorFlow Addons' ``triplet_semihard_loss`` (``negatives_outside`` / ``negatives_inside``),
  and [1]'s reason to avoid the hardest negative early on: it can collapse the embedding.
* ``batch_hard`` (Hermans, Beyer & Leibe [2], Sec. 2): per anchor, the farthest positive and the nearest
  negative, ``max(max_p d(a, p) − min_n d(a, n) + α, 0)``. [2] uses the non-squared distance; this is the
  squared one, like [1], so that the margin means the same in both modes.

The selection itself carries no gradient (it is an ``argmin``/``argmax`` of detached distances); the chosen
distances do, to the anchor, the positive and the negative. Computed in at least float32, autocast off.

References:
    [1] Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition and Clustering.
        CVPR 2015. arXiv:1503.03832.
    [2] Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person Re-Identification. 2017.
        arXiv:1703.07737.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from jef.functional._checks import check_reduction, check_same_dim, full_precision, normalize, reduce

__all__ = ["MINING", "select_triplets", "squared_distances", "triplet_loss"]

#: The mining rules :func:`select_triplets` knows.
MINING = ("semi_hard", "batch_hard")


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """All-pairs squared Euclidean distances of the ℓ2-normalised rows, ``D[i, j] = ‖â_i − b̂_j‖²`` [1].

    ``‖â‖² + ‖b̂‖² − 2 âᵀb̂`` (in ``[0, 4]``), clamped at 0 against rounding.

    Args:
        a: ``[N, d]`` embeddings.
        b: ``[M, d]`` embeddings.

    Returns:
        ``[N, M]`` distances (float32 for half-precision inputs).
    """
    check_same_dim("squared_distances", a, b, ("a", "b"))
    with full_precision(a):
        a, b = normalize(a), normalize(b)
        return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp_min(0)


def _check_masks(fn: str, distances: Tensor, positives: Tensor, negatives: Tensor) -> None:
    for name, mask in (("positives", positives), ("negatives", negatives)):
        if mask.dtype != torch.bool or mask.shape != distances.shape:
            raise ValueError(f"{fn}: {name} must be a bool mask of shape [anchors, candidates]="
                             f"{list(distances.shape)}, got {mask.dtype} of shape {list(mask.shape)}")
    if bool((positives & negatives).any()):
        raise ValueError(f"{fn}: a candidate is marked both positive and negative for the same anchor")
    # Both are host checks of small boolean reductions; a triplet needs one of each for every anchor.
    if not bool(positives.any(1).all()):
        raise ValueError(f"{fn}: an anchor has no positive; every anchor needs another view of its image")
    if not bool(negatives.any(1).all()):
        raise ValueError(f"{fn}: an anchor has no negative; the batch must hold at least 2 images")


def select_triplets(distances: Tensor, positives: Tensor, negatives: Tensor, mining: str = "semi_hard", *,
                    validate: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The triplets a mining rule picks, as indices (no gradient).

    Args:
        distances: ``[N, M]`` anchor-candidate distances.
        positives: ``[N, M]`` bool, the candidates of the anchor's identity (the anchor itself excluded).
        negatives: ``[N, M]`` bool, the candidates of other identities.
        mining: ``"semi_hard"`` (one triplet per positive pair, [1]) or ``"batch_hard"`` (one per anchor, [2]).
        validate: Check the masks (three small reductions read on the host: on a GPU each waits for the queued
            kernels). Callers whose masks are right by construction pass False.

    Returns:
        ``(anchor, positive, negative)``: ``[T]`` long tensors, row of the anchor and columns of the positive and
        the negative; ``T`` is the number of positive pairs (``semi_hard``) or of anchors (``batch_hard``).

    Raises:
        ValueError: Unknown mining rule, masks of the wrong shape or type, or an anchor without positive or
            negative.
    """
    fn = "select_triplets"
    if mining not in MINING:
        raise ValueError(f"{fn}: mining must be one of {MINING}, got {mining!r}")
    if validate:
        _check_masks(fn, distances, positives, negatives)
    d = distances.detach()
    with torch.no_grad():
        if mining == "batch_hard":
            anchor = torch.arange(d.shape[0], device=d.device)
            positive = d.masked_fill(~positives, -math.inf).argmax(1)
            negative = d.masked_fill(~negatives, math.inf).argmin(1)
            return anchor, positive, negative
        anchor, positive = positives.nonzero(as_tuple=True)  # every (anchor, positive) pair, row-major
        rows, neg = d[anchor], negatives[anchor]
        farther = neg & (rows > d[anchor, positive][:, None])
        nearest_farther = rows.masked_fill(~farther, math.inf).argmin(1)
        farthest = rows.masked_fill(~neg, -math.inf).argmax(1)
        negative = torch.where(farther.any(1), nearest_farther, farthest)
        return anchor, positive, negative


def triplet_loss(anchors: Tensor, candidates: Tensor, positives: Tensor, negatives: Tensor, *,
                 margin: float = 0.2, mining: str = "semi_hard", reduction: str = "mean",
                 validate: bool = True) -> Tensor:
    """FaceNet's triplet loss [1] with ``semi_hard`` [1] or ``batch_hard`` [2] mining.

    Args:
        anchors: ``[N, d]`` anchor embeddings (normalised here).
        candidates: ``[M, d]`` positives and negatives (normalised here).
        positives: ``[N, M]`` bool, which candidates are positives of each anchor.
        negatives: ``[N, M]`` bool, which are negatives (a candidate may be neither: the anchor's own entry).
        margin: ``α ≥ 0``.
        mining: ``"semi_hard"`` or ``"batch_hard"``; see the module docstring.
        reduction: ``"mean"`` over triplets, ``"sum"`` or ``"none"`` (``[T]``, in :func:`select_triplets`'s order).
        validate: Check the masks (see :func:`select_triplets`).

    Returns:
        Scalar, or ``[T]`` when ``reduction="none"``.

    Raises:
        ValueError: On mismatched widths, a negative or non-finite margin, or what :func:`select_triplets` rejects.
    """
    fn = "triplet_loss"
    check_same_dim(fn, anchors, candidates, ("anchors", "candidates"))
    check_reduction(fn, reduction)
    margin = float(margin)
    if not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"{fn}: margin must be a finite number >= 0, got {margin!r}")
    with full_precision(anchors):
        d = squared_distances(anchors, candidates)
        a, p, n = select_triplets(d, positives, negatives, mining, validate=validate)
        return reduce((d[a, p] - d[a, n] + margin).clamp_min(0), reduction)
