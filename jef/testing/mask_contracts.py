"""Contract checks of the masked path's parts: maskers and token heads (``docs/masks.md``).

See :mod:`jef.testing.contracts` for what the checks share. A target maker of a masked pipeline (a functional
whose ``targets`` fills ``outputs.masked.targets``) is checked end to end by a masked run: its inputs are the
tokens of a real encoder.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jef.components import Masks, Tokens
from jef.testing.contracts import fail, label, shape

__all__ = ["check_masker", "check_token_head"]


def check_masker(masker: nn.Module, *, name: str = "masker", patch_size: int | None = None, batch: int = 6,
                 size: int = 32) -> None:
    """Check a masker: its :class:`~jef.components.Masks`' types and shapes, counts, seeding, no empty row.

    Args:
        masker: The built masker (its factory saw ``ctx.patch_size``).
        name: Its name, for messages.
        patch_size: The patch side it was built for (default: its ``patch_size`` attribute, else 4).
        batch: Views per batch.
        size: View side, a multiple of ``patch_size``.

    Raises:
        ContractError: On the first violation.
    """
    who = label("masker", name)
    patch = patch_size or getattr(masker, "patch_size", 4)
    view = torch.zeros(batch, 3, size, size)
    masks = masker(view, generator=torch.Generator().manual_seed(0))
    if not isinstance(masks, Masks):
        fail(who, f"must return a jef.components.Masks, got {type(masks).__name__}")
    tokens = (size // patch) ** 2
    if masks.grid != (size // patch, size // patch):
        fail(who, f"grid is {masks.grid} for {size} px views of {patch} px patches; expected "
                  f"{(size // patch, size // patch)}")
    for what, m in [("hidden", masks.hidden), *((f"predict[{k}]", p) for k, p in enumerate(masks.predict))]:
        if m.dtype != torch.bool or tuple(m.shape) != (batch, tokens):
            fail(who, f"{what} must be a bool [{batch}, {tokens}] tensor, got {m.dtype} {shape(m)}")
    if not masks.predict:
        fail(who, "predict holds no set: a masked step needs at least one set of positions to predict")
    if masks.hidden.all(dim=1).any():
        fail(who, "hides every patch of a view: an encoder must see at least one")
    if masks.mode not in ("replace", "drop"):
        fail(who, f"mode must be 'replace' or 'drop', got {masks.mode!r}")
    if masks.mode == "drop":
        kept = (~masks.hidden).sum(dim=1)
        if not bool((kept == kept[0]).all()):
            fail(who, "mode 'drop' needs every view to keep the same number of patches, got "
                      f"{kept.min().item()} to {kept.max().item()}")
    world = masks.world_size
    if len(masks.counts) != len(masks.predict) or world < 1:
        fail(who, f"counts must hold one global count per predicted set ({len(masks.predict)}), got {masks.counts}")
    if world == 1 and masks.counts != tuple(int(p.sum()) for p in masks.predict):
        fail(who, f"counts {masks.counts} are not the predicted positions of the batch "
                  f"{tuple(int(p.sum()) for p in masks.predict)} (one process)")
    again = masker(view, generator=torch.Generator().manual_seed(0))
    if not torch.equal(again.hidden, masks.hidden):
        fail(who, "two calls with generators of one seed draw different masks; draw from the generator given")


def check_token_head(head: nn.Module, *, name: str = "head", in_dim: int = 8, batch: int = 3,
                     grid: tuple[int, int] = (4, 4)) -> None:
    """Check a token head: ``out_dim``, one ``[R_k, out_dim]`` per predicted set, gradients to its parameters.

    The tokens are those a ``drop`` or a ``replace`` encoder gives, as the head's ``predict_tokens`` accepts: a
    head that refuses one mode (``ValueError``) is checked with the other.

    Raises:
        ContractError: On the first violation.
    """
    who = label("head", name)
    out_dim = getattr(head, "out_dim", None)
    if not isinstance(out_dim, int) or out_dim < 1:
        fail(who, f"needs a positive int out_dim, got {out_dim!r}")
    gen = torch.Generator().manual_seed(0)
    total = grid[0] * grid[1]
    hidden = torch.zeros(batch, total, dtype=torch.bool)
    hidden[:, : total // 2] = True
    hidden = hidden[:, torch.randperm(total, generator=gen)]
    predict = (hidden, hidden & (hidden.cumsum(dim=1) <= total // 4))  # equal counts: a per-set pass needs them
    rows: list[Tensor] | None = None
    errors = []
    for mode in ("drop", "replace"):
        kept = total - total // 2 if mode == "drop" else total
        patches = torch.randn(batch, kept, in_dim, generator=gen).requires_grad_()
        tokens = Tokens(patches=patches, cls=torch.randn(batch, in_dim, generator=gen), grid=grid)
        masks = Masks(hidden=hidden, predict=predict, mode=mode, grid=grid,
                      counts=tuple(int(p.sum()) for p in predict))
        try:
            rows = head.predict_tokens(tokens, masks)
            break
        except ValueError as error:
            errors.append(f"{mode}: {error}")
    if rows is None:
        fail(who, "predict_tokens refused both masker modes: " + "; ".join(errors))
    if len(rows) != len(predict):
        fail(who, f"returned {len(rows)} prediction tensors for {len(predict)} predicted sets")
    for k, (r, p) in enumerate(zip(rows, predict, strict=True)):
        if tuple(r.shape) != (int(p.sum()), out_dim) or not torch.isfinite(r).all():
            fail(who, f"predictions of set {k} must be a finite [{int(p.sum())}, {out_dim}] tensor (one row per "
                      f"predicted position), got {shape(r)}")
    sum(r.sum() for r in rows).backward()
    if any(p.grad is None for p in head.parameters() if p.requires_grad):
        fail(who, "some parameters get no gradient from the predictions")
