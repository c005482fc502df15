"""``method: dino``, the paper's ViT-S/16 setting: its resolved values, a tiny ViT run with multi-crop, learning."""

from __future__ import annotations

import json
import math

import pytest
import torch

from jef import hookimpl
from jef.builtin.vit import ViT
from jef.config import merge, resolve
from jef.run.optim import weight_decay_at
from jef.testing import assert_learns, temporary_plugin, tiny_run


def test_recipe_is_the_papers_vit_s16_setting(plugins):
    pipeline = resolve({"method": "dino"}, registry=plugins.registry)
    backbone = pipeline.backbone
    assert backbone.name == "vit" and backbone.weights is None
    b = backbone.options
    assert (b.preset, b.width, b.depth, b.heads, b.patch_size, b.image_size, b.pool, b.drop_path, b.pos_embed,
            b.frozen_patch_embed) == ("small", None, None, None, 16, None, "cls", 0.1, "learned", False)
    head = pipeline.projector.options
    assert pipeline.projector.name == "dino_head" and pipeline.predictor is None
    assert (head.out_dim, head.hidden_dim, head.bottleneck_dim, head.n_layers, head.batch_norm,
            head.norm_last_layer, head.freeze_last_layer_epochs) == (65536, 2048, 256, 3, False, True, 1)
    views = pipeline.augmenter.options
    assert (views.n_global, views.n_local, views.size, views.resolved_local_size) == (2, 10, 224, 96)
    assert (views.scale, views.local_scale) == ((0.4, 1.0), (0.05, 0.4))
    assert views.per_view("blur_p") == [1.0, 0.1] + [0.5] * 10
    assert views.per_view("solarize_p") == [0.0, 0.2] + [0.0] * 10
    assert (views.saturation, views.hue) == (0.2, 0.1)
    assert (pipeline.energy.name, pipeline.energy.options.temperature) == ("cross_entropy", 0.1)
    [centering] = pipeline.functionals
    c = centering.options
    assert (c.center_momentum, c.warmup_teacher_temperature, c.teacher_temperature,
            c.warmup_teacher_temperature_epochs) == (0.9, 0.04, 0.07, 30)
    target = pipeline.target
    assert (target.name, target.momentum, target.final_momentum, target.schedule, target.projector) == \
        ("ema", 0.996, 1.0, "cosine", True)
    train = pipeline.train
    o = train.optimizer
    assert (o.name, o.lr, o.scale_lr, o.weight_decay, o.final_weight_decay, o.exclude_norm_and_bias) == \
        ("adamw", 5e-4, "linear", 0.04, 0.4, True)
    assert (train.scheduler.name, train.scheduler.warmup_epochs) == ("cosine", 10)
    # The paper's min_lr 1e-6 is absolute; jef's floor is a fraction of the peak, 1e-6 at the recipe's batch.
    assert o.lr * train.batch_size / 256 * train.scheduler.final_lr_ratio == pytest.approx(1e-6)
    assert (train.clip_grad_norm, train.epochs, train.batch_size, train.precision) == (3.0, 100, 256, "no")


#: The ViT recipe shrunk: a 2-block ViT of width 32 on 4-pixel patches, 16 px global views (a 4 x 4 grid) and 8 px
#: local views (2 x 2: the position embedding resized), a narrow head, the teacher temperature's 0.04 -> 0.07 over
#: the run's 2 epochs (the recipe's 30 would be longer than the run, which is refused), no blur or solarisation
#: (slow on a CPU). jef.testing's tiny settings choose SGD: naming adamw brings back the recipe's optimiser.
TINY_VIT = {
    "method": "dino",
    "augmenter": {"size": 16, "n_local": 2, "local_size": 8, "blur_p": 0.0, "solarize_p": 0.0},
    "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4},
    "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8},
    "functionals": [{"name": "centering", "teacher_temperature": 0.07, "warmup_teacher_temperature": 0.04,
                     "warmup_teacher_temperature_epochs": 2}],
    "train": {"epochs": 2, "optimizer": {"name": "adamw"}},
    "eval": {"knn": {"enabled": False}},
}


class Grids:
    """The patch grids each ViT of the run (student, teacher) asked a position embedding for."""

    def __init__(self):
        self.roles, self.seen, self.start = {}, [], None

    @hookimpl
    def jef_run_start(self, run):
        model = run.unwrapped_model
        self.roles = {id(model.backbone): "student", id(model.target_backbone): "teacher"}
        self.start = model.backbone.pos_embed.detach().clone()


def test_a_tiny_vit_trains_the_recipe_with_local_views_of_another_size(plugins, monkeypatch):
    grids = Grids()
    resize = ViT.position_embedding
    monkeypatch.setattr(ViT, "position_embedding",
                        lambda self, grid: grids.seen.append((grids.roles.get(id(self)), grid)) or resize(self, grid))
    with temporary_plugin(plugins, grids, name="grids"):
        result = tiny_run(TINY_VIT, steps=6, plugins=plugins)
    assert math.isfinite(result.metrics["loss"]) and math.isfinite(result.metrics["energy/cross_entropy"])
    # The student sees the global views (the built 4 x 4 grid) and the local ones (2 x 2, resized); the teacher
    # only the global ones.
    assert set(grids.seen) == {("student", (4, 4)), ("student", (2, 2)), ("teacher", (4, 4))}
    checkpoint = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.equal(checkpoint["backbone.pos_embed"], grids.start)  # the position embedding trains
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {line["step"]: line for line in lines if "weight_decay" in line}
    for step in range(1, 7):  # the recipe's weight decay 0.04 -> 0.4 on a cosine over the run's 6 steps
        assert logged[step]["weight_decay"] == pytest.approx(weight_decay_at(0.04, 0.4, step, 6))
        assert logged[step]["centering/teacher_temperature"] == (0.04 if step <= 4 else pytest.approx(0.07))


#: The ViT recipe on the four greyscale texture classes (jef.testing.LEARNING_SETTINGS: 120 steps of 64 images,
#: AdamW), shrunk: the tiny ViT, 4 local views of 8 px, no blur or solarisation, the recipe's 3-layer head without
#: BatchNorm narrowed to K = 256, the recipe's teacher (0.996 -> 1) and weight-decay ramp; a one-epoch warm-up
#: instead of ten and AdamW at 1e-3. Measured while tuning (kNN top-1, trained vs the random backbone): seed 0
#: 0.918 vs 0.805, seed 2 0.922 vs 0.871; seed 1 does not learn in this budget (0.859 vs 0.867, also with 200
#: steps, a BatchNorm head, momentum 0.99 or rates 5e-4 to 2e-3): its random ViT is already a strong kNN feature.
LEARNABLE = {
    "augmenter": {"size": 16, "n_local": 4, "local_size": 8, "blur_p": 0.0, "solarize_p": 0.0},
    "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4},
    "projector": {"name": "dino_head", "out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32},
    "train": {"optimizer": {"lr": 0.001}, "scheduler": {"warmup_epochs": 1}},
}


def test_the_vit_recipe_learns_with_multi_crop_and_does_not_collapse(plugins):
    result = assert_learns(merge({"method": "dino"}, LEARNABLE), plugins=plugins)
    entropy = result.metrics["collapse/target_entropy"]  # the teacher's, as a fraction of log K
    assert 0.0 < entropy < 0.99
