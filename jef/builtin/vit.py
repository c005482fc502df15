"""The built-in ``vit`` backbone: a pre-norm Vision Transformer on ``scaled_dot_product_attention``.

The blocks are torchvision's ``VisionTransformer`` encoder (pre-norm, LayerNorm eps 1e-6, exact GELU, a CLS
token, the final norm before pooling) written with fused attention, with the parts self-supervised recipes add:
stochastic depth, per-block layer scale, a fixed 2-D sin-cos position embedding and a frozen random patch
projection (MoCo v3), position embeddings resized to views of another size (DINO's multi-crop), and
:meth:`ViT.forward_tokens` for methods that read patch tokens, mask them or read inner blocks (data2vec,
I-JEPA, MAE; ARCHITECTURE §8). Parameter names follow timm's ``VisionTransformer`` (``blocks.0.attn.qkv``);
:func:`convert_torchvision_state_dict` maps torchvision's names onto them.

References:
    [1] Dosovitskiy et al., An Image is Worth 16x16 Words (ViT), 2020, arXiv:2010.11929.
    [2] Chen, Xie & He, An Empirical Study of Training Self-Supervised Vision Transformers (MoCo v3), 2021,
        arXiv:2104.02057: sin-cos position embedding and the frozen random patch projection (sec. 4.2, 5).
    [3] Caron et al., Emerging Properties in Self-Supervised Vision Transformers (DINO), 2021, arXiv:2104.14294:
        position embeddings interpolated for local views.
    [4] Huang et al., Deep Networks with Stochastic Depth, 2016, arXiv:1603.09382.
    [5] Touvron et al., Going deeper with Image Transformers (CaiT), 2021, arXiv:2103.17239: layer scale.
    [6] Bao et al., BEiT, 2021, arXiv:2106.08254; Baevski et al., data2vec, 2022, arXiv:2202.03555: a learned
        mask token replaces masked patch embeddings. He et al., MAE, 2021, arXiv:2111.06377 and Assran et al.,
        I-JEPA, 2023, arXiv:2301.08243: masked tokens are dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor, nn

from jef.builtin.cpu_bf16_conv import guard_strided_convs
from jef.components import RunContext, Tokens
from jef.config.options import size_limit
from jef.hookspecs import Register, hookimpl

__all__ = [
    "PRESETS",
    "ViT",
    "ViTOptions",
    "build_vit",
    "convert_torchvision_state_dict",
    "jef_register_backbones",
    "sincos_position_embedding",
]

#: ``preset: (width, depth, heads)``: ViT-Ti, -S (DeiT, arXiv:2012.12877), -B and -L (ViT, arXiv:2010.11929).
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}

_PAPER = "Dosovitskiy et al., An Image is Worth 16x16 Words, arXiv:2010.11929"


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


def _dims(options: ViTOptions) -> tuple[int, int, int]:
    """``(width, depth, heads)``: the preset's, with the options that override it."""
    width, depth, heads = PRESETS[options.preset]
    return options.width or width, options.depth or depth, options.heads or heads


def _heads_divide_width(instance: ViTOptions, attribute: attrs.Attribute, value: int | None) -> None:
    width, _, heads = _dims(instance)
    if width % heads:
        whose = "" if instance.heads else f" (the {instance.preset!r} preset's)"
        near = sorted((d for d in range(1, width + 1) if width % d == 0), key=lambda d: abs(d - heads))[:3]
        raise ValueError(f"{heads} heads{whose} do not divide the width {width} (each head takes width / heads "
                         f"channels); set heads to a divisor of {width} such as {sorted(near)}, or change width",
                         attribute, value)


def _sincos_width(instance: ViTOptions, attribute: attrs.Attribute, value: str) -> None:
    width = _dims(instance)[0]
    if value == "sincos" and width % 4:
        raise ValueError(f"pos_embed 'sincos' needs a width divisible by 4 (sin and cos of the row and of the column, a "
                         f"quarter of the channels each), got width {width}", attribute, value)


