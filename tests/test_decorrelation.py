"""Decorrelation losses (VICReg, Barlow Twins): formulas, global batch over processes, precision, contracts."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jef.builtin.decorrelation import Covariance, CrossCorrelation, Variance
from jef.components import Branch, RunContext, StepOutputs
from jef.functional import (
    barlow_twins_loss,
    covariance_penalty,
    cross_correlation,
    cross_correlation_loss,
    off_diagonal,
    variance_hinge,
)
from jef.model.joint import Objective
from jef.plugins import load_plugins
from jef.testing import build_component, check_functional, check_functional_under_gather


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def shared(*views: torch.Tensor, n_global: int = 2) -> StepOutputs:
    branch = Branch(h=list(views), z=list(views))
    return StepOutputs(online=branch, target=Branch(h=branch.h[:n_global], z=branch.z[:n_global]), n_global=n_global)


# -- independent references, float64, written element by element ----------------------------


def variance_ref(z: np.ndarray, gamma: float = 1.0, eps: float = 1e-4) -> float:
    n, d = z.shape
    total = 0.0
    for j in range(d):
        mean = sum(z[:, j]) / n
        var = sum((z[i, j] - mean) ** 2 for i in range(n)) / (n - 1)  # Bessel, as torch.var in [1]
        total += max(0.0, gamma - (var + eps) ** 0.5)
    return total / d


def covariance_ref(z: np.ndarray) -> float:
    n, d = z.shape
    cov = np.cov(z, rowvar=False)  # N - 1 denominator
    return sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d


def barlow_ref(z1: np.ndarray, z2: np.ndarray, lambd: float, eps: float = 1e-5) -> float:
    n, d = z1.shape

    def standardise(z: np.ndarray) -> np.ndarray:
        return (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0) + eps)  # numpy's var is the biased one

    a, b = standardise(z1), standardise(z2)
    c = [[sum(a[k, i] * b[k, j] for k in range(n)) / n for j in range(d)] for i in range(d)]
    return sum((1 - c[i][i]) ** 2 for i in range(d)) + lambd * sum(
        c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)


def test_off_diagonal_lists_every_entry_but_the_diagonal():
    m = torch.arange(16.0).view(4, 4)
    want = [float(m[i, j]) for i in range(4) for j in range(4) if i != j]
    assert off_diagonal(m).tolist() == want
    with pytest.raises(ValueError, match="square"):
        off_diagonal(torch.zeros(2, 3))


@pytest.mark.parametrize("gamma", [1.0, 2.5])
def test_variance_hinge_matches_the_formula(gamma):
    z = randn(10, 6) * torch.linspace(0.2, 3.0, 6)  # some dimensions under γ, some over
    assert float(variance_hinge(z.double(), gamma)) == pytest.approx(variance_ref(z.double().numpy(), gamma), rel=1e-10)


def test_covariance_penalty_matches_the_formula():
    z = randn(12, 5).double()
    z[:, 1] += 0.7 * z[:, 0]  # correlated dimensions
    assert float(covariance_penalty(z)) == pytest.approx(covariance_ref(z.numpy()), rel=1e-10)


def test_cross_correlation_is_batchnorm_standardised_product():
    z1, z2 = randn(9, 4, seed=1).double() * 3 + 1, randn(9, 4, seed=2).double()
    bn = nn.BatchNorm1d(4, affine=False).double().train()  # the official code's standardisation
    want = bn(z1).T @ bn(z2) / 9
    torch.testing.assert_close(cross_correlation(z1, z2), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_cross_correlation_loss_matches_the_official_formulation(lambd):
    z1, z2 = randn(8, 5, seed=3).double(), randn(8, 5, seed=4).double()
    got = cross_correlation_loss(cross_correlation(z1, z2), lambd)
    assert float(got) == pytest.approx(barlow_ref(z1.numpy(), z2.numpy(), lambd), rel=1e-10)


def test_barlow_twins_loss_is_the_old_name_of_cross_correlation_loss():
    import jef.functional

    assert barlow_twins_loss is cross_correlation_loss
    assert {"barlow_twins_loss", "cross_correlation_loss"} <= set(jef.functional.__all__)
    with pytest.raises(ValueError, match=r"cross_correlation_loss: c must be a square \[d, d\] matrix"):
        barlow_twins_loss(torch.zeros(2, 3))


def test_readable_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        variance_hinge(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        cross_correlation(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="2 global views"):
        CrossCorrelation()(shared(randn(4, 3), n_global=1))


# -- the objectives of the two methods ------------------------------------------------------


def vicreg_official(x: torch.Tensor, y: torch.Tensor) -> float:
    """VICReg's loss as the official code computes it (λ=μ=25, ν=1): variance averaged, covariance summed."""
    x, y = x.double().numpy(), y.double().numpy()
    invariance = ((x - y) ** 2).mean()
    std = (variance_ref(x) + variance_ref(y)) / 2
    cov = covariance_ref(x) + covariance_ref(y)
    return 25 * invariance + 25 * std + 1 * cov


