"""LeJEPA's objective: SIGReg, a sliced Epps–Pulley test of the embeddings against N(0, I), and its prediction term.

LeJEPA [1] learns with no teacher, no EMA, no stop-gradient and no predictor. Its loss over ``V`` views
(``V_g`` global ones first) of ``N`` images, embeddings ``z_{n,v} ∈ R^K``, is::

    L = (1 − λ) · L_pred + λ · (1/V) Σ_v SIGReg(Z_v)                       λ ∈ [0.02, 0.05]

**The prediction term** pulls every view (global and local) towards the centre of the image's global views::

    μ_n = (1/V_g) Σ_{g < V_g} z_{n,g}          L_pred = (1/V) Σ_v (1/N) Σ_n (1/K) ‖μ_n − z_{n,v}‖²

(:func:`lejepa_prediction`). The ``1/K`` is that of [1]'s listing and code (``(centres − z).square().mean()``
over views, samples and dimensions), which the published λ values go with. Gradients flow through ``μ_n`` too.

**SIGReg** (Sketched Isotropic Gaussian Regularization) tests each view's embeddings ``Z_v`` (``[N, K]``) for
being a sample of the isotropic Gaussian, along ``M`` directions ``a_m`` drawn uniformly on the unit sphere
(:func:`random_directions`). Each projection ``x_{n,m} = a_mᵀ z_n`` is compared with N(0, 1) by the Epps–Pulley
statistic [2] on its empirical characteristic function ``φ̂_m(t) = (1/N) Σ_n exp(i t x_{n,m})``::

    EP_m = N ∫ |φ̂_m(t) − φ(t)|² w(t) dt          φ(t) = exp(−t²/2) (N(0, 1)'s)     w(t) = exp(−t²/2)
    SIGReg(Z) = (1/M) Σ_m EP_m                                            (:func:`sliced_epps_pulley`)

With ``C_m(t)`` and ``S_m(t)`` the means of ``cos(t x)`` and ``sin(t x)``, ``|φ̂ − φ|² = (C − φ)² + S²`` is even
in ``t``. The integral runs over ``[−t_max, t_max]`` (``t_max = 3``: beyond it ``w < 0.012``) by the trapezoid rule
on ``2T − 1`` evenly spaced nodes, folded onto the ``T = 17`` nodes ``t_k = k·t_max/(T − 1)`` of ``[0, t_max]``:
weights ``Δ·(1, 2, …, 2, 1)·w(t_k)``, ``Δ = t_max/(T − 1)`` (:func:`epps_pulley_quadrature`), as [1]'s code.

Scale: ``N`` is the number of samples tested, the *global* batch over every process, as the statistic is
defined [2] and as [1] computes it. For Gaussian embeddings ``E|φ̂ − φ|² = (1 − φ²)/N``, so the statistic's
expectation, ``∫ (1 − φ²) w ≈ 1.05`` on ``[−3, 3]``, does not depend on the batch, while a departure from the
Gaussian costs in proportion to ``N``; the published λ values go with this scale.

Over several processes only the sums ``Σ_n cos(t x)``, ``Σ_n sin(t x)`` and the count need to be shared
(:func:`cf_sums`, then :func:`epps_pulley_from_sums`); the module using this file gathers them with
``jef.dist.gather`` so that gradients reach every process's samples. Every process must project on the same
directions: they are drawn from a generator seeded by :func:`sketch_seed` of the run's seed and a step counter.

Precision: computed in at least float32 with autocast off; float64 inputs stay float64.

References:
    [1] Balestriero, LeCun. LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics.
        2025. arXiv:2511.08544.
    [2] Epps, Pulley. A test for normality based on the empirical characteristic function. Biometrika 70(3),
        1983, 723–726.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from jef.functional._checks import check_embeddings, full_precision, upcast

__all__ = ["cf_sums", "epps_pulley", "epps_pulley_from_sums", "epps_pulley_quadrature", "lejepa_prediction",
           "random_directions", "sketch_seed", "sliced_epps_pulley"]

_MASK64 = (1 << 64) - 1


def epps_pulley_quadrature(t_max: float = 3.0, n_points: int = 17, *, dtype: torch.dtype = torch.float32,
                           device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the Epps–Pulley integral over ``[−t_max, t_max]``, folded onto ``t ≥ 0`` [1].

    Args:
        t_max: Half-width of the integration range (3 in [1]).
        n_points: ``T``, nodes on ``[0, t_max]`` including both ends (17 in [1]); at least 2.
        dtype: Dtype of the results.
        device: Device of the results.

    Returns:
        ``t`` (``[T]``, ``t_k = k·t_max/(T − 1)``) and ``weights`` (``[T]``): the trapezoid rule's
        ``Δ·(1, 2, …, 2, 1)`` times the window ``w(t_k) = exp(−t_k²/2)``.

    Raises:
        ValueError: ``t_max`` is not positive or ``n_points < 2``.
    """
    if not t_max > 0 or not math.isfinite(t_max):
        raise ValueError(f"epps_pulley_quadrature: t_max must be a positive number, got {t_max!r}")
    if int(n_points) != n_points or n_points < 2:
        raise ValueError(f"epps_pulley_quadrature: n_points must be an integer >= 2, got {n_points!r}")
    t = torch.linspace(0.0, t_max, int(n_points), dtype=torch.float64)
    delta = t_max / (n_points - 1)
    weights = torch.full_like(t, 2.0 * delta)
    weights[0] = weights[-1] = delta  # t = 0 is its own mirror; the ends of the range get half a panel
    weights = weights * torch.exp(-0.5 * t.square())
    return t.to(dtype=dtype, device=device), weights.to(dtype=dtype, device=device)


