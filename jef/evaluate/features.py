"""Feature extraction for evaluation protocols (kNN, linear probes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["extract_features"]


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

    Returns:
        ``(features, labels)``: float32 ``[N, d]`` and int64 ``[N]`` tensors on
        ``device``, in dataset order.

    Raises:
        ValueError: If the dataset is empty or the model does not return ``[B, d]``.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("extract_features: the dataset is empty")
    transform = transform or _to_unit_float
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    modes = [(module, module.training) for module in model.modules()]
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                images, targets = batch[0], batch[1]
                out = model(transform(images.to(device, non_blocking=True)))
                if out.dim() != 2:
                    raise ValueError(f"extract_features: the model must return [B, d] features, "
                                     f"got shape {tuple(out.shape)}")
                # float32 so that features from a bf16/fp16 model are comparable downstream.
                feats.append(out.float())
                labels.append(torch.as_tensor(targets).to(device=device, dtype=torch.long))
    finally:
        for module, was_training in modes:
            module.training = was_training
    return torch.cat(feats), torch.cat(labels)
