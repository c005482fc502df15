"""The offline kNN protocol (top-1 and top-5) against an independent implementation on fixed features."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from jef.components import DataSplits
from jef.evaluate.knn import knn_accuracy, knn_top1
from jef.evaluate.protocols import evaluate_backbone
from jef.config.options import EvalOptions, KnnOptions


def reference_knn(train_x, train_y, test_x, test_y, num_classes, k, temperature):
    """InstDisc weighted kNN written as a plain loop: (top-1, top-5) accuracy.

    For each query: cosine similarity with every training sample, the k most similar vote for their class with
    weight exp(sim / T). Top-1 is the class with the largest vote (ties to the lower index); top-5 asks whether
    the true class is among the (at most) 5 classes with the largest non-zero votes.
    """
    hits1 = hits5 = 0
    for query, truth in zip(test_x.tolist(), test_y.tolist(), strict=True):
        sims = []
        for key, label in zip(train_x.tolist(), train_y.tolist(), strict=True):
            dot = sum(a * b for a, b in zip(query, key, strict=True))
            norms = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in key))
            sims.append((dot / norms, label))
        sims.sort(key=lambda pair: -pair[0])
        votes = [0.0] * num_classes
        for sim, label in sims[:k]:
            votes[label] += math.exp(sim / temperature)
        ranked = sorted((c for c in range(num_classes) if votes[c] > 0), key=lambda c: (-votes[c], c))
        hits1 += ranked[0] == truth
        hits5 += truth in ranked[:5]
    return hits1 / len(test_y), hits5 / len(test_y)


def fixed_features(seed, n_train=60, n_test=30, dim=8, num_classes=10):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=gen)
    train_y = torch.arange(n_train) % num_classes
    test_y = torch.randint(0, num_classes, (n_test,), generator=gen)
    # Overlapping classes, so that top-1 and top-5 both lie strictly between 0 and 1.
    train_x = centres[train_y] + 1.5 * torch.randn(n_train, dim, generator=gen)
    test_x = centres[test_y] + 1.5 * torch.randn(n_test, dim, generator=gen)
    return train_x, train_y, test_x, test_y


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.1), (3, 0.07), (10, 0.1), (20, 0.5), (200, 0.1)])
def test_knn_top1_and_top5_equal_the_reference(k, temperature):
    train_x, train_y, test_x, test_y = fixed_features(seed=k)
    expected = reference_knn(train_x, train_y, test_x, test_y, 10, k, temperature)
    # A small chunk size exercises the chunked scoring.
    got = knn_accuracy(train_x, train_y, test_x, test_y, num_classes=10, k=k, temperature=temperature,
                       topk=(1, 5), chunk_size=7)
    assert (got[1], got[5]) == expected
    assert knn_top1(train_x, train_y, test_x, test_y, num_classes=10, k=k, temperature=temperature) == \
        pytest.approx(expected[0], abs=1e-6)


def test_the_reference_numbers_are_not_trivial():
    train_x, train_y, test_x, test_y = fixed_features(seed=10)
    top1, top5 = reference_knn(train_x, train_y, test_x, test_y, 10, 10, 0.1)
    assert 0 < top1 < top5 < 1


def test_top5_does_not_count_classes_without_a_vote():
    # k=1: only one class gets a vote; a query of another class is wrong at top-5 too, even with 3 classes.
    train_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    train_y = torch.tensor([0, 1, 2])
    test_x, test_y = torch.tensor([[1.0, 0.1]]), torch.tensor([1])
    got = knn_accuracy(train_x, train_y, test_x, test_y, num_classes=3, k=1, temperature=0.1)
    assert got == {1: 0.0, 5: 0.0}
    got = knn_accuracy(train_x, train_y, test_x, test_y, num_classes=3, k=3, temperature=0.1)
    assert got == {1: 0.0, 5: 1.0}


class Images(Dataset):
    """Small uint8 images; a fixed random linear map of them makes the fixed features below."""

    def __init__(self, n, seed):
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8)
        self.labels = torch.arange(n) % 5

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), i


def test_the_protocol_extracts_features_in_eval_mode_and_matches_the_reference():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6))
    backbone.train()
    modes = []
    backbone.register_forward_hook(lambda module, args, out: modes.append(module.training))
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    splits = DataSplits(Images(40, 0), Images(20, 1), num_classes=5, channels=1, image_size=4, name="fixed")

    def view(x):
        return x.float() / 255

    options = EvalOptions(knn=KnnOptions(k=7, temperature=0.2))
    results = evaluate_backbone(backbone, splits, view, options, "cpu", protocols=["knn"])
    assert modes and not any(modes)  # eval mode during evaluation
    assert backbone.training and all(m.training for m in backbone.modules())  # train mode again after
    assert all(torch.equal(value, before[key]) for key, value in backbone.state_dict().items())
    with torch.no_grad():
        backbone.eval()
        train_x, test_x = backbone(view(splits.train.images)), backbone(view(splits.test.images))
    expected = reference_knn(train_x, splits.train.labels, test_x, splits.test.labels, 5, 7, 0.2)
    assert [(r.key, r.value) for r in results] == [("knn_top1", pytest.approx(expected[0])),
                                                   ("knn_top5", pytest.approx(expected[1]))]
    assert all(r.protocol.startswith("offline weighted kNN") and "k=7, T=0.2" in r.protocol
               and "fixed (5 classes): 40 train / 20 test images" in r.protocol for r in results)