def cf_sums(x: Tensor, t: Tensor) -> Tensor:
    """``Σ_n cos(t_k x_{n,m})`` and ``Σ_n sin(t_k x_{n,m})``: the empirical characteristic function, unnormalised.

    Sums (not means), so that processes holding parts of a batch add theirs.

    Args:
        x: ``[N, M]`` projections (one column per direction).
        t: ``[T]`` nodes.

    Returns:
        ``[2, M, T]``: the cosine sums, then the sine sums (float32 for half-precision inputs).
    """
    check_embeddings("cf_sums", "x", x)
    with full_precision(x):
        x = upcast(x)
        xt = x.unsqueeze(-1) * t.to(x.dtype)  # [N, M, T]
        return torch.stack([xt.cos().sum(dim=0), xt.sin().sum(dim=0)])


def epps_pulley_from_sums(sums: Tensor, n: Tensor | float, t: Tensor, weights: Tensor) -> Tensor:
    """The Epps–Pulley statistic of each direction from :func:`cf_sums` of ``n`` samples (module docstring).

    Args:
        sums: ``[2, M, T]`` cosine and sine sums over the ``n`` samples.
        n: The number of samples summed (the global batch).
        t: ``[T]`` nodes; ``weights``: ``[T]`` quadrature weights (:func:`epps_pulley_quadrature`).

    Returns:
        ``[M]``: ``n · Σ_k weights_k · ((C_k − φ(t_k))² + S_k²)`` with ``C = sums[0]/n``, ``S = sums[1]/n``.
    """
    if sums.dim() != 3 or sums.shape[0] != 2 or sums.shape[-1] != t.shape[-1]:
        raise ValueError(f"epps_pulley_from_sums: sums must be [2, M, T={t.shape[-1]}] (cosine and sine sums), "
                         f"got shape {tuple(sums.shape)}")
    with full_precision(sums):
        sums = upcast(sums)
        t, weights = t.to(sums.dtype), weights.to(sums.dtype)
        cos_mean, sin_mean = sums[0] / n, sums[1] / n
        err = (cos_mean - torch.exp(-0.5 * t.square())).square() + sin_mean.square()  # [M, T]
        return n * (err @ weights)


