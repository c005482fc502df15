"""Feature extraction for evaluation protocols (kNN, linear probes).

:func:`extract_feature_sets` is the one extraction loop: it runs feature functions chosen once by the caller
(the backbone itself for ``h``, or :func:`probe_features` for a ViT's DINO features) over a dataset, all of them
on the same batches.

References:
    [1] Caron et al., Emerging Properties in Self-Supervised Vision Transformers (DINO), 2021, arXiv:2104.14294;
        ``eval_linear.py`` of facebookresearch/dino: the linear probe of a ViT reads the CLS tokens of its last
        blocks, each after the final norm, and for ViT-B also the mean of the patch tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from jef.config.validate import ConfigError
from jef.data.fields import as_fields
from jef.evaluate.progress import progress_bar

__all__ = ["extract_feature_sets", "extract_features", "probe_features"]

#: The option path :func:`probe_features` names in its errors.
_LAST_BLOCKS = "eval.linear.last_blocks"


def probe_features(backbone: nn.Module, last_blocks: int = 1, avgpool_patches: bool = False
                   ) -> Callable[[Tensor], Tensor]:
    """The function that maps a batch of views to the linear probe's features ``[B, d]``.

    With the defaults it is ``backbone`` itself: the pooled ``h`` every backbone returns. Otherwise it is DINO's
    ViT features [1]: ``backbone.forward_tokens`` once per batch, the CLS token of each of the last
    ``last_blocks`` blocks after the final norm (``backbone.norm``), concatenated from the earliest block to the
    last, then with ``avgpool_patches`` the mean of the last block's patch tokens after the norm:
    ``d = (last_blocks + avgpool_patches) × width``. DINO interleaves the CLS token and the patch mean channel by
    channel (``last_blocks: 1`` only); a linear head, and the probe's per-feature BatchNorm, do not see that
    permutation of the same features.

    Args:
        backbone: The frozen backbone.
        last_blocks: Blocks whose CLS tokens are read; 1 with ``avgpool_patches`` false: ``h``.
        avgpool_patches: Also the mean patch token of the last block.

    Returns:
        ``backbone``, or a function of the images that calls it; chosen here, once.

    Raises:
        ConfigError: The DINO features on a backbone without ``forward_tokens`` and a final norm ``norm`` (a CNN,
            a timm model), or more blocks than it has; the error names ``eval.linear.last_blocks``.
    """
    if last_blocks < 1:
        raise ConfigError(f"must be >= 1, got {last_blocks}", path=_LAST_BLOCKS)
    if last_blocks == 1 and not avgpool_patches:
        return backbone
    asked = f"last_blocks: {last_blocks}" + (", avgpool_patches: true" if avgpool_patches else "")
    forward_tokens, norm = getattr(backbone, "forward_tokens", None), getattr(backbone, "norm", None)
    if not callable(forward_tokens) or not isinstance(norm, nn.Module):
        raise ConfigError(
            f"the linear probe's ViT features ({asked}) need a token backbone, with forward_tokens(images, "
            f"blocks=...) and a final norm `norm`, such as jef's `vit`; this backbone ({type(backbone).__name__}) "
            "is not one: set eval.linear.last_blocks: 1 and eval.linear.avgpool_patches: false to probe its output h",
            path=_LAST_BLOCKS)
    depth = len(blocks) if isinstance(blocks := getattr(backbone, "blocks", None), nn.ModuleList) else None
    if depth is not None and last_blocks > depth:
        raise ConfigError(f"{last_blocks} blocks asked for, but the backbone ({type(backbone).__name__}) has "
                          f"{depth}; set eval.linear.last_blocks to at most {depth}", path=_LAST_BLOCKS)
    chosen = tuple(range(-last_blocks, 0))

    def features(images: Tensor) -> Tensor:
        tokens = forward_tokens(images, blocks=chosen)
        parts = [norm(tokens.blocks[index][:, 0]) for index in chosen]
        if avgpool_patches:
            parts.append(tokens.patches.mean(dim=1))  # the patch tokens after the final norm
        return torch.cat(parts, dim=1)

    return features


def _to_unit_float(images: Tensor) -> Tensor:
    """Default transform: uint8 ``[0, 255]`` images to float ``[0, 1]``."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    transform: Callable[[Tensor], Tensor] | None = None,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    description: str = "features",
) -> tuple[Tensor, Tensor]:
    """Run ``model`` over a dataset and collect its outputs and labels.

    The model runs in eval mode, so BatchNorm uses its running statistics
    and does not update them, and dropout is off; every module's previous
    ``training`` flag is restored afterwards, one by one, so a module that was
    deliberately frozen in eval mode inside a training model stays so.

    Args:
        model: Maps ``[B, C, H, W]`` float images to ``[B, d]`` features
            (typically the backbone); must already be on ``device``.
        dataset: Yields ``(image, label, index)`` with ``image`` a uint8
            ``[C, H, W]`` tensor (see :class:`jef.components.DataSplits`).
        transform: Applied to each uint8 batch after it is moved to
            ``device``, e.g. the augmenter's ``eval_view``; None only scales
            to ``[0, 1]``.
        batch_size: Images per forward pass.
        device: Where the batches go and the model runs.
        num_workers: DataLoader worker processes.
        description: The progress bar's label (shown as :func:`jef.evaluate.progress.progress_shown` says).

    Returns:
        ``(features, labels)``: float32 ``[N, d]`` and int64 ``[N]`` tensors on
        ``device``, in dataset order.

    Raises:
        ValueError: If the dataset is empty or the model does not return ``[B, d]``.
    """
    (features,), labels = extract_feature_sets(model, dataset, [model], transform, batch_size=batch_size,
                                               device=device, num_workers=num_workers, description=description)
    return features, labels


