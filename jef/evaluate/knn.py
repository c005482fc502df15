"""Weighted k-nearest-neighbour classification of frozen features.

The protocol of Wu et al., Unsupervised Feature Learning via Non-Parametric
Instance Discrimination (InstDisc), arXiv:1805.01978, sec. 3.4: a test sample
is compared by cosine similarity with every training sample, its ``k`` most
similar neighbours vote for their class with weight ``exp(sim / T)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jef.components import DataSplits
from jef.evaluate.features import extract_features

__all__ = ["knn_accuracy", "knn_evaluate", "knn_predict", "knn_scores", "knn_top1"]


def _check_bank(train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int) -> None:
    """Raise a readable error for inconsistent kNN inputs."""
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError(f"kNN expects [N, d] features, got train {tuple(train_features.shape)} "
                         f"and test {tuple(test_features.shape)}")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"kNN: train features have {train_features.shape[1]} dims, "
                         f"test features {test_features.shape[1]}")
    if train_features.shape[0] == 0:
        raise ValueError("kNN: the training feature bank is empty")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"kNN: expected {train_features.shape[0]} train labels, got shape {tuple(train_labels.shape)}")
    if num_classes < 1:
        raise ValueError(f"kNN: num_classes must be >= 1, got {num_classes}")
    low, high = int(train_labels.min()), int(train_labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"kNN: train labels must lie in [0, {num_classes}), found [{low}, {high}] "
                         "(unlabelled samples, -1, cannot vote)")


def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Class votes of test features: the ``k`` most similar bank samples vote with weight ``exp(sim / T)``.

    Args:
        train_features: Feature bank ``[N, d]`` (need not be normalised).
        train_labels: Classes of the bank ``[N]``, in ``[0, num_classes)``.
        test_features: Queries ``[M, d]``.
        num_classes: Number of classes.
        k: Neighbours per query; clipped to ``N``.
        temperature: ``T`` in the weight ``exp(sim / T)``; small T approaches
            a vote by the nearest neighbour alone, large T an unweighted vote.
        chunk_size: Queries scored at once; memory is ``chunk_size x N`` floats.

    Returns:
        Votes ``[M, num_classes]`` (float32, on the bank's device), each row
        scaled so that its nearest neighbour weighs 1; a class no neighbour
        belongs to scores exactly 0.
    """
    if temperature <= 0:
        raise ValueError(f"kNN: temperature must be > 0, got {temperature}")
    if k < 1 or chunk_size < 1:
        raise ValueError(f"kNN: k and chunk_size must be >= 1, got k={k}, chunk_size={chunk_size}")
    _check_bank(train_features, train_labels, test_features, num_classes)
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(device=bank.device, dtype=torch.long)
    k = min(k, bank.shape[0])
    votes = []
    for queries in test_features.float().to(bank.device).split(chunk_size):
        sims, idx = (F.normalize(queries, dim=1) @ bank.T).topk(k, dim=1)
        # Shifting by the row maximum rescales a row's weights by one constant, which leaves the
        # vote unchanged but keeps exp() finite for small temperatures (exp(1/0.01) overflows float32).
        weights = ((sims - sims[:, :1]) / temperature).exp()
        scores = torch.zeros(queries.shape[0], num_classes, device=bank.device)
        votes.append(scores.scatter_add_(1, labels[idx], weights))
    if not votes:
        return torch.zeros(0, num_classes, device=bank.device)
    return torch.cat(votes)


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Predict classes of test features by a similarity-weighted vote of their neighbours.

    Arguments are those of :func:`knn_scores`; a tie goes to the lower class index.

    Returns:
        Predicted classes ``[M]`` (int64, on the features' device).
    """
    return knn_scores(train_features, train_labels, test_features, num_classes=num_classes, k=k,
                      temperature=temperature, chunk_size=chunk_size).argmax(dim=1)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    topk: tuple[int, ...] = (1, 5),
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Top-n accuracies, in ``[0, 1]``, of the kNN vote on labelled test features.

    A test sample counts as correct at ``n`` when its class received a vote
    and fewer than ``n`` classes received more. A class with no neighbour
    among the ``k`` is never counted, so with fewer than ``n`` voting classes
    top-n does not get free hits from classes tied at zero; a tie between
    voting classes counts in the sample's favour (exact ties of sums of
    exponentials of float similarities do not occur in practice). Top-1 agrees
    with :func:`knn_predict`'s argmax except on such ties.

    Args:
        train_features: Feature bank ``[N, d]``.
        train_labels: Classes of the bank ``[N]``.
        test_features: Queries ``[M, d]``, ``M >= 1``.
        test_labels: True classes of the queries ``[M]``.
        num_classes: Number of classes.
        k: Neighbours per query.
        temperature: Vote temperature.
        topk: The ``n`` to report, e.g. ``(1, 5)``.
        chunk_size: Queries scored at once.

    Returns:
        ``{n: accuracy}`` for each ``n`` of ``topk``.
    """
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"kNN: expected {test_features.shape[0]} test labels, got shape {tuple(test_labels.shape)}")
    if test_features.shape[0] == 0:
        raise ValueError("kNN: no test features to score")
    if any(n < 1 for n in topk):
        raise ValueError(f"kNN: every top-n must be >= 1, got {topk}")
    scores = knn_scores(train_features, train_labels, test_features, num_classes=num_classes, k=k,
                        temperature=temperature, chunk_size=chunk_size)
    truth = test_labels.to(device=scores.device, dtype=torch.long)
    own = scores.gather(1, truth[:, None])
    rank = (scores > own).sum(dim=1)  # classes that beat the true one
    voted = own[:, 0] > 0
    # Counted in integers and divided in Python, so that 13/30 is the float nearest 13/30.
    return {n: int(((rank < n) & voted).sum()) / len(truth) for n in topk}