def epps_pulley(x: Tensor, t_max: float = 3.0, n_points: int = 17) -> Tensor:
    """The Epps–Pulley statistic of each column of ``x`` against N(0, 1) [2], in one process.

    Args:
        x: ``[N, M]`` samples, one column per univariate test.
        t_max: Half-width of the integration range.
        n_points: Quadrature nodes on ``[0, t_max]``.

    Returns:
        ``[M]`` statistics (float32 for half-precision inputs).
    """
    check_embeddings("epps_pulley", "x", x)
    dtype = upcast(x).dtype
    t, weights = epps_pulley_quadrature(t_max, n_points, dtype=dtype, device=x.device)
    return epps_pulley_from_sums(cf_sums(x, t), x.shape[0], t, weights)


def sketch_seed(seed: int, step: int) -> int:
    """A 32-bit seed for step ``step`` of a run seeded ``seed``: the same on every process.

    torch's CPU generator keeps only the low 32 bits of a seed, so ``(seed, step)`` is mixed (splitmix64 of
    each, combined) rather than concatenated.
    """
    def mix(value: int) -> int:
        value = (value + 0x9E3779B97F4A7C15) & _MASK64
        value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
        return value ^ (value >> 31)

    return mix(mix(int(seed) & _MASK64) ^ (int(step) & _MASK64)) >> 32


def random_directions(dim: int, num_slices: int, generator: torch.Generator) -> Tensor:
    """``M`` directions uniform on the unit sphere of ``R^dim``: normalised Gaussian columns, ``[dim, M]`` float32.

    Drawn on the generator's device (use a CPU generator for the same directions on every device).
    """
    if dim < 1 or num_slices < 1:
        raise ValueError(f"random_directions: dim and num_slices must be >= 1, got {dim} and {num_slices}")
    a = torch.randn(dim, num_slices, generator=generator, dtype=torch.float32, device=generator.device)
    return a / a.norm(dim=0, keepdim=True)


def sliced_epps_pulley(z: Tensor, directions: Tensor, t_max: float = 3.0, n_points: int = 17) -> Tensor:
    """SIGReg of one view's embeddings in one process: the mean over directions of the Epps–Pulley statistic [1].

    Args:
        z: ``[N, K]`` embeddings.
        directions: ``[K, M]`` unit columns (:func:`random_directions`).
        t_max: Half-width of the integration range.
        n_points: Quadrature nodes on ``[0, t_max]``.

    Returns:
        Scalar (float32 for half-precision inputs).
    """
    check_embeddings("sliced_epps_pulley", "z", z)
    if directions.dim() != 2 or directions.shape[0] != z.shape[1]:
        raise ValueError(f"sliced_epps_pulley: directions must be [K={z.shape[1]}, M], got shape "
                         f"{tuple(directions.shape)}")
    with full_precision(z):
        z = upcast(z)
        return epps_pulley(z @ directions.to(z.dtype), t_max, n_points).mean()


def lejepa_prediction(views: Sequence[Tensor], n_global: int) -> Tensor:
    """LeJEPA's prediction term: every view towards the centre of the global views [1] (module docstring).

    Args:
        views: ``V`` tensors ``[N, K]``, the global views first.
        n_global: ``V_g``, the global views (``1 <= V_g <= V``).

    Returns:
        ``(1/V) Σ_v mean_{n,k} (μ_{n,k} − z_{n,v,k})²``, a scalar (float32 for half-precision inputs).
    """
    if not views:
        raise ValueError("lejepa_prediction: got no views")
    if not 1 <= n_global <= len(views):
        raise ValueError(f"lejepa_prediction: n_global must be between 1 and the {len(views)} views, got {n_global}")
    for v, z in enumerate(views):
        check_embeddings("lejepa_prediction", f"views[{v}]", z)
        if z.shape != views[0].shape:
            raise ValueError(f"lejepa_prediction: every view must be [N, K] like views[0] {tuple(views[0].shape)}, "
                             f"got views[{v}] {tuple(z.shape)}")
    with full_precision(views[0]):
        stacked = torch.stack([upcast(z) for z in views])  # [V, N, K]
        centre = stacked[:n_global].mean(dim=0)
        return (centre - stacked).square().mean()
