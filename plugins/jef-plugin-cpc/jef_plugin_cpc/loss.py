"""The ``cpc`` functional: a context network over the patch grid, linear predictions, InfoNCE over the global batch.

With ``z_{i,j}`` the embedding of patch ``(i, j)`` of an image and ``c_{i,j}`` its context (rows ``≤ i`` only,
:mod:`jef_plugin_cpc.context`), CPC [1, Eq. 4; 2, Eq. 3] predicts ``ẑ_{i+k,j} = W_k c_{i,j}`` for each offset
``k = 1..K`` and asks the prediction to pick out the true ``z_{i+k,j}`` among a set of embeddings::

    L_k = − mean_{(n,i,j): i+k < G} log  exp(ẑ_{n,i+k,j} · z_{n,i+k,j}) / Σ_{z_l ∈ N} exp(ẑ_{n,i+k,j} · z_l)
    L   = Σ_{k=1..K} L_k

The set ``N`` here is every patch embedding of the *global* batch: all ``G²`` positions of all ``W·B`` images,
the positive among them (so the other patches of the same image, as in [2], and of every other image), gathered
with :func:`jef.dist.gather`, which carries gradients back to the process that embedded them. Each process
averages over its own predictions; all processes make the same number, so with DDP's average of gradients ``W``
processes train as one process on the global batch. The score is the plain dot product of the papers (no
temperature, no normalisation), in float32 with autocast off.

The functional owns the context network and the maps ``W_k``: they are part of the model (trained by the
optimiser, kept in checkpoints) and are dropped after pre-training, as in the papers.

References:
    [1] van den Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding. 2018.
        arXiv:1807.03748.
    [2] Hénaff et al. Data-Efficient Image Recognition with Contrastive Predictive Coding. ICML 2020.
        arXiv:1905.09272.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor, nn

from jef import dist
from jef.components import RunContext, StepOutputs
from jef_plugin_cpc.context import GRUContext, MaskedConvContext

__all__ = ["CPC", "CPCOptions", "build_cpc", "cpc_info_nce", "patch_grid_of"]


@attrs.frozen(kw_only=True)
class CPCOptions:
    """Options of the ``cpc`` functional."""

    context: Literal["masked_conv", "gru"] = attrs.field(
        default="masked_conv", validator=v.in_(("masked_conv", "gru")),
        metadata={"doc": "masked_conv: CPC v2's causal convolution stack | gru: CPC v1's GRU down each column"})
    offsets: int = attrs.field(default=2, validator=[v.instance_of(int), v.ge(1), v.le(31)],
                               metadata={"doc": "K: predict rows i+1 .. i+K from the context of row i (K < G)"})
    hidden: int | None = attrs.field(default=None, validator=v.optional([v.instance_of(int), v.ge(1), v.le(65536)]),
                                     metadata={"doc": "width of the context vectors; null: the embeddings' width"})
    depth: int = attrs.field(default=2, validator=[v.instance_of(int), v.ge(0), v.le(64)],
                             metadata={"doc": "masked_conv: residual blocks"})
    kernel: int = attrs.field(default=3, validator=[v.instance_of(int), v.ge(1), v.le(15)],
                              metadata={"doc": "masked_conv: side of each causal convolution"})
    layer_norm: bool = attrs.field(default=True, metadata={"doc": "CPC v2's layer norm in the context network"})


def patch_grid_of(out: StepOutputs, who: str = "cpc") -> Tensor:
    """The online embeddings of the ``G²`` patch views as a grid ``[B, G, G, d]`` (views in row-major order)."""
    zs = out.online.z
    grid = math.isqrt(len(zs))
    if len(zs) < 4 or grid * grid != len(zs):
        raise ValueError(f"{who}: needs the G² patch views of a grid (augmenter: {{name: patch_grid}}), got "
                         f"{len(zs)} views, which is not a square of at least 2×2")
    facts = out.facts or {}
    if "grid" in facts and bool((facts["grid"] != grid).any()):
        raise ValueError(f"{who}: the augmenter says the grid is {facts['grid'][0].tolist()}, but the online "
                         f"branch has {len(zs)} views")
    return torch.stack(zs, dim=1).unflatten(1, (grid, grid))


def cpc_info_nce(z: Tensor, context: Tensor, maps: Sequence[Callable[[Tensor], Tensor]], *,
                 gather: Callable[[Tensor], Tensor] = dist.gather, rank: int | None = None) -> list[Tensor]:
    """``[L_1, …, L_K]``: CPC's InfoNCE for each offset, negatives from every patch of the global batch.

    Args:
        z: This process's patch embeddings ``[B, G, G, d]``.
        context: Their contexts ``[B, G, G, h]`` (row ``i`` from rows ``≤ i``).
        maps: ``W_1 … W_K``, each mapping ``[..., h]`` to ``[..., d]``.
        gather: Concatenates ``[N, d]`` over processes in rank order (:func:`jef.dist.gather`: with gradients).
        rank: This process's index (None: :func:`jef.dist.rank`).

    Returns:
        One scalar per offset: the mean, over this process's predictions ``(n, i, j)`` with ``i + k < G``, of
        the cross-entropy of the scores ``ẑ · z_l`` against all ``W·B·G²`` embeddings, the true one the target.
    """
    b, g, _, d = z.shape
    if g < 2 or len(maps) >= g:
        raise ValueError(f"cpc: a {g}×{g} grid allows offsets 1..{g - 1}, got K = {len(maps)}; lower offsets")
    bank = gather(z.reshape(b * g * g, d))  # [W·B·G², d], rows (process, sample, row, column)
    start = (dist.rank() if rank is None else rank) * b * g * g
    positions = torch.arange(b * g * g, device=z.device).view(b, g, g) + start
    losses = []
    for k, w_k in enumerate(maps, start=1):
        predictions = w_k(context[:, :g - k])  # ẑ_{i+k, j} from c_{i, j}, i = 0 .. G-k-1: [B, G-k, G, d]
        logits = predictions.reshape(-1, d) @ bank.T
        losses.append(F.cross_entropy(logits, positions[:, k:].reshape(-1)))
    return losses


class CPC(nn.Module):
    """CPC's objective, owning the context network and the prediction maps ``W_k``.

    Args:
        options: The options.
        dim: Width ``d`` of the patch embeddings (``ctx.online_dim``).
        grid: ``G`` when known (``sqrt(ctx.n_views)``), to check ``offsets`` at build time.
    """

    #: It reads the G² views of a patch grid (``patch_grid``), not pairs of views of the whole image: a test that
    #: feeds every functional generic embeddings should skip it, as it skips the ``needs_masks`` target makers.
    needs_patch_grid = True

    def __init__(self, options: CPCOptions, dim: int, grid: int | None = None) -> None:
        super().__init__()
        if grid is not None and options.offsets >= grid:
            raise ValueError(f"cpc: offsets {options.offsets} needs a grid of more than {options.offsets} rows, "
                             f"the augmenter makes {grid}×{grid}; lower offsets or raise the augmenter's grid")
        hidden = options.hidden or dim
        self.options, self.dim, self.grid = options, dim, grid
        if options.context == "masked_conv":
            self.context: nn.Module = MaskedConvContext(dim, hidden, options.depth, options.kernel, options.layer_norm)
        else:
            self.context = GRUContext(dim, hidden, options.layer_norm)
        # W_k: the bilinear score z^T W_k c of the papers, without a bias.
        self.predictors = nn.ModuleList(nn.Linear(hidden, dim, bias=False) for _ in range(options.offsets))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, grid={self.grid}, offsets={self.options.offsets}"

    def forward(self, out: StepOutputs, *, gather: Callable[[Tensor], Tensor] = dist.gather) -> dict[str, Tensor]:
        """``{"k1": L_1, …, "kK": L_K}``, summed into the loss (logged as ``cpc/k1`` …)."""
        device = out.online.z[0].device.type if out.online.z else "cpu"
        # float32 with autocast off: logsumexps over thousands of unnormalised dot products.
        with torch.autocast(device, enabled=False):
            z = patch_grid_of(out)
            if z.shape[-1] != self.dim:
                raise ValueError(f"cpc: the patch embeddings are {z.shape[-1]} wide, it was built for {self.dim}")
            z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
            losses = cpc_info_nce(z, self.context(z), list(self.predictors), gather=gather)
        return {f"k{k}": loss for k, loss in enumerate(losses, start=1)}


def build_cpc(options: CPCOptions, ctx: RunContext) -> CPC:
    """The ``cpc`` functional; reads ``ctx.online_dim`` (``d``) and ``ctx.n_views`` (``G²``).

    Built in a pipeline (``ctx.online_dim`` set), a view count that is not a square is refused here, before any
    step. Built on its own (``ctx.online_dim`` None: a component test with a bare context), it takes ``d`` from
    ``ctx.in_dim`` and checks the grid at its first call instead.
    """
    dim = ctx.online_dim if ctx.online_dim is not None else ctx.in_dim
    if dim is None:
        raise ValueError("cpc: the width of the patch embeddings is unknown (ctx.online_dim and ctx.in_dim are "
                         "None); build it as a pipeline's functional")
    grid = math.isqrt(ctx.n_views)
    if grid * grid != ctx.n_views or grid < 2:
        if ctx.online_dim is not None:
            raise ValueError(f"cpc: the augmenter makes {ctx.n_views} views, not the G² (G >= 2) patches of a "
                             f"grid; use augmenter: {{name: patch_grid}}")
        grid = None
    return CPC(options, dim, grid)