def extract_feature_sets(
    model: nn.Module,
    dataset: Dataset,
    functions: Sequence[Callable[[Tensor], Tensor]],
    transform: Callable[[Tensor], Tensor] | None = None,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    description: str = "features",
) -> tuple[list[Tensor], Tensor]:
    """:func:`extract_features` with several feature functions of ``model``, all on the same batches.

    Each function maps a transformed batch to ``[B, d_i]`` (``model`` itself, or :func:`probe_features` of it);
    ``model`` is the module put in eval mode and back, as in :func:`extract_features`.

    Returns:
        ``([features of each function], labels)``: float32 ``[N, d_i]`` and int64 ``[N]``, on ``device``.

    Raises:
        ValueError: If the dataset is empty, no function is given, or one does not return ``[B, d]``.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("extract_features: the dataset is empty")
    if not functions:
        raise ValueError("extract_features: no feature function given")
    transform = transform or _to_unit_float
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    modes = [(module, module.training) for module in model.modules()]
    feats: list[list[Tensor]] = [[] for _ in functions]
    labels: list[Tensor] = []
    model.eval()
    bar = progress_bar(len(dataset), description, "img")  # type: ignore[arg-type]
    try:
        with torch.no_grad():
            for batch in loader:
                fields = as_fields(batch)  # a tuple, or a mapping of named fields (image-text data)
                images, targets = fields["image"], fields["label"]
                views = transform(images.to(device, non_blocking=True))
                for function, collected in zip(functions, feats, strict=True):
                    out = function(views)
                    if out.dim() != 2:
                        raise ValueError(f"extract_features: the model must return [B, d] features, "
                                         f"got shape {tuple(out.shape)}")
                    # float32 so that features from a bf16/fp16 model are comparable downstream.
                    collected.append(out.float())
                labels.append(torch.as_tensor(targets).to(device=device, dtype=torch.long))
                bar.update(len(targets))
    finally:
        bar.close()
        for module, was_training in modes:
            module.training = was_training
    return [torch.cat(collected) for collected in feats], torch.cat(labels)
