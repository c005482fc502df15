"""A run killed with SIGKILL and resumed ends bit for bit like one that never stopped (ARCHITECTURE §6).

Each method's state that outlives a step is covered: SimCLR (weights, optimiser, RNG, data order), MoCo v2 (EMA
key encoder and queue), SwAV (prototypes frozen then trained, queue filling), DINO (EMA teacher, centre, teacher
temperature warm-up, frozen last layer) and InstDisc (memory bank). The run is killed at the start of step 7 of
8; its last checkpoint is from step 5, in the middle of the second epoch (4 steps an epoch), so the resumed run
must also find its place in the data order.
"""

from __future__ import annotations

import pytest
import torch

from jef.run.checkpoint import load_checkpoint
from jef.config import merge
from jef.plugins import load_plugins
from jef.testing import tiny_run, train_killed_at

SHARED = {"train": {"epochs": 2, "checkpoint_every_steps": 5}, "eval": {"knn": {"enabled": False}}}
MULTI_CROP = {"n_local": 2, "local_size": 8, "blur_p": 0.0, "solarize_p": 0.0}
METHODS = {
    "simclr": {"method": "simclr"},
    # The queue holds two batches: it fills during the first epoch and wraps around afterwards.
    "moco_v2": {"method": "moco_v2", "functionals": [{"name": "queue_info_nce", "size": 32, "temperature": 0.2}]},
    # MoCo v3's ViT recipe on a tiny ViT: AdamW moments, the EMA key encoder at a cosine momentum, the warm-up.
    "moco_v3_vit": {"method": "moco_v3", "augmenter": {"size": 16},
                    "backbone": {"name": "vit", "preset": "tiny", "width": 32, "depth": 2, "heads": 2,
                                 "patch_size": 4},
                    "predictor": {"dims": [32, 16]}},
    # Prototypes thaw after step 3; the queue starts filling at epoch 1 (step 5) and is used from step 7.
    "swav": {"method": "swav", "augmenter": MULTI_CROP,
             "functionals": [{"name": "sinkhorn", "n_prototypes": 16, "freeze_prototypes_steps": 3,
                              "queue_length": 32, "queue_start_epoch": 1}]},
    # The last layer is frozen for epoch 0 and the teacher temperature warms up over both epochs.
    "dino_resnet": {"method": "dino_resnet", "augmenter": MULTI_CROP,
                    "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8},
                    "functionals": [{"name": "centering", "warmup_teacher_temperature": 0.02,
                                     "warmup_teacher_temperature_epochs": 2}]},
    # The ViT recipe on a tiny ViT (local views resize its position embedding), with its stochastic depth (drawn
    # from the global generator, which the checkpoint restores), AdamW and the weight decay 0.04 -> 0.4.
    "dino": {"method": "dino", "augmenter": {**MULTI_CROP, "size": 16},
             "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4},
             "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8},
             "functionals": [{"name": "centering", "teacher_temperature": 0.07, "warmup_teacher_temperature": 0.04,
                              "warmup_teacher_temperature_epochs": 2}],
             "train": {"optimizer": {"name": "adamw"}}},
    # Block masks from the run's generator (restored by the checkpoint), the EMA teacher's momentum schedule.
    "data2vec": {"method": "data2vec", "augmenter": {"size": 16},
                 "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4},
                 "masker": {"min_block": 2}, "functionals": [{"name": "token_targets", "blocks": 2}]},
    "ijepa": {"method": "ijepa", "augmenter": {"size": 16},
              "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
              "masker": {"n_targets": 2, "min_keep": 2}, "predictor": {"width": 16, "depth": 1, "heads": 2}},
    "mae": {"method": "mae", "augmenter": {"size": 16},
            "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
            "predictor": {"width": 16, "depth": 1, "heads": 2}},
    # SIGReg's directions follow its step counter, which the checkpoint restores; AdamW's moments; 2 local views.
    "lejepa": {"method": "lejepa", "augmenter": {**MULTI_CROP, "size": 16},
               "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4},
               "train": {"optimizer": {"name": "adamw"}}},
    "instdisc": {"method": "instdisc", "projector": {"name": "mlp", "dims": [16], "batch_norm": False},
                 "functionals": [{"name": "memory_bank", "size": 64, "dim": 16, "noise_samples": 64}]},
    # The learnt temperature and the tokenizer's fitted vocabulary (extra state, no tensor) in the checkpoint;
    # captions tokenized in the DataLoader's collate.
    "clip": {"method": "clip", "data": {"name": "fashion_mnist_captions", "subset_train": 64, "subset_test": 32},
             "augmenter": {"size": 16}, "projector": {"name": "mlp", "dims": [16], "batch_norm": False},
             "encoders": {"text": {"tokenizer": {"context_length": 12, "max_vocab": 200},
                                   "backbone": {"width": 16, "depth": 1, "heads": 2}, "projector": {"dims": [16]}}},
             "train": {"optimizer": {"name": "adamw", "lr": 0.01}}},
    # The memory bank, both normalisers and the noise counter; the tiles' permutations from the run's generator.
    # The rotation classes and the tile permutations are drawn from the run's generator, which the checkpoint restores.
    "rotation": {"method": "rotation",
                 "functionals": [{"name": "pretext_classifier", "fact": "rotation", "hidden": [16]}]},
    "jigsaw": {"method": "jigsaw", "augmenter": {"tile": 4, "gap": 1, "jitter": 1, "permutations": 10},
               "functionals": [{"name": "pretext_classifier", "fact": "permutation", "classes": 10, "hidden": [16]}]},
    # Methods whose state is their parameters and the optimiser's: the gathered global batch, the context network.
    "triplet": {"method": "triplet"},
    "invaspread": {"method": "invaspread"},
    "cpc": {"method": "cpc", "augmenter": {"grid": 3, "patch": 8, "stride": 4},
            "functionals": [{"name": "cpc", "hidden": 16}]},
    "pirl": {"method": "pirl", "projector": {"name": "mlp", "dims": [16], "batch_norm": False},
             "functionals": [{"name": "pirl", "size": 64, "noise_samples": 32}]},
}


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def _assert_same_state(expected_dir, resumed_dir):
    expected = load_checkpoint(expected_dir / "checkpoint.pt")
    resumed = load_checkpoint(resumed_dir / "checkpoint.pt")
    assert (resumed["step"], resumed["epoch"]) == (expected["step"], expected["epoch"]) == (8, 2)
    assert expected["model"].keys() == resumed["model"].keys()
    for key, value in expected["model"].items():
        same = torch.equal(value, resumed["model"][key]) if isinstance(value, torch.Tensor) else (
            value == resumed["model"][key])  # a tokenizer's vocabulary
        assert same, key
    for index, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed["optimizer"]["state"][index][name]))
    assert torch.equal(expected["rng"]["augment"], resumed["rng"]["augment"])


