"""SIGReg, the prediction term and their sum against references written here from the paper, in float64.

LeJEPA (Balestriero & LeCun, 2025, arXiv:2511.08544): for each view, the embeddings are projected on M unit
directions and each projection's empirical characteristic function is compared with N(0, 1)'s,

    EP = N ∫_{-3}^{3} |φ̂(t) − exp(−t²/2)|² exp(−t²/2) dt,

the integral taken by the trapezoid rule on 33 evenly spaced nodes of [−3, 3] (17 on [0, 3], mirrored).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from jef.components import RunContext
from jef.functional.sigreg import (epps_pulley, epps_pulley_quadrature, lejepa_prediction, random_directions,
                                 sliced_epps_pulley)
from jef.testing import build_objective, check_functional, check_functional_under_gather
from jef.testing.contracts import step_outputs
from jef_plugin_lejepa import LeJEPAPrediction, SIGReg, SIGRegOptions, build_sigreg


def reference_ep(x: torch.Tensor, nodes: int = 33, t_max: float = 3.0) -> torch.Tensor:
    """EP of each column of ``x``, by the formula: the full symmetric grid, complex exponentials, torch.trapezoid."""
    x = x.double()
    t = torch.linspace(-t_max, t_max, nodes, dtype=torch.float64)
    ecf = torch.exp(1j * x.unsqueeze(-1) * t).mean(dim=0)  # [M, nodes]
    integrand = (ecf - torch.exp(-t**2 / 2)).abs().square() * torch.exp(-t**2 / 2)
    return x.shape[0] * torch.trapezoid(integrand, t, dim=-1)


def closed_form_ep(x: torch.Tensor) -> torch.Tensor:
    """EP over the whole real line, in closed form (∫ cos(at)·exp(−βt²/2) dt = √(2π/β)·exp(−a²/2β))."""
    x, n = x.double(), x.shape[0]
    pairs = torch.exp(-(x.unsqueeze(0) - x.unsqueeze(1)).square() / 2).sum(dim=(0, 1))
    return n * (math.sqrt(2 * math.pi) * pairs / n**2 - 2 * math.sqrt(math.pi) * torch.exp(-x.square() / 4).mean(0)
                + math.sqrt(2 * math.pi / 3))


SAMPLES = {  # [N, M] samples: near the null, too wide, uniform, shifted, collapsed to a point
    "gaussian": lambda g: torch.randn(256, 6, generator=g, dtype=torch.float64),
    "wide": lambda g: 2 * torch.randn(256, 6, generator=g, dtype=torch.float64),
    "uniform": lambda g: 3 * torch.rand(256, 6, generator=g, dtype=torch.float64) - 1.5,
    "shifted": lambda g: 0.5 * torch.randn(256, 6, generator=g, dtype=torch.float64) + 1.0,
    "point": lambda g: torch.full((256, 6), 0.3, dtype=torch.float64),
}


def samples(name: str) -> torch.Tensor:
    return SAMPLES[name](torch.Generator().manual_seed(0))


def test_the_quadrature_is_the_folded_trapezoid_rule_times_the_window():
    t, weights = epps_pulley_quadrature(dtype=torch.float64)
    want_t = torch.tensor([k * 3 / 16 for k in range(17)], dtype=torch.float64)
    panel = [0.5] + [1.0] * 15 + [0.5]  # trapezoid on [0, 3], doubled for [−3, 0]
    want_w = torch.tensor([2 * p * 3 / 16 * math.exp(-(k * 3 / 16) ** 2 / 2) for k, p in enumerate(panel)],
                          dtype=torch.float64)
    torch.testing.assert_close(t, want_t, rtol=0, atol=0)
    torch.testing.assert_close(weights, want_w, rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_the_statistic_equals_the_formula_in_float64(name):
    x = samples(name)
    torch.testing.assert_close(epps_pulley(x), reference_ep(x), rtol=1e-9, atol=0)
    # float32 inputs compute in float32: within its rounding of the same value.
    got = epps_pulley(x.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_ep(x.float()), rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_seventeen_nodes_approximate_the_dense_integral_and_the_dense_integral_is_the_closed_form(name):
    x = samples(name)
    dense = reference_ep(x, nodes=6001)
    # Measured: at most 2.4e-3 relative (the uniform sample's characteristic function oscillates fastest).
    torch.testing.assert_close(epps_pulley(x), dense, rtol=5e-3, atol=1e-6)
    # The reference itself: a dense trapezoid over [−12, 12] (exact to rounding for a Gaussian-damped integrand)
    # is the integral over the real line.
    torch.testing.assert_close(reference_ep(x, nodes=4801, t_max=12.0), closed_form_ep(x), rtol=1e-9, atol=0)


def test_sigreg_is_the_mean_over_directions_of_the_statistic_of_the_projections():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(64, 12, generator=gen, dtype=torch.float64)
    a = random_directions(12, 40, torch.Generator().manual_seed(2))
    assert a.shape == (12, 40) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=0), torch.ones(40), rtol=0, atol=1e-6)
    want = reference_ep(z @ a.double()).mean()
    torch.testing.assert_close(sliced_epps_pulley(z, a), want, rtol=1e-9, atol=0)


def reference_prediction(views: list[torch.Tensor], n_global: int) -> torch.Tensor:
    """(1/V) Σ_v (1/N) Σ_n (1/K) ‖μ_n − z_{n,v}‖², loops over samples, μ_n the mean of the global views."""
    n, k = views[0].shape
    total = 0.0
    for v in views:
        for i in range(n):
            centre = sum(g[i] for g in views[:n_global]) / n_global
            total += float(((centre - v[i]) ** 2).sum()) / k
    return torch.tensor(total / (len(views) * n), dtype=torch.float64)


@pytest.mark.parametrize("n_views,n_global", [(8, 2), (2, 2), (3, 1)])
def test_the_prediction_term_equals_the_formula(n_views, n_global):
    gen = torch.Generator().manual_seed(3)
    views = [torch.randn(10, 5, generator=gen, dtype=torch.float64) for _ in range(n_views)]
    torch.testing.assert_close(lejepa_prediction(views, n_global), reference_prediction(views, n_global),
                               rtol=1e-12, atol=0)


def outputs(n: int = 16, dim: int = 8, n_views: int = 4, n_global: int = 2, seed: int = 4, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, dim, generator=gen, dtype=dtype).requires_grad_() for _ in range(n_views)]
    return views, step_outputs({"h": views, "z": views}, n_global, torch.arange(n))


def test_the_functional_averages_sigreg_over_every_view_local_ones_included():
    views, out = outputs()
    module = SIGReg(num_slices=32, seed=7).double()
    a = module.directions(8).double()  # one set of directions for every view of a step
    want = torch.stack([reference_ep(z.detach() @ a).mean() for z in views]).mean()
    # The module keeps its quadrature weights in float32 (they move to any device): 1e-8 of float64's.
    got = module(out)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=0)
    # Its gradients are the reference's, which autograd takes through the complex exponentials.
    reference = torch.stack([reference_ep(z @ a).mean() for z in views]).mean()
    for g, w in zip(torch.autograd.grad(got, views), torch.autograd.grad(reference, views), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(LeJEPAPrediction()(out), reference_prediction([z.detach() for z in views], 2),
                               rtol=1e-12, atol=0)


def test_the_loss_is_one_minus_lambda_prediction_plus_lambda_sigreg(plugins):
    objective = build_objective(plugins, {"method": "lejepa"}, RunContext(seed=11)).double()
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(32, 16, generator=gen, dtype=torch.float64) for _ in range(8)]  # 2 global + 6 local
    loss, terms, _ = objective(step_outputs({"h": views, "z": views}, 2, None))
    sigreg = next(m for m in objective.functionals if isinstance(m, SIGReg))
    a = sigreg.directions(16).double()
    want_sigreg = torch.stack([reference_ep(z @ a).mean() for z in views]).mean()
    want_prediction = reference_prediction(views, 2)
    torch.testing.assert_close(terms["sigreg"], want_sigreg, rtol=1e-7, atol=0)
    torch.testing.assert_close(terms["lejepa_prediction"], want_prediction, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, 0.95 * want_prediction + 0.05 * want_sigreg, rtol=1e-7, atol=0)


def test_the_directions_are_alike_on_every_process_and_new_at_every_step():
    ctx = [RunContext(seed=5, world_size=2, rank=r) for r in (0, 1)]
    rank0, rank1 = (build_sigreg(SIGRegOptions(num_slices=16), c) for c in ctx)
    seen = []
    for _ in range(3):
        a = rank0.directions(8)
        assert torch.equal(a, rank1.directions(8))  # two ranks, one set of directions
        seen.append(a)
        rank0.jef_step_end(run=None, outputs=None, terms={})  # what the loop calls after each optimiser step
        rank1.jef_step_end(run=None, outputs=None, terms={})
    assert all(not torch.equal(seen[i], seen[j]) for i in range(3) for j in range(i))
    assert int(rank0.step) == 3
    other = build_sigreg(SIGRegOptions(num_slices=16), RunContext(seed=6))
    assert not torch.equal(other.directions(8), seen[0])  # another run seed, other directions
    # The counter is state: a module loaded from another's state draws where that one stands.
    restored = build_sigreg(SIGRegOptions(num_slices=16), ctx[0])
    restored.load_state_dict(rank0.state_dict())
    assert list(rank0.state_dict()) == ["step"]  # the nodes and weights come from the options
    assert torch.equal(restored.directions(8), rank0.directions(8))


def test_both_functionals_meet_the_functional_contract():
    check_functional(SIGReg(num_slices=16), name="sigreg", n_views=4)
    check_functional(LeJEPAPrediction(), name="lejepa_prediction", n_views=4)


def _sigreg() -> SIGReg:
    return SIGReg(num_slices=16, seed=3)


def test_two_processes_equal_one_on_the_global_batch():
    # Terms averaged over the processes and embedding gradients (each process's / 2, as DDP averages) equal one
    # process's on all 8 samples of 4 views.
    check_functional_under_gather(_sigreg, name="sigreg", n=8, dim=6, n_views=4, atol=1e-9)
    check_functional_under_gather(functools.partial(LeJEPAPrediction), name="lejepa_prediction", n=8, dim=6,
                                  n_views=4, atol=1e-9)


def test_half_precision_is_computed_in_float32():
    views, out = outputs(dtype=torch.float32)
    module = SIGReg(num_slices=16)
    want = module(out)
    half = step_outputs({"h": [v.detach().bfloat16() for v in views], "z": [v.detach().bfloat16() for v in views]}, 2,
                        None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module(half)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=3e-2)
