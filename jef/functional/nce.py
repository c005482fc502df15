"""Noise-contrastive estimation over a memory bank, and the bank's momentum update.

Instance discrimination [1] treats every training image as its own class and
stores one unit embedding per image in a memory bank ``V = {v_j}`` of ``n``
rows. The non-parametric softmax of feature ``v`` belonging to instance ``i``
is ``P(i|v) = exp(v_i·v/τ) / Z`` with ``Z = Σ_j exp(v_j·v/τ)``. Summing over
all ``n`` rows for every sample is what NCE [2] avoids: it compares the data
sample against ``m`` noise samples drawn uniformly (``P_n = 1/n``)::

    h(i, v) = P(i|v) / (P(i|v) + m·P_n)
    J       = −log h(i, v_i)  −  Σ_{j=1..m} log(1 − h(j, v_j'))

and ``Z`` is estimated by Monte Carlo from the noise samples,
``Z ≈ n · mean_j exp(v_j·v/τ)`` (:func:`nce_normaliser`).

The log-posteriors are computed with ``softplus`` in log space (never
``log(P / (P + m/n))`` directly), so that tiny ``P`` (large banks, small
``τ``) does not underflow to ``log 0``. Half-precision inputs are computed in
float32, with autocast disabled.

References:
    [1] Wu, Xiong, Yu, Lin. Unsupervised Feature Learning via Non-Parametric
        Instance Discrimination (InstDisc). CVPR 2018. arXiv:1805.01978.
    [2] Gutmann, Hyvärinen. Noise-contrastive estimation: A new estimation
        principle for unnormalized statistical models. AISTATS 2010.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from jef.functional._checks import (
    check_reduction,
    check_temperature,
    full_precision,
    indices_out_of_range,
    normalize,
    reduce,
    upcast,
)

__all__ = ["full_softmax_loss", "momentum_update", "nce_loss", "nce_normaliser", "nce_posterior"]


def _check_similarities(fn: str, similarities: Tensor, noise_similarities: Tensor) -> None:
    """Require ``similarities [N]`` and ``noise_similarities [N, m]`` floating tensors."""
    for name, x, dims in (("similarities", similarities, 1), ("noise_similarities", noise_similarities, 2)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{fn}: {name} must be a floating-point torch.Tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != dims:
            raise ValueError(f"{fn}: {name} must be {dims}-D ({'[N]' if dims == 1 else '[N, m]'}), "
                             f"got shape {tuple(x.shape)}")
    if noise_similarities.shape[0] != similarities.shape[0] or noise_similarities.shape[1] == 0:
        raise ValueError(f"{fn}: noise_similarities must be [N, m] with m >= 1 noise samples for each of the "
                         f"N={similarities.shape[0]} data samples, got shape {tuple(noise_similarities.shape)}")


def _log_noise_mass(fn: str, bank_size: int, noise_samples: int) -> float:
    """``log(m · P_n) = log(m / n)``, the noise's share in NCE's two-class posterior."""
    if int(bank_size) < 1 or int(noise_samples) < 1:
        raise ValueError(f"{fn}: bank_size and noise_samples must be >= 1, got {bank_size} and {noise_samples}")
    return math.log(int(noise_samples) / int(bank_size))


def nce_normaliser(noise_similarities: Tensor, temperature: float, bank_size: int) -> Tensor:
    """Monte-Carlo estimate of the softmax normaliser ``Z ≈ n · mean exp(v_j·v/τ)`` [1].

    Args:
        noise_similarities: ``[N, m]`` similarities ``v_j·v`` of the features
            with uniformly drawn bank rows.
        temperature: ``τ > 0``.
        bank_size: ``n``, the number of bank rows (training images).

    Returns:
        A detached scalar (``Z`` is treated as a constant, as in [1]'s code).
    """
    tau = check_temperature("nce_normaliser", temperature)
    if noise_similarities.dim() != 2 or noise_similarities.numel() == 0:
        raise ValueError(f"nce_normaliser: noise_similarities must be a non-empty [N, m] tensor, got shape "
                         f"{tuple(noise_similarities.shape)}")
    with torch.no_grad(), full_precision(noise_similarities):
        return torch.exp(upcast(noise_similarities) / tau).mean() * int(bank_size)


def nce_posterior(similarities: Tensor, noise_similarities: Tensor, temperature: float, normaliser: Tensor | float,
                  bank_size: int, noise_samples: int | None = None, *, log: bool = False) -> tuple[Tensor, Tensor]:
    """NCE's posterior ``h(i, v) = P(i|v) / (P(i|v) + m·P_n)`` that a pair came from the data [1, 2].

    Args:
        similarities: ``[N]`` similarities ``v_i·v`` of each feature with its
            own bank row (the data sample).
        noise_similarities: ``[N, m]`` similarities with the noise rows.
        temperature: ``τ > 0``.
        normaliser: ``Z`` of ``P(i|v) = exp(v_i·v/τ) / Z`` (scalar).
        bank_size: ``n``; the noise distribution is uniform, ``P_n = 1/n``.
        noise_samples: ``m`` in ``m·P_n``; default: the number of noise columns.
        log: Return ``log h`` and ``log(1 − h)`` instead (stable; what the loss uses).

    Returns:
        ``(h_data [N], h_noise [N, m])``: ``h`` of the data pairs and of the
        noise pairs (or, with ``log=True``, ``log h_data`` and ``log(1 − h_noise)``).
    """
    fn = "nce_posterior"
    _check_similarities(fn, similarities, noise_similarities)
    tau = check_temperature(fn, temperature)
    log_noise = _log_noise_mass(fn, bank_size, noise_similarities.shape[1] if noise_samples is None else noise_samples)
    if not isinstance(normaliser, Tensor) and not float(normaliser) > 0:  # a tensor is not read: no device sync
        raise ValueError(f"{fn}: the normaliser Z must be > 0, got {normaliser!r}")
    with full_precision(similarities):
        dtype = upcast(similarities).dtype
        log_z = torch.log(torch.as_tensor(normaliser, dtype=dtype, device=similarities.device).detach())
        # log P(i|v) − log(m P_n); h = sigmoid of it, 1 − h = sigmoid of its negation.
        data = upcast(similarities) / tau - log_z - log_noise
        noise = upcast(noise_similarities) / tau - log_z - log_noise
        if log:
            return -F.softplus(-data), -F.softplus(noise)
        return torch.sigmoid(data), torch.sigmoid(noise)


def nce_loss(similarities: Tensor, noise_similarities: Tensor, temperature: float, normaliser: Tensor | float,
             bank_size: int, noise_samples: int | None = None, reduction: str = "mean") -> Tensor:
    """NCE objective ``J = −log h(i, v_i) − Σ_{j=1..m} log(1 − h(j, v_j'))`` per sample [1, 2].

    The expectation over noise in [1]'s eq. (5), ``m·E[log(1 − h)]``, is
    estimated by the sum over the ``m`` drawn noise samples.

    Args:
        similarities: ``[N]`` data similarities (feature with its own bank row).
        noise_similarities: ``[N, m]`` similarities with uniformly drawn bank rows.
        temperature: ``τ > 0``.
        normaliser: ``Z`` (see :func:`nce_normaliser`).
        bank_size: ``n``, the number of bank rows.
        noise_samples: ``m`` in ``m·P_n``; default: the number of noise columns.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the ``N`` samples.

    Returns:
        The loss (``[N]`` with ``reduction="none"``).
    """
    check_reduction("nce_loss", reduction)
    log_data, log_not_noise = nce_posterior(similarities, noise_similarities, temperature, normaliser, bank_size,
                                            noise_samples, log=True)
    return reduce(-log_data - log_not_noise.sum(dim=1), reduction)


def full_softmax_loss(features: Tensor, bank: Tensor, indices: Tensor, temperature: float,
                      reduction: str = "mean") -> Tensor:
    """Cross-entropy of the non-parametric softmax over the whole bank [1, eq. (2)].

    ``−log exp(v_i·v/τ) / Σ_j exp(v_j·v/τ)`` with every ``n`` row as a class;
    features and bank rows are ℓ2-normalised first (cosine similarities).

    Args:
        features: ``[N, d]`` features ``v`` (gradients flow through them).
        bank: ``[n, d]`` memory bank (treated as constants).
        indices: ``[N]`` integer bank row of each feature's own instance.
        temperature: ``τ > 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The loss (``[N]`` with ``reduction="none"``).
    """
    fn = "full_softmax_loss"
    tau = check_temperature(fn, temperature)
    check_reduction(fn, reduction)
    _check_bank(fn, bank, indices, features)
    with full_precision(features):
        logits = normalize(features) @ normalize(bank.detach()).T / tau
        return F.cross_entropy(logits, indices.to(logits.device).long(), reduction=reduction)


def _check_bank(fn: str, bank: Tensor, indices: Tensor, features: Tensor) -> None:
    """Require ``bank [n, d]``, integer ``indices [N]`` in ``[0, n)`` and ``features [N, d]``."""
    if bank.dim() != 2 or not bank.is_floating_point():
        raise ValueError(f"{fn}: bank must be a floating [n, d] tensor, got {bank.dtype} of shape {tuple(bank.shape)}")
    if not isinstance(indices, Tensor) or indices.dim() != 1 or indices.is_floating_point():
        raise ValueError(f"{fn}: indices must be a 1-D integer tensor [N] of bank rows, got "
                         f"{getattr(indices, 'dtype', type(indices).__name__)} of shape "
                         f"{tuple(getattr(indices, 'shape', ()))}")
    if features.dim() != 2 or features.shape != (indices.shape[0], bank.shape[1]):
        raise ValueError(f"{fn}: features must be [N, d] = [{indices.shape[0]}, {bank.shape[1]}] (one row per "
                         f"index, the bank's width), got shape {tuple(features.shape)}")
    bad = indices_out_of_range(indices, bank.shape[0])
    if bad is not None:
        raise ValueError(f"{fn}: indices must lie in [0, {bank.shape[0]}) (the bank's rows), got values in "
                         f"[{bad[0]}, {bad[1]}]")


@torch.no_grad()
def momentum_update(bank: Tensor, indices: Tensor, features: Tensor, momentum: float) -> Tensor:
    """In place ``v_i ← normalise(momentum·v_i + (1 − momentum)·f_i)`` for each ``i`` in ``indices`` [1, §3.3].

    ``features`` are ℓ2-normalised first (the bank stores unit vectors). Rows
    not in ``indices`` are untouched. When an index occurs more than once,
    the last occurrence wins, deterministically (a scatter with duplicates
    would leave the order to the backend).

    Args:
        bank: ``[n, d]`` memory bank, updated in place.
        indices: ``[N]`` integer rows to update.
        features: ``[N, d]`` new features of those rows (detached here).
        momentum: In ``[0, 1]``; 0 replaces the rows, 1 keeps them.

    Returns:
        ``bank``.
    """
    fn = "momentum_update"
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"{fn}: momentum must be in [0, 1], got {momentum!r}")
    _check_bank(fn, bank, indices, features)
    indices = indices.to(bank.device).long()
    features = normalize(features.detach().to(bank.device))
    mixed = momentum * bank[indices].to(features.dtype) + (1.0 - momentum) * features
    rows = normalize(mixed).to(bank.dtype)
    # Every occurrence of a row writes the last occurrence's value, so the order of a scatter with duplicates no
    # longer matters. Runs of equal indices are found by sorting, not torch.unique: its output size would make the
    # host wait for a GPU, and a bank-sized table would cost a pass over n entries per step.
    ordered, position = torch.sort(indices, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    run = starts.cumsum(0) - 1
    last = torch.full_like(position, -1).scatter_reduce(0, run, position, reduce="amax")
    bank.index_copy_(0, ordered, rows[last[run]])
    return bank
