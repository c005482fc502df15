"""The ``cmc_nce`` functional: Eq. (8) against a float64 reference, the bank updates, checkpoints, 2 processes."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from jef_plugin_cmc.nce import CMCNCE

from jef.components import Branch, RunContext, StepOutputs
from jef.testing import build_component, check_component
from jef.testing.distributed import run_in_processes


def _outputs(z_l: torch.Tensor, z_ab: torch.Tensor, indices: torch.Tensor | None) -> StepOutputs:
    """What the core hands the functional: the L encoder's z online, the ab encoder's z as the target."""
    return StepOutputs(online=Branch(h=[z_l], z=[z_l]), target=Branch(h=[z_ab], z=[z_ab]), n_global=1,
                       indices=indices)


def _problem(batch: int, dim: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, dim, generator=gen, dtype=torch.float64),
            torch.randn(batch, dim, generator=gen, dtype=torch.float64), torch.randperm(size, generator=gen)[:batch])


def nce_reference(features: list[list[float]], bank: list[list[float]], indices: list[int], noise: list[int],
                  tau: float) -> float:
    """One direction of CMC's loss in float64 loops: InstDisc's NCE of each feature against another view's bank.

    ``P(i|v) = exp(v_i·v/τ)/Z``, ``Z = n · mean over the batch and the noise rows of exp(v_j·v/τ)`` (fixed on
    the first batch), ``h = P/(P + m/n)``, ``J = −log h(data) − Σ_j log(1 − h(noise_j))``, averaged over the batch.
    """
    n, m = len(bank), len(noise)

    def unit(x: list[float]) -> list[float]:
        norm = math.sqrt(sum(a * a for a in x))
        return [a / norm for a in x]

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    vs = [unit(f) for f in features]
    z = n * sum(math.exp(dot(v, bank[j]) / tau) for v in vs for j in noise) / (len(vs) * m)
    total = 0.0
    for v, i in zip(vs, indices, strict=True):
        p = math.exp(dot(v, bank[i]) / tau) / z
        loss = -math.log(p / (p + m / n))
        for j in noise:
            q = math.exp(dot(v, bank[j]) / tau) / z
            loss -= math.log(1 - q / (q + m / n))
        total += loss
    return total / len(vs)


def test_the_terms_are_eq_8_written_out():
    nce = CMCNCE(30, dim=6, temperature=0.2, noise_samples=9, seed=3).double()
    z_l, z_ab, indices = _problem(5, 6, 30)
    noise = nce.noise_rows().tolist()
    bank_l, bank_ab = nce.bank_l.tolist(), nce.bank_ab.tolist()
    terms = nce(_outputs(z_l, z_ab, indices))
    assert set(terms) == {"l_to_ab", "ab_to_l"}
    # L -> ab: the L feature scored against the ab bank; ab -> L: the ab feature against the L bank.
    want_l = nce_reference(z_l.tolist(), bank_ab, indices.tolist(), noise, 0.2)
    want_ab = nce_reference(z_ab.tolist(), bank_l, indices.tolist(), noise, 0.2)
    assert float(terms["l_to_ab"]) == pytest.approx(want_l, rel=1e-10)
    assert float(terms["ab_to_l"]) == pytest.approx(want_ab, rel=1e-10)
    assert bool(nce.normaliser_set)


def test_the_softmax_variant_is_a_cross_entropy_over_the_other_views_bank():
    """loss: softmax, −log exp(v·v_i/τ) / Σ_j exp(v·v_j/τ) over every row of the other view's bank, in float64."""
    nce = CMCNCE(12, dim=4, temperature=0.1, seed=1, loss="softmax").double()
    z_l, z_ab, indices = _problem(3, 4, 12)
    terms = nce(_outputs(z_l, z_ab, indices))
    for term, feature, bank in (("l_to_ab", z_l, nce.bank_ab), ("ab_to_l", z_ab, nce.bank_l)):
        want = 0.0
        for v, i in zip(feature / feature.norm(dim=1, keepdim=True), indices.tolist(), strict=True):
            logits = [float(v @ row) / 0.1 for row in bank / bank.norm(dim=1, keepdim=True)]
            want -= logits[i] - math.log(sum(math.exp(x) for x in logits))
        assert float(terms[term]) == pytest.approx(want / 3, rel=1e-10)


