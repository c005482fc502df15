"""Contract checks: does a component behave as :mod:`jef.components` says its kind must?

Each ``check_*`` builds small seeded inputs, runs the component and raises
:class:`ContractError` naming the component, what was violated and what was
expected, so that a plugin author's failing test explains itself::

    from jef.testing import build_component, check_energy
    check_energy(build_component(plugins, "energy", "huber"), name="huber")

The checks run the component in whatever mode it is in and leave gradients
(and batch-norm statistics) behind; build a fresh component for each check.

This module holds the energy and functional checks, :func:`check_component`
and :func:`build_component`; :mod:`jef.testing.module_contracts` the
augmenter, backbone and head checks; :mod:`jef.testing.gather_contract` the
multi-process check of functionals. Import them all from :mod:`jef.testing`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import attrs
import torch
from torch import Tensor, nn

from jef.components import Branch, RunContext, StepOutputs
from jef.plugins import Plugins
from jef.config.validate import build_options

__all__ = ["ContractError", "build_component", "check_component", "check_energy", "check_functional"]


class ContractError(AssertionError):
    """A component breaks the contract of its kind (an ``AssertionError``, so pytest shows it as a failure)."""


def label(kind: str, name: str) -> str:
    """``energy 'huber'``, or just ``energy`` when no name was given."""
    return kind if name == kind else f"{kind} {name!r}"


def fail(who: str, message: str) -> NoReturn:
    """Raise the :class:`ContractError` of component ``who``."""
    raise ContractError(f"{who}: {message}")


def shape(t: Tensor) -> list[int]:
    """A tensor's shape as a list, the way messages print it."""
    return list(t.shape)


def check_grad(who: str, what: str, grad: Tensor | None, *, nonzero: bool = True) -> None:
    """Require a finite (and, by default, not all-zero) gradient."""
    if grad is not None and not torch.isfinite(grad).all():
        fail(who, f"the gradient with respect to {what} is not finite")
    if grad is None or (nonzero and not grad.abs().sum() > 0):
        fail(who, f"no gradient reaches {what} (it is {'missing' if grad is None else 'all zeros'}); the "
                  "output must depend differentiably on it, or the network cannot learn through it")


def random_weights(n: int, gen: torch.Generator, like: Tensor) -> Tensor:
    """``n`` weights in ``[0.5, 1.5)`` on ``like``'s device and dtype, to reduce an output before backward."""
    # Random positive weights instead of a plain sum: sums over a batch-normalised
    # output have zero gradient by construction, which would hide a working component.
    return (torch.rand(n, generator=gen) + 0.5).to(device=like.device, dtype=like.dtype)


# -- energies ------------------------------------------------------------------------


def check_energy(energy: nn.Module, *, name: str = "energy", n: int = 6, dim: int = 8) -> None:
    """Check an energy D: ``forward(a, b) -> Tensor[N]`` with gradients to both inputs.

    Checks the shape, dtype and finiteness of the output, that gradients reach
    ``a`` and ``b`` (finite, not all zero), ``D(a, a)`` with one tensor for
    both inputs, and bfloat16 inputs.

    Args:
        energy: The built energy.
        name: Its name, for messages.
        n: Samples per input.
        dim: Embedding width.

    Raises:
        ContractError: On the first violation.
    """
    who = label("energy", name)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, dim, generator=gen).requires_grad_() for _ in range(2))

    def run(x: Tensor, y: Tensor, what: str) -> Tensor:
        out = energy(x, y)
        if not isinstance(out, Tensor):
            fail(who, f"forward({what}) must return a Tensor of {n} distances, got {type(out).__name__}")
        if shape(out) != [n]:
            fail(who, f"forward({what}) must return shape [{n}] (one distance per sample) for inputs "
                      f"[{n}, {dim}], got {shape(out)}")
        if not out.is_floating_point():
            fail(who, f"forward({what}) must return floating-point distances, got {out.dtype}")
        if not torch.isfinite(out).all():
            fail(who, f"forward({what}) returned non-finite values: {out.detach().float().tolist()}")
        return out

    with torch.enable_grad():
        out = run(a, b, "a, b")
        if not out.requires_grad:
            fail(who, "the output carries no gradient (detached, or independent of a and b); "
                      "compute it from a and b with differentiable operations")
        (out * random_weights(n, gen, out)).sum().backward()
        check_grad(who, "a", a.grad)
        check_grad(who, "b", b.grad)

        same = torch.randn(n, dim, generator=gen).requires_grad_()
        identical = run(same, same, "a, a")  # e.g. a shared target with identical views
        if identical.requires_grad:
            identical.sum().backward()
        check_grad(who, "a when a and b are the same tensor", same.grad, nonzero=False)

        run(a.detach().bfloat16(), b.detach().bfloat16(), "bfloat16 a, b")


# -- functionals ---------------------------------------------------------------------


