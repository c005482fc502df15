"""The Invariant and Spreading Instance Feature loss [1], over a (global) batch, as pure maths.

For a batch of ``m`` images ``x_i`` and their augmentations ``x̂_i`` with ℓ2-normalised features ``f_i`` and
``f̂_i``, the paper (Sec. 3.1, Eqs. 2, 3 and 6) classifies every sample among the ``m`` instances, the batch's
features ``f_k`` acting as the weights of a softmax classifier::

    P(i | x̂_i) = exp(f_iᵀ f̂_i / τ) / Σ_{k=1..m} exp(f_kᵀ f̂_i / τ)
    P(i | x_j)  = exp(f_iᵀ f_j / τ) / Σ_{k=1..m} exp(f_kᵀ f_j / τ),     j ≠ i
    J = − Σ_i log P(i | x̂_i) − Σ_i Σ_{j≠i} log(1 − P(i | x_j))

Both denominators run over the ``m`` features ``f_k`` of the un-augmented view; the second one includes
``k = j``, the anchor's own feature (``exp(1/τ)``), so ``P(i | x_j) ≤ 1/2`` and ``log(1 − P)`` stays finite.

What is computed here, row by row: anchor row ``r`` (global index ``g``) contributes

    ℓ_g = − log P(g | x̂_g) − Σ_{i≠g} log(1 − P(i | x_g))

so that ``J = Σ_g ℓ_g``. :func:`invaspread_loss` returns the **mean** ``(1/m) Σ_g ℓ_g = J / m`` by default:
J grows with the batch (its second term has ``m(m − 1)`` summands, each about ``1/m`` for spread features), the
mean is its per-anchor value, and the learning rate then does not depend on how many processes share the batch.

Over several processes the candidates ``f_k`` are the global batch's (gathered with :func:`jef.dist.gather`,
which carries the gradient back to the process that made them) and the anchors are the local rows: the mean
over local rows, averaged over processes as DDP averages gradients, is the single-process ``J / m`` and its
gradient. Gradients flow through the anchors, the positive and every negative; the official code detaches the
candidates (see ``docs/methods/invaspread.md``).

References:
    [1] Ye, Zhang, Yuen, Chang. Unsupervised Embedding Learning via Invariant and Spreading Instance Feature.
        CVPR 2019. arXiv:1904.03436.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor

from jef.functional import l2_normalize

__all__ = ["invaspread_loss", "invaspread_terms"]


def _check(x: Tensor, x_hat: Tensor, candidates: Tensor, offset: int, temperature: float) -> float:
    """Validate shapes, the anchors' place among the candidates and τ; return τ as a float."""
    for name, t in (("x", x), ("x_hat", x_hat), ("candidates", candidates)):
        if not isinstance(t, Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f"invaspread: {name} must be a floating-point [N, d] tensor, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}")
    if x.shape != x_hat.shape:
        raise ValueError(f"invaspread: x and x_hat must have the same shape [N, d] (row i of x_hat is the "
                         f"augmentation of row i of x), got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.shape[0] < 1:
        raise ValueError("invaspread: the batch is empty")
    if candidates.shape[1] != x.shape[1]:
        raise ValueError(f"invaspread: candidates must have the anchors' width d={x.shape[1]}, got "
                         f"{tuple(candidates.shape)}")
    if not 0 <= offset <= candidates.shape[0] - x.shape[0]:
        raise ValueError(f"invaspread: anchors at candidate rows [{offset}, {offset + x.shape[0]}) lie outside "
                         f"the {candidates.shape[0]} candidates")
    if candidates.shape[0] < 2:
        raise ValueError("invaspread: needs at least 2 instances in the (global) batch: with one there is no "
                         "negative")
    tau = float(temperature)
    if not 0 < tau < float("inf"):
        raise ValueError(f"invaspread: temperature must be a positive finite number, got {temperature!r}")
    return tau


def _no_autocast(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on ``x``'s device: under mixed precision the products would run in half precision."""
    try:
        return torch.autocast(device_type=x.device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        return contextlib.nullcontext()


def invaspread_terms(x: Tensor, x_hat: Tensor | Sequence[Tensor], temperature: float = 0.1, *,
                     candidates: Tensor | None = None, offset: int = 0) -> Tensor:
    """Per-anchor terms ``ℓ_g`` of [1]'s Eq. 6 for the rows of ``x`` / ``x_hat``.

    Args:
        x: ``[N, d]`` features ``f`` of the un-augmented view (normalised here).
        x_hat: ``[N, d]`` features ``f̂`` of the augmented view, row ``r`` the augmentation of row ``r`` of ``x``;
            or a list of several augmented views (multi-crop, jef's extension): the invariance term is then the
            mean of theirs. With one view, the paper's loss.
        temperature: ``τ > 0`` (0.1 in [1]).
        candidates: ``[M, d]`` features ``f_k`` of every instance of the global batch, ``x``'s rows among them at
            ``[offset, offset + N)``; None (one process) means ``x`` itself.
        offset: Row of ``x``'s first sample within ``candidates``.

    Returns:
        ``[N]`` float32 (float64 for float64 inputs) terms ``ℓ_g``; their sum over the global batch is ``J``.

    Raises:
        ValueError: On bad shapes, anchors outside the candidates, fewer than 2 instances or a bad ``τ``.
    """
    candidates = x if candidates is None else candidates
    augmented = [x_hat] if isinstance(x_hat, Tensor) else list(x_hat)
    if not augmented:
        raise ValueError("invaspread: x_hat is an empty list; give at least one augmented view")
    for view in augmented:
        tau = _check(x, view, candidates, int(offset), temperature)
    with _no_autocast(x):
        f, c = l2_normalize(x), l2_normalize(candidates)
        own = torch.arange(x.shape[0], device=x.device) + int(offset)  # each anchor's column g
        rows = torch.arange(x.shape[0], device=x.device)
        # Invariance: x̂_g classified among the m instances, the f_k as the classifier's weights (Eq. 2).
        invariance = 0
        for view in augmented:
            hat_logits = l2_normalize(view) @ c.T / tau
            invariance = invariance + torch.logsumexp(hat_logits, dim=1) - hat_logits[rows, own]
        invariance = invariance / len(augmented)
        # Spreading: log P(i | x_g) for every instance i (Eq. 3); the denominator keeps k = g.
        log_p = torch.log_softmax(f @ c.T / tau, dim=1)
        # The anchor's own column is no negative: -inf drops it (P(g | x_g) may round to 1, whose log(1 - P) would
        # be -inf in the forward pass and NaN in the backward one).
        own_column = torch.zeros_like(log_p, dtype=torch.bool)
        own_column[rows, own] = True
        log_p = log_p.masked_fill(own_column, float("-inf"))
        # P(i | x_g) <= 1/2 for i != g (the anchor's own exp(1/τ) is in the denominator): log1p stays finite.
        spreading = torch.log1p(-log_p.exp()).sum(dim=1)
        return invariance - spreading


def invaspread_loss(x: Tensor, x_hat: Tensor | Sequence[Tensor], temperature: float = 0.1, *,
                    candidates: Tensor | None = None, offset: int = 0, reduction: str = "mean") -> Tensor:
    """[1]'s loss: ``J / m`` (``"mean"`` over the anchors), ``J`` (``"sum"``, one process) or the ``[N]`` terms.

    See :func:`invaspread_terms` for the arguments. With ``candidates`` gathered over processes, ``"mean"``
    is the mean over this process's rows: the average over processes is the single-process ``J / m``.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"invaspread: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    terms = invaspread_terms(x, x_hat, temperature, candidates=candidates, offset=offset)
    if reduction == "mean":
        return terms.mean()
    return terms.sum() if reduction == "sum" else terms