@pytest.mark.parametrize("name", list(METHODS))
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(name, plugins, tmp_path, one_thread):
    method = METHODS[name]
    if method["method"] not in plugins.registry.names("method"):
        pytest.skip(f"the plugin providing {method['method']!r} is not installed")
    pipeline = merge(SHARED, method)
    tiny_run(pipeline, steps=8, run_dir=tmp_path / "straight", plugins=plugins)

    train_killed_at(pipeline, steps=8, kill_at=7, run_dir=tmp_path / "killed")
    saved = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (5, 1, 1)
    tiny_run(pipeline, steps=8, run_dir=tmp_path / "killed", plugins=plugins, resume=True)
    _assert_same_state(tmp_path / "straight", tmp_path / "killed")


def test_a_run_killed_while_writing_a_checkpoint_keeps_the_previous_one(plugins, tmp_path, one_thread):
    pipeline = merge(SHARED, {"train": {"checkpoint_every_steps": 2}})
    tiny_run(pipeline, steps=8, run_dir=tmp_path / "straight", plugins=plugins)

    train_killed_at(pipeline, steps=8, during_checkpoint=2, run_dir=tmp_path / "killed")  # the write of step 4
    leftovers = list((tmp_path / "killed").glob(".checkpoint.pt.*.tmp"))
    assert len(leftovers) == 1  # the half-written file, under a temporary name
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] == 2  # the previous one, intact
    tiny_run(pipeline, steps=8, run_dir=tmp_path / "killed", plugins=plugins, resume=True)
    assert not list((tmp_path / "killed").glob(".checkpoint.pt.*.tmp"))  # cleared by the next write
    _assert_same_state(tmp_path / "straight", tmp_path / "killed")
