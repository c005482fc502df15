"""Synchronised BatchNorm: batch statistics over every process's samples, on CPU (gloo) and GPU (nccl).

With ``W`` processes each BatchNorm normally sees only its process's ``B``
samples, so a run on ``W`` processes normalises with other statistics than one
process on the global batch of ``W·B`` samples. SimCLR [1] aggregates the
BatchNorm mean and variance over all devices ("global BN"): per-device
statistics let a sample's views recognise each other through the statistics
they share (MoCo [2] prevents the same leak by shuffling instead, see
:mod:`jef.model.shuffle_bn`), and they change the method with the number of devices.

``torch.nn.SyncBatchNorm`` runs only on GPU tensors, so jef has its own. In
the forward pass each process computes the count, mean and (biased) variance
of each channel on its samples, one all-gather exchanges them, and every
process combines them with the pairwise formula of Chan, Golub and LeVeque
[3] (no ``E[x²] − E[x]²`` cancellation). The backward pass is BatchNorm's
closed form [4] with its two per-channel sums all-reduced over processes, so
that, after DDP averages the parameter gradients, the gradients are those of
one process on the global batch. Only the input is kept for the backward
pass, as ``nn.BatchNorm`` keeps it. Running statistics are updated as
``nn.BatchNorm`` updates them, with the unbiased variance of the global batch.

Outside training mode, or in one process, the module is exactly
``nn.BatchNorm``; its state dict has the same keys, so checkpoints load into
models built without it (evaluation, export).

References:
    [1] Chen et al., A Simple Framework for Contrastive Learning of Visual
        Representations (SimCLR), 2020, arXiv:2002.05709, Sec. 2.2 "Global BN".
    [2] He et al., Momentum Contrast (MoCo), 2020, arXiv:1911.05722, Sec. 3.3.
    [3] Chan, Golub, LeVeque, Updating formulae and a pairwise algorithm for
        computing sample variances, 1979, Stanford CS tech. report STAN-CS-79-773.
    [4] Ioffe, Szegedy, Batch Normalization, 2015, arXiv:1502.03167, Sec. 3.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from jef import dist

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "global_moments"]


def _channel_dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


@torch.no_grad()
def global_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x`` over every process's samples (no gradient).

    Args:
        x: ``[N, C, ...]`` this process's activations (any dtype; statistics in float32 or wider).

    Returns:
        ``(mean [C], var [C], count)``, ``count`` a 0-d tensor: the number of
        values per channel over all processes (``N·prod(...)`` summed over
        processes). Nothing is copied to the host (no GPU synchronisation).
    """
    channels = x.shape[1]
    values = x if x.dtype in (torch.float32, torch.float64) else x.float()
    local_var, local_mean = torch.var_mean(values, dim=_channel_dims(x), correction=0)
    count = values.new_full((1,), values.numel() // channels)
    # Every process's [count, mean, var] in one collective; the shape is the layer's, the same everywhere.
    rows = dist.gather(torch.cat([count, local_mean, local_var])[None], check_shapes=False)
    counts, means, variances = rows[:, :1], rows[:, 1:channels + 1], rows[:, channels + 1:]
    total = counts.sum()
    mean = (counts * means).sum(dim=0) / total
    # Chan et al. [4]: M2 = Σ_r (M2_r + n_r (mean_r − mean)²), with M2_r = n_r var_r.
    var = (counts * (variances + (means - mean).pow(2))).sum(dim=0) / total
    return mean, var, total


class _GlobalBatchNorm(torch.autograd.Function):
    """``y = γ·(x − μ)·σ⁻¹ + β`` with the global batch's ``μ`` and ``σ⁻¹``, and BatchNorm's closed-form backward.

    The statistics come in as constants; the backward adds their dependence on
    ``x`` [4], whose sums over the batch run over every process (one
    all-reduce of ``2C`` numbers).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor,  # noqa: ANN001
                invstd: Tensor, count: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, mean, invstd, count)
        ctx.has_bias = bias is not None
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = (x.to(mean.dtype) - mean.view(shape)) * invstd.view(shape)
        if weight is not None:
            out = out * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        x, weight, mean, invstd, count = ctx.saved_tensors
        shape, dims = (1, -1) + (1,) * (x.dim() - 2), _channel_dims(x)
        dy = grad_out.to(mean.dtype)
        centred = x.to(mean.dtype) - mean.view(shape)
        # This process's sums; DDP averages the parameter gradients over processes afterwards, as for any layer.
        sum_dy, sum_dy_centred = dy.sum(dim=dims), (dy * centred).sum(dim=dims)
        grad_x = grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (sum_dy_centred * invstd).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(weight.dtype if weight is not None else sum_dy.dtype)
        if ctx.needs_input_grad[0]:
            # dy holds d(Σ_r L_r)/dy for this process's samples; the mean terms run over the global batch.
            means = dist.all_reduce_sum(torch.cat([sum_dy, sum_dy_centred])) / count
            mean_dy, mean_dy_centred = means[:mean.shape[0]], means[mean.shape[0]:]
            scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
            grad_x = ((dy - mean_dy.view(shape) - centred * (invstd.pow(2) * mean_dy_centred).view(shape))
                      * scale.view(shape)).to(x.dtype)
        return grad_x, grad_weight, grad_bias, None, None, None


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch (all processes).

    Takes ``nn.BatchNorm1d``/``2d``/``3d`` inputs (``[N, C]``, ``[N, C, L]``,
    ``[N, C, H, W]``, ...) and their arguments. In training mode with several
    processes, every process must call it the same number of times in the
    same order (it runs a collective); the per-process batch sizes may differ.
    Otherwise (eval mode, one process) it is ``nn.BatchNorm``: eval mode uses
    the running statistics, or, without them, this process's batch.

    Args:
        num_features: ``C``.
        eps: Added to the variance.
        momentum: Of the running statistics (None: cumulative average).
        affine: Learnable per-channel scale and shift.
        track_running_stats: Keep running mean and variance.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm: expected an input [N, C, ...] with at least 2 dimensions, got shape "
                             f"{tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        """Normalise with the global batch's statistics (training, several processes), else as ``nn.BatchNorm``."""
        if not (self.training and dist.is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm: expected {self.num_features} channels in dim 1, got shape "
                             f"{tuple(input.shape)}")
        # Every process holds at least one sample, so the global count is at least 2: no "more than 1 value
        # per channel" error as in one process.
        mean, var, count = global_moments(input)
        if self.track_running_stats:
            self._update_running_stats(mean, var, count)
        return _GlobalBatchNorm.apply(input, self.weight, self.bias, mean, torch.rsqrt(var + self.eps), count)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        # As nn.BatchNorm: an exponential average with `momentum`, or the cumulative average when it is None,
        # of the mean and the unbiased variance.
        factor = self.momentum if self.momentum is not None else 0.0
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        unbiased = var * (count / (count - 1).clamp(min=1))
        self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` (itself included) by a :class:`SyncBatchNorm`.

    The new layers take over the old ones' parameters (the same tensors, so
    ``requires_grad`` and any optimiser reference carry over), buffers and
    ``training`` flag, in the same place of the module tree: an EMA copy and
    its online network stay separate. ``torch.nn.SyncBatchNorm`` layers are
    replaced too (they do not run on the CPU). Lazy BatchNorms must have seen
    an input first.

    Args:
        module: Any module.

    Returns:
        ``module`` with its BatchNorm children replaced in place, or the new
        layer when ``module`` itself is a BatchNorm.
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
            raise ValueError(f"convert_sync_batchnorm: {type(module).__name__} has not seen an input yet; run one "
                             f"forward pass before converting it")
        converted = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
        converted.weight, converted.bias = module.weight, module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(converted, name, getattr(module, name))
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
