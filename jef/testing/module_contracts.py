"""Contract checks of the modules that make and embed images: augmenters, backbones, heads.

See :mod:`jef.testing.contracts` for what the checks share.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jef.testing.contracts import check_grad, fail, label, random_weights, shape

__all__ = ["check_augmenter", "check_backbone", "check_head"]


def check_augmenter(augmenter: nn.Module, *, name: str = "augmenter", batch: int = 4, channels: int = 3,
                    size: int = 16, seed: int = 0, stochastic: bool = True,
                    device: str | torch.device = "cpu") -> None:
    """Check an augmenter: its views' number, shapes, dtype and device, seeding, and ``eval_view``.

    Args:
        augmenter: The built augmenter.
        name: Its name, for messages.
        batch: Images per batch.
        channels: Image channels.
        size: Image side.
        seed: Seed of the generator handed to ``forward``.
        stochastic: Require another seed to give other views (False for an
            augmenter that makes fixed views).
        device: Where the images are.

    Raises:
        ContractError: On the first violation.
    """
    who = label("augmenter", name)
    n_views, n_global = getattr(augmenter, "n_views", None), getattr(augmenter, "n_global", None)
    if not isinstance(n_views, int) or not isinstance(n_global, int) or not 1 <= n_global <= n_views:
        fail(who, f"needs int attributes n_views and n_global with 1 <= n_global <= n_views, "
                  f"got n_views={n_views!r}, n_global={n_global!r}")
    gen = torch.Generator().manual_seed(1234)
    images = torch.randint(0, 256, (batch, channels, size, size), generator=gen, dtype=torch.uint8).to(device)

    def views(x: Tensor, views_seed: int, what: str) -> list[Tensor]:
        out = augmenter(x, generator=torch.Generator().manual_seed(views_seed))
        if not isinstance(out, list | tuple) or len(out) != n_views:
            got = f"{len(out)} items" if isinstance(out, list | tuple) else type(out).__name__
            fail(who, f"forward({what}) must return a list of n_views={n_views} tensors, got {got}")
        for i, view in enumerate(out):
            if not isinstance(view, Tensor) or view.dim() != 4 or shape(view)[:2] != [batch, channels]:
                got = shape(view) if isinstance(view, Tensor) else type(view).__name__
                fail(who, f"view {i} of forward({what}) must be [{batch}, {channels}, s, s], got {got}")
            if view.dtype != torch.float32 or view.device != x.device:
                fail(who, f"view {i} of forward({what}) must be float32 on {x.device}, got {view.dtype} on "
                          f"{view.device}")
            if not torch.isfinite(view).all():
                fail(who, f"view {i} of forward({what}) has non-finite values")
        shapes = [shape(v) for v in out[:n_global]]
        if any(s != shapes[0] for s in shapes) or shapes[0][2] != shapes[0][3]:
            fail(who, f"the {n_global} global views must share one square shape [B, C, s, s], got {shapes}")
        return list(out)

    first = views(images, seed, "uint8 images")
    views(images.float() / 255, seed, "float images in [0, 1]")
    same = views(images, seed, "uint8 images")
    for i, (x, y) in enumerate(zip(first, same, strict=True)):
        if not torch.equal(x, y):
            fail(who, f"the same seed gave different views (view {i} differs by up to "
                      f"{(x - y).abs().max().item():.3g}); draw every random number from `generator`")
    other = views(images, seed + 1, "uint8 images")
    if stochastic and all(torch.equal(x, y) for x, y in zip(first, other, strict=True)):
        fail(who, "another seed gave identical views; the views must depend on `generator` "
                  "(pass stochastic=False for an augmenter without randomness)")
    evals = [augmenter.eval_view(images) for _ in range(2)]
    if not isinstance(evals[0], Tensor) or evals[0].dim() != 4 or evals[0].shape[0] != batch:
        got = shape(evals[0]) if isinstance(evals[0], Tensor) else type(evals[0]).__name__
        fail(who, f"eval_view(images) must return a [{batch}, C, s, s] tensor, got {got}")
    if not torch.isfinite(evals[0]).all() or not torch.equal(*evals):
        fail(who, "eval_view(images) must be deterministic and finite (two calls gave different or "
                  "non-finite results)")


def _check_module(who: str, module: nn.Module, x: Tensor, batch: int) -> None:
    """Shared part of backbones and heads: ``out_dim``, output shape, gradients to every parameter."""
    out_dim = getattr(module, "out_dim", None)
    if not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim < 1:
        fail(who, f"needs a positive int attribute `out_dim` (known before any forward pass), got {out_dim!r}")
    gen = torch.Generator().manual_seed(1)
    module.zero_grad(set_to_none=True)  # gradients left from earlier use would hide missing ones
    with torch.enable_grad():
        out = module(x)
        if not isinstance(out, Tensor) or shape(out) != [batch, out_dim]:
            got = shape(out) if isinstance(out, Tensor) else type(out).__name__
            fail(who, f"must map {shape(x)} to [{batch}, out_dim={out_dim}], got {got}")
        if not torch.isfinite(out).all():
            fail(who, "the output has non-finite values")
        if not out.requires_grad:
            fail(who, "the output carries no gradient (detached, or independent of the input and parameters)")
        weights = random_weights(batch * out_dim, gen, out).view(batch, out_dim)
        (out * weights).sum().backward()
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    if missing:
        # DDP fails on trainable parameters that receive no gradient (unless told to look for them).
        fail(who, f"trainable parameters receive no gradient: {', '.join(missing)}")
    for param_name, param in params:
        check_grad(who, f"parameter {param_name!r}", param.grad, nonzero=False)
    if params and all(not p.grad.abs().sum() > 0 for _, p in params):
        fail(who, "every parameter's gradient is zero")
    if x.requires_grad:
        check_grad(who, "the input", x.grad)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


def check_backbone(backbone: nn.Module, *, name: str = "backbone", in_channels: int = 3, size: int = 16,
                   batch: int = 4) -> None:
    """Check a backbone: an int ``out_dim``, ``[B, C, H, W] -> [B, out_dim]`` finite, gradients to its parameters.

    Every trainable parameter must receive a finite gradient (DDP fails on
    parameters that receive none) and not all of them may be zero.

    Args:
        backbone: The built backbone (in training mode, as a run uses it).
        name: Its name, for messages.
        in_channels: Channels of the images it was built for.
        size: Image side.
        batch: Images per batch.

    Raises:
        ContractError: On the first violation.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, size, size, generator=gen).to(_device(backbone))
    _check_module(label("backbone", name), backbone, x, batch)


def check_head(head: nn.Module, *, name: str = "head", in_dim: int = 8, batch: int = 4) -> None:
    """Check a head: ``out_dim``, ``[B, in_dim] -> [B, out_dim]``, gradients to its parameters and input.

    Args:
        head: The built head (e.g. with ``ctx.in_dim = in_dim``).
        name: Its name, for messages.
        in_dim: Width of its input.
        batch: Samples per batch.

    Raises:
        ContractError: On the first violation.
    """
    if callable(getattr(head, "predict_tokens", None)):  # a token head (masked pipelines): tokens and masks in
        from jef.testing.mask_contracts import check_token_head

        check_token_head(head, name=name, in_dim=in_dim)
        return
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_dim, generator=gen).to(_device(head)).requires_grad_()
    _check_module(label("head", name), head, x, batch)
