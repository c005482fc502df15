"""The ``invaspread`` functional: [1]'s loss on the step's two views, over the global batch.

References:
    [1] Ye, Zhang, Yuen, Chang. Unsupervised Embedding Learning via Invariant and Spreading Instance Feature.
        CVPR 2019. arXiv:1904.03436.
"""

from __future__ import annotations

import attrs
from attrs import validators as v
from torch import Tensor, nn

from jef import dist
from jef.components import RunContext, StepOutputs
from jef_plugin_invaspread.loss import invaspread_loss

__all__ = ["InvaSpread", "InvaSpreadOptions", "build_invaspread"]


@attrs.frozen(kw_only=True)
class InvaSpreadOptions:
    """Options of the ``invaspread`` functional."""

    temperature: float = attrs.field(
        default=0.1, validator=[v.gt(0.0), v.lt(float("inf"))],
        metadata={"doc": "τ in exp(fᵀf'/τ) (0.1 in the paper; its code's README: 0.05-0.1)"},
    )


class InvaSpread(nn.Module):
    """``J / m`` of [1] with ``x = out.online.z[0]`` and ``x̂ = out.online.z[1]``.

    View 0's ``z`` of every process is gathered with :func:`jef.dist.gather` (the candidates ``f_k``: the
    positive of each augmented sample and every negative, with gradient); the anchors are this process's rows
    of both views. The result is the mean over this process's anchors, so DDP's average over processes equals
    one process on the global batch. With more views (multi-crop, jef's extension: the recipe has two), each
    view after the first is an augmentation ``x̂`` of view 0 and the invariance term is their mean.

    Args:
        temperature: ``τ > 0``.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, out: StepOutputs) -> Tensor:
        """The scalar loss for one step."""
        views = out.online.z
        if len(views) < 2:
            raise ValueError(f"invaspread: needs 2 views (x and its augmentation x̂), got {len(views)}; set "
                             "augmenter.n_global: 2")
        x, augmented = views[0], views[1:]
        for i, view in enumerate(augmented, start=1):
            if view.shape != x.shape:
                raise ValueError(f"invaspread: every view's z must be [N, d] like view 0's {list(x.shape)}, got "
                                 f"view {i}: {list(view.shape)}")
        candidates = dist.gather(x)  # the global batch's f_k, rank by rank
        return invaspread_loss(x, augmented, self.temperature, candidates=candidates,
                               offset=dist.rank() * x.shape[0])

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def build_invaspread(options: InvaSpreadOptions, ctx: RunContext) -> InvaSpread:
    """The ``invaspread`` functional."""
    return InvaSpread(options.temperature)
