"""The memory bank (InstDisc, Wu et al. 2018, arXiv:1805.01978): NCE and softmax maths, updates, resume, 2 processes."""

from __future__ import annotations

import datetime
import math
import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F

from jef.builtin.banks import MemoryBank
from jef.run.checkpoint import load_checkpoint
from jef.components import Branch, RunContext, StepOutputs
from jef.functional import full_softmax_loss, momentum_update, nce_loss, nce_normaliser, nce_posterior
from jef.plugins import load_plugins
from jef.testing import InterruptAt, build_component, free_port, tiny_run


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def _outputs(z: torch.Tensor, indices: torch.Tensor | None) -> StepOutputs:
    branch = Branch(h=[z], z=[z])
    return StepOutputs(online=branch, target=branch, n_global=1, indices=indices)


# -- the maths against references written out sample by sample ----------------------------


def nce_reference(data: list[float], noise: list[list[float]], tau: float, z: float, n: int) -> list[float]:
    """[1] eq. (5)-(6) with explicit loops in float64: J_i = −log h(i) − Σ_j log(1 − h(j))."""
    m = len(noise[0])
    losses = []
    for s, row in zip(data, noise, strict=True):
        p = math.exp(s / tau) / z
        loss = -math.log(p / (p + m / n))
        for s_noise in row:
            p_noise = math.exp(s_noise / tau) / z
            loss -= math.log(1.0 - p_noise / (p_noise + m / n))
        losses.append(loss)
    return losses


def test_nce_posterior_loss_and_normaliser_match_the_paper_written_out():
    features, rows = _unit(5, 8, seed=1), _unit(5 + 5 * 7, 8, seed=2)
    data = (features * rows[:5]).sum(dim=1)
    noise = torch.stack([rows[5 + 7 * i:5 + 7 * (i + 1)] @ features[i] for i in range(5)])  # [5, m=7]
    tau, n = 0.1, 1000
    z = n * sum(math.exp(float(s) / tau) for s in noise.flatten()) / noise.numel()
    assert float(nce_normaliser(noise, tau, n)) == pytest.approx(z, rel=1e-12)
    want = nce_reference(data.tolist(), noise.tolist(), tau, z, n)
    got = nce_loss(data, noise, tau, z, n, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    mean = nce_loss(data, noise, tau, torch.tensor(z, dtype=torch.float64), n)
    assert float(mean) == pytest.approx(sum(want) / 5, rel=1e-10)
    h_data, h_noise = nce_posterior(data, noise, tau, z, n)
    p = math.exp(float(data[0]) / tau) / z
    assert float(h_data[0]) == pytest.approx(p / (p + 7 / n), rel=1e-10)
    assert h_noise.shape == (5, 7) and bool(((h_noise > 0) & (h_noise < 1)).all())


def test_nce_is_finite_where_the_posterior_underflows():
    data, noise = torch.tensor([-1.0]), torch.full((1, 3), -1.0)
    loss = nce_loss(data, noise, 0.01, 1e30, 10**9)  # exp(−100)/1e30: log(h) computed naively is log(0)
    assert torch.isfinite(loss)


def test_nce_shapes_are_checked_with_readable_messages():
    with pytest.raises(ValueError, match=r"noise_similarities must be \[N, m\].*N=3"):
        nce_loss(torch.zeros(3), torch.zeros(2, 4), 0.1, 1.0, 10)
    with pytest.raises(ValueError, match="normaliser Z must be > 0"):
        nce_posterior(torch.zeros(2), torch.zeros(2, 4), 0.1, 0.0, 10)


def test_full_softmax_is_cross_entropy_over_the_whole_bank():
    features, bank = torch.randn(6, 8, dtype=torch.float64), _unit(20, 8, seed=3)
    indices = torch.tensor([0, 3, 3, 19, 7, 11])
    logits = F.normalize(features, dim=1) @ bank.T / 0.07
    torch.testing.assert_close(full_softmax_loss(features, bank, indices, 0.07), F.cross_entropy(logits, indices))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 20\)"):
        full_softmax_loss(features, bank, indices + 5, 0.07)


