"""Pure maths of jef.functional and the built-in energies/functionals, against independent references."""

import math

import pytest
import torch
import torch.nn.functional as F

import jef.functional as jfn
from jef.builtin import energies as E
from jef.builtin import functionals as FN
from jef.components import Branch, NoOptions, RunContext, StepOutputs

TAU = 0.5


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v) / (math.sqrt(float(u @ u)) * math.sqrt(float(v @ v)))


def _loop_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """NT-Xent written as the paper's sum over 2N anchors with explicit loops, in float64."""
    z = torch.cat([z1, z2]).double()
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        den = sum(math.exp(_cos(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(_cos(z[i], z[j]) / tau) / den)
    return total / (2 * n)


def _loop_lse(anchor: torch.Tensor, cands: list[torch.Tensor], tau: float) -> float:
    return math.log(sum(math.exp(_cos(anchor, c) / tau) for c in cands))


def _shared_outputs(views: list[torch.Tensor], n_global: int, p: list[torch.Tensor] | None = None) -> StepOutputs:
    online = Branch(h=views, z=views, p=p)
    target = Branch(h=views[:n_global], z=views[:n_global])
    return StepOutputs(online=online, target=target, n_global=n_global)


# -- InfoNCE / NT-Xent --------------------------------------------------------


def test_nt_xent_matches_loop_reference_and_cross_entropy():
    z1, z2 = _randn(6, 5, seed=1), _randn(6, 5, seed=2)
    reference = _loop_nt_xent(z1, z2, TAU)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / TAU).fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(6, 12), torch.arange(6)])
    assert jfn.nt_xent(z1, z2, TAU).item() == pytest.approx(reference, abs=1e-10)
    assert F.cross_entropy(logits, targets).item() == pytest.approx(reference, abs=1e-10)
    assert jfn.nt_xent(z1, z2, TAU, reduction="none").shape == (12,)


def test_decomposition_energy_plus_functional_equals_nt_xent():
    z1, z2 = _randn(8, 4, seed=3), _randn(8, 4, seed=4)
    energy = E.build_scaled_cosine(E.ScaledCosineOptions(temperature=TAU), RunContext())
    functional = FN.build_info_nce(FN.InfoNCEOptions(temperature=TAU), RunContext())
    out = _shared_outputs([z1, z2], n_global=2)
    pairs = [(0, 1), (1, 0)]
    energy_term = torch.stack([energy(out.online.out[a], out.target.z[b]).mean() for a, b in pairs]).mean()
    total = energy_term + functional(out)
    assert total.item() == pytest.approx(jfn.nt_xent(z1, z2, TAU).item(), abs=1e-12)
    assert total.item() == pytest.approx(_loop_nt_xent(z1, z2, TAU), abs=1e-10)


def test_decomposition_through_the_pipeline_objective():
    from jef.model.joint import Objective

    z1, z2 = _randn(5, 3, seed=5), _randn(5, 3, seed=6)
    objective = Objective(
        ("scaled_cosine", E.ScaledCosineEnergy(TAU), 1.0), [("info_nce", FN.InfoNCEDenominator(TAU), 1.0)]
    )
    loss, _, _ = objective(_shared_outputs([z1, z2], n_global=2))
    assert loss.item() == pytest.approx(_loop_nt_xent(z1, z2, TAU), abs=1e-10)


def test_info_nce_with_offset_and_negatives_matches_loops():
    anchors, positives = _randn(4, 3, seed=7), _randn(4, 3, seed=8)
    others, negatives = _randn(5, 3, seed=9), _randn(3, 3, seed=10)
    # Candidates hold the anchors at rows [2, 6) and the positives after them.
    candidates = torch.cat([others[:2], anchors, positives, others[2:]])
    expected = []
    for i in range(4):
        cands = [c for k, c in enumerate(candidates) if k != 2 + i] + list(negatives)
        expected.append(_loop_lse(anchors[i], cands, TAU) - _cos(anchors[i], positives[i]) / TAU)
    got = jfn.info_nce(anchors, positives, candidates, TAU, self_mask_offset=2, negatives=negatives, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)
    # The same exclusion written as explicit indices.
    by_index = jfn.info_nce(anchors, positives, candidates, TAU, exclude=torch.arange(2, 6), negatives=negatives)
    assert by_index.item() == pytest.approx(sum(expected) / 4, abs=1e-10)