def test_vicreg_objective_equals_the_official_loss(plugins):
    ctx = RunContext()
    mse = build_component(plugins, "energy", "mse", ctx=ctx)
    objective = Objective(("mse", mse, 25.0), [("variance", Variance(), 25.0), ("covariance", Covariance(), 2.0)])
    x, y = randn(16, 8, seed=5) * 0.5, randn(16, 8, seed=6)
    loss, terms, _ = objective(shared(x, y))
    # jef's energy averages D over the ordered pairs (0, 1) and (1, 0): both are F.mse_loss.
    assert float(terms["energy/mse"]) == pytest.approx(float(F.mse_loss(x, y)), rel=1e-6)
    assert float(loss) == pytest.approx(vicreg_official(x, y), rel=1e-5)


def test_barlow_twins_objective_equals_the_official_loss():
    objective = Objective(None, [("cross_correlation", CrossCorrelation(0.0051), 1.0)])
    z1, z2 = randn(16, 6, seed=7), randn(16, 6, seed=8)
    loss, _, _ = objective(shared(z1, z2))
    assert float(loss) == pytest.approx(barlow_ref(z1.double().numpy(), z2.double().numpy(), 0.0051), rel=1e-5)


# -- global batch: two processes equal one ---------------------------------------------------


@pytest.mark.parametrize("factory", [functools.partial(Variance, gamma=1.0), Covariance,
                                     functools.partial(CrossCorrelation, lambd=0.1)],
                         ids=["variance", "covariance", "cross_correlation"])
def test_two_processes_equal_one_on_the_global_batch(factory):
    check_functional_under_gather(factory, name=getattr(factory, "func", factory).__name__, n=8, dim=6)


# -- precision --------------------------------------------------------------------------------


@pytest.mark.parametrize("functional", [Variance(), Covariance(), CrossCorrelation()], ids=lambda f: type(f).__name__)
def test_bf16_autocast_gives_finite_float32_losses(functional):
    layer = nn.Linear(8, 8)
    x1, x2 = randn(16, 8, seed=9), randn(16, 8, seed=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = layer(x1), layer(x2)
        assert z1.dtype == torch.bfloat16
        loss = functional(shared(z1, z2))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_fp16_near_constant_dimensions_stay_finite():
    # Variance ~1e-8 in a dimension: in float16 `var + 1e-4` and 1/sqrt(var + eps) lose everything.
    z = (torch.ones(32, 4) + 1e-4 * randn(32, 4, seed=11)).half().requires_grad_()
    z2 = (torch.ones(32, 4) - 1e-4 * randn(32, 4, seed=12)).half().requires_grad_()
    values = [variance_hinge(z), covariance_penalty(z), cross_correlation_loss(cross_correlation(z, z2))]
    for value in values:
        assert value.dtype == torch.float32 and torch.isfinite(value)
    sum(values).backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(z2.grad).all()
    assert float(values[0].detach()) == pytest.approx(1 - 1e-2, abs=1e-3)  # std ≈ sqrt(eps): the hinge is ~γ - 0.01


# -- registered components pass the functional contract --------------------------------------


@pytest.mark.parametrize(("name", "options", "n_views"), [
    ("variance", {}, 2), ("variance", {"gamma": 2.0, "eps": 0.0}, 3), ("covariance", {}, 2), ("covariance", {}, 3),
    ("cross_correlation", {}, 2), ("cross_correlation", {"lambd": 0.1}, 3),
])
def test_registered_functionals_pass_the_contract(plugins, name, options, n_views):
    functional = build_component(plugins, "functional", name, options)
    check_functional(functional, name=name, n_views=n_views, n_global=2)