def embeddings(n: int, dim: int, n_views: int, predictor: bool, *, dtype: torch.dtype = torch.float32,
               seed: int = 0) -> dict[str, list[Tensor]]:
    """Seeded online embeddings ``{"h": [...], "z": [...], ("p": [...])}``, one ``[n, dim]`` tensor per view."""
    gen = torch.Generator().manual_seed(seed)
    kinds = ("h", "z", "p") if predictor else ("h", "z")
    return {kind: [torch.randn(n, dim, generator=gen, dtype=dtype) for _ in range(n_views)] for kind in kinds}


def step_outputs(leaves: Mapping[str, list[Tensor]], n_global: int, indices: Tensor | None) -> StepOutputs:
    """A ``shared``-target :class:`StepOutputs`: the target is the online branch's global views."""
    online = Branch(h=list(leaves["h"]), z=list(leaves["z"]), p=list(leaves["p"]) if "p" in leaves else None)
    target = Branch(h=online.h[:n_global], z=online.z[:n_global])
    return StepOutputs(online=online, target=target, n_global=n_global, indices=indices)


def _made_targets(who: str, functional: Any, out: StepOutputs, n: int) -> StepOutputs:
    """Call ``functional.targets(out)`` and check what it made."""
    made = functional.targets(out)
    if not isinstance(made, StepOutputs):
        fail(who, f"targets(out) must return a StepOutputs (attrs.evolve(out, ...)), got {type(made).__name__}")
    if len(made.target.z) != len(out.target.z) or len(made.online.out) != len(out.online.out):
        fail(who, f"targets(out) must keep the views: {len(out.online.out)} online and {len(out.target.z)} target "
                  f"views came in, {len(made.online.out)} and {len(made.target.z)} went out")
    width = made.target.z[0].shape[-1] if made.target.z else None
    for b, t in enumerate(made.target.z):
        if t.dim() != 2 or t.shape[0] != n or t.shape[1] != width or not torch.isfinite(t).all():
            fail(who, f"made target {b} must be a finite [{n}, K] tensor like the others, got shape {shape(t)}")
        if t.requires_grad:
            fail(who, f"made target {b} carries a gradient; targets are constants for the energy: compute them "
                      "under torch.no_grad() or detach them")
    for a, o in enumerate(made.online.out):
        if o.shape != (n, width):
            fail(who, f"online output {a} has shape {shape(o)} but the made targets are [{n}, {width}]; the energy "
                      "compares them pairwise, so score the online outputs into the targets' space")
    for b, p in enumerate(made.assignments or []):
        if (p < 0).any() or not torch.allclose(p.sum(dim=1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
            fail(who, f"assignments[{b}] must hold probability rows (non-negative, summing to 1)")
    return made


def functional_terms(who: str, functional: Callable[[StepOutputs], Any], out: StepOutputs, *,
                     allow_empty: bool = False) -> dict[str, Tensor]:
    """Call a functional and check its result is a finite scalar or a dict of them (non-empty unless allowed).

    Returns:
        The terms by name; a single scalar is returned as ``{"": value}``.
    """
    result = functional(out)
    if isinstance(result, Tensor):
        terms = {"": result}
    elif isinstance(result, Mapping):
        if not result and not allow_empty:
            fail(who, "returned an empty dict; return a scalar tensor or a dict of named scalar tensors")
        terms = dict(result)
    else:
        fail(who, f"must return a scalar tensor or a dict of named scalar tensors, got {type(result).__name__}")
    for key, value in terms.items():
        what = "the result" if key == "" else f"term {key!r}"
        if key != "" and not isinstance(key, str):
            fail(who, f"dict keys must be term names (str), got {key!r}")
        if not isinstance(value, Tensor):
            fail(who, f"{what} must be a scalar tensor, got {type(value).__name__}")
        if value.dim() != 0:
            fail(who, f"{what} must be a 0-d (scalar) tensor, got shape {shape(value)}; reduce it, e.g. .mean()")
        if not value.is_floating_point():
            fail(who, f"{what} must be floating point, got {value.dtype}")
        if not torch.isfinite(value):
            fail(who, f"{what} is not finite ({value.item()}) on random embeddings")
    return terms


def check_functional(functional: nn.Module, *, name: str = "functional", n: int = 8, dim: int = 8,
                     n_views: int = 2, n_global: int = 2, predictor: bool = False,
                     deterministic: bool = True) -> None:
    """Check a functional: finite scalar terms, gradients to the online embeddings, no hidden randomness.

    The input is a ``shared``-target :class:`StepOutputs` (the target branch is
    the online branch's global views) of seeded leaf tensors requiring grad.

    A functional that makes targets (has ``targets(out)``) is checked for
    that too: it must return a :class:`StepOutputs` with one finite,
    gradient-free target per global view, online outputs of the same width,
    and probability rows in ``assignments`` if it sets them; its ``forward``
    may then return an empty dict. Gradients must reach the online
    embeddings through its terms or through the online outputs it returns.
    Making targets may update state (a centre, a queue), so only the terms
    are checked for determinism.

    Args:
        functional: The built functional.
        name: Its name, for messages.
        n: Samples per view.
        dim: Width of every embedding (``h``, ``z`` and ``p``).
        n_views: Views; the first ``n_global`` are global (and have targets).
        n_global: Global views.
        predictor: Give the online branch predictor outputs ``p``.
        deterministic: Require two calls on the same inputs to agree (pass
            False for functionals that sample).

    Raises:
        ContractError: On the first violation.
    """
    who = label("functional", name)
    if not 1 <= n_global <= n_views:
        raise ValueError(f"check_functional: need 1 <= n_global <= n_views, got {n_global} and {n_views}")
    leaves = {k: [t.requires_grad_() for t in v] for k, v in embeddings(n, dim, n_views, predictor).items()}
    out = step_outputs(leaves, n_global, torch.arange(n))
    makes_targets = callable(getattr(functional, "targets", None))
    with torch.enable_grad():
        if makes_targets:
            out = _made_targets(who, functional, out, n)
        terms = functional_terms(who, functional, out, allow_empty=makes_targets)
        total = sum(terms.values())
        if makes_targets:  # the energy reaches the online embeddings through the outputs the functional returned
            gen = torch.Generator().manual_seed(1)
            total = total + sum((o * torch.rand(o.shape, generator=gen)).sum() for o in out.online.out)
        if not isinstance(total, Tensor) or not total.requires_grad:
            fail(who, "the result carries no gradient (detached, or independent of the embeddings)")
        total.backward()
    grads = {f"online {k}[{i}]": t.grad for k, v in leaves.items() for i, t in enumerate(v)}
    if all(g is None or not g.abs().sum() > 0 for g in grads.values()):
        fail(who, "backward reaches none of the online embeddings (h, z" + (", p" if predictor else "")
             + "): every gradient is missing or zero")
    for what, grad in grads.items():
        if grad is not None and not torch.isfinite(grad).all():
            fail(who, f"the gradient with respect to {what} is not finite")
    if deterministic:
        again = functional_terms(who, functional, out, allow_empty=makes_targets)
        for key, value in terms.items():
            if key not in again or not torch.allclose(value.detach(), again[key].detach(), rtol=1e-6, atol=1e-7):
                what = "the result" if key == "" else f"term {key!r}"
                fail(who, f"two calls on the same inputs disagree on {what} ({value.item()} then "
                          f"{again[key].item() if key in again else 'missing'}); draw randomness from an explicit "
                          "generator, or pass deterministic=False if the functional samples on purpose")


# -- dispatch and building -------------------------------------------------------------


def _checks() -> dict[str, Callable[..., None]]:
    # Imported here: module_contracts imports this module's helpers.
    from jef.testing.mask_contracts import check_masker
    from jef.testing.module_contracts import check_augmenter, check_backbone, check_head

    return {"energy": check_energy, "functional": check_functional, "augmenter": check_augmenter,
            "backbone": check_backbone, "head": check_head, "masker": check_masker}


def check_component(kind: str, component: Any, **kwargs: Any) -> None:
    """Run the contract check of ``kind`` (a registry kind) on ``component``; ``kwargs`` go to the check.

    Raises:
        ValueError: ``kind`` has no contract check.
        ContractError: The component breaks its contract.
    """
    checks = _checks()
    if kind not in checks:
        raise ValueError(f"no contract check for kind {kind!r}; supported kinds: {', '.join(checks)}")
    checks[kind](component, **kwargs)


def build_component(plugins: Plugins, kind: str, name: str, options: Mapping[str, Any] | None = None,
                    ctx: RunContext | None = None) -> Any:
    """Build a registered component the way a pipeline would, with small defaults.

    Args:
        plugins: Loaded plugins (e.g. ``load_plugins(entry_points=False)``).
        kind: Registry kind (``"energy"``, ``"head"``, ...).
        name: Name or ``plugin:name``.
        options: Option values as they would appear in YAML.
        ctx: Run context; default: 16-pixel 3-channel images, batches of 8,
            and ``in_dim=8`` for heads.

    Returns:
        What the factory returns.
    """
    entry = plugins.registry.get(kind, name)
    built_options = build_options(entry.options, dict(options or {}), name)
    if ctx is None:
        ctx = RunContext(batch_size=8, global_batch_size=8, image_size=16, in_channels=3)
        if kind == "head":
            ctx = attrs.evolve(ctx, in_dim=8)
        if kind in ("masker", "head", "functional"):  # maskers, token heads, pixel targets: 4 px patches
            ctx = attrs.evolve(ctx, patch_size=4)
    return entry.factory(built_options, ctx)
