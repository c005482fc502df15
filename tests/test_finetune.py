"""Fine-tuning: trains a copy of the backbone, leaves the caller's alone, is deterministic, runs through Accelerate."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from torch.utils.data import Dataset

from jef.components import DataSplits
from jef.evaluate.finetune import finetune
from jef.evaluate.protocols import evaluate_backbone
from jef.config.options import EvalOptions, FinetuneOptions

FAST = FinetuneOptions(epochs=4, batch_size=32, lr=0.5)


class Bands(Dataset):
    """uint8 8x8 images whose class is the bright horizontal band (unchanged by a left-right flip)."""

    def __init__(self, n, seed, unlabelled=0):
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 4
        self.images = torch.randint(0, 60, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
        for i, label in enumerate(self.labels.tolist()):
            self.images[i, :, 2 * label:2 * label + 2] += 150
        self.labels[:unlabelled] = -1

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), i


def splits(unlabelled=0):
    return DataSplits(Bands(128, 0, unlabelled), Bands(64, 1), num_classes=4, channels=1, image_size=8, name="bands")


def view(images):
    return images.float() / 255


def small_backbone(seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten())
    backbone.out_dim = 16
    return backbone.train()


def state(module):
    return {key: value.clone() for key, value in module.state_dict().items()}


def test_a_copy_is_fine_tuned_and_the_callers_backbone_is_unchanged():
    backbone = small_backbone()
    modes = []
    backbone.register_forward_hook(lambda module, args, out: modes.append(module.training))  # copied with it
    before = state(backbone)
    result = finetune(backbone, splits(), view, FAST, seed=0)
    assert all(torch.equal(value, before[key]) for key, value in backbone.state_dict().items())
    assert all(module.training for module in backbone.modules())
    tuned = result.backbone.state_dict()
    assert result.backbone is not backbone and any(not torch.equal(tuned[key], before[key]) for key in before)
    assert all(module.training for module in result.backbone.modules())  # modes as passed in
    steps, test_batches = FAST.epochs * (128 // 32), 2
    assert modes == [True] * steps + [False] * test_batches  # trained in train mode, scored in eval mode
    assert result.top1 >= 0.9 and result.top5 == 1.0


def test_the_same_seed_gives_the_same_weights():
    options = FinetuneOptions(epochs=1, batch_size=32)
    first, second = (finetune(small_backbone(), splits(), view, options, seed=3) for _ in range(2))
    assert (first.top1, first.top5) == (second.top1, second.top5)
    for key, value in first.backbone.state_dict().items():
        assert torch.equal(value, second.backbone.state_dict()[key])
    assert torch.equal(first.head.weight, second.head.weight)
    other = finetune(small_backbone(), splits(), view, options, seed=4)
    assert not torch.equal(first.head.weight, other.head.weight)


def test_in_place_trains_the_backbone_passed_in():
    backbone = small_backbone()
    before = state(backbone)
    result = finetune(backbone, splits(), view, FinetuneOptions(epochs=1, batch_size=64), in_place=True)
    assert result.backbone is backbone
    assert any(not torch.equal(value, before[key]) for key, value in backbone.state_dict().items())


def test_unlabelled_training_images_do_not_count_in_the_loss():
    result = finetune(small_backbone(), splits(unlabelled=100), view, FinetuneOptions(epochs=1, batch_size=32))
    assert 0.0 <= result.top1 <= 1.0


def test_the_global_generator_and_the_accelerate_state_are_left_alone():
    AcceleratorState._reset_state()
    GradientState._reset_state()
    try:
        Accelerator(cpu=True, mixed_precision="bf16")  # as a bf16 training run in this process would
        rng = torch.get_rng_state()
        finetune(small_backbone(), splits(), view, FinetuneOptions(epochs=1, batch_size=64))
        assert torch.equal(torch.get_rng_state(), rng)
        assert AcceleratorState().mixed_precision == "bf16"
    finally:
        AcceleratorState._reset_state()
        GradientState._reset_state()


def test_what_cannot_be_fine_tuned_is_explained():
    unlabelled = DataSplits(Bands(8, 0), Bands(8, 1), num_classes=None, channels=1, image_size=8, name="bands")
    with pytest.raises(ValueError, match="fine-tuning needs labelled data with a non-empty test split; bands has "
                                         "num_classes=None"):
        finetune(small_backbone(), unlabelled, view)
    headless = nn.Sequential(nn.Flatten())
    with pytest.raises(ValueError, match="has no integer `out_dim`"):
        finetune(headless, splits(), view)


def test_the_protocol_reports_top1_and_top5_with_its_settings():
    backbone = small_backbone()
    before = state(backbone)
    options = EvalOptions(finetune=FinetuneOptions(epochs=1, batch_size=64, flip=False))
    results = evaluate_backbone(backbone, splits(), view, options, "cpu", seed=2, protocols=["finetune"])
    assert all(torch.equal(value, before[key]) for key, value in backbone.state_dict().items())
    assert [r.key for r in results] == ["finetune_top1", "finetune_top5"]
    label = results[0].protocol
    assert label.startswith("offline fine-tuning of a copy of the backbone + linear head")
    for part in ("cosine lr from 0.05 to 0 (backbone x0.1)", "epochs=1", "eval view, no augmentation", "seed=2",
                 "bands (4 classes): 128 train / 64 test images"):
        assert part in label
