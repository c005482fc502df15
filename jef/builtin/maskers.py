"""Built-in maskers (the ``masker`` kind): ``random``, ``block``, ``multi_block`` and ``inverse_block``.

The drawing is in :mod:`jef.augment.masks`; here are the options, the sharding of the global batch's masks and
the registration, the same hook a third-party plugin implements to add a masker (``docs/masks.md``).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef.augment import masks as draw
from jef.augment.options import _range
from jef.components import Masks, RunContext
from jef.config.options import doc
from jef.hookspecs import Register, hookimpl

__all__ = ["BlockOptions", "InverseBlockOptions", "Masker", "MultiBlockOptions", "RandomOptions"]

_RATIO = [v.gt(0.0), v.lt(1.0)]


@attrs.frozen(kw_only=True)
class RandomOptions:
    """Uniformly random patches, the same number per sample (MAE: 75 %, dropped)."""

    ratio: float = attrs.field(default=0.75, validator=_RATIO, metadata=doc("share of the patches masked"))
    mode: Literal["drop", "replace"] = attrs.field(default="drop", metadata=doc(
        "drop: the encoder sees only the visible patches (MAE); replace: a mask token takes their place"))


@attrs.frozen(kw_only=True)
class BlockOptions:
    """BEiT's block-wise masking: rectangles added until ``ratio`` of the patches are masked (about)."""

    ratio: float = attrs.field(default=0.6, validator=_RATIO, metadata=doc(
        "share of the patches to mask (data2vec 0.6; BEiT 75 of 196 = 0.4)"))
    min_block: int = attrs.field(default=16, validator=v.ge(1), metadata=doc("smallest rectangle, in patches"))
    max_block: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)), metadata=doc(
        "largest rectangle, in patches (null: the whole budget)"))
    aspect: tuple[float, float] = attrs.field(default=(0.3, 1 / 0.3), validator=_range(0.0),
                                              metadata=doc("range of a rectangle's height/width (log-uniform)"))
    mode: Literal["drop", "replace"] = attrs.field(default="replace", metadata=doc(
        "replace: a mask token takes the masked patches' place (BEiT, data2vec); drop needs equal counts, which "
        "block masks rarely have"))


@attrs.frozen(kw_only=True)
class MultiBlockOptions:
    """I-JEPA's masks: one context block minus ``n_targets`` target blocks; the targets are predicted."""

    n_targets: int = attrs.field(default=4, validator=v.ge(1), metadata=doc("target blocks per sample"))
    target_scale: tuple[float, float] = attrs.field(default=(0.15, 0.2), validator=_range(0.0, 1.0),
                                                    metadata=doc("a target block's share of the grid"))
    target_aspect: tuple[float, float] = attrs.field(default=(0.75, 1.5), validator=_range(0.0),
                                                     metadata=doc("a target block's height/width"))
    context_scale: tuple[float, float] = attrs.field(default=(0.85, 1.0), validator=_range(0.0, 1.0),
                                                     metadata=doc("the context block's share of the grid"))
    context_aspect: tuple[float, float] = attrs.field(default=(1.0, 1.0), validator=_range(0.0),
                                                      metadata=doc("the context block's height/width"))
    min_keep: int = attrs.field(default=4, validator=v.ge(1), metadata=doc(
        "fewest context patches a sample may keep before it draws its context again (I-JEPA: 10)"))


@attrs.frozen(kw_only=True)
class InverseBlockOptions:
    """data2vec 2.0's inverse block masking: squares are kept, ``ratio`` of the patches masked, dropped."""

    ratio: float = attrs.field(default=0.8, validator=_RATIO, metadata=doc("share of the patches masked"))
    block: int = attrs.field(default=3, validator=v.ge(1), metadata=doc("side of the kept squares (odd)"))
    adjust: float = attrs.field(default=0.07, validator=v.ge(0.0), metadata=doc(
        "extra share of square centres, for overlaps"))

    def __attrs_post_init__(self) -> None:
        if self.block % 2 == 0:
            raise ValueError(f"block must be odd (a square centred on a patch), got {self.block}")


