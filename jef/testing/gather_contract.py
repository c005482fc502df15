"""Contract check of a functional's behaviour over several processes (``jef.dist.gather``).

With DDP each of ``W`` processes computes the functional on its ``N/W``
samples and parameter gradients are averaged over processes. That equals one
process on the whole batch only if every term over the *global* batch
collects embeddings with :func:`jef.dist.gather` (whose backward returns to
each process the gradient its samples receive from every process's loss).

What is compared: the loss terms averaged over processes against one process
on the global batch, and the embedding gradients. Parameter gradients are
``θ-grad = (1/W) Σ_r Σ_{i on r} g_i ∂e_i/∂θ`` after DDP's average, where
``g_i`` is the gradient process ``r`` holds for its embedding ``e_i``; so the
process-level ``g_i / W``, concatenated over processes, must equal the
gradient of the single-process loss with respect to ``e_i``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.multiprocessing.spawn import ProcessException

from jef.testing.contracts import embeddings, fail, functional_terms, label, step_outputs
from jef.testing.distributed import run_in_processes

__all__ = ["check_functional_under_gather"]

#: Seed of the global batch; every process and the reference draw the same one.
_SEED = 4321


def _run(who: str, factory: Callable[[], Any], sizes: tuple[int, int, int, int, bool], rank: int,
         world_size: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """This process's share of the global batch through a new functional; returns its terms and embedding grads."""
    n, dim, n_views, n_global, predictor = sizes
    local = n // world_size
    rows = slice(rank * local, (rank + 1) * local)
    full = embeddings(n, dim, n_views, predictor, dtype=torch.float64, seed=_SEED)
    leaves = {kind: [t[rows].clone().requires_grad_() for t in views] for kind, views in full.items()}
    functional = factory()
    if isinstance(functional, nn.Module):
        functional = functional.double()  # float64 so that only real differences exceed atol
    with torch.enable_grad():
        terms = functional_terms(who, functional, step_outputs(leaves, n_global, torch.arange(n)[rows]))
        total = sum(terms.values())
        if total.requires_grad:
            total.backward()
    grads = {f"online {kind}[{i}]": torch.zeros_like(t) if t.grad is None else t.grad.detach()
             for kind, views in leaves.items() for i, t in enumerate(views)}
    return {key: value.detach() for key, value in terms.items()}, grads


def _job(who: str, factory: Callable[[], Any], sizes: tuple[int, int, int, int, bool], world_size: int,
         rank: int) -> dict[str, dict[str, Tensor]]:
    """One process's part, in the form :func:`run_in_processes` returns."""
    terms, grads = _run(who, factory, sizes, rank, world_size)
    return {"terms": terms, "grads": grads}


def check_functional_under_gather(factory: Callable[[], Any], *, name: str = "functional", n: int = 8,
                                  dim: int = 8, n_views: int = 2, world_size: int = 2, atol: float = 1e-6,
                                  n_global: int = 2, predictor: bool = False) -> None:
    """Check that ``world_size`` processes sharing a batch behave like one process on all of it.

    Spawns ``world_size`` gloo CPU processes; each builds the functional with
    ``factory()``, takes its equal slice of a fixed float64 global batch
    (``shared`` target), computes the terms and backpropagates. The terms
    averaged over processes and the embedding gradients (each process's
    divided by ``world_size``, as DDP averages parameter gradients) must match
    one process on the global batch to ``atol``. A functional that computes a
    global-batch term from its local samples only, or gathers without
    gradient, fails.

    Args:
        factory: Picklable zero-argument callable building the functional (a
            module-level function or a ``functools.partial``).
        name: The functional's name, for messages.
        n: Global batch size; a multiple of ``world_size``.
        dim: Embedding width.
        n_views: Views per sample.
        world_size: Processes.
        atol: Largest absolute difference accepted (values are float64).
        n_global: Global views (with targets) among the views.
        predictor: Give the online branch predictor outputs ``p``.

    Raises:
        ContractError: The processes disagree with the single process, or a process failed.
        ValueError: ``n`` is not a multiple of ``world_size``.
    """
    who = label("functional", name)
    if world_size < 2 or n % world_size or not 1 <= n_global <= n_views:
        raise ValueError(f"check_functional_under_gather: need world_size >= 2 dividing n and "
                         f"1 <= n_global <= n_views, got world_size={world_size}, n={n}, "
                         f"n_global={n_global}, n_views={n_views}")
    sizes = (n, dim, n_views, n_global, predictor)
    # The reference first: it also checks the result's form before paying for processes.
    want_terms, want_grads = _run(who, factory, sizes, rank=0, world_size=1)
    try:
        results = run_in_processes(functools.partial(_job, who, factory, sizes, world_size), world_size)
    except ProcessException as error:
        # A process that died before running the check (e.g. a script without the
        # ``if __name__ == "__main__":`` guard, which spawned processes re-import) only has an exit code here.
        fail(who, f"failed in a {world_size}-process gloo run (the processes' own output is above; scripts "
                  f"calling this check need an `if __name__ == \"__main__\":` guard):\n{error}")

    local = n // world_size
    where = (f"with {world_size} processes holding {local} of {n} samples each, compared with one process "
             f"on all {n}")
    advice = ("terms over the global batch must collect embeddings with jef.dist.gather, which carries "
              "gradients back to the process that produced them")
    for key, want in want_terms.items():
        what = "the result" if key == "" else f"term {key!r}"
        if key not in results[0]["terms"]:
            fail(who, f"{what} is missing in the {world_size}-process run ({where})")
        got = torch.stack([r["terms"][key] for r in results]).mean()
        if not (got - want).abs().item() <= atol:
            fail(who, f"{where}: {what} averaged over processes is {got.item():.6g} but one process gives "
                      f"{want.item():.6g} (difference {(got - want).abs().item():.3g} > atol={atol:g}); {advice}")
    worst, worst_at = 0.0, ""
    for what, want in want_grads.items():
        # Each process's gradient / W: the share DDP's average gives it (see the module docstring).
        got = torch.cat([r["grads"][what] for r in results]) / world_size
        gap = (got - want).abs().nan_to_num(nan=float("inf"))
        if gap.max().item() > worst:
            worst, worst_at = gap.max().item(), f"{what}, sample {int(gap.max(dim=1).values.argmax())}"
    if not worst <= atol:
        fail(who, f"{where}: the loss matches but the gradients do not (largest difference {worst:.3g} > "
                  f"atol={atol:g} at {worst_at}; each process's gradient divided by {world_size} as DDP "
                  f"averages it); {advice} (a gather without gradient gives this)")
