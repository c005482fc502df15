"""Targets made from token sets: the average of normalised block outputs, and normalised patch pixels.

References:
    [1] Baevski, Hsu, Xu, Babu, Gu, Auli, data2vec: A General Framework for Self-supervised Learning in Speech,
        Vision and Language, ICML 2022, arXiv:2202.03555 (Sec. 3.3, "Targets").
    [2] Assran et al., Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture
        (I-JEPA), CVPR 2023, arXiv:2301.08243 (targets: the layer-normed target-encoder tokens).
    [3] He et al., Masked Autoencoders Are Scalable Vision Learners (MAE), CVPR 2022, arXiv:2111.06377
        (Sec. 3, "Reconstruction target": per-patch normalised pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from jef.functional._checks import full_precision, upcast

__all__ = ["NORMS", "block_average", "normalize_tokens", "patch_pixels"]

#: The parameter-free norms of a token set ``[N, T, d]``.
NORMS = ("instance", "layer", "none")


def normalize_tokens(tokens: Tensor, norm: str) -> Tensor:
    """A parameter-free norm of ``[N, T, d]`` tokens, in at least float32.

    ``"layer"``: each token over its ``d`` channels; ``"instance"``: each channel over the sample's ``T`` tokens
    (``F.instance_norm`` on ``[N, d, T]``, as data2vec [1]); ``"none"``: unchanged.
    """
    if norm not in NORMS:
        raise ValueError(f"normalize_tokens: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if tokens.dim() != 3:
        raise ValueError(f"normalize_tokens: expected tokens [N, T, d], got {list(tokens.shape)}")
    with full_precision(tokens):
        x = upcast(tokens)
        if norm == "layer":
            return F.layer_norm(x, x.shape[-1:])
        if norm == "instance":
            return F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
        return x


def block_average(blocks: Sequence[Tensor], each: str = "instance", final: str = "layer") -> Tensor:
    """data2vec's target [1]: the mean of the top blocks' outputs, each normalised, then normalised again.

    ``y = final_norm( mean_l each_norm(b_l) )`` over the given blocks ``b_l`` ``[N, T, d]`` (data2vec for images:
    the top K = 6, instance norm each, layer norm of the average).
    """
    if not blocks:
        raise ValueError("block_average: no block outputs given")
    normalised = [normalize_tokens(block, each) for block in blocks]
    return normalize_tokens(sum(normalised[1:], normalised[0]) / len(normalised), final)


def patch_pixels(images: Tensor, patch_size: int, normalize: bool = True, eps: float = 1e-6) -> Tensor:
    """The pixels of each patch, ``[N, T, p·p·C]`` in row-major patch order, per-patch normalised as MAE [3].

    With ``normalize`` each patch's pixels have their mean subtracted and are divided by ``sqrt(var + eps)``
    (the unbiased variance, as MAE's ``norm_pix_loss``).
    """
    n, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch_pixels: {h}x{w} images are not a whole number of {patch_size} px patches")
    with full_precision(images):
        x = upcast(images).reshape(n, c, h // patch_size, patch_size, w // patch_size, patch_size)
        x = x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch_size) * (w // patch_size), patch_size ** 2 * c)
        if normalize:
            x = (x - x.mean(dim=-1, keepdim=True)) / (x.var(dim=-1, keepdim=True) + eps).sqrt()
        return x
