"""jef.functional.sinkhorn_knopp: SwAV's codes against the paper's algorithm, its constraints, half precision,
several processes and argument errors (Caron et al., SwAV, NeurIPS 2020, arXiv:2006.09882)."""

from __future__ import annotations

import math

import pytest
import torch

import jef.dist
from jef.functional import sinkhorn_knopp
from jef.testing import run_in_processes


def reference_codes(scores, epsilon, iterations):
    """The paper's plain algorithm in float64 Python: Q = exp(S/ε)ᵀ scaled to sum 1, then alternately rows
    (prototypes) to 1/K and columns (samples) to 1/B; the codes are B·Qᵀ. No stabilisation, lists only."""
    s = scores.double().tolist()
    n, k = len(s), len(s[0])
    q = [[math.exp(s[i][j] / epsilon) for i in range(n)] for j in range(k)]  # [K][B]
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        q = [[x / sum(row) / k for x in row] for row in q]
        columns = [sum(q[j][i] for j in range(k)) for i in range(n)]
        q = [[q[j][i] / columns[i] / n for i in range(n)] for j in range(k)]
    return torch.tensor([[n * q[j][i] for j in range(k)] for i in range(n)], dtype=torch.float64)


def cosine_scores(n, k, seed=0, dtype=torch.float32):
    """Scores as SwAV makes them: cosines of random embeddings with random unit prototypes."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, 16, generator=g, dtype=torch.float64), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 16, generator=g, dtype=torch.float64), dim=1)
    return (z @ c.T).to(dtype)


def test_each_sample_s_code_sums_to_one():
    codes = sinkhorn_knopp(cosine_scores(12, 5))
    assert codes.shape == (12, 5) and codes.dtype == torch.float32
    assert (codes >= 0).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(12), rtol=0, atol=1e-6)


def test_prototypes_share_the_batch_equally():
    scores = cosine_scores(24, 6)
    # With enough rounds the column constraint holds too: each prototype gets B/K of the mass.
    torch.testing.assert_close(sinkhorn_knopp(scores, iterations=200).sum(dim=0), torch.full((6,), 4.0),
                               rtol=0, atol=1e-4)
    # SwAV's 3 rounds already spread the batch far more evenly than a softmax of the same scores.
    three = sinkhorn_knopp(scores).sum(dim=0)
    softmax = torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    assert (three - 4).abs().max() < 0.5 * (softmax - 4).abs().max()


@pytest.mark.parametrize("epsilon,iterations", [(0.05, 3), (0.5, 1), (0.1, 10)])
def test_equals_the_papers_algorithm(epsilon, iterations):
    scores = cosine_scores(7, 4, seed=3, dtype=torch.float64)
    codes = sinkhorn_knopp(scores, epsilon=epsilon, iterations=iterations)
    assert codes.dtype == torch.float64
    torch.testing.assert_close(codes, reference_codes(scores, epsilon, iterations), rtol=1e-10, atol=1e-12)


def test_a_constant_added_to_every_score_changes_nothing():
    scores = cosine_scores(8, 5, dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(scores + 40.0), sinkhorn_knopp(scores), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_scores_give_float32_codes_of_the_upcast_scores(dtype):
    scores = cosine_scores(16, 8, dtype=dtype)
    codes = sinkhorn_knopp(scores)
    assert codes.dtype == torch.float32 and torch.isfinite(codes).all()
    torch.testing.assert_close(codes, sinkhorn_knopp(scores.float()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scores_whose_exponential_overflows_stay_finite(dtype):
    # exp(30 / 0.05) overflows every float type; in float16 even exp(1 / 0.05) = 4.9e8 does.
    scores = (30.0 + cosine_scores(16, 8)).to(dtype)
    codes = sinkhorn_knopp(scores)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(16), rtol=0, atol=1e-5)
    torch.testing.assert_close(codes, sinkhorn_knopp(scores.float() - 30.0), rtol=1e-5, atol=1e-6)


def test_a_prototype_no_sample_reaches_gets_nothing_and_no_nan():
    scores = cosine_scores(8, 4)
    scores[:, 0] = -1e4  # exp underflows to 0 for the whole prototype: 0/0 without the floor
    codes = sinkhorn_knopp(scores)
    assert torch.isfinite(codes).all() and float(codes[:, 0].abs().max()) == 0.0
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(8), rtol=0, atol=1e-6)


def test_no_gradient_flows_through_the_codes():
    scores = cosine_scores(6, 3).requires_grad_()
    assert not sinkhorn_knopp(scores).requires_grad


# -- several processes -----------------------------------------------------------------------------


def global_scores():
    """20 samples; the second half scores higher, so the halves' maxima differ (by a factor exp(0.5/ε) = e^10 after
    the exponential): a per-process maximum subtracted before exp would not cancel."""
    scores = cosine_scores(20, 6, seed=7)
    scores[10:] += 0.5
    return scores


def _halves_job(rank: int) -> torch.Tensor:
    local = global_scores()[rank * 10:(rank + 1) * 10]
    return sinkhorn_knopp(local, reduce_sum=jef.dist.all_reduce_sum, reduce_max=jef.dist.all_reduce_max)


def test_two_processes_holding_halves_get_the_codes_of_one_on_the_global_batch():
    codes = torch.cat(run_in_processes(_halves_job))
    torch.testing.assert_close(codes, sinkhorn_knopp(global_scores()), rtol=1e-5, atol=1e-7)


# -- argument errors -------------------------------------------------------------------------------


def test_argument_errors_name_the_function_and_the_problem():
    scores = cosine_scores(4, 3)
    with pytest.raises(ValueError, match=r"sinkhorn_knopp: scores must be a 2-D \[N, d\] tensor, got shape \(4,\)"):
        sinkhorn_knopp(scores[:, 0])
    with pytest.raises(TypeError, match="sinkhorn_knopp: scores must be a floating-point tensor, got torch.int64"):
        sinkhorn_knopp(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="sinkhorn_knopp: scores must be a torch.Tensor, got list"):
        sinkhorn_knopp([[0.1, 0.2]])
    with pytest.raises(ValueError, match=r"sinkhorn_knopp: epsilon must be > 0, got 0.0"):
        sinkhorn_knopp(scores, epsilon=0.0)
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match=rf"sinkhorn_knopp: iterations must be an integer >= 1, got {bad}"):
            sinkhorn_knopp(scores, iterations=bad)
