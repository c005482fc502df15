"""The ``cpc`` functional: InfoNCE over offsets against a float64 reference with loops, and causal contexts."""

from __future__ import annotations

import math

import pytest
import torch
from jef_plugin_cpc.loss import CPC, CPCOptions, cpc_info_nce, patch_grid_of

from jef.components import Branch, RunContext, StepOutputs
from jef.testing import build_component

B, G, D, H = 3, 4, 5, 6


def _reference(z: torch.Tensor, context: torch.Tensor, maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """L_k with explicit loops: for every (n, i, j) with i + k < G, -log softmax of ẑ·z_l over all patches l."""
    b, g = z.shape[:2]
    # Every patch of the batch, the positive among them, listed one by one.
    everything = torch.stack([z[m, r, c] for m in range(b) for r in range(g) for c in range(g)])
    losses = []
    for w in maps:
        k = len(losses) + 1
        total, count = z.new_zeros(()), 0
        for n in range(b):
            for i in range(g - k):
                for j in range(g):
                    prediction = w @ context[n, i, j]  # ẑ_{i+k, j} = W_k c_{i, j}
                    scores = everything @ prediction
                    positive = prediction @ z[n, i + k, j]
                    total = total - (positive - torch.logsumexp(scores, 0))
                    count += 1
        losses.append(total / count)
    return losses


def _inputs(seed: int = 0, k: int = 2):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(B, G, G, D, generator=gen, dtype=torch.float64).requires_grad_()
    context = torch.randn(B, G, G, H, generator=gen, dtype=torch.float64).requires_grad_()
    maps = [torch.randn(D, H, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(k)]
    return z, context, maps


@pytest.mark.parametrize("k", [1, 2, 3])
def test_info_nce_over_offsets_equals_the_reference_with_its_gradients(k):
    z, context, maps = _inputs(k, k)
    got = cpc_info_nce(z, context, [lambda x, w=w: x @ w.T for w in maps])
    want = _reference(z, context, maps)
    assert len(got) == k
    for g_k, w_k in zip(got, want, strict=True):
        torch.testing.assert_close(g_k, w_k, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(sum(got), [z, context, *maps])
    for got_grad, want_grad in zip(grads, torch.autograd.grad(sum(want), [z, context, *maps]), strict=True):
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)


def test_known_value_of_orthogonal_embeddings():
    # One image, a 2×2 grid, z = e_0..e_3, the prediction of (1, j) is s·z_{1,j}: softmax of s against three zeros.
    s = 3.0
    z = torch.eye(4, dtype=torch.float64).view(1, 2, 2, 4)
    context = z.roll(-1, dims=1)  # c_{0,j} = z_{1,j}
    (loss,) = cpc_info_nce(z, context, [lambda x: s * x])
    assert math.isclose(loss.item(), -math.log(math.exp(s) / (math.exp(s) + 3)), rel_tol=1e-12)


def _outputs(z: torch.Tensor) -> StepOutputs:
    views = list(z.flatten(1, 2).unbind(1))  # row-major: view r·G + c is patch (r, c)
    branch = Branch(h=views, z=views)
    return StepOutputs(online=branch, target=branch, n_global=len(views),
                       facts={"grid": torch.full((z.shape[0], 2), z.shape[1])})


@pytest.mark.parametrize("context", ["masked_conv", "gru"])
def test_the_functional_scores_its_own_context_and_maps(context):
    torch.manual_seed(0)
    cpc = CPC(CPCOptions(context=context, offsets=2, hidden=H), D, G).double()
    z = _inputs()[0]
    terms = cpc(_outputs(z))
    assert list(terms) == ["k1", "k2"]
    want = _reference(z, cpc.context(z), [w.weight for w in cpc.predictors])
    for key, value in zip(terms, want, strict=True):
        torch.testing.assert_close(terms[key], value, rtol=1e-10, atol=1e-10)
    sum(terms.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cpc.parameters())


@pytest.mark.parametrize("options", [CPCOptions(context="masked_conv", depth=3, layer_norm=True),
                                     CPCOptions(context="masked_conv", depth=1, kernel=2, layer_norm=False),
                                     CPCOptions(context="gru", layer_norm=True)])
def test_the_context_of_row_i_depends_only_on_rows_up_to_i(options):
    torch.manual_seed(1)
    g = 6
    network = CPC(options, D, g).double().context
    z = torch.randn(2, g, g, D, dtype=torch.float64)
    c = network(z)
    for row in range(g):
        below = z.clone()
        below[:, row + 1:] += torch.randn_like(below[:, row + 1:])  # perturb every row below `row`
        changed = network(below)
        torch.testing.assert_close(changed[:, :row + 1], c[:, :row + 1], rtol=0, atol=1e-12,
                                   msg=lambda m, r=row: f"the context of rows <= {r} read a row below: {m}")
        if row + 1 < g:
            assert not torch.allclose(changed[:, row + 1:], c[:, row + 1:])
        here = z.clone()
        here[:, row] += torch.randn_like(here[:, row])  # the row itself is part of its context
        assert not torch.allclose(network(here)[:, row], c[:, row])


def test_clear_errors(plugins):
    z = _inputs()[0].detach()
    with pytest.raises(ValueError, match="offsets 1..3, got K = 4"):
        cpc_info_nce(z, z, [lambda x: x] * 4)
    with pytest.raises(ValueError, match="offsets 4 needs a grid of more than 4 rows"):
        CPC(CPCOptions(offsets=4), D, 4)
    with pytest.raises(ValueError, match="not a square of at least 2×2"):
        patch_grid_of(StepOutputs(
            online=Branch(h=[z[:, 0, 0]] * 5, z=[z[:, 0, 0]] * 5), target=Branch(h=[], z=[]), n_global=5))
    with pytest.raises(ValueError, match="makes 5 views, not the G²"):
        build_component(plugins, "functional", "cpc", {}, RunContext(n_views=5, online_dim=8))
    bare = build_component(plugins, "functional", "cpc", {}, RunContext(n_views=2, in_dim=8))  # outside a pipeline
    assert bare.grid is None and bare.dim == 8 and bare.needs_patch_grid
    with pytest.raises(ValueError, match="got 3 views, which is not a square"):
        bare(StepOutputs(online=Branch(h=[z[:, 0, 0]] * 3, z=[z[:, 0, 0]] * 3), target=Branch(h=[], z=[]),
                         n_global=3))
    with pytest.raises(ValueError, match="context"):
        CPCOptions(context="lstm")
    built = build_component(plugins, "functional", "cpc", {"context": "gru", "offsets": 3},
                            RunContext(n_views=16, online_dim=8))
    assert (built.grid, built.dim, len(built.predictors)) == (4, 8, 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_embeddings_give_a_float32_loss(dtype):
    torch.manual_seed(0)
    cpc = CPC(CPCOptions(offsets=2, hidden=H), D, G)
    z = _inputs()[0].detach().to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = cpc(_outputs(z))
    full = cpc(_outputs(z.float()))  # the same values in float32
    for key in full:
        assert half[key].dtype == torch.float32
        torch.testing.assert_close(half[key], full[key], rtol=1e-6, atol=1e-6)