def test_memory_bank_nce_uses_its_noise_rows_and_fixes_z_on_the_first_batch():
    bank = MemoryBank(50, dim=8, temperature=0.2, noise_samples=9, seed=3).double()
    z, indices = torch.randn(4, 8, dtype=torch.float64), torch.tensor([1, 5, 7, 49])
    rows = bank._noise_rows()
    features = F.normalize(z, dim=1)
    data, noise = (features * bank.bank[indices]).sum(dim=1), features @ bank.bank[rows].T
    normaliser = 50 * torch.exp(noise / 0.2).mean()
    want = sum(nce_reference(data.tolist(), noise.tolist(), 0.2, float(normaliser), 50)) / 4
    assert float(bank(_outputs(z, indices))["nce"]) == pytest.approx(want, rel=1e-9)
    assert bool(bank.normaliser_set) and float(bank.normaliser) == pytest.approx(float(normaliser), rel=1e-6)
    bank.update()  # a new step draws new noise, but Z stays the first batch's
    assert not torch.equal(bank._noise_rows(), rows)
    bank(_outputs(torch.randn(4, 8, dtype=torch.float64), indices))
    assert float(bank.normaliser) == pytest.approx(float(normaliser), rel=1e-6)


def test_softmax_and_proximal_terms():
    bank = MemoryBank(30, dim=8, loss="softmax", proximal=30.0).double()
    z, indices = torch.randn(4, 8, dtype=torch.float64), torch.tensor([0, 2, 4, 6])
    terms = bank(_outputs(z, indices))
    f = F.normalize(z, dim=1)
    torch.testing.assert_close(terms["softmax"], F.cross_entropy(f @ bank.bank.T / 0.07, indices))
    torch.testing.assert_close(terms["proximal"], 30.0 * (f - bank.bank[indices]).pow(2).sum(dim=1).mean())


# -- the bank update ----------------------------------------------------------------------


def test_momentum_update_moves_only_the_batch_rows_and_renormalises():
    bank = _unit(10, 4, seed=4)
    before = bank.clone()
    features, indices = torch.randn(3, 4, dtype=torch.float64), torch.tensor([2, 7, 5])
    momentum_update(bank, indices, features, 0.5)
    for row, i in enumerate(indices.tolist()):
        mixed = 0.5 * before[i] + 0.5 * features[row] / features[row].norm()
        torch.testing.assert_close(bank[i], mixed / mixed.norm())
    untouched = [i for i in range(10) if i not in indices.tolist()]
    assert torch.equal(bank[untouched], before[untouched])
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(10, dtype=torch.float64))


def test_momentum_update_with_a_repeated_index_keeps_the_last():
    bank, features = _unit(4, 3, seed=5), _unit(2, 3, seed=6)
    start = bank[1].clone()
    momentum_update(bank, torch.tensor([1, 1]), features, 0.0)
    torch.testing.assert_close(bank[1], features[1])
    assert not torch.equal(bank[1], start)


def test_step_end_updates_the_rows_of_the_step(plugins):
    bank = build_component(plugins, "functional", "memory_bank", {"size": 12, "dim": 4, "noise_samples": 5})
    before = bank.bank.clone()
    z, indices = torch.randn(3, 4), torch.tensor([0, 4, 9])
    bank(_outputs(z, indices))
    bank.jef_step_end(run=None, outputs=None, terms={})
    want = before.clone()
    momentum_update(want, indices, z, 0.5)
    torch.testing.assert_close(bank.bank, want, rtol=0, atol=1e-6)
    assert int(bank.steps) == 1
    updated = bank.bank.clone()
    bank.jef_step_end(run=None, outputs=None, terms={})  # nothing pending: nothing moves
    assert torch.equal(bank.bank, updated) and int(bank.steps) == 1