def test_z_is_fixed_on_the_first_batch_and_the_noise_moves_with_the_step():
    nce = CMCNCE(30, dim=6, temperature=0.2, noise_samples=9, seed=3).double()
    z_l, z_ab, indices = _problem(5, 6, 30)
    nce(_outputs(z_l, z_ab, indices))
    first = (nce.normaliser_l_to_ab.clone(), nce.normaliser_ab_to_l.clone())
    rows = nce.noise_rows()
    nce.jef_step_end(run=None, outputs=None, terms={})
    assert not torch.equal(nce.noise_rows(), rows)
    nce(_outputs(*_problem(5, 6, 30, seed=1)))
    assert torch.equal(nce.normaliser_l_to_ab, first[0]) and torch.equal(nce.normaliser_ab_to_l, first[1])
    assert not torch.equal(first[0], first[1])  # one Z per direction


def test_both_encoders_get_gradients():
    nce = CMCNCE(20, dim=4, noise_samples=7).double()
    z_l, z_ab, indices = _problem(3, 4, 20)
    z_l.requires_grad_(), z_ab.requires_grad_()
    terms = nce(_outputs(z_l, z_ab, indices))
    sum(terms.values()).backward()
    assert z_l.grad.abs().sum() > 0 and z_ab.grad.abs().sum() > 0
    check_component("functional", CMCNCE(8, dim=8, noise_samples=5), n=8, dim=8, n_views=1, n_global=1)


def test_step_end_moves_each_banks_rows_towards_its_views_features():
    nce = CMCNCE(12, dim=4, noise_samples=5).double()
    before_l, before_ab = nce.bank_l.clone(), nce.bank_ab.clone()
    z_l, z_ab, indices = _problem(3, 4, 12)
    nce(_outputs(z_l, z_ab, indices))
    assert torch.equal(nce.bank_l, before_l)  # the forward pass does not touch the banks
    nce.jef_step_end(run=None, outputs=None, terms={})
    for bank, before, z in ((nce.bank_l, before_l, z_l), (nce.bank_ab, before_ab, z_ab)):
        for row, i in enumerate(indices.tolist()):
            mixed = 0.5 * before[i] + 0.5 * z[row] / z[row].norm()
            torch.testing.assert_close(bank[i], mixed / mixed.norm(), rtol=0, atol=1e-12)
        untouched = [i for i in range(12) if i not in indices.tolist()]
        assert torch.equal(bank[untouched], before[untouched])
    assert int(nce.steps) == 1
    banks = nce.bank_l.clone()
    nce.jef_step_end(run=None, outputs=None, terms={})  # nothing pending: nothing moves
    assert torch.equal(nce.bank_l, banks) and int(nce.steps) == 1
    nce.eval()
    nce(_outputs(z_l, z_ab, indices))  # evaluation keeps nothing for the update
    nce.jef_step_end(run=None, outputs=None, terms={})
    assert int(nce.steps) == 1