def _fits_patches(instance: ViTOptions, attribute: attrs.Attribute, value: int | None) -> None:
    patch = instance.patch_size
    if value is not None and value % patch:
        fits = max(value - value % patch, patch)
        raise ValueError(f"image_size {value} is not a multiple of patch_size {patch} (the patch grid must tile "
                         f"the image); use an image_size such as {fits}, or another patch_size", attribute, value)


@attrs.frozen(kw_only=True)
class ViTOptions:
    """Options of the ``vit`` backbone: a preset and what overrides it."""

    preset: Literal["tiny", "small", "base", "large"] = attrs.field(
        default="small", validator=v.in_(PRESETS),
        metadata=_doc("width/depth/heads: tiny 192/12/3, small 384/12/6, base 768/12/12, large 1024/24/16"))
    width: int | None = attrs.field(default=None, validator=v.optional([v.ge(1), size_limit]),
                                    metadata=_doc("token width (h is this wide); null: the preset's"))
    depth: int | None = attrs.field(default=None, validator=v.optional([v.ge(1), size_limit]),
                                    metadata=_doc("transformer blocks; null: the preset's"))
    heads: int | None = attrs.field(default=None, validator=[v.optional([v.ge(1), size_limit]), _heads_divide_width],
                                    metadata=_doc("attention heads, a divisor of width; null: the preset's"))
    mlp_ratio: float = attrs.field(default=4.0, validator=[v.gt(0.0), v.le(64.0)],
                                   metadata=_doc("hidden width of each block's MLP / width"))
    patch_size: int = attrs.field(default=16, validator=[v.ge(1), size_limit],
                                  metadata=_doc("side of the square patches"))
    image_size: int | None = attrs.field(
        default=None, validator=[v.optional([v.ge(1), size_limit]), _fits_patches],
        metadata=_doc("side the position embedding is made for; null: the augmenter's global view size. "
                      "Views of other sizes get it resized (bicubic)"))
    pool: Literal["cls", "mean"] = attrs.field(
        default="cls", metadata=_doc("h is the CLS token | the mean of the patch tokens (after the final norm)"))
    drop_path: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.lt(1.0)],
                                   metadata=_doc("stochastic depth rate of the last block, rising linearly from 0"))
    layer_scale: float | None = attrs.field(default=None, validator=v.optional(v.gt(0.0)),
                                            metadata=_doc("initial per-channel residual scale (CaiT), e.g. 1.0e-5; "
                                                          "null: none"))
    pos_embed: Literal["learned", "sincos"] = attrs.field(
        default="learned", validator=_sincos_width,
        metadata=_doc("learned | fixed 2-D sin-cos (MoCo v3), CLS position zeros"))
    frozen_patch_embed: bool = attrs.field(
        default=False, metadata=_doc("keep the random patch projection fixed (MoCo v3's stability fix)"))
    mask_token: bool = attrs.field(
        default=False, metadata=_doc("learn a mask token for forward_tokens(mask, mask_mode='replace') (BEiT, "
                                     "data2vec); off, the parameter does not exist"))


def sincos_position_embedding(grid: tuple[int, int], width: int, temperature: float = 10000.0) -> Tensor:
    """The fixed 2-D sin-cos position embedding of MoCo v3 [2], ``[1, 1 + rows * cols, width]``, CLS first (zeros).

    Token ``(r, c)`` (row-major, as the patch grid is flattened) gets ``[sin(r w), cos(r w), sin(c w), cos(c w)]``
    with ``w_k = temperature ** (-k / (width / 4))``, ``k < width / 4``: on square grids, MoCo v3's layout.
    """
    quarter = width // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    r, c = rows.flatten()[:, None] * omega, cols.flatten()[:, None] * omega
    patches = torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], dim=1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), patches]).float()[None]


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches projected to ``width``: ``[N, C, H, W] -> [N, T, width]``."""

    def __init__(self, in_channels: int, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; ``qkv`` packs q, k, v as ``nn.MultiheadAttention``'s ``in_proj`` does.

    ``causal``: token ``i`` attends to tokens ``<= i`` only (a text encoder's, CLIP's). ``forward(x, mask)``: an
    optional bool ``[N, L]`` key mask, True where a token may be attended to (not padding).
    """

    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True) if self.causal else \
                F.scaled_dot_product_attention(q, k, v)
        else:
            allowed = mask[:, None, None, :]  # [N, 1, 1, L]: every query, every head
            if self.causal:
                allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(out.transpose(1, 2).reshape(n, length, width))