class Masker(nn.Module):
    """Draws masks for the global batch and keeps this process's rows (see :class:`~jef.components.Masks`).

    Args:
        name: The masker's registry name (for messages).
        options: Its options.
        patch_size: The backbone's patch side.
        rank, world_size: This process and the number of processes.
    """

    def __init__(self, name: str, options: object, patch_size: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.name, self.options, self.patch_size = name, options, patch_size
        self.rank, self.world_size = rank, world_size
        self.mode = getattr(options, "mode", "drop")

    def extra_repr(self) -> str:
        return f"{self.name}, {self.options}"

    def forward(self, view: Tensor, generator: torch.Generator | None = None) -> Masks:
        """The masks of one view ``[B, C, H, W]``, on its device."""
        size = view.shape[-2:]
        if size[0] % self.patch_size or size[1] % self.patch_size:
            raise ValueError(f"{self.name} masker: views of {size[0]}x{size[1]} px are not a whole number of "
                             f"{self.patch_size} px patches; set the augmenter's size to a multiple")
        grid = (size[0] // self.patch_size, size[1] // self.patch_size)
        batch = view.shape[0]
        hidden, predict = self.draw(batch * self.world_size, grid, generator)
        rows = slice(self.rank * batch, (self.rank + 1) * batch)
        masks = Masks(hidden=hidden[rows], predict=tuple(p[rows] for p in predict), mode=self.mode, grid=grid,
                      counts=tuple(int(p.sum()) for p in predict), world_size=self.world_size)
        return masks.to(view.device)

    def draw(self, n: int, grid: tuple[int, int], generator: torch.Generator | None) -> tuple[Tensor, list[Tensor]]:
        """``(hidden, predict)`` for ``n`` samples; every predicted set is the hidden patches but I-JEPA's."""
        o, tokens = self.options, grid[0] * grid[1]
        if isinstance(o, MultiBlockOptions):
            return draw.multi_block_masks(n, grid, n_targets=o.n_targets, target_scale=o.target_scale,
                                          target_aspect=o.target_aspect, context_scale=o.context_scale,
                                          context_aspect=o.context_aspect, min_keep=o.min_keep, generator=generator)
        count = min(max(1, round(o.ratio * tokens)), tokens - 1)  # never none, never every patch
        if isinstance(o, RandomOptions):
            hidden = draw.random_masks(n, grid, count, generator)
        elif isinstance(o, BlockOptions):
            hidden = draw.block_masks(n, grid, count, min_block=min(o.min_block, count), max_block=o.max_block,
                                      aspect=o.aspect, generator=generator)
        else:
            hidden = draw.inverse_block_masks(n, grid, count, block=o.block, adjust=o.adjust, generator=generator)
        return hidden, [hidden]


def _factory(name: str):  # noqa: ANN202 - a registry factory
    def build(options: object, ctx: RunContext) -> Masker:
        if ctx.patch_size is None:  # the pipeline builder says so first, naming the YAML path
            raise ValueError(f"the {name} masker masks patch tokens and needs ctx.patch_size, the backbone's patch")
        return Masker(name, options, ctx.patch_size, ctx.rank, ctx.world_size)
    build.__doc__ = f"The ``{name}`` masker on the backbone's patch grid."
    return build


@hookimpl
def jef_register_maskers(register: Register) -> None:
    """Register ``random``, ``block``, ``multi_block`` and ``inverse_block``."""
    register("random", _factory("random"), options=RandomOptions,
             description="uniformly random patches, the same number per sample (MAE: 75 %, dropped)",
             paper="He et al., MAE, arXiv:2111.06377")
    register("block", _factory("block"), options=BlockOptions,
             description="BEiT's block-wise masking: rectangles until about `ratio` of the patches (data2vec)",
             paper="Bao et al., BEiT, arXiv:2106.08254")
    register("multi_block", _factory("multi_block"), options=MultiBlockOptions,
             description="I-JEPA: a context block less K target blocks; the targets are predicted",
             paper="Assran et al., I-JEPA, arXiv:2301.08243")
    register("inverse_block", _factory("inverse_block"), options=InverseBlockOptions,
             description="data2vec 2.0: squares kept, `ratio` of the patches masked, dropped",
             paper="Baevski et al., data2vec 2.0, arXiv:2212.07525")
