"""The ``triplet`` functional: FaceNet's triplet loss [1] between two views of each image, over the global batch.

Each image is its own identity: the two augmented views of an image are the anchor and the positive, every
other image of the *global* batch is a negative identity. The maths is in :mod:`jef_plugin_triplet.mining`;
here are the run's parts: which candidates are positives and negatives, and the gather over processes.

References:
    [1] Schroff, Kalenichenko, Philbin. FaceNet. CVPR 2015. arXiv:1503.03832.
    [2] Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person Re-Identification. 2017.
        arXiv:1703.07737.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef import dist
from jef.components import RunContext, StepOutputs
from jef_plugin_triplet.mining import MINING, triplet_loss

__all__ = ["Triplet", "TripletOptions", "build_triplet", "two_view_triplet_loss"]


def _finite(instance: Any, attribute: Any, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"triplet: {attribute.name} must be finite, got {value!r}")


@attrs.frozen(kw_only=True)
class TripletOptions:
    """Options of the ``triplet`` functional."""

    margin: float = attrs.field(
        default=0.2, converter=float, validator=[v.ge(0.0), _finite],
        metadata={"doc": "α in max(d(a,p) − d(a,n) + α, 0), on squared distances of unit vectors (in [0, 4]); "
                         "FaceNet's 0.2"},
    )
    mining: Literal["semi_hard", "batch_hard"] = attrs.field(
        default="semi_hard", validator=v.in_(MINING),
        metadata={"doc": "semi_hard: the nearest negative farther than the positive (FaceNet Sec. 3.2; the "
                         "farthest negative when none is farther, as TF-Addons); batch_hard: the nearest "
                         "negative (Hermans et al. 2017)"},
    )
    symmetric: bool = attrs.field(
        default=True, validator=v.instance_of(bool),
        metadata={"doc": "anchors from both views (view 0 against view 1 and view 1 against view 0), the mean "
                         "of the two; false: view-0 anchors only"},
    )


def two_view_triplet_loss(z0: Tensor, z1: Tensor, *, margin: float = 0.2, mining: str = "semi_hard",
                          symmetric: bool = True, local: Sequence[Tensor] = (),
                          gather: Callable[[Tensor], Tensor] = dist.gather, rank: int | None = None) -> Tensor:
    """The triplet loss of this process's images against the global batch, two (global) views per image.

    The candidates are both views of the global batch, gathered with ``gather`` (default :func:`jef.dist.gather`,
    which carries the gradient back to the process that made each row): candidate ``v * G + r * N + j`` is view
    ``v`` of image ``j`` of rank ``r`` (``G = W * N``). Anchor ``i`` of view ``a`` (this process's row, with its
    own gradient) has one positive, the other view ``b`` of its image, ``b * G + r * N + i``; its negatives are
    **both views of every other image** of the global batch, ``2 (G − 1)`` of them: an image is an identity and
    both its views are of it, as all of a person's photos are of one identity in [1]. Its own entry
    ``a * G + r * N + i`` is neither.

    Local crops (multi-crop) are anchors only, never candidates, as in SimCLR's and SwAV's multi-crop: a local
    view of image ``i`` has both global views of ``i`` as positives (``semi_hard``: one triplet with each;
    ``batch_hard``: the farther one) and the same negatives.

    The result is the mean over this process's triplets (``2N`` with ``symmetric``, else ``N``, plus ``2N`` or
    ``N`` per local view with ``semi_hard`` or ``batch_hard``). Every process has the same number, so DDP's
    average of gradients over ``W`` processes equals one process on the global batch.

    Args:
        z0: ``[N, d]`` view 0 of this process's images.
        z1: ``[N, d]`` view 1 of the same images, row for row.
        margin: ``α``.
        mining: ``"semi_hard"`` [1] or ``"batch_hard"`` [2].
        symmetric: Anchors from both views (the mean over both orders), else from view 0 only.
        local: ``[N, d]`` local crops of the same images, anchors against the two global views.
        gather: Concatenation of a tensor over processes in rank order (tests pass one without gradient).
        rank: This process's index (default :func:`jef.dist.rank`).

    Returns:
        The scalar loss.

    Raises:
        ValueError: The views differ in shape or the global batch holds a single image.
    """
    shapes = [list(z.shape) for z in (z0, z1, *local)]
    if z0.dim() != 2 or any(shape != shapes[0] for shape in shapes):
        raise ValueError(f"triplet: every view must be an [N, d] tensor of the same shape (row n of each is "
                         f"image n), got {shapes}")
    n = z0.shape[0]
    views = [gather(z0), gather(z1)]
    g = views[0].shape[0]
    if g < 2:  # g is the same on every process, so every process raises: none waits in a collective
        raise ValueError(f"triplet: the global batch holds {g} image; a triplet needs another image as its "
                         f"negative: set train.batch_size (times the processes) to at least 2")
    candidates = torch.cat(views)
    device = z0.device
    first = (dist.rank() if rank is None else rank) * n  # row of this rank's image 0 within one gathered view
    image = torch.arange(g, device=device).repeat(2)  # the image of every candidate
    own = first + torch.arange(n, device=device)
    negatives = image[None, :] != own[:, None]
    rows = torch.arange(n, device=device)
    anchors = [(z0, (1,)), (z1, (0,))][: 2 if symmetric else 1] + [(z, (0, 1)) for z in local]
    losses = []
    for anchor, positive_views in anchors:
        positives = torch.zeros_like(negatives)
        for b in positive_views:
            positives[rows, b * g + own] = True
        # The masks are right by construction (1 or 2 positives, 2(g − 1) >= 2 negatives): no host-side checks.
        losses.append(triplet_loss(anchor, candidates, positives, negatives, margin=margin, mining=mining,
                                   reduction="none", validate=False))
    return torch.cat(losses).mean()


class Triplet(nn.Module):
    """FaceNet's triplet loss [1] on the projector outputs of the two global views, over the global batch.

    Reads ``out.online.z[0]`` and ``out.online.z[1]`` (the target is ``shared``: both views go through the one
    network and carry gradients), and any local crops after them as extra anchors; see
    :func:`two_view_triplet_loss`.

    Args:
        margin: ``α``.
        mining: ``"semi_hard"`` [1] or ``"batch_hard"`` [2].
        symmetric: Anchors from both views.
    """

    def __init__(self, margin: float = 0.2, mining: str = "semi_hard", symmetric: bool = True) -> None:
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"triplet: mining must be one of {MINING}, got {mining!r}")
        self.margin, self.mining, self.symmetric = float(margin), mining, bool(symmetric)

    def forward(self, out: StepOutputs) -> Tensor:
        """The scalar loss of one step."""
        views: Sequence[Tensor] = out.online.z
        if len(views) < 2 or out.n_global != 2:
            raise ValueError(f"triplet: needs exactly 2 global views of each image (anchor and positive), got "
                             f"{len(views)} views of which {out.n_global} global; set augmenter.n_global: 2")
        return two_view_triplet_loss(views[0], views[1], local=views[2:], margin=self.margin, mining=self.mining,
                                     symmetric=self.symmetric)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}, symmetric={self.symmetric}"


def build_triplet(options: TripletOptions, ctx: RunContext) -> Triplet:
    """The ``triplet`` functional."""
    return Triplet(options.margin, options.mining, options.symmetric)
