"""The ``pirl`` functional: Eq. (5) against a float64 reference in loops, the bank update, checkpoints, 2 processes."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from jef_plugin_pirl.nce import PIRL

from jef.components import Branch, RunContext, StepOutputs
from jef.testing import build_component
from jef.testing.distributed import run_in_processes


def _outputs(z: list[torch.Tensor], indices: torch.Tensor | None) -> StepOutputs:
    """What the core hands the functional with a shared target: every view's z online, view 0's as the target."""
    return StepOutputs(online=Branch(h=list(z), z=list(z)), target=Branch(h=z[:1], z=z[:1]), n_global=1,
                       indices=indices)


def _problem(batch: int, dim: int, size: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = [torch.randn(batch, dim, generator=gen, dtype=torch.float64) for _ in range(10)]
    return z, torch.randperm(size, generator=gen)[:batch]


def _fixed_bank(pirl: PIRL, seed: int = 0) -> PIRL:
    """A bank of float64 unit rows (the float32 start is unit only to float32's precision), as the paper's m_I."""
    rows = torch.randn(pirl.size, pirl.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pirl.bank.copy_(rows / rows.norm(dim=1, keepdim=True))
    return pirl


def _unit(x: list[float]) -> list[float]:
    norm = math.sqrt(sum(a * a for a in x))
    return [a / norm for a in x]


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(_unit(a), _unit(b), strict=True))


def pirl_reference(z: list[list[list[float]]], weight: list[list[float]], bias: list[float], bank: list[list[float]],
                   indices: list[int], noise: list[int], tau: float, lam: float, estimate_z: bool) -> dict[str, float]:
    """Eqs. (2)-(5) of the paper in float64 loops, with fixed bank and noise rows.

    ``g`` = ``weight · [z_1; ...; z_9] + bias`` (the tiles' embeddings concatenated in view order), ``f = z_0``;
    ``s(a, b) = cos(a, b)/τ``; ``h(x, m) = P / (P + N/|D|)`` with ``P = exp(s(x, m))/Z``;
    ``L_NCE(m_I, x) = −log h(x, m_I) − Σ_{I'} log(1 − h(x, m_I'))``, averaged over the batch;
    ``L = λ·L_NCE(m_I, g) + (1 − λ)·L_NCE(m_I, f)``. ``Z = 1`` (Eq. 2 as printed) unless ``estimate_z``:
    then ``Z = |D| · mean over the batch and the noise rows of exp(s(x, m_I'))``, per term.
    """
    n, m, batch = len(bank), len(noise), len(indices)
    g = []
    for b in range(batch):
        concat = [x for view in z[1:] for x in view[b]]
        g.append([sum(w * x for w, x in zip(row, concat, strict=True)) + c
                  for row, c in zip(weight, bias, strict=True)])
    features = {"jigsaw": g, "image": [z[0][b] for b in range(batch)]}
    result = {}
    for term, xs in features.items():
        big_z = 1.0
        if estimate_z:
            big_z = n * sum(math.exp(_cos(x, bank[j]) / tau) for x in xs for j in noise) / (batch * m)
        total = 0.0
        for x, i in zip(xs, indices, strict=True):
            def h(row: list[float], x: list[float] = x) -> float:
                p = math.exp(_cos(x, row) / tau) / big_z
                return p / (p + m / n)
            total += -math.log(h(bank[i])) - sum(math.log(1 - h(bank[j])) for j in noise)
        result[term] = (lam if term == "jigsaw" else 1 - lam) * total / batch
    return result


@pytest.mark.parametrize("normaliser", ["first_batch", "none"])
def test_both_terms_are_eqs_2_to_5_written_out(normaliser):
    pirl = _fixed_bank(PIRL(30, dim=4, temperature=0.3, lam=0.3, noise_samples=7, normaliser=normaliser,
                            seed=3).double())
    z, indices = _problem(5, 4, 30)
    noise = pirl.noise_rows().tolist()
    bank = pirl.bank.tolist()
    terms = pirl(_outputs(z, indices))
    assert set(terms) == {"jigsaw", "image"}
    want = pirl_reference([v.tolist() for v in z], pirl.head.weight.tolist(), pirl.head.bias.tolist(), bank,
                          indices.tolist(), noise, 0.3, 0.3, normaliser == "first_batch")
    for term in ("jigsaw", "image"):
        assert float(terms[term].detach()) == pytest.approx(want[term], rel=1e-10, abs=1e-12), term
    assert bool(pirl.normaliser_set)


def test_the_paper_temperature_keeps_float64_agreement():
    pirl = _fixed_bank(PIRL(50, dim=6, noise_samples=20, seed=1).double(), seed=1)  # τ = 0.07, λ = 0.5
    z, indices = _problem(4, 6, 50, seed=5)
    want = pirl_reference([v.tolist() for v in z], pirl.head.weight.tolist(), pirl.head.bias.tolist(),
                          pirl.bank.tolist(), indices.tolist(), pirl.noise_rows().tolist(), 0.07, 0.5, True)
    terms = pirl(_outputs(z, indices))
    for term in ("jigsaw", "image"):
        assert float(terms[term].detach()) == pytest.approx(want[term], rel=1e-6), term


def test_the_jigsaw_head_sees_the_tiles_in_view_order_and_nothing_else():
    pirl = PIRL(20, dim=4, noise_samples=5).double()
    z, indices = _problem(3, 4, 20)
    g = pirl.jigsaw(z[1:])
    torch.testing.assert_close(g, torch.cat(z[1:], dim=1) @ pirl.head.weight.T + pirl.head.bias)
    assert not torch.allclose(pirl.jigsaw(z[1:][::-1]), g)  # another order is another input
    facts = {"permutation": torch.arange(9).repeat(3, 1)}
    with_facts = StepOutputs(online=Branch(h=z, z=z), target=Branch(h=z[:1], z=z[:1]), n_global=1, indices=indices,
                             facts=facts)
    a, b = pirl(_outputs(z, indices)), pirl(with_facts)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the permutation is never read


def test_z_is_fixed_on_the_first_batch_and_the_noise_moves_with_the_step():
    pirl = PIRL(30, dim=4, noise_samples=9, seed=3).double()
    pirl(_outputs(*_problem(5, 4, 30)))
    first = (pirl.normaliser_jigsaw.clone(), pirl.normaliser_image.clone())
    rows = pirl.noise_rows()
    pirl.jef_step_end(run=None, outputs=None, terms={})
    assert not torch.equal(pirl.noise_rows(), rows)
    pirl(_outputs(*_problem(5, 4, 30, seed=1)))
    assert torch.equal(pirl.normaliser_jigsaw, first[0]) and torch.equal(pirl.normaliser_image, first[1])
    assert not torch.equal(first[0], first[1])  # one Z per term
    literal = PIRL(30, dim=4, noise_samples=9, normaliser="none").double()
    literal(_outputs(*_problem(5, 4, 30)))
    assert float(literal.normaliser_jigsaw) == float(literal.normaliser_image) == 1.0


def test_gradients_reach_every_view_and_the_head():
    pirl = PIRL(20, dim=4, noise_samples=7).double()
    z, indices = _problem(3, 4, 20)
    for v in z:
        v.requires_grad_()
    sum(pirl(_outputs(z, indices)).values()).backward()
    assert all(v.grad.abs().sum() > 0 for v in z)
    assert pirl.head.weight.grad.abs().sum() > 0 and pirl.head.bias.grad.abs().sum() > 0


def test_step_end_moves_the_rows_towards_the_image_features_only():
    pirl = PIRL(12, dim=4, noise_samples=5).double()
    before = pirl.bank.clone()
    z, indices = _problem(3, 4, 12)
    pirl(_outputs(z, indices))
    assert torch.equal(pirl.bank, before)  # the forward pass does not touch the bank
    pirl.jef_step_end(run=None, outputs=None, terms={})
    for row, i in enumerate(indices.tolist()):  # m_I <- normalise(0.5 m_I + 0.5 f(v_I)), f(v_I) normalised
        mixed = 0.5 * before[i] + 0.5 * z[0][row] / z[0][row].norm()
        torch.testing.assert_close(pirl.bank[i], mixed / mixed.norm(), rtol=0, atol=1e-12)
    untouched = [i for i in range(12) if i not in indices.tolist()]
    assert torch.equal(pirl.bank[untouched], before[untouched])
    assert int(pirl.steps) == 1
    pirl.jef_step_end(run=None, outputs=None, terms={})  # nothing pending: nothing moves
    assert int(pirl.steps) == 1
    pirl.eval()
    pirl(_outputs(z, indices))  # evaluation keeps nothing for the update
    pirl.jef_step_end(run=None, outputs=None, terms={})
    assert int(pirl.steps) == 1


def test_a_state_dict_round_trip_restores_everything():
    pirl = PIRL(16, dim=4, noise_samples=6, seed=1).double()
    for step in range(3):
        pirl(_outputs(*_problem(4, 4, 16, seed=step)))
        pirl.jef_step_end(run=None, outputs=None, terms={})
    state = {k: v.clone() for k, v in pirl.state_dict().items()}
    assert set(state) == {"head.weight", "head.bias", "bank", "normaliser_jigsaw", "normaliser_image",
                          "normaliser_set", "steps"}
    fresh = PIRL(16, dim=4, noise_samples=6, seed=1).double()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.noise_rows(), pirl.noise_rows())  # the step counter seeds the next draw
    z, indices = _problem(4, 4, 16, seed=9)
    a, b = pirl(_outputs(z, indices)), fresh(_outputs(z, indices))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_factory_and_its_errors(plugins):
    ctx = RunContext(train_size=40, online_dim=16, n_views=10, seed=2)
    pirl = build_component(plugins, "functional", "pirl", {"noise_samples": 100}, ctx)
    assert (pirl.size, pirl.dim, pirl.noise_samples, pirl.head.in_features) == (40, 16, 39, 144)
    again = build_component(plugins, "functional", "pirl", {}, ctx)
    assert torch.equal(again.head.weight, pirl.head.weight)  # the head from the run's seed: equal on every process
    with pytest.raises(ValueError, match="size=30 but the training split has 40 images"):
        build_component(plugins, "functional", "pirl", {"size": 30}, ctx)
    with pytest.raises(ValueError, match="the augmenter makes 2 views, PIRL needs 10"):
        build_component(plugins, "functional", "pirl", {}, RunContext(train_size=40, online_dim=16))
    with pytest.raises(ValueError, match="online embeddings are 16 wide but dim=8"):
        build_component(plugins, "functional", "pirl", {"dim": 8}, ctx)
    with pytest.raises(ValueError, match="size is unknown"):
        build_component(plugins, "functional", "pirl", {}, RunContext(online_dim=16, n_views=10))
    with pytest.raises(ValueError, match="no dataset indices"):
        pirl(_outputs([torch.zeros(2, 16)] * 10, None))
    with pytest.raises(ValueError, match="expected 10 online embeddings"):
        pirl(_outputs([torch.zeros(2, 16)] * 2, torch.arange(2)))


# -- two processes hold the same bank, Z and head as one (the whole pipeline: jef's tests/test_method_matrix.py) --

WORLD, BATCH, SIZE, DIM = 2, 8, 20, 4


def _one_step(pirl: PIRL, z: list[torch.Tensor], indices: torch.Tensor) -> dict[str, float]:
    terms = pirl(_outputs(z, indices))
    pirl.jef_step_end(run=None, outputs=None, terms={})
    return {k: float(v.detach()) for k, v in terms.items()}


def _job(rank: int, steps: int) -> dict[str, object]:
    pirl = PIRL(SIZE, dim=DIM, noise_samples=5, seed=1).double()
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    losses = []
    for step in range(steps):
        z, indices = _problem(BATCH, DIM, SIZE, seed=step)
        losses.append(_one_step(pirl, [v[rows] for v in z], indices[rows]))
    return {"state": pirl.state_dict(), "losses": losses}


def test_two_processes_hold_the_same_bank_as_one():
    steps = 2
    results = run_in_processes(functools.partial(_job, steps=steps), world_size=WORLD)
    single = PIRL(SIZE, dim=DIM, noise_samples=5, seed=1).double()
    losses = [_one_step(single, *_problem(BATCH, DIM, SIZE, seed=step)) for step in range(steps)]
    assert not torch.equal(single.normaliser_jigsaw, single.normaliser_image)
    for result in results:
        for key, value in single.state_dict().items():  # the bank (gathered rows), both Z (averaged), the head
            torch.testing.assert_close(result["state"][key], value, rtol=1e-12, atol=1e-12, msg=key)
    for step in range(steps):  # each process's mean over its rows; DDP's average over processes = one process
        for term in ("jigsaw", "image"):
            mean = sum(r["losses"][step][term] for r in results) / WORLD
            assert mean == pytest.approx(losses[step][term], rel=1e-10), (step, term)