def test_info_nce_queue_style_without_candidates():
    anchors, positives, queue = _randn(3, 4, seed=11), _randn(3, 4, seed=12), _randn(6, 4, seed=13)
    expected = [
        _loop_lse(anchors[i], [positives[i], *queue], TAU) - _cos(anchors[i], positives[i]) / TAU for i in range(3)
    ]
    got = jfn.info_nce(anchors, positives, None, TAU, negatives=queue)
    assert got.item() == pytest.approx(sum(expected) / 3, abs=1e-10)


def test_denominator_exclude_minus_one_keeps_everything():
    anchors, cands = _randn(3, 2, seed=14), _randn(4, 2, seed=15)
    got = jfn.info_nce_denominator(anchors, cands, TAU, exclude=torch.tensor([-1, 0, -1]), reduction="none")
    expected = [
        _loop_lse(anchors[0], list(cands), TAU),
        _loop_lse(anchors[1], list(cands[1:]), TAU),
        _loop_lse(anchors[2], list(cands), TAU),
    ]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)


def test_functional_multicrop_with_predictor_matches_loops():
    # 2 global + 1 local view, predictor outputs as anchors; only global views are targets.
    z = [_randn(3, 4, seed=20 + v) for v in range(3)]
    p = [_randn(3, 4, seed=30 + v) for v in range(3)]
    out = _shared_outputs(z, n_global=2, p=p)
    cands = [z[b][j] for b in range(2) for j in range(3)]
    expected = []
    for a in range(3):
        for i in range(3):
            kept = [c for k, c in enumerate(cands) if not (a < 2 and k == a * 3 + i)]
            expected.append(_loop_lse(p[a][i], kept, TAU))
    assert FN.InfoNCEDenominator(TAU)(out).item() == pytest.approx(sum(expected) / 9, abs=1e-10)


def test_cosine_similarity_matrix():
    a, b = _randn(3, 5, seed=40), _randn(4, 5, seed=41)
    expected = torch.tensor([[_cos(a[i], b[j]) for j in range(4)] for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(jfn.cosine_similarity_matrix(a, b), expected, rtol=0, atol=1e-12)


# -- energies ----------------------------------------------------------------------


def test_energies_match_formulas():
    a, b = _randn(7, 5, seed=50), _randn(7, 5, seed=51)
    cos = F.cosine_similarity(a, b, dim=1)
    torch.testing.assert_close(jfn.cosine_similarity(a, b), cos)
    torch.testing.assert_close(jfn.cosine_distance(a, b), 1 - cos)
    torch.testing.assert_close(jfn.scaled_cosine(a, b, 0.2), -cos / 0.2)
    torch.testing.assert_close(jfn.mse(a, b), ((a - b) ** 2).mean(dim=1))
    assert jfn.mse(a, b).mean().item() == pytest.approx(F.mse_loss(a, b).item(), abs=1e-12)
    for module in (
        E.build_cosine(NoOptions(), RunContext()),
        E.build_mse(NoOptions(), RunContext()),
        E.build_scaled_cosine(E.ScaledCosineOptions(), RunContext()),
    ):
        assert module(a, b).shape == (7,)


def test_registration_names_and_options():
    seen: dict[str, dict] = {}

    def register(name, factory, **kwargs):
        seen[name] = {"factory": factory, **kwargs}

    E.jef_register_energies(register)
    FN.jef_register_functionals(register)
    assert set(seen) == {"cosine", "mse", "smooth_l1", "scaled_cosine", "cross_entropy", "info_nce"}
    assert seen["scaled_cosine"]["options"] is E.ScaledCosineOptions
    assert seen["info_nce"]["options"] is FN.InfoNCEOptions
    assert FN.InfoNCEOptions().temperature == 0.1 == E.ScaledCosineOptions().temperature
    for cls in (E.ScaledCosineOptions, FN.InfoNCEOptions):
        with pytest.raises(ValueError, match="temperature"):
            cls(temperature=0.0)


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: jfn.mse(torch.zeros(3, 4), torch.zeros(3, 5)),
            r"mse: a and b must have the same shape .*\(3, 4\) and \(3, 5\)",
        ),
        (lambda: jfn.cosine_distance(torch.zeros(3), torch.zeros(3)), r"cosine_distance: a must be a 2-D \[N, d\]"),
        (lambda: jfn.cosine_similarity_matrix(torch.zeros(2, 3), torch.zeros(4, 2)), r"same embedding width"),
        (
            lambda: jfn.nt_xent(torch.zeros(4, 3), torch.zeros(5, 3), 0.1),
            r"nt_xent: z1 and z2 must have the same shape",
        ),
        (
            lambda: jfn.info_nce(torch.zeros(2, 3), torch.zeros(3, 3), None, 0.1, negatives=torch.zeros(1, 3)),
            r"info_nce: anchors and positives",
        ),
        (
            lambda: jfn.info_nce_denominator(torch.zeros(2, 3), torch.zeros(3, 3), 0.1, negatives=torch.zeros(2, 4)),
            r"anchors and negatives must have the same embedding width",
        ),
        (
            lambda: jfn.info_nce_denominator(torch.zeros(3, 2), torch.zeros(4, 2), 0.1, self_mask_offset=2),
            r"self_mask_offset=2 excludes candidates \[2, 5\)",
        ),
        (
            lambda: jfn.info_nce_denominator(torch.zeros(2, 2), torch.zeros(4, 2), 0.1, exclude=torch.tensor([0, 4])),
            r"exclude holds index 4",
        ),
        (
            lambda: jfn.info_nce_denominator(torch.zeros(1, 2), torch.zeros(1, 2), 0.1, self_mask_offset=0),
            r"no candidate left",
        ),
        (lambda: jfn.scaled_cosine(torch.zeros(2, 2), torch.zeros(2, 2), 0.0), r"temperature must be a positive"),
        (lambda: jfn.nt_xent(torch.zeros(2, 2), torch.zeros(2, 2), 0.1, reduction="avg"), r"reduction must be one of"),
        (
            lambda: FN.InfoNCEDenominator(0.1)(
                StepOutputs(
                    Branch([], [torch.zeros(2, 2), torch.zeros(3, 2)]), Branch([], [torch.zeros(2, 2)]), n_global=1
                )
            ),
            r"same N samples",
        ),
    ],
)
def test_error_messages(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_integer_inputs_are_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        jfn.mse(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))


