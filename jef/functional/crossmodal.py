"""Image–text contrastive losses: CLIP [1] and SigLIP [2].

Both compare ``N`` local image embeddings with the text embeddings of the
*global* batch (every process's rows, collected with :func:`jef.dist.gather`,
which carries gradients). Row ``i`` of ``image`` is paired with row ``i`` of
``text``; on rank ``r`` of ``W`` processes the local rows are rows
``[r*N, (r+1)*N)`` of the global batch.

Each rank returns the mean over its *local* rows. With :func:`jef.dist.gather`
summing gradients over ranks in its backward, and DDP averaging parameter
gradients over the ``W`` processes, training then sees the gradients of one
process on the global batch: ``(1/W) Σ_r L_r`` equals the one-process loss,
and so do its gradients (the "local loss + gather with gradient" scheme of
open_clip [3]). With ``gather=False`` (or one process) only the local rows are
compared.

The features are ℓ2-normalised in at least float32 and the losses computed with
autocast disabled. ``logit_scale`` is the *log* of the multiplier (CLIP's
learnable temperature, initialised to ``log(1/0.07)`` in [1]); clamping it (to
``log 100`` in [1]) is the caller's business.

References:
    [1] Radford et al., Learning Transferable Visual Models From Natural
        Language Supervision (CLIP), 2021, arXiv:2103.00020.
    [2] Zhai et al., Sigmoid Loss for Language Image Pre-Training (SigLIP),
        2023, arXiv:2303.15343.
    [3] Cherti et al., Reproducible scaling laws for contrastive
        language-image learning (OpenCLIP), 2023, arXiv:2212.07143.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import jef.dist
from jef.functional._checks import check_same_shape, full_precision, normalize

__all__ = ["clip_loss", "siglip_loss"]


def _check_pairs(fn: str, image: Tensor, text: Tensor) -> None:
    check_same_shape(fn, image, text, ("image", "text"))
    if image.shape[0] == 0:
        raise ValueError(f"{fn}: image and text must hold at least one pair, got shape {tuple(image.shape)}")


def _scalar(fn: str, name: str, value: Tensor | float, like: Tensor) -> Tensor:
    """A one-element tensor (or a number) as a 0-d tensor of ``like``'s dtype and device, keeping its gradient."""
    if not isinstance(value, Tensor):
        value = torch.as_tensor(float(value))
    if value.numel() != 1 or value.dim() > 1:
        raise ValueError(f"{fn}: {name} must be a scalar (a 0-d or one-element tensor), got shape "
                         f"{tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {value.dtype}")
    return value.reshape(()).to(dtype=like.dtype, device=like.device)


def _other_side(x: Tensor, gather: bool) -> tuple[Tensor, int]:
    """The global rows of ``x`` (with gradient) and the offset of this rank's rows among them."""
    if gather and jef.dist.is_distributed():
        return jef.dist.gather(x), jef.dist.rank() * x.shape[0]
    return x, 0


def clip_loss(image: Tensor, text: Tensor, logit_scale: Tensor, *, gather: bool = True) -> Tensor:
    """CLIP's symmetric cross-entropy [1] over the global batch.

    ``logits = exp(logit_scale) · Î Tᵀ`` on ℓ2-normalised features, local
    rows against the global other side; the target of local row ``i`` is the
    global column ``rank·N + i``. The loss is
    ``(CE(image→text) + CE(text→image)) / 2``, each cross-entropy a mean over
    the local rows.

    Args:
        image: ``[N, d]`` local image embeddings.
        text: ``[N, d]`` local text embeddings, row ``i`` paired with image ``i``.
        logit_scale: Scalar tensor, the log of the logit multiplier (``log(1/τ)``).
        gather: Compare against every process's rows (with gradient); False
            compares the local rows only.

    Returns:
        Scalar loss (float32 for half-precision inputs).

    Raises:
        ValueError: If image and text are not 2-D of equal shape, hold no
            rows, or ``logit_scale`` is not a scalar.
    """
    fn = "clip_loss"
    _check_pairs(fn, image, text)
    with full_precision(image):
        image_n, text_n = normalize(image), normalize(text)
        scale = _scalar(fn, "logit_scale", logit_scale, image_n).exp()
        all_text, offset = _other_side(text_n, gather)
        all_image, _ = _other_side(image_n, gather)
        labels = torch.arange(image.shape[0], device=image.device) + offset
        per_image = scale * image_n @ all_text.T
        per_text = scale * text_n @ all_image.T
        return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2