class Mlp(nn.Module):
    """``Linear -> GELU -> Linear``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch, initialised to ``init`` (CaiT [5])."""

    def __init__(self, width: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth [4]: in training, drop a residual branch per sample with probability ``p``, else scale it
    by ``1 / (1 - p)``; the identity in eval mode. Draws from torch's global generator, as dropout does."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.p
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; ``causal``: see
    :class:`Attention`."""

    def __init__(self, width: int, heads: int, hidden: int, drop_path: float, layer_scale: float | None,
                 causal: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, causal)
        self.ls1 = LayerScale(width, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, hidden)
        self.ls2 = LayerScale(width, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``mask``: an optional bool ``[N, L]`` key mask (True: may be attended to), see :class:`Attention`."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), mask)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class ViT(nn.Module):
    """A Vision Transformer backbone: ``forward(images) -> [N, width]``, the pooled output after the final norm.

    Built by :func:`build_vit` from validated :class:`ViTOptions`; the arguments are not checked again.

    Args:
        image_size: Side the position embedding is made for; other sides (multiples of ``patch_size``) get it
            resized bicubically, as DINO's ``interpolate_pos_encoding`` [3] (to the exact grid, as DINOv2 and
            timm, rather than DINO v1's ``scale_factor`` nudged by 0.1).
        patch_size: Side of the patches.
        in_channels: Channels of the images.
        width, depth, heads, mlp_ratio: The transformer's shape.
        pool: ``"cls"`` or ``"mean"`` (of the patch tokens).
        drop_path: Stochastic depth of the last block; block ``i`` uses ``drop_path * i / (depth - 1)``.
        layer_scale: Initial layer scale, or None for none.
        pos_embed: ``"learned"`` or ``"sincos"`` (a buffer: it never trains).
        frozen_patch_embed: Turn off gradients of the patch projection (weight and bias) [2].
        mask_token: Make the learned mask token ``forward_tokens(mask_mode="replace")`` uses.

    Attributes:
        out_dim: ``width``.
        grid: The patch grid ``(rows, cols)`` of ``image_size``.
    """

    def __init__(self, image_size: int, patch_size: int = 16, in_channels: int = 3, width: int = 384,
                 depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0, pool: str = "cls", drop_path: float = 0.0,
                 layer_scale: float | None = None, pos_embed: str = "learned", frozen_patch_embed: bool = False,
                 mask_token: bool = False) -> None:
        super().__init__()
        self.patch_size, self.pool, self.out_dim = patch_size, pool, width
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.patch_embed = PatchEmbed(in_channels, width, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        if pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_position_embedding(self.grid, width))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], width))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
            nn.init.trunc_normal_(self.mask_token, std=0.02)  # as BEiT and data2vec
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(width, heads, int(width * mlp_ratio), rate, layer_scale) for rate in rates)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self._init_weights()
        if frozen_patch_embed:
            self.patch_embed.proj.requires_grad_(False)

    def _init_weights(self) -> None:
        """MoCo v3's initialisation [2]: Xavier-uniform linears (q, k and v as three square matrices), the patch
        projection Xavier-uniform over its flattened kernel (a frozen one stays this random projection), zero
        biases, a CLS token near zero."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if name.endswith("attn.qkv"):
                    bound = math.sqrt(6.0 / (module.weight.shape[0] // 3 + module.weight.shape[1]))
                    nn.init.uniform_(module.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.patch_embed.proj
        bound = math.sqrt(6.0 / (proj.weight[0].numel() + proj.weight.shape[0]))
        nn.init.uniform_(proj.weight, -bound, bound)
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.cls_token, std=1e-6)

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding ``[1, 1 + rows * cols, width]`` of a patch grid, CLS position first.

        The built grid's is returned as is; another grid's is the patch part resized bicubically (the CLS
        position is kept).
        """
        if grid == self.grid:
            return self.pos_embed
        width = self.pos_embed.shape[-1]
        patches = self.pos_embed[:, 1:].reshape(1, *self.grid, width).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], patches.permute(0, 2, 3, 1).reshape(1, -1, width)], dim=1)

    def _embed(self, images: Tensor, mask: Tensor | None = None, mask_mode: str = "replace"
               ) -> tuple[Tensor, tuple[int, int]]:
        """CLS and patch tokens with their positions, ``[N, 1 + T, width]`` (``1 + T_keep`` when dropping)."""
        if images.ndim != 4 or images.shape[-1] % self.patch_size or images.shape[-2] % self.patch_size:
            raise ValueError(f"vit: expected images [N, C, H, W] with H and W multiples of patch_size "
                             f"{self.patch_size}, got {list(images.shape)}; crop or resize the views to a multiple")
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        x = self.patch_embed(images)
        if mask is not None and mask_mode == "replace":
            x = torch.where(mask.unsqueeze(-1), self.mask_token, x)  # then the positions, as BEiT and data2vec
        pos = self.position_embedding(grid)
        x = x + pos[:, 1:]
        if mask is not None and mask_mode == "drop":
            x = x[~mask].reshape(x.shape[0], -1, x.shape[-1])  # row-major: kept tokens stay in grid order
        return torch.cat([(self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1), x], dim=1), grid

    def forward(self, images: Tensor) -> Tensor:
        """Map ``[N, C, H, W]`` images to ``h = [N, width]``: the CLS token, or the mean patch token, after the
        final norm."""
        x, _ = self._embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0]) if self.pool == "cls" else self.norm(x[:, 1:]).mean(dim=1)

    def forward_tokens(self, images: Tensor, mask: Tensor | None = None, blocks: Sequence[int] = (),
                       mask_mode: Literal["replace", "drop"] = "replace") -> Tokens:
        """The tokens, optionally masked, and the outputs of chosen blocks (ARCHITECTURE §8).

        Args:
            images: ``[N, C, H, W]``.
            mask: ``[N, T]`` bool, True where a patch is masked (``T`` the patches of ``images``), or None.
            blocks: Indices of blocks whose outputs to return (negative ones count from the end).
            mask_mode: ``"replace"``: a masked patch's embedding is replaced by the learned mask token before
                the position embedding is added (BEiT, data2vec; needs ``mask_token: true``). ``"drop"``:
                masked tokens are removed after their position embedding is added, so kept tokens keep their
                positions (MAE, I-JEPA); every sample must keep the same number.

        Returns:
            :class:`~jef.components.Tokens`; ``blocks`` is keyed by the indices as asked for.

        Raises:
            ValueError: A mask of the wrong shape or dtype, ``drop`` with unequal keep counts, ``replace`` without a
                mask token, a block index out of range.
        """
        depth = len(self.blocks)
        if mask is not None:
            self._check_mask(images, mask, mask_mode)
        chosen = {}
        for index in blocks:
            if not -depth <= index < depth:
                raise ValueError(f"vit: block {index} does not exist: the backbone has {depth} blocks "
                                 f"(0 to {depth - 1}, or -{depth} to -1 from the end)")
            chosen.setdefault(index % depth, []).append(index)
        x, grid = self._embed(images, mask, mask_mode)
        outputs = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            for index in chosen.get(i, ()):
                outputs[index] = x
        x = self.norm(x)
        return Tokens(patches=x[:, 1:], cls=x[:, 0], blocks=outputs, mask=mask, grid=grid)

    def _check_mask(self, images: Tensor, mask: Tensor, mask_mode: str) -> None:
        tokens = (images.shape[-2] // self.patch_size) * (images.shape[-1] // self.patch_size)
        if mask.dtype != torch.bool or tuple(mask.shape) != (images.shape[0], tokens):
            raise ValueError(f"vit: mask must be a bool tensor [N, T] = {[images.shape[0], tokens]} (True = masked), "
                             f"got {mask.dtype} {list(mask.shape)}")
        if mask_mode == "replace" and not hasattr(self, "mask_token"):
            raise ValueError("vit: mask_mode 'replace' needs a learned mask token: set backbone.mask_token: true")
        if mask_mode == "drop":
            kept = (~mask).sum(dim=1)
            if bool((kept != kept[0]).any()):
                counts = kept.tolist()
                raise ValueError(f"vit: mask_mode 'drop' needs every sample to keep the same number of tokens, got "
                                 f"kept counts {counts[:8]}{' ...' if len(counts) > 8 else ''} (min {min(counts)}, "
                                 f"max {max(counts)}); draw masks with a fixed number of masked patches")
        elif mask_mode != "replace":
            raise ValueError(f"vit: mask_mode must be 'replace' or 'drop', got {mask_mode!r}")


def build_vit(options: ViTOptions, ctx: RunContext) -> ViT:
    """The ``vit`` backbone for ``ctx.in_channels`` images; ``image_size`` defaults to ``ctx.image_size``."""
    if ctx.in_channels < 1:  # the images' channels, which no option validates
        raise ValueError(f"vit: ctx.in_channels must be >= 1, got {ctx.in_channels}")
    image_size = options.image_size or ctx.image_size
    if image_size % options.patch_size:
        raise ValueError(f"vit: the global views are {image_size} px (the augmenter's size), not a multiple of "
                         f"backbone.patch_size {options.patch_size}; set backbone.image_size and crop the views to "
                         f"it, or choose another patch_size")
    width, depth, heads = _dims(options)
    model = ViT(image_size, options.patch_size, ctx.in_channels, width, depth, heads, options.mlp_ratio,
                options.pool, options.drop_path, options.layer_scale, options.pos_embed,
                options.frozen_patch_embed, options.mask_token)
    guard_strided_convs(model)  # bf16 on the CPU: see jef.builtin.cpu_bf16_conv
    return model


_TORCHVISION = [  # (torchvision's key pattern, jef's), for one encoder layer and the top level
    (r"class_token", "cls_token"),
    (r"conv_proj\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.pos_embedding", "pos_embed"),
    (r"encoder\.ln\.(weight|bias)", r"norm.\1"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.ln_1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.ln_2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:0|linear_1)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:3|linear_2)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
]


def convert_torchvision_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """A torchvision ``VisionTransformer`` state dict with jef's (timm's) names, for ``ViT.load_state_dict``.

    The classifier (``heads.*``) is left out: a backbone has none. A key no rule knows keeps its name, so that
    ``load_state_dict`` reports it as unexpected.
    """
    converted = {}
    for key, value in state.items():
        if key.startswith("heads."):
            continue
        for pattern, replacement in _TORCHVISION:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        converted[key] = value
    return converted


@hookimpl
def jef_register_backbones(register: Register) -> None:
    """Register ``vit``."""
    register("vit", build_vit, options=ViTOptions,
             description="Vision Transformer (pre-norm, fused attention): presets tiny to large, CLS or mean "
                         "pooling, sin-cos or learned positions resized to any view size, tokens and masks",
             paper=_PAPER)
