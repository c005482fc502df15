"""The linear probe: learns what is linearly separable, not noise; deterministic; never touches the backbone."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from jef.components import DataSplits
from jef.evaluate.linear import linear_probe, topk_accuracy
from jef.evaluate.protocols import evaluate_backbone
from jef.config.options import EvalOptions, LinearProbeOptions

FAST = LinearProbeOptions(epochs=20, batch_size=64)


def separable(seed, n_train=400, n_test=200, dim=16, num_classes=10):
    """Classes around well-separated centres, at a scale far from 1 (the BatchNorm must cope with it)."""
    gen = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(num_classes, dim, generator=gen)
    train_y, test_y = torch.arange(n_train) % num_classes, torch.arange(n_test) % num_classes
    train_x = 50 * (centres[train_y] + 0.3 * torch.randn(n_train, dim, generator=gen))
    test_x = 50 * (centres[test_y] + 0.3 * torch.randn(n_test, dim, generator=gen))
    return train_x, train_y, test_x, test_y


def test_linearly_separable_features_are_classified():
    train_x, train_y, test_x, test_y = separable(0)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=10, options=FAST)
    assert result.top1 >= 0.99 and result.top5 == 1.0
    assert not result.head.training


def test_without_normalisation_too():
    train_x, train_y, test_x, test_y = separable(1)
    options = LinearProbeOptions(epochs=20, batch_size=64, normalize="none", lr=1e-4)
    result = linear_probe(train_x / 50, train_y, test_x / 50, test_y, num_classes=10, options=options)
    assert isinstance(result.head, nn.Linear) and result.top1 >= 0.99


def test_random_labels_stay_near_chance():
    gen = torch.Generator().manual_seed(2)
    train_x, test_x = torch.randn(400, 32, generator=gen), torch.randn(400, 32, generator=gen)
    train_y, test_y = torch.randint(0, 10, (400,), generator=gen), torch.randint(0, 10, (400,), generator=gen)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=10, options=FAST)
    assert result.top1 < 0.2 and result.top5 < 0.65  # chance: 0.1 and 0.5


def test_the_same_seed_gives_the_same_head_and_numbers():
    train_x, train_y, test_x, test_y = separable(3)
    gen = torch.Generator().manual_seed(3)
    test_y = torch.randint(0, 10, (200,), generator=gen)  # wrong labels, so that the numbers are not all 1.0
    options = LinearProbeOptions(epochs=3, batch_size=32)
    runs = [linear_probe(train_x, train_y, test_x, test_y, num_classes=10, options=options, seed=seed)
            for seed in (5, 5, 6)]
    assert (runs[0].top1, runs[0].top5) == (runs[1].top1, runs[1].top5)
    for key, value in runs[0].head.state_dict().items():
        assert torch.equal(value, runs[1].head.state_dict()[key])
    assert any(not torch.equal(value, runs[2].head.state_dict()[key])
               for key, value in runs[0].head.state_dict().items())  # the seed orders the mini-batches


def test_topk_accuracy():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0], [3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    assert topk_accuracy(logits, torch.tensor([1, 2, 0]), (1, 2, 5)) == {1: 1 / 3, 2: 1 / 3, 5: 1.0}


def test_labels_outside_the_classes_are_refused():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"linear probe: train labels must lie in \[0, 2\).*unlabelled"):
        linear_probe(x, torch.tensor([0, 1, -1, 1]), x, torch.tensor([0, 1, 0, 1]), num_classes=2)
    with pytest.raises(ValueError, match="one label per feature"):
        linear_probe(x, torch.tensor([0, 1]), x, torch.tensor([0, 1, 0, 1]), num_classes=2)


class Bright(Dataset):
    """uint8 images whose class is the brightest of 4 quadrants."""

    def __init__(self, n, seed):
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 4
        self.images = torch.randint(0, 60, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
        for i, label in enumerate(self.labels.tolist()):
            row, col = divmod(label, 2)
            self.images[i, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 150

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), i


def test_the_protocol_leaves_the_backbone_bit_exactly_as_it_was():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU())
    backbone.train()
    modes = []
    backbone.register_forward_hook(lambda module, args, out: modes.append(module.training))
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    splits = DataSplits(Bright(200, 0), Bright(100, 1), num_classes=4, channels=1, image_size=8, name="bright")
    options = EvalOptions(linear=LinearProbeOptions(epochs=10, batch_size=32))
    results = evaluate_backbone(backbone, splits, lambda x: x.float() / 255, options, "cpu", seed=1,
                                protocols=["linear"])
    assert modes and not any(modes)
    assert all(module.training for module in backbone.modules())
    after = backbone.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[key], before[key]) for key in before)
    assert [r.key for r in results] == ["linear_top1", "linear_top5"]
    assert results[0].value >= 0.9  # the quadrants are visible through a random layer
    assert results[0].protocol.startswith("offline linear probe on frozen backbone features")
    assert "epochs=10" in results[0].protocol and "seed=1" in results[0].protocol
    assert "bright (4 classes): 200 train / 100 test images" in results[0].protocol
