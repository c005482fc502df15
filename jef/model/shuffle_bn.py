"""Shuffling BN for the key encoder (He et al., MoCo, 2020, arXiv:1911.05722, Sec. 3.3).

With BatchNorm, the query of sample ``i`` and its key are normalised with
batch statistics; when both come from the same set of samples, the network
can "cheat" the pretext task by recognising that shared statistic instead of
learning a good representation (MoCo's Sec. 3.3 and Fig. A.1 show the loss
dropping and kNN accuracy falling). MoCo computes the keys on a randomly
shuffled batch, so that the key of sample ``i`` is normalised with the
statistics of a random subset of the batch, and shuffles back.

Here: the images of a view are gathered from every process, permuted with one
permutation drawn on rank 0 and broadcast, each process encodes its shard in
``groups`` separate calls (two in a single process, one per process when
distributed: the processes then are the groups), the outputs are gathered,
un-permuted, and each process keeps the rows of its own samples. The key
encoder is backbone *and* projector: a BatchNorm in the projector would leak
the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as tdist
from torch import Tensor

from jef import dist
from jef.components import Branch

__all__ = ["shuffled_encode", "shuffled_forward"]


def _permutation(total: int, device: torch.device) -> Tensor:
    """A random permutation of ``range(total)``, the same on every process (rank 0's, broadcast)."""
    permutation = torch.randperm(total, device=device)
    if dist.is_distributed():
        tdist.broadcast(permutation, src=0)
    return permutation


@torch.no_grad()
def shuffled_forward(encoder: Callable[[Tensor], tuple[Tensor, Tensor]], images: Tensor,
                     groups: int | None = None) -> tuple[Tensor, Tensor]:
    """Run ``encoder`` on ``images`` in shuffled groups and return its outputs in the original order.

    Args:
        encoder: Maps a batch to ``(h, z)`` (backbone and projector outputs).
        images: ``[N, ...]`` this process's images of one view.
        groups: Separate encoder calls per process; default 2 in one
            process and 1 when distributed (each process is a group).

    Returns:
        ``(h, z)`` for this process's ``N`` images, in their order.

    Raises:
        ValueError: Fewer samples per process than groups.
    """
    world, n = dist.world_size(), images.shape[0]
    groups = groups if groups is not None else (2 if world == 1 else 1)
    if n < groups:
        raise ValueError(f"shuffle_bn: {n} samples per process cannot be split into {groups} groups; "
                         "raise train.batch_size")
    gathered = dist.gather(images)  # [W*N, ...], rank-major
    permutation = _permutation(gathered.shape[0], gathered.device)
    start = dist.rank() * n
    shard = gathered[permutation[start:start + n]]
    outputs = [encoder(chunk) for chunk in shard.tensor_split(groups)]
    h, z = (torch.cat([o[i] for o in outputs]) for i in range(2))
    h_all, z_all = dist.gather(h), dist.gather(z)  # row j holds the sample at permutation[j]
    inverse = torch.argsort(permutation)
    mine = inverse[start:start + n]  # where each of this process's samples ended up
    return h_all[mine], z_all[mine]


@torch.no_grad()
def shuffled_encode(views: list[Tensor], backbone: Callable[[Tensor], Tensor],
                    projector: Callable[[Tensor], Tensor] | None) -> Branch:
    """The key branch of ``views`` with shuffling BN, one shuffled pass per view.

    Args:
        views: The global views, ``[N, C, H, W]`` each.
        backbone: The key (EMA) backbone.
        projector: The key projector, or None (``z = h``).
    """
    def encoder(x: Tensor) -> tuple[Tensor, Tensor]:
        h = backbone(x)
        return h, projector(h) if projector is not None else h

    h, z = zip(*(shuffled_forward(encoder, view) for view in views), strict=True)
    return Branch(h=list(h), z=list(z))