def test_missing_indices_name_the_dataset_requirement():
    with pytest.raises(ValueError, match=r"no dataset indices.*dataset that yields \(image, label, index\)"):
        MemoryBank(8, dim=4)(_outputs(torch.randn(2, 4), None))
    with pytest.raises(ValueError, match="index 8 is outside the bank's 8 rows; set memory_bank's size"):
        MemoryBank(8, dim=4)(_outputs(torch.randn(2, 4), torch.tensor([0, 8])))
    with pytest.raises(ValueError, match="set memory_bank's dim to the projector's output width"):
        MemoryBank(8, dim=5)(_outputs(torch.randn(2, 4), torch.tensor([0, 1])))


def test_the_size_comes_from_the_options_or_the_training_split(plugins):
    assert build_component(plugins, "functional", "memory_bank", {}, RunContext(train_size=40)).bank.shape == (40, 128)
    with pytest.raises(ValueError, match="size is unknown: set memory_bank's size"):
        build_component(plugins, "functional", "memory_bank", {})
    with pytest.raises(ValueError, match="size=30 but the training split has 40 images"):
        build_component(plugins, "functional", "memory_bank", {"size": 30}, RunContext(train_size=40))


# -- checkpoint and resume ----------------------------------------------------------------

INSTDISC_TINY = {
    "augmenter": {"name": "views", "n_global": 1},
    "projector": {"name": "mlp", "dims": [16], "batch_norm": False},
    "energy": None,
    "functionals": [{"name": "memory_bank", "size": 64, "dim": 16, "noise_samples": 32, "temperature": 0.1}],
    "train": {"epochs": 2},
}


def test_bank_is_saved_and_restored_exactly_through_an_interrupted_run(tmp_path, plugins):
    straight = tiny_run(INSTDISC_TINY, steps=8, run_dir=tmp_path / "straight", plugins=plugins)
    plugins.manager.register(InterruptAt(6), name="stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            tiny_run(INSTDISC_TINY, steps=8, run_dir=tmp_path / "resumed", plugins=plugins)
    finally:
        plugins.manager.unregister(name="stopper")
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    key = "objective.functionals.0.bank"
    assert int(saved["objective.functionals.0.steps"]) == 6 and bool(saved["objective.functionals.0.normaliser_set"])
    tiny_run(INSTDISC_TINY, steps=8, run_dir=tmp_path / "resumed", plugins=plugins, resume=True)
    a = load_checkpoint(straight.run_dir / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    assert not torch.equal(a[key], saved[key])  # steps 7 and 8 moved the bank after the interruption
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit-exact on CPU, bank and Z included


# -- two processes hold the same bank as one --------------------------------------------------

WORLD, BATCH, SIZE, DIM = 2, 8, 20, 6


def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64), torch.randperm(SIZE, generator=gen)[:BATCH]


def _one_step(bank: MemoryBank, z: torch.Tensor, indices: torch.Tensor) -> float:
    loss = bank(_outputs(z, indices))["nce"]
    bank.jef_step_end(run=None, outputs=None, terms={})
    return float(loss)


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        z, indices = _problem()
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        bank = MemoryBank(SIZE, dim=DIM, noise_samples=5, seed=1).double()
        loss = _one_step(bank, z[rows], indices[rows]) / WORLD
        torch.save({"bank": bank.bank, "normaliser": bank.normaliser, "loss": loss},
                   os.path.join(outdir, f"{rank}.pt"))
    finally:
        tdist.destroy_process_group()




def test_two_processes_hold_the_same_bank_as_one(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    single = MemoryBank(SIZE, dim=DIM, noise_samples=5, seed=1).double()
    loss = _one_step(single, *_problem())
    for result in results:
        torch.testing.assert_close(result["bank"], single.bank, rtol=0, atol=1e-12)
        torch.testing.assert_close(result["normaliser"], single.normaliser, rtol=1e-12, atol=0)
    assert sum(r["loss"] for r in results) == pytest.approx(loss, rel=1e-10)  # mean over processes = one process