# -- precision and gradients ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_even_for_zero_rows(dtype):
    z1, z2 = _randn(6, 8, seed=60, dtype=dtype), _randn(6, 8, seed=61, dtype=dtype)
    z1[0] = 0  # torch's default eps 1e-12 underflows in fp16 and would give NaN here
    out = _shared_outputs([z1, z2], n_global=2)
    values = [
        jfn.nt_xent(z1, z2, 0.1),
        jfn.cosine_distance(z1, z2),
        jfn.scaled_cosine(z1, z2, 0.1),
        jfn.mse(z1 * 300, z2 * 300),
        FN.InfoNCEDenominator(0.1)(out),
    ]
    for value in values:
        assert value.dtype == torch.float32
        assert torch.isfinite(value).all()
    reference = jfn.nt_xent(z1.float(), z2.float(), 0.1)
    assert values[0].item() == pytest.approx(reference.item(), abs=1e-5)


def test_autocast_computes_in_float32():
    z1, z2 = _randn(6, 8, seed=62, dtype=torch.float32), _randn(6, 8, seed=63, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = jfn.nt_xent(z1, z2, 0.1)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(jfn.nt_xent(z1, z2, 0.1).item(), abs=1e-6)


def test_gradients_flow_and_match_autograd_of_reference():
    z1 = _randn(5, 3, seed=70).requires_grad_()
    z2 = _randn(5, 3, seed=71).requires_grad_()
    out = _shared_outputs([z1, z2], n_global=2)
    energy = E.ScaledCosineEnergy(TAU)
    loss = (energy(z1, z2).mean() + energy(z2, z1).mean()) / 2 + FN.InfoNCEDenominator(TAU)(out)
    grads = torch.autograd.grad(loss, [z1, z2])
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / TAU).masked_fill(torch.eye(10, dtype=torch.bool), float("-inf"))
    reference = F.cross_entropy(logits, torch.cat([torch.arange(5, 10), torch.arange(5)]))
    expected = torch.autograd.grad(reference, [z1, z2])
    for got, want in zip(grads, expected, strict=True):
        assert torch.isfinite(got).all() and got.abs().sum() > 0
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    for fn in (jfn.cosine_distance, jfn.mse):
        (g,) = torch.autograd.grad(fn(z1, z2).sum(), [z1])
        assert torch.isfinite(g).all() and g.abs().sum() > 0
