"""Tests of feature extraction, kNN classification and collapse diagnostics."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from jef.components import DataSplits
from jef.evaluate import effective_rank, embedding_std, extract_features, knn_evaluate, knn_predict, knn_top1


def _reference_knn(train_x, train_y, test_x, num_classes, k, temperature):
    """Brute-force InstDisc kNN with explicit loops, independent of the vectorised code."""
    preds = []
    for query in test_x:
        sims = []
        for j, key in enumerate(train_x):
            cos = float(query @ key) / (float(query.norm()) * float(key.norm()))
            sims.append((cos, j))
        sims.sort(key=lambda pair: -pair[0])
        scores = [0.0] * num_classes
        for cos, j in sims[:k]:
            scores[int(train_y[j])] += math.exp(cos / temperature)
        preds.append(max(range(num_classes), key=lambda c: (scores[c], -c)))
    return torch.tensor(preds)


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.1), (5, 0.1), (7, 0.5), (50, 0.07)])
def test_knn_matches_brute_force(k, temperature):
    gen = torch.Generator().manual_seed(k)
    train_x, test_x = torch.randn(40, 6, generator=gen, dtype=torch.float64), torch.randn(25, 6, generator=gen,
                                                                                           dtype=torch.float64)
    train_y = torch.randint(0, 4, (40,), generator=gen)
    expected = _reference_knn(train_x, train_y, test_x, 4, k, temperature)
    # A tiny chunk size exercises the chunking.
    got = knn_predict(train_x, train_y, test_x, num_classes=4, k=k, temperature=temperature, chunk_size=7)
    assert torch.equal(got, expected)


def test_knn_k_larger_than_bank():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y = torch.tensor([0, 0, 1])
    preds = knn_predict(train_x, train_y, torch.tensor([[0.1, 1.0]]), num_classes=2, k=200, temperature=0.1)
    assert preds.tolist() == [1]


def test_knn_temperature_changes_the_vote():
    # The query is nearest to a single class-1 sample but also close to two class-0 samples:
    # a sharp temperature lets the nearest neighbour win, a soft one lets the majority win.
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    train_y = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_predict(train_x, train_y, query, num_classes=2, k=3, temperature=0.01).tolist() == [1]
    assert knn_predict(train_x, train_y, query, num_classes=2, k=3, temperature=10.0).tolist() == [0]


def test_knn_top1_perfect_on_separable_features():
    centres = torch.eye(5) * 10
    gen = torch.Generator().manual_seed(0)
    train_y, test_y = torch.arange(5).repeat(20), torch.arange(5).repeat(4)
    train_x = centres[train_y] + torch.randn(100, 5, generator=gen)
    test_x = centres[test_y] + torch.randn(20, 5, generator=gen)
    assert knn_top1(train_x, train_y, test_x, test_y, num_classes=5, k=20) == 1.0


def test_knn_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        knn_predict(torch.rand(3, 2), torch.tensor([0, -1, 1]), torch.rand(1, 2), num_classes=2)


class _Images(Dataset):
    """uint8 images whose class is encoded in which channel is bright."""

    def __init__(self, n, channels=3, size=4, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, channels, (n,), generator=gen)
        self.images = torch.randint(0, 40, (n, channels, size, size), generator=gen, dtype=torch.uint8)
        self.images[torch.arange(n), self.labels] += 200

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), i


class _RecordsMode(nn.Module):
    """Pools channels through a BatchNorm and records the mode it was called in."""

    def __init__(self, channels=3):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.bn(x).mean(dim=(2, 3))


def test_extract_features_runs_in_eval_and_restores_train():
    model = _RecordsMode().train()
    frozen = nn.BatchNorm2d(1).eval()
    model.frozen = frozen  # a submodule deliberately kept in eval mode
    before = (model.bn.running_mean.clone(), model.bn.running_var.clone(), int(model.bn.num_batches_tracked))
    seen = []

    def transform(images):
        seen.append(images.dtype)
        return images.float() / 255

    feats, labels = extract_features(model, _Images(10), transform, batch_size=4)
    assert feats.shape == (10, 3) and feats.dtype == torch.float32 and labels.shape == (10,)
    assert model.modes == [False, False, False]
    assert seen == [torch.uint8] * 3
    assert torch.equal(model.bn.running_mean, before[0]) and torch.equal(model.bn.running_var, before[1])
    assert int(model.bn.num_batches_tracked) == before[2]
    assert model.training and model.bn.training and not frozen.training
    assert not feats.requires_grad
    model.eval()
    extract_features(model, _Images(3), batch_size=4)
    assert not model.training


def test_extract_features_restores_mode_on_error():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        extract_features(model, _Images(2))
    assert model.training


def test_knn_evaluate_end_to_end():
    splits = DataSplits(train=_Images(30, seed=1), test=_Images(12, seed=2), num_classes=3, channels=3,
                        image_size=4)
    acc = knn_evaluate(_RecordsMode(), splits, None, k=5, temperature=0.1, batch_size=8, device="cpu")
    assert acc == 1.0
    with pytest.raises(ValueError, match="labelled dataset with a test split"):
        knn_evaluate(_RecordsMode(), DataSplits(train=_Images(3), test=None, num_classes=3, channels=3,
                                                image_size=4), None, k=5, temperature=0.1, batch_size=8,
                     device="cpu")


def test_embedding_std_healthy_and_collapsed():
    d = 64
    z = torch.randn(4096, d, generator=torch.Generator().manual_seed(0))
    assert embedding_std(z).item() == pytest.approx(1 / math.sqrt(d), rel=0.05)
    same = torch.randn(1, d).repeat(32, 1)
    assert embedding_std(same).item() == pytest.approx(0.0, abs=1e-6)


def test_effective_rank_isotropic_and_rank_one():
    d = 16
    z = torch.randn(8192, d, generator=torch.Generator().manual_seed(0))
    assert effective_rank(z).item() == pytest.approx(d, rel=0.02)
    line = torch.randn(256, 1) * torch.randn(1, d)
    assert effective_rank(line).item() == pytest.approx(1.0, abs=0.01)
    assert effective_rank(z.to(torch.bfloat16)).dtype == torch.float32


def test_collapse_diagnostics_reject_bad_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        embedding_std(torch.rand(1, 4))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        effective_rank(torch.rand(4))
