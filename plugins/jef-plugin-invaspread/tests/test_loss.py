"""The loss against the paper's formula (float64 loops), its scale, precision, gradients and errors."""

from __future__ import annotations

import math

import pytest
import torch

from jef_plugin_invaspread import invaspread_loss, invaspread_terms


def _inputs(seed: int, n: int = 6, d: int = 5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    return x, x + 0.5 * torch.randn(n, d, generator=g, dtype=dtype)  # x̂ near x, as an augmentation is


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("seed, n, temperature", [(0, 6, 0.1), (1, 4, 0.1), (2, 8, 0.5), (3, 2, 0.05)])
def test_float32_matches_the_paper_formula_and_its_gradients(reference, seed, n, temperature):
    ours, ref = _leaves(*_inputs(seed, n)), _leaves(*_inputs(seed, n))
    loss = invaspread_loss(*ours, temperature)
    expected = reference(*ref, temperature) / n  # the mean over anchors: J / m
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected.item()) <= 1e-6 * max(1.0, abs(expected.item()))
    loss.backward()
    expected.backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad.float(), rtol=1e-4, atol=1e-6)


def test_float64_matches_exactly_sums_to_j_and_passes_gradcheck(reference):
    x, x_hat = _inputs(4, 5, 3, dtype=torch.float64)
    j = reference(x, x_hat, 0.2)
    torch.testing.assert_close(invaspread_loss(x, x_hat, 0.2, reduction="sum"), j, rtol=1e-12, atol=1e-12)
    terms = invaspread_terms(x, x_hat, 0.2)
    assert terms.shape == (5,) and terms.dtype == torch.float64
    torch.testing.assert_close(terms.mean(), j / 5, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: invaspread_loss(a, b, 0.2), _leaves(x, x_hat))


def test_known_value_on_orthogonal_features():
    # x = x̂ = the unit basis: P(i|x̂_i) = e^{1/τ} / (e^{1/τ} + m - 1) and P(i|x_j) = 1 / (e^{1/τ} + m - 1).
    m, tau = 4, 0.1
    z = math.exp(1 / tau) + m - 1
    expected = -math.log(math.exp(1 / tau) / z) - (m - 1) * math.log(1 - 1 / z)
    eye = torch.eye(m, dtype=torch.float64)
    assert math.isclose(invaspread_loss(eye, eye, tau).item(), expected, rel_tol=1e-12)
    # float32: logsumexp(≈ 10) minus the positive's 10 keeps about 1e-6 absolute of the 1.4e-4 invariance term
    assert math.isclose(invaspread_loss(eye.float(), eye.float(), tau).item(), expected, abs_tol=1e-6)


def test_half_precision_and_autocast_give_float32():
    x, x_hat = _inputs(5)
    want = invaspread_loss(x, x_hat, 0.1)
    half = invaspread_loss(x.half(), x_hat.bfloat16(), 0.1)
    assert half.dtype == torch.float32 and math.isclose(half.item(), want.item(), rel_tol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = invaspread_loss(x, x_hat, 0.1)
    assert under.dtype == torch.float32
    assert math.isclose(under.item(), want.item(), rel_tol=1e-6)  # the products ran in float32


def test_gradients_reach_both_views():
    x, x_hat = _leaves(*_inputs(6))
    invaspread_loss(x, x_hat, 0.1).backward()
    for t in (x, x_hat):
        assert torch.isfinite(t.grad).all() and (t.grad.norm(dim=1) > 0).all()


def test_gradients_flow_through_the_negatives():
    """Detaching each anchor's negatives (or all candidates, as the official code) changes the gradient."""
    x0, h0 = _inputs(7)
    n = x0.shape[0]
    x, x_hat = _leaves(x0, h0)
    invaspread_loss(x, x_hat, 0.1).backward()
    full = x.grad.clone()
    # Anchor r keeps the gradient through its own row (the positive of x̂_r, and x_r itself), not the others.
    x, x_hat = _leaves(x0, h0)
    terms = [invaspread_terms(x[r:r + 1], x_hat[r:r + 1], 0.1, offset=r,
                              candidates=torch.cat([x[:r].detach(), x[r:r + 1], x[r + 1:].detach()]))
             for r in range(n)]
    loss = torch.cat(terms).mean()
    assert math.isclose(loss.item(), invaspread_loss(x0, h0, 0.1).item(), rel_tol=1e-6)  # same value
    loss.backward()
    assert not torch.allclose(x.grad, full, rtol=1e-3, atol=1e-5)
    # The official code's choice: every candidate detached.
    x, x_hat = _leaves(x0, h0)
    invaspread_loss(x, x_hat, 0.1, candidates=x.detach()).backward()
    assert not torch.allclose(x.grad, full, rtol=1e-3, atol=1e-5)


def test_collapsed_features_cost_more_than_spread_ones():
    eye, same = torch.eye(4), torch.ones(4, 4)
    assert invaspread_loss(same, same, 0.1) > invaspread_loss(eye, eye, 0.1)


@pytest.mark.parametrize("call, message", [
    (lambda: invaspread_loss(torch.randn(4), torch.randn(4)), "floating-point \\[N, d\\]"),
    (lambda: invaspread_loss(torch.randn(4, 3), torch.randn(5, 3)), "same shape"),
    (lambda: invaspread_loss(torch.randn(1, 3), torch.randn(1, 3)), "at least 2 instances"),
    (lambda: invaspread_loss(torch.randn(0, 3), torch.randn(0, 3)), "empty"),
    (lambda: invaspread_loss(torch.randn(4, 3), torch.randn(4, 3), 0.0), "temperature"),
    (lambda: invaspread_loss(torch.randn(4, 3), torch.randn(4, 3), reduction="max"), "reduction"),
    (lambda: invaspread_loss(torch.randn(4, 3), torch.randn(4, 3), candidates=torch.randn(6, 2)), "width"),
    (lambda: invaspread_loss(torch.randn(4, 3), torch.randn(4, 3), candidates=torch.randn(6, 3), offset=3),
     "outside"),
])
def test_bad_inputs_are_reported(call, message):
    with pytest.raises(ValueError, match=message):
        call()