def test_a_state_dict_round_trip_restores_everything():
    nce = CMCNCE(16, dim=4, noise_samples=6, seed=1).double()
    for step in range(3):
        nce(_outputs(*_problem(4, 4, 16, seed=step)))
        nce.jef_step_end(run=None, outputs=None, terms={})
    state = {k: v.clone() for k, v in nce.state_dict().items()}
    assert set(state) == {"bank_l", "bank_ab", "normaliser_l_to_ab", "normaliser_ab_to_l", "normaliser_set", "steps"}
    fresh = CMCNCE(16, dim=4, noise_samples=6, seed=1).double()
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(fresh.noise_rows(), nce.noise_rows())  # the step counter seeds the same noise
    batch = _problem(4, 4, 16, seed=9)
    a, b = nce(_outputs(*batch)), fresh(_outputs(*batch))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_errors_name_what_is_missing():
    nce = CMCNCE(8, dim=4, noise_samples=3)
    z = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"cmc_nce: the batch carries no dataset indices"):
        nce(_outputs(z, z, None))
    with pytest.raises(ValueError, match="index 8 is outside the banks' 8 rows"):
        nce(_outputs(z, z, torch.tensor([0, 8])))
    with pytest.raises(ValueError, match=r"target embedding of view 1 \(ab\) has shape \(2, 5\)"):
        nce(_outputs(z, torch.randn(2, 5), torch.tensor([0, 1])))


def test_the_factory_reads_the_run_context(plugins):
    nce = build_component(plugins, "functional", "cmc_nce", {}, RunContext(train_size=40, online_dim=16,
                                                                          target_dim=16))
    assert (nce.size, nce.dim, nce.temperature, nce.momentum) == (40, 16, 0.07, 0.5)
    assert nce.noise_samples == 39  # 4096 capped at n - 1 for a 40-row bank
    with pytest.raises(ValueError, match="size is unknown: set cmc_nce's size"):
        build_component(plugins, "functional", "cmc_nce", {}, RunContext(online_dim=16))
    with pytest.raises(ValueError, match="size=30 but the training split has 40 images"):
        build_component(plugins, "functional", "cmc_nce", {"size": 30}, RunContext(train_size=40, online_dim=16))
    with pytest.raises(ValueError, match=r"the target \(view 1, ab\) embedding is 32 wide"):
        build_component(plugins, "functional", "cmc_nce", {}, RunContext(train_size=40, online_dim=16,
                                                                         target_dim=32))
    with pytest.raises(ValueError, match="feature width is unknown"):
        build_component(plugins, "functional", "cmc_nce", {}, RunContext(train_size=40))
    assert build_component(plugins, "functional", "cmc_nce", {}, RunContext(train_size=40, in_dim=8)).dim == 8


# -- two processes hold the same banks as one -------------------------------------------------

WORLD, BATCH, SIZE, DIM = 2, 8, 20, 6


def _one_step(nce: CMCNCE, z_l: torch.Tensor, z_ab: torch.Tensor, indices: torch.Tensor) -> dict[str, float]:
    terms = nce(_outputs(z_l, z_ab, indices))
    nce.jef_step_end(run=None, outputs=None, terms={})
    return {k: float(v) for k, v in terms.items()}


def _job(rank: int, steps: int) -> dict[str, object]:
    nce = CMCNCE(SIZE, dim=DIM, noise_samples=5, seed=1).double()
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    losses = []
    for step in range(steps):
        z_l, z_ab, indices = _problem(BATCH, DIM, SIZE, seed=step)
        losses.append(_one_step(nce, z_l[rows], z_ab[rows], indices[rows]))
    return {"state": nce.state_dict(), "losses": losses}


def test_two_processes_hold_the_same_banks_as_one():
    steps = 2
    results = run_in_processes(functools.partial(_job, steps=steps), world_size=WORLD)
    single = CMCNCE(SIZE, dim=DIM, noise_samples=5, seed=1).double()
    losses = [_one_step(single, *_problem(BATCH, DIM, SIZE, seed=step)) for step in range(steps)]
    for result in results:
        for key, value in single.state_dict().items():
            torch.testing.assert_close(result["state"][key], value, rtol=1e-12, atol=1e-12, msg=key)
    for step in range(steps):  # each process's mean over its rows; DDP's average over processes = one process
        for term in ("l_to_ab", "ab_to_l"):
            mean = sum(r["losses"][step][term] for r in results) / WORLD
            assert mean == pytest.approx(losses[step][term], rel=1e-10), (step, term)
