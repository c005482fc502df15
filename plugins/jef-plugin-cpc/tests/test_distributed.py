"""Two gloo processes compute what one computes on the global batch, and only with a gradient-carrying gather.

Each process holds its rows of one global batch of patch embeddings and the same functional (context network,
``W_k``). What DDP sees (the mean of the processes' losses, their parameter gradients averaged, each process's
embedding gradients) must equal one process's loss and gradients on the global batch, where every embedding of
both processes is a negative of every prediction. An all-gather without gradients gives the same loss but loses
the gradient each process's embeddings receive through the other process's predictions.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist
from jef_plugin_cpc.loss import CPC, CPCOptions

from jef import dist
from jef.components import Branch, StepOutputs
from jef.testing.distributed import run_in_processes

WORLD, B, G, D = 2, 3, 4, 6


def _global_batch() -> torch.Tensor:
    return torch.randn(WORLD * B, G, G, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _functional() -> CPC:
    torch.manual_seed(0)  # the same parameters in every process, as DDP starts them
    return CPC(CPCOptions(offsets=2, hidden=8), D, G).double()


def _gather_without_gradient(tensor: torch.Tensor) -> torch.Tensor:
    # What a plain all_gather (or accelerate's gather) gives: the other ranks' rows as constants.
    parts = [torch.empty_like(tensor) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, tensor.detach().contiguous())
    parts[tdist.get_rank()] = tensor
    return torch.cat(parts)


def _step(z: torch.Tensor, gather) -> dict:
    cpc = _functional()
    z = z.clone().requires_grad_()
    views = list(z.flatten(1, 2).unbind(1))
    branch = Branch(h=views, z=views)
    terms = cpc(StepOutputs(online=branch, target=branch, n_global=len(views)), gather=gather)
    loss = sum(terms.values())
    loss.backward()
    return {"loss": loss.detach(), "terms": {k: v.detach() for k, v in terms.items()}, "z": z.grad,
            "params": {name: p.grad for name, p in cpc.named_parameters()}}


def _job(rank: int) -> dict:
    rows = _global_batch()[rank * B:(rank + 1) * B]
    return {"gather": _step(rows, dist.gather), "no_grad": _step(rows, _gather_without_gradient)}


@pytest.fixture(scope="module")
def results():
    return run_in_processes(_job, world_size=WORLD)


def _ddp_view(results, key):
    runs = [r[key] for r in results]
    loss = torch.stack([r["loss"] for r in runs]).mean()
    z = torch.cat([r["z"] for r in runs]) / WORLD  # each rank's gradient of Σ_r L_r; one process's L is their mean
    params = {name: torch.stack([r["params"][name] for r in runs]).mean(0) for name in runs[0]["params"]}
    return loss, z, params


def test_two_processes_equal_one_process_on_the_global_batch(results):
    one = _step(_global_batch(), dist.gather)
    loss, z, params = _ddp_view(results, "gather")
    torch.testing.assert_close(loss, one["loss"], rtol=1e-10, atol=1e-12)
    for key in one["terms"]:
        torch.testing.assert_close(torch.stack([r["gather"]["terms"][key] for r in results]).mean(), one["terms"][key],
                                   rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z, one["z"], rtol=1e-9, atol=1e-12)
    for name, grad in one["params"].items():
        torch.testing.assert_close(params[name], grad, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_a_gather_without_gradient_loses_the_embeddings_gradient(results):
    one = _step(_global_batch(), dist.gather)
    loss, z, _ = _ddp_view(results, "no_grad")
    torch.testing.assert_close(loss, one["loss"], rtol=1e-10, atol=1e-12)  # the forward pass is the same
    assert not torch.allclose(z, one["z"], rtol=1e-3, atol=1e-6)
