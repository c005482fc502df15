"""Linear probe: a linear classifier trained on frozen features.

The standard linear evaluation protocol of self-supervised learning (Zhang et
al., Colorful Image Colorization, 2016, arXiv:1603.08511; Chen et al.,
SimCLR, 2020, arXiv:2002.05709, appendix "Linear evaluation"): the backbone is
frozen, its features are computed once in eval mode, and only a linear head
is trained on them. As in MAE (He et al., 2021, arXiv:2111.06377, appendix
"Linear probing") and MoCo v3, the features go through a BatchNorm without
affine parameters before the linear layer, which makes one learning rate work
for backbones whose feature scales differ by orders of magnitude;
``normalize: none`` gives the plain linear layer.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from jef.config.options import LinearProbeOptions
from jef.evaluate.progress import progress_bar

__all__ = ["LinearProbeResult", "cosine_lambda", "linear_probe", "topk_accuracy"]

#: SGD momentum of the protocol (SimCLR, MoCo and MAE all use 0.9).
MOMENTUM = 0.9


@attrs.frozen
class LinearProbeResult:
    """What :func:`linear_probe` returns.

    Attributes:
        top1: Test accuracy of the head's arg-max, in ``[0, 1]``.
        top5: Fraction of test samples whose class is among the head's 5
            highest logits (1.0 when there are at most 5 classes).
        head: The trained head (``BatchNorm1d(affine=False)`` + ``Linear``, or
            the ``Linear`` alone), in eval mode, on the features' device.
    """

    top1: float
    top5: float
    head: nn.Module


def topk_accuracy(logits: Tensor, labels: Tensor, topk: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """``{n: fraction of rows whose label is among the n highest logits}``; ``n`` is clipped to the classes."""
    if logits.dim() != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(f"topk_accuracy: expected [M, C] logits and [M] labels with M >= 1, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    best = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices
    hits = best == labels.to(best.device)[:, None]
    return {n: int(hits[:, :n].any(dim=1).sum()) / len(labels) for n in topk}


def cosine_lambda(total_steps: int):
    """``LambdaLR`` factor: cosine decay from 1 at step 0 to 0 at ``total_steps`` (SGDR, arXiv:1608.03983)."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def _head(dim: int, num_classes: int, normalize: str) -> nn.Module:
    linear = nn.Linear(dim, num_classes)
    # MAE and MoCo v3 draw the weights with std 0.01, i.e. nearly zero; starting at exactly zero (uniform
    # predictions) gives the same optimum and makes the result independent of a random draw of the head.
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    if normalize == "batchnorm":
        return nn.Sequential(nn.BatchNorm1d(dim, affine=False), linear)
    return linear


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    options: LinearProbeOptions | None = None,
    seed: int = 0,
) -> LinearProbeResult:
    """Train a linear head on fixed features and score it on the test features.

    SGD with momentum 0.9 and weight decay ``options.weight_decay`` minimises
    the cross-entropy over shuffled mini-batches of ``options.batch_size``
    features for ``options.epochs`` epochs; the rate decays from
    ``options.lr`` to 0 along a cosine, step by step. A last mini-batch of a
    single feature is skipped (BatchNorm needs two). Given the same features
    and seed the result is the same on the same device: the head starts at
    zero and the order comes from a generator seeded with ``seed``.

    Args:
        train_features: ``[N, d]`` features of the training split (already
            extracted by the frozen backbone in eval mode).
        train_labels: ``[N]`` classes in ``[0, num_classes)``.
        test_features: ``[M, d]`` features of the test split.
        test_labels: ``[M]`` classes.
        num_classes: Number of classes.
        options: The protocol's settings (default: :class:`~jef.config.options.LinearProbeOptions`).
        seed: Seed of the mini-batch order.

    Returns:
        Top-1 and top-5 test accuracy and the trained head.

    Raises:
        ValueError: Inconsistent shapes, labels outside ``[0, num_classes)``,
            or no training features.
    """
    options = options or LinearProbeOptions()
    _check(train_features, train_labels, test_features, test_labels, num_classes)
    device = train_features.device
    train_x, train_y = train_features.float(), train_labels.long()
    head = _head(train_x.shape[1], num_classes, options.normalize).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=options.lr, momentum=MOMENTUM,
                                weight_decay=options.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / options.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(options.epochs * steps_per_epoch))
    # A CPU generator: the same order on every device.
    generator = torch.Generator().manual_seed(seed)
    head.train()
    with progress_bar(options.epochs, "linear probe", "epoch") as bar:
        for _ in range(options.epochs):
            for batch in torch.randperm(len(train_x), generator=generator).to(device).split(options.batch_size):
                if len(batch) > 1:
                    loss = nn.functional.cross_entropy(head(train_x[batch]), train_y[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                scheduler.step()
            bar.update(1)
    head.eval()
    with torch.no_grad():
        logits = head(test_features.float().to(device))
    accuracy = topk_accuracy(logits, test_labels, (1, 5))
    return LinearProbeResult(top1=accuracy[1], top5=accuracy[5], head=head)


def _check(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int) -> None:
    """Readable errors for features and labels that do not fit together."""
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"linear probe: expected [N, d] train and [M, d] test features, got "
                         f"{tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if train_y.shape != (train_x.shape[0],) or test_y.shape != (test_x.shape[0],):
        raise ValueError(f"linear probe: one label per feature is needed, got {tuple(train_y.shape)} labels for "
                         f"{train_x.shape[0]} train and {tuple(test_y.shape)} for {test_x.shape[0]} test features")
    if train_x.shape[0] < 2 or test_x.shape[0] == 0:
        raise ValueError(f"linear probe: needs at least 2 training and 1 test feature, got {train_x.shape[0]} "
                         f"and {test_x.shape[0]}")
    for name, labels in (("train", train_y), ("test", test_y)):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"linear probe: {name} labels must lie in [0, {num_classes}), found [{low}, {high}] "
                             "(drop unlabelled samples, -1, first)")