def knn_top1(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy, in ``[0, 1]``, of :func:`knn_predict` on labelled test features."""
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"kNN: expected {test_features.shape[0]} test labels, got shape {tuple(test_labels.shape)}")
    if test_features.shape[0] == 0:
        raise ValueError("kNN: no test features to score")
    preds = knn_predict(train_features, train_labels, test_features, num_classes=num_classes,
                        k=k, temperature=temperature, chunk_size=chunk_size)
    return (preds == test_labels.to(preds.device)).float().mean().item()


def knn_evaluate(
    backbone: nn.Module,
    splits: DataSplits,
    transform: Callable[[Tensor], Tensor] | None = None,
    *,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    description: str = "kNN",
) -> float:
    """kNN top-1 accuracy of a backbone: train split as the bank, test split as queries.

    Args:
        backbone: Image -> feature model, already on ``device``.
        splits: Labelled splits with a test split.
        transform: Test-time transform of uint8 batches (the augmenter's ``eval_view``).
        k: Neighbours per query.
        temperature: Vote temperature.
        batch_size: Images per forward pass.
        device: Where features are computed and compared.
        num_workers: DataLoader worker processes.
        description: The label of the feature extraction's progress bars.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    if not splits.labelled or splits.test is None:
        raise ValueError(f"kNN evaluation needs a labelled dataset with a test split; "
                         f"{splits.name or 'this dataset'} has num_classes={splits.num_classes}, "
                         f"test={'present' if splits.test is not None else 'None'}")
    kwargs = dict(batch_size=batch_size, device=device, num_workers=num_workers)
    train_x, train_y = extract_features(backbone, splits.train, transform, **kwargs,
                                        description=f"{description}: train features")
    test_x, test_y = extract_features(backbone, splits.test, transform, **kwargs,
                                      description=f"{description}: test features")
    # Unlabelled bank samples (label -1, e.g. STL-10's unlabelled part) have no class to vote for.
    keep = train_y >= 0
    train_x, train_y = train_x[keep], train_y[keep]
    return knn_top1(train_x, train_y, test_x, test_y, num_classes=splits.num_classes,  # type: ignore[arg-type]
                    k=k, temperature=temperature)
