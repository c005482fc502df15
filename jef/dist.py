"""Distributed helpers that degrade to a single process.

Everything here works without ``torch.distributed`` being initialised (one
process): :func:`gather` then returns a copy of its input and the reductions
return copies. Functionals whose terms run over the *global* batch (e.g. the
InfoNCE denominator) must collect embeddings with :func:`gather`, the only
helper here that carries gradients.

Why a gradient-carrying gather: ``torch.distributed.all_gather`` (and
accelerate's ``gather``) return tensors without autograd history, so the other
ranks' embeddings would act as constants and each rank would miss the
gradient its samples receive through the other ranks' losses. :func:`gather`
sums the incoming gradient over ranks in its backward and hands each rank the
slice of its own samples; after DDP averages parameter gradients over the
``W`` processes, the gradients equal those of one process on the global
batch with the loss ``(1/W) Σ_r L_r``.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
from torch import Tensor

__all__ = ["all_reduce_max", "all_reduce_mean", "all_reduce_sum", "barrier", "gather", "is_distributed",
           "is_main_process", "rank", "world_size"]

#: Most dimensions :func:`gather` accepts (the shape check sends a fixed-size vector).
_MAX_DIMS = 8


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    """This process's index (0 when not distributed)."""
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0, the process that writes logs and checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process; a no-op in one process."""
    if is_distributed():
        tdist.barrier()


def _check_equal_shapes(tensor: Tensor) -> None:
    """Raise on every rank when the ranks' tensors differ in shape.

    ``all_gather`` needs equal sizes and would otherwise hang or fail with an
    obscure message; exchanging shapes first costs one tiny collective but
    lets every rank raise the same readable error (no rank is left waiting).
    """
    if tensor.dim() > _MAX_DIMS:
        raise ValueError(f"gather: tensors of at most {_MAX_DIMS} dimensions are supported, got {tensor.dim()}")
    shape = torch.full((_MAX_DIMS + 1,), -1, dtype=torch.long, device=tensor.device)
    shape[0] = tensor.dim()
    shape[1:tensor.dim() + 1] = torch.tensor(tensor.shape, dtype=torch.long)
    shapes = [torch.empty_like(shape) for _ in range(tdist.get_world_size())]
    tdist.all_gather(shapes, shape)
    described = [tuple(s[1:int(s[0]) + 1].tolist()) for s in shapes]
    if any(s != described[0] for s in described):
        raise ValueError(
            "gather: every process must pass a tensor of the same shape (equal per-process batch "
            f"sizes; use drop_last=True in the data loader), got shapes by rank: {described}"
        )


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums gradients over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # noqa: ANN001 - autograd's context object
        ctx.rank = tdist.get_rank()
        ctx.local_size = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(tdist.get_world_size())]
        tdist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # noqa: ANN001
        # Rank r's loss L_r sends a gradient to every gathered sample; the
        # gradient of Σ_r L_r with respect to this rank's samples is the sum
        # of all ranks' gradients on them, hence SUM and not the local slice.
        grad = grad_output.contiguous().clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_size
        return grad[start:start + ctx.local_size]


def gather(tensor: Tensor, *, check_shapes: bool = True) -> Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping gradients.

    Every process must pass a tensor of the same shape (equal per-process
    batch sizes); the shapes are compared first and a ``ValueError`` naming
    them is raised on every rank otherwise. The result is ordered by rank:
    rows ``[r*N, (r+1)*N)`` are rank ``r``'s.

    In the backward pass the incoming gradient is all-reduced (summed) and
    this rank's slice is returned, so that with DDP's gradient averaging the
    parameter gradients equal those of one process on the global batch.

    Args:
        tensor: ``[N, ...]`` local tensor.
        check_shapes: Compare the shapes first (one more, tiny, collective).
            Pass False only where the shape is the same on every process by
            construction (per-channel statistics of one layer): a mismatch
            then hangs or fails inside ``all_gather``.

    Returns:
        ``[W*N, ...]`` tensor; a copy of ``tensor`` (with its gradient path)
        in a single process.
    """
    if tensor.dim() == 0:
        raise ValueError("gather: expected a tensor with a batch dimension, got a 0-d tensor")
    if not is_distributed():
        return tensor.clone()
    if check_shapes:
        _check_equal_shapes(tensor)
    return _GatherWithGrad.apply(tensor)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over processes, without gradient (for statistics).

    Returns a new tensor; the input is left untouched.
    """
    result = tensor.detach().clone()
    if is_distributed():
        tdist.all_reduce(result, op=tdist.ReduceOp.SUM)
    return result


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over processes, without gradient (for statistics).

    Integer tensors are converted to float (a mean of integers is not one).
    """
    result = all_reduce_sum(tensor if tensor.is_floating_point() else tensor.float())
    return result / world_size()


def all_reduce_max(tensor: Tensor) -> Tensor:
    """Element-wise maximum of ``tensor`` over processes, without gradient.

    Returns a new tensor; the input is left untouched.
    """
    result = tensor.detach().clone()
    if is_distributed():
        tdist.all_reduce(result, op=tdist.ReduceOp.MAX)
    return result
