"""jef.dist: single-process behaviour and gradient equivalence of the autograd gather over 2 processes.

The 2-process test checks the property DDP training relies on: each rank
computes the SimCLR objective on half of a global batch with the candidates
gathered by ``jef.dist.gather``, parameter gradients are averaged over ranks
(what DDP does), and the result must equal one process on the whole batch.
Gathers without a correct backward must fail that check.
"""

import datetime
import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

import jef.dist
from jef.builtin.energies import ScaledCosineEnergy
from jef.builtin.functionals import InfoNCEDenominator
from jef.components import Branch, StepOutputs
from jef.testing import free_port

WORLD = 2
GLOBAL_BATCH = 8
TAU = 0.5
SCENARIOS = ("shared", "predictor_multicrop")


# -- single process ------------------------------------------------------------------


def test_single_process_defaults():
    assert not tdist.is_initialized()
    assert jef.dist.world_size() == 1
    assert jef.dist.rank() == 0
    assert jef.dist.is_main_process()
    assert not jef.dist.is_distributed()
    jef.dist.barrier()


def test_single_process_gather_is_a_copy_with_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    y = jef.dist.gather(x)
    assert y is not x
    torch.testing.assert_close(y, x)
    (y * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(3.0).expand(4, 3))
    with pytest.raises(ValueError, match="batch dimension"):
        jef.dist.gather(torch.tensor(1.0))


def test_single_process_reductions_are_detached_copies():
    x = torch.tensor([1.0, 3.0], requires_grad=True)
    total, mean = jef.dist.all_reduce_sum(x), jef.dist.all_reduce_mean(torch.tensor([2, 4]))
    assert not total.requires_grad
    torch.testing.assert_close(total, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(mean, torch.tensor([2.0, 4.0]))


# -- the problem both set-ups solve ----------------------------------------------------


def _problem() -> tuple[list[torch.Tensor], nn.Module, nn.Module]:
    """Three views of a fixed global batch, a linear "encoder" and a linear predictor (float64)."""
    gen = torch.Generator().manual_seed(1234)
    views = [torch.randn(GLOBAL_BATCH, 6, generator=gen, dtype=torch.float64) for _ in range(3)]
    encoder, predictor = nn.Linear(6, 4).double(), nn.Linear(4, 4).double()
    with torch.no_grad():
        for p in [*encoder.parameters(), *predictor.parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return views, encoder, predictor


def _loss_and_grads(scenario: str, views: list[torch.Tensor], encoder: nn.Module,
                    predictor: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The objective of jef's SimCLR (energy over view pairs + info_nce functional), then backward."""
    params = [*encoder.parameters(), *predictor.parameters()]
    for p in params:
        p.grad = None
    if scenario == "shared":  # SimCLR: two global views, shared target, no predictor
        z = [encoder(x) for x in views[:2]]
        out = StepOutputs(online=Branch(h=z, z=z), target=Branch(h=z, z=z), n_global=2)
    else:  # two global views + a local view, predictor; targets still carry gradients
        z = [encoder(x) for x in views]
        out = StepOutputs(online=Branch(h=z, z=z, p=[predictor(t) for t in z]),
                          target=Branch(h=z[:2], z=z[:2]), n_global=2)
    energy, functional = ScaledCosineEnergy(TAU), InfoNCEDenominator(TAU)
    pairs = [(a, b) for a in range(len(out.online.out)) for b in range(len(out.target.z)) if a != b]
    loss = torch.stack([energy(out.online.out[a], out.target.z[b]).mean() for a, b in pairs]).mean()
    loss = loss + functional(out)
    loss.backward()
    return loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]


# -- wrong gathers the test must be able to tell apart ----------------------------------


def _gather_local_slice_only(tensor: torch.Tensor) -> torch.Tensor:
    """all_gather, own slice keeps its graph: misses the gradients other ranks send back."""
    parts = [torch.empty_like(tensor) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, tensor.detach().contiguous())
    parts[tdist.get_rank()] = tensor
    return torch.cat(parts)


def _gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Plain all_gather (like accelerate's gather): no gradient through the candidates at all."""
    parts = [torch.empty_like(tensor) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts)


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        views, encoder, predictor = _problem()
        n = GLOBAL_BATCH // WORLD
        local = [x[rank * n:(rank + 1) * n] for x in views]
        results: dict[str, object] = {}
        correct_gather = jef.dist.gather
        for gather_name, gather in (("correct", correct_gather), ("local_slice", _gather_local_slice_only),
                                    ("no_grad", _gather_no_grad)):
            jef.dist.gather = gather  # the functional looks it up on the module at call time
            try:
                for scenario in SCENARIOS:
                    loss, grads = _loss_and_grads(scenario, local, encoder, predictor)
                    for g in grads:  # DDP's averaging of gradients over processes
                        tdist.all_reduce(g, op=tdist.ReduceOp.SUM)
                        g /= WORLD
                    results[f"{gather_name}/{scenario}"] = (jef.dist.all_reduce_mean(loss), grads)
            finally:
                jef.dist.gather = correct_gather
        # The gather's forward: rank-ordered concatenation.
        results["gathered"] = jef.dist.gather(torch.full((2, 1), float(rank)))
        results["sum"] = jef.dist.all_reduce_sum(torch.tensor([rank + 1.0]))
        results["mean"] = jef.dist.all_reduce_mean(torch.tensor([rank + 1.0]))
        results["world_size"], results["rank"] = jef.dist.world_size(), jef.dist.rank()
        try:  # unequal per-rank sizes must raise the same readable error on every rank
            jef.dist.gather(torch.zeros(3 + rank, 2))
            results["unequal"] = ""
        except ValueError as error:
            results["unequal"] = str(error)
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()




@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> list[dict]:
    outdir = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(free_port(), str(outdir)), nprocs=WORLD, join=True)
    return [torch.load(outdir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_processes_match_one_process_on_the_global_batch(two_process_results, scenario):
    views, encoder, predictor = _problem()
    loss, grads = _loss_and_grads(scenario, views, encoder, predictor)
    for results in two_process_results:
        got_loss, got_grads = results[f"correct/{scenario}"]
        torch.testing.assert_close(got_loss, loss, rtol=0, atol=1e-10)
        for got, want in zip(got_grads, grads, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("gather_name", ["local_slice", "no_grad"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_wrong_gathers_give_different_gradients(two_process_results, gather_name, scenario):
    views, encoder, predictor = _problem()
    loss, grads = _loss_and_grads(scenario, views, encoder, predictor)
    got_loss, got_grads = two_process_results[0][f"{gather_name}/{scenario}"]
    torch.testing.assert_close(got_loss, loss, rtol=0, atol=1e-10)  # the forward is the same...
    gap = max((got - want).abs().max().item() for got, want in zip(got_grads, grads, strict=True))
    assert gap > 1e-3  # ...but the gradients are wrong


def test_two_process_helpers(two_process_results):
    for rank, results in enumerate(two_process_results):
        assert (results["world_size"], results["rank"]) == (WORLD, rank)
        torch.testing.assert_close(results["gathered"], torch.tensor([[0.0], [0.0], [1.0], [1.0]]))
        torch.testing.assert_close(results["sum"], torch.tensor([3.0]))
        torch.testing.assert_close(results["mean"], torch.tensor([1.5]))
        assert "same shape" in results["unequal"] and "[(3, 2), (4, 2)]" in results["unequal"]