class _SigmoidBlocks(torch.autograd.Function):
    """``-(1/N) Σ_i Σ_j log σ(z_ij (t x_i·y_j + b))``, one ``[N, N]`` block of ``y`` at a time in both passes.

    Nothing of size ``N × W·N`` is stored: the backward recomputes each
    block's logits, so memory stays that of one block.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, t: Tensor, b: Tensor, own: int) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, y, t, b)
        ctx.own = own
        n = x.shape[0]
        total = x.new_zeros(())
        for start in range(0, y.shape[0], n):
            logits = t * (x @ y[start:start + n].T) + b
            total = total - F.logsigmoid(_signs(logits, start == own) * logits).sum()
        return total / n

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        x, y, t, b = ctx.saved_tensors
        n = x.shape[0]
        grad_x, grad_y = torch.zeros_like(x), torch.zeros_like(y)
        grad_t, grad_b = torch.zeros_like(t), torch.zeros_like(b)
        for start in range(0, y.shape[0], n):
            block = y[start:start + n]
            dots = x @ block.T
            logits = t * dots + b
            z = _signs(logits, start == ctx.own)
            # d/dl of -log σ(z l) is -z σ(-z l).
            d_logits = -z * torch.sigmoid(-z * logits) * (grad / n)
            grad_x += t * (d_logits @ block)
            grad_y[start:start + n] = t * (d_logits.T @ x)
            grad_t += (d_logits * dots).sum()
            grad_b += d_logits.sum()
        return grad_x, grad_y, grad_t, grad_b, None


def _signs(logits: Tensor, own: bool) -> Tensor:
    """Labels ``z``: +1 on the diagonal of this rank's own block, -1 elsewhere."""
    z = -torch.ones_like(logits)
    if own:
        z.diagonal().fill_(1.0)
    return z


def siglip_loss(image: Tensor, text: Tensor, logit_scale: Tensor, bias: Tensor, *, gather: bool = True) -> Tensor:
    """SigLIP's pairwise sigmoid loss [2] over the global batch.

    ``logits_ij = exp(logit_scale) · x_i·y_j + bias`` on ℓ2-normalised
    features, ``z_ij = +1`` for a matching pair (global pairing) and ``-1``
    otherwise, and ``L = -(1/N) Σ_{i local} Σ_{j global} log σ(z_ij logits_ij)``.

    Under several processes the gathered text is processed one rank's block
    (``[N, N]`` logits) at a time, in the forward and the (hand-written)
    backward pass, so memory grows with ``N²`` and not ``N · W·N``. The
    paper passes text blocks between neighbouring devices instead of
    gathering them; the loss and gradients are the same.

    Args:
        image: ``[N, d]`` local image embeddings.
        text: ``[N, d]`` local text embeddings, row ``i`` paired with image ``i``.
        logit_scale: Scalar tensor, the log of the logit multiplier (``log 10``
            at initialisation in [2]).
        bias: Scalar tensor added to the logits (``-10`` at initialisation in [2]).
        gather: Compare against every process's text rows (with gradient);
            False compares the local rows only.

    Returns:
        Scalar loss (float32 for half-precision inputs).

    Raises:
        ValueError: If image and text are not 2-D of equal shape, hold no
            rows, or ``logit_scale`` or ``bias`` is not a scalar.
    """
    fn = "siglip_loss"
    _check_pairs(fn, image, text)
    with full_precision(image):
        image_n, text_n = normalize(image), normalize(text)
        scale = _scalar(fn, "logit_scale", logit_scale, image_n).exp()
        shift = _scalar(fn, "bias", bias, image_n)
        all_text, offset = _other_side(text_n, gather)
        return _SigmoidBlocks.apply(image_n, all_text, scale, shift, offset)
