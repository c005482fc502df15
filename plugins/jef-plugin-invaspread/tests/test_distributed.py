"""Two gloo processes equal one process on the global batch; a gather without gradient does not."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

from jef import dist
from jef.components import Branch, StepOutputs
from jef.testing.distributed import run_in_processes
from jef_plugin_invaspread import InvaSpread, invaspread_loss

N, D, WORLD, TAU = 8, 5, 2, 0.1  # N: the global batch, 4 rows per rank


def _inputs():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    return x, x + 0.5 * torch.randn(N, D, generator=g, dtype=torch.float64)


def _gather_without_gradient(x: torch.Tensor) -> torch.Tensor:
    """The usual mistake: all_gather copies, this rank's own rows put back so that they keep their gradient."""
    parts = [torch.empty_like(x) for _ in range(dist.world_size())]
    tdist.all_gather(parts, x.detach())
    parts[dist.rank()] = x
    return torch.cat(parts)


def _functional(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The registered functional on a step whose two views' ``z`` are ``a`` and ``b``."""
    branch = Branch(h=[a, b], z=[a, b])
    return InvaSpread(TAU)(StepOutputs(online=branch, target=branch, n_global=2))


def _job(rank: int) -> dict:
    x, x_hat = _inputs()  # the same global batch on every rank; each takes its rows
    rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    out = {}
    for name, gather in (("gather", dist.gather), ("no_grad", _gather_without_gradient)):
        a, b = x[rows].clone().requires_grad_(), x_hat[rows].clone().requires_grad_()
        loss = invaspread_loss(a, b, TAU, candidates=gather(a), offset=rank * N // WORLD)
        loss.backward()
        out[name] = {"loss": loss.detach(), "grads": [a.grad, b.grad]}
    a, b = x[rows].clone().requires_grad_(), x_hat[rows].clone().requires_grad_()
    loss = _functional(a, b)  # one spawn for all: starting processes is the slow part
    loss.backward()
    out["functional"] = {"loss": loss.detach(), "grads": [a.grad, b.grad]}
    return out


@pytest.fixture(scope="module")
def two_processes():
    return run_in_processes(_job, world_size=WORLD)


def _one_process(loss_fn=lambda a, b: invaspread_loss(a, b, TAU)):
    x, x_hat = (t.clone().requires_grad_() for t in _inputs())
    loss = loss_fn(x, x_hat)
    loss.backward()
    return loss.detach(), [x.grad, x_hat.grad]


def _as_ddp(results, name):
    """What DDP sees: the ranks' mean loss; each rank's gradients / W (DDP averages), concatenated."""
    loss = torch.stack([r[name]["loss"] for r in results]).mean()
    grads = [torch.cat([r[name]["grads"][v] for r in results]) / WORLD for v in (0, 1)]
    return loss, grads


def test_a_gather_without_gradient_gets_the_loss_but_not_the_gradients(two_processes):
    want_loss, want_grads = _one_process()
    loss, grads = _as_ddp(two_processes, "no_grad")
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)  # the forward pass cannot tell
    assert not torch.allclose(grads[0], want_grads[0], rtol=1e-3, atol=1e-6)  # the f_k of the other rank's rows
    torch.testing.assert_close(grads[1], want_grads[1], rtol=1e-10, atol=1e-12)  # x̂ is never gathered


@pytest.mark.parametrize("name", ["gather", "functional"])
def test_two_processes_equal_one_on_the_global_batch(two_processes, name):
    want_loss, want_grads = _one_process()
    loss, grads = _as_ddp(two_processes, name)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if name == "functional":  # and in one process the functional is the loss itself
        torch.testing.assert_close(_one_process(_functional)[0], want_loss, rtol=1e-12, atol=1e-12)
