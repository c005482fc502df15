"""The ``vit_predictor`` token head: a narrow ViT over the encoder's kept tokens and mask tokens at the predicted
positions, I-JEPA's predictor and MAE's decoder (ARCHITECTURE §8, ``docs/masks.md``).

Both map the tokens an encoder kept (``mode: drop``) to a narrower width, add a fixed 2-D sin-cos position
embedding, append a learned mask token at each position to predict (with that position's embedding), run
transformer blocks and map the mask tokens' outputs to the prediction width. They differ in what one pass
predicts: I-JEPA runs the predictor once per target block (``queries: per_set``: a block's predictions see
the context and that block's mask tokens, not the other blocks'); MAE's decoder runs once over every hidden
position (``queries: hidden``) with the encoder's CLS token, and predicts pixels (``out: pixels``).

References:
    [1] Assran et al., Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture
        (I-JEPA), CVPR 2023, arXiv:2301.08243 (Sec. 3, "Predictor").
    [2] He et al., Masked Autoencoders Are Scalable Vision Learners (MAE), CVPR 2022, arXiv:2111.06377
        (Sec. 3, "MAE decoder").
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef.builtin.vit import Block, sincos_position_embedding
from jef.components import Masks, RunContext, Tokens
from jef.config.options import size_limit
from jef.hookspecs import Register, hookimpl

__all__ = ["ViTPredictor", "ViTPredictorOptions", "build_vit_predictor"]


def _multiple_of_four(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value % 4:
        raise ValueError(f"width must be a multiple of 4 (its 2-D sin-cos positions), got {value}")


@attrs.frozen(kw_only=True)
class ViTPredictorOptions:
    """Options of the ``vit_predictor`` token head (I-JEPA ViT-B: width 384, depth 6; MAE: 512, 8, pixels)."""

    width: int = attrs.field(default=384, validator=[v.ge(4), size_limit, _multiple_of_four], metadata={"doc": (
        "width of the predictor's tokens (narrower than the encoder's)")})
    depth: int = attrs.field(default=6, validator=[v.ge(1), size_limit], metadata={"doc": "transformer blocks"})
    heads: int = attrs.field(default=6, validator=[v.ge(1), size_limit],
                             metadata={"doc": "attention heads (must divide width)"})
    mlp_ratio: float = attrs.field(default=4.0, validator=v.gt(0.0), metadata={"doc": "MLP width / width"})
    queries: Literal["per_set", "hidden"] = attrs.field(default="per_set", metadata={"doc": (
        "per_set: one pass per predicted set (I-JEPA's target blocks); hidden: one pass over every hidden "
        "position (MAE's decoder)")})
    out: Literal["encoder", "pixels"] = attrs.field(default="encoder", metadata={"doc": (
        "encoder: predict the encoder's width (I-JEPA); pixels: a patch's pixels, patch_size² × channels (MAE)")})
    cls: bool = attrs.field(default=False, metadata={"doc": "pass the encoder's CLS token too (MAE's decoder)"})

    def __attrs_post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide width ({self.width})")


class ViTPredictor(nn.Module):
    """A narrow ViT from kept tokens and positional mask tokens to predictions at the predicted positions.

    Args:
        in_dim: The encoder's width.
        out_dim: The predictions' width.
        options: Width, depth, heads, what a pass queries, whether the CLS token joins.
    """

    #: It has no row forward: a pipeline without a masker refuses it when it is built.
    token_only = True

    def __init__(self, in_dim: int, out_dim: int, options: ViTPredictorOptions) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.options = in_dim, out_dim, options
        width = options.width
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(Block(width, options.heads, int(width * options.mlp_ratio), 0.0, None)
                                    for _ in range(options.depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.project = nn.Linear(width, out_dim)
        self._positions: dict[tuple[tuple[int, int], str], Tensor] = {}
        for module in self.modules():  # as I-JEPA's and MAE's code: truncated-normal linears, zero biases
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """Not a row head: a token head predicts from tokens and masks (:meth:`predict_tokens`)."""
        raise TypeError("vit_predictor is a token head: it needs the encoder's tokens and masks (a pipeline with "
                        "a masker calls predict_tokens)")

    def position(self, grid: tuple[int, int], device: torch.device) -> Tensor:
        """The fixed sin-cos embedding ``[1, 1 + T, width]`` of a grid (CLS first), made once per grid."""
        key = (grid, str(device))
        if key not in self._positions:
            self._positions[key] = sincos_position_embedding(grid, self.options.width).to(device)
        return self._positions[key]

    def predict_tokens(self, tokens: Tokens, masks: Masks) -> list[Tensor]:
        """The predictions ``[R_k, out_dim]`` at each predicted set's positions, rows in row-major order."""
        patches, hidden = tokens.patches, masks.hidden
        n, total = hidden.shape
        if patches.shape[1] == total:
            raise ValueError("vit_predictor predicts from the tokens an encoder kept; set the masker's mode: drop")
        pos = self.position(masks.grid, patches.device).to(patches.dtype)
        grid_pos = pos[:, 1:].expand(n, -1, -1)
        kept = self.embed(patches) + grid_pos[~hidden].reshape(n, -1, pos.shape[-1])
        if self.options.cls and tokens.cls is not None:
            kept = torch.cat([self.embed(tokens.cls[:, None]) + pos[:, :1], kept], dim=1)
        if self.options.queries == "hidden":
            out = self._queried(kept, hidden, grid_pos)
            if all(positions is hidden for positions in masks.predict):  # MAE: the rows are the pass's outputs
                return [out.reshape(-1, self.out_dim) for _ in masks.predict]
            full = out.new_zeros(n, total, self.out_dim)
            full[hidden] = out.reshape(-1, self.out_dim)
            for positions in masks.predict:
                if (positions & ~hidden).any():
                    raise ValueError("vit_predictor (queries: hidden) predicts hidden positions only, but a predicted "
                                     "set holds patches the encoder saw; use queries: per_set")
            return [full[positions] for positions in masks.predict]
        return [self._queried(kept, positions, grid_pos).reshape(-1, self.out_dim) for positions in masks.predict]

    def _queried(self, kept: Tensor, positions: Tensor, grid_pos: Tensor) -> Tensor:
        """One pass: the kept tokens and a mask token at each of ``positions`` -> ``[N, M, out_dim]``."""
        n = positions.shape[0]
        counts = positions.sum(dim=1)
        if not bool((counts == counts[0]).all()):
            raise ValueError(f"vit_predictor: every sample must predict the same number of positions per pass, got "
                             f"{counts.min().item()} to {counts.max().item()}; use a masker with equal counts "
                             f"(random, multi_block, inverse_block)")
        queries = self.mask_token + grid_pos[positions].reshape(n, -1, grid_pos.shape[-1])
        x = torch.cat([kept, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.project(self.norm(x[:, kept.shape[1]:]))


def build_vit_predictor(options: ViTPredictorOptions, ctx: RunContext) -> ViTPredictor:
    """``vit_predictor`` on the encoder's ``ctx.in_dim``-wide tokens."""
    if ctx.in_dim is None:
        raise ValueError("vit_predictor needs ctx.in_dim, the encoder's width")
    if options.out == "pixels":
        # Without patches (no token backbone) there is no masker either, and the build refuses a token head then.
        return ViTPredictor(ctx.in_dim, (ctx.patch_size or 1) ** 2 * ctx.in_channels, options)
    return ViTPredictor(ctx.in_dim, ctx.in_dim, options)


@hookimpl
def jef_register_heads(register: Register) -> None:
    """Register ``vit_predictor``."""
    register("vit_predictor", build_vit_predictor, options=ViTPredictorOptions,
             description="token head: a narrow ViT over kept tokens and positional mask tokens (I-JEPA's "
                         "predictor, per target block; MAE's decoder, over every hidden patch, to pixels)",
             paper="Assran et al., I-JEPA, arXiv:2301.08243; He et al., MAE, arXiv:2111.06377")
