"""The built-in maskers: fractions and block shapes over many draws (fixed seeds), sharding, option errors."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import torch

from jef import hookimpl

from jef.augment.masks import block_masks, inverse_block_masks, multi_block_masks, random_masks
from jef.builtin.maskers import BlockOptions, InverseBlockOptions, Masker, MultiBlockOptions, RandomOptions
from jef.components import Masks
from jef.config import merge, resolve
from jef.config.validate import ConfigError
from jef.model.build import check
from jef.plugins import load_plugins
from jef.testing import ContractError, build_component, check_component, fresh_plugins, tiny_run

GRID = (14, 14)  # ViT-B/16 at 224 px
TOKENS = GRID[0] * GRID[1]


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bounding_box(mask: np.ndarray) -> tuple[int, int, bool]:
    """Height, width of a 2-D mask's bounding box, and whether the mask fills it (one rectangle)."""
    rows, cols = np.nonzero(mask)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    return int(h), int(w), bool(mask.sum() == h * w)


def test_random_masks_exactly_the_ratio_uniformly():
    masks = random_masks(4000, GRID, 147, generator())
    assert (masks.sum(dim=1) == 147).all()
    # Every patch is masked with probability 147/196: over 4000 draws each position's frequency is within 5 sigma.
    p = 147 / TOKENS
    sigma = math.sqrt(p * (1 - p) / 4000)
    assert (masks.float().mean(dim=0) - p).abs().max() < 5 * sigma


def test_block_masks_reach_about_the_ratio_and_never_pass_it():
    count = round(0.4 * TOKENS)  # BEiT's 75 of 196 is about 0.4
    masks = block_masks(2000, GRID, count, min_block=16, generator=generator())
    per_row = masks.sum(dim=1)
    assert (per_row <= count).all() and (per_row > 0).all()
    assert per_row.float().mean() > 0.95 * count  # BEiT's loop stops short only when no rectangle fits


def test_one_block_has_the_aspect_range_and_is_a_rectangle():
    # A budget of one min-size block: most rows are one rectangle of about 16 patches (a rounded-down first block
    # leaves room for a small second one, as in BEiT).
    masks = block_masks(3000, GRID, 16, min_block=16, aspect=(0.3, 1 / 0.3), generator=generator(1)).numpy()
    aspects = []
    for row in masks.reshape(-1, *GRID):
        assert row.sum() <= 16
        h, w, filled = bounding_box(row)
        if filled:
            aspects.append(math.log(h / w))
    aspects = np.array(aspects)
    assert len(aspects) > 0.7 * 3000
    assert np.abs(aspects).max() <= math.log(1 / 0.3) + math.log(2)  # rounding h and w moves it a little
    # The log-aspect is drawn uniformly on a symmetric range: tall and wide blocks equally often.
    tall, wide = (aspects > 0).mean(), (aspects < 0).mean()
    assert abs(tall - wide) < 0.05 and tall > 0.2  # the rest round to squares (4 x 4)


def test_multi_block_targets_are_equal_rectangles_in_range_and_the_context_avoids_them():
    n, k = 500, 4
    hidden, targets = multi_block_masks(n, GRID, n_targets=k, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
                                        context_scale=(0.85, 1.0), min_keep=4, generator=generator(2))
    assert len(targets) == k
    context = ~hidden
    keep = context.sum(dim=1)
    assert (keep == keep[0]).all() and keep[0] >= 4  # one count for the whole batch (drop mode)
    sizes = set()
    for target in targets:
        assert not (target & context).any()  # the context minus every target block
        for row in target.numpy().reshape(-1, *GRID):
            h, w, filled = bounding_box(row)
            assert filled
            sizes.add((h, w))
    [(h, w)] = sizes  # one block size per batch, as I-JEPA's collator
    assert 0.15 * TOKENS - 2 * max(h, w) <= h * w <= 0.2 * TOKENS + 2 * max(h, w)
    assert 0.75 / 1.5 <= h / w <= 1.5 * 1.5


def test_multi_block_sizes_cover_their_ranges_over_batches():
    areas = []
    for seed in range(200):
        _, targets = multi_block_masks(2, GRID, generator=generator(seed))
        areas.append(int(targets[0][0].sum()))
    assert min(areas) <= 0.16 * TOKENS and max(areas) >= 0.19 * TOKENS


def test_inverse_block_masks_exact_count_and_kept_patches_cluster():
    count = round(0.8 * TOKENS)
    masks = inverse_block_masks(1000, GRID, count, block=3, generator=generator(3))
    assert (masks.sum(dim=1) == count).all()

    def neighbours(visible: torch.Tensor) -> float:
        """Mean number of visible 4-neighbours of a visible patch."""
        v = visible.view(-1, 1, *GRID).float()
        kernel = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float32).view(1, 1, 3, 3)
        around = torch.nn.functional.conv2d(v, kernel, padding=1)
        return float((around * v).sum() / v.sum())

    uniform = random_masks(1000, GRID, count, generator(3))
    assert neighbours(~masks) > 2 * neighbours(~uniform)  # squares, not scattered patches


@pytest.mark.parametrize("options", [RandomOptions(ratio=0.75), BlockOptions(ratio=0.5, min_block=4),
                                     MultiBlockOptions(), InverseBlockOptions(ratio=0.8)],
                         ids=["random", "block", "multi_block", "inverse_block"])
def test_two_processes_draw_the_rows_of_one(options):
    view = torch.zeros(6, 3, 56, 56)  # 14 x 14 patches of 4 px
    one = Masker("m", options, patch_size=4)(torch.zeros(12, 3, 56, 56), generator=generator(5))
    for rank in range(2):
        part = Masker("m", options, patch_size=4, rank=rank, world_size=2)(view, generator=generator(5))
        rows = slice(6 * rank, 6 * rank + 6)
        assert torch.equal(part.hidden, one.hidden[rows])
        assert all(torch.equal(a, b[rows]) for a, b in zip(part.predict, one.predict, strict=True))
        assert part.counts == one.counts and part.world_size == 2  # counts are the global batch's
    assert one.counts == tuple(int(p.sum()) for p in one.predict)
    assert not one.hidden.all(dim=1).any()  # no sample masked entirely


def test_a_view_that_is_not_whole_patches_is_refused():
    with pytest.raises(ValueError, match="not a whole number of 16 px patches"):
        Masker("random", RandomOptions(), patch_size=16)(torch.zeros(2, 3, 40, 40))


#: A masked pipeline of core parts only (data2vec's composition on a tiny ViT).
MASKED = {
    "data": {"name": "synthetic", "image_size": 16, "channels": 1},
    "augmenter": {"name": "views", "n_global": 1, "size": 16},
    "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "mask_token": True},
    "projector": None,
    "predictor": {"name": "token_linear"},
    "masker": {"name": "block", "ratio": 0.5, "min_block": 2},
    "target": {"name": "ema", "projector": False},
    "functionals": [{"name": "token_targets", "blocks": 2}],
    "energy": {"name": "smooth_l1", "beta": 2.0, "reduce": "sum", "scale": "inverse_sqrt_dim"},
}


def masked(**changes):
    return resolve(merge(MASKED, changes), registry=load_plugins().registry)


def test_option_errors_name_the_option():
    with pytest.raises(ConfigError, match="masker.ratio"):
        masked(masker={"ratio": 1.0})
    with pytest.raises(ConfigError, match="odd"):
        masked(masker={"name": "inverse_block", "block": 4})


def test_a_masker_needs_a_token_backbone():
    with pytest.raises(ConfigError, match="masker: masker 'block' masks patch tokens, but backbone 'small_cnn' "
                                          "makes none.*use a token backbone such as `vit`"):
        check(masked(backbone={"name": "small_cnn", "width": 8}))


def test_masked_parts_without_a_masker_are_refused():
    with pytest.raises(ConfigError, match="functionals.0: 'token_targets' makes the targets of masked"):
        check(masked(masker=None, predictor=None, projector={"name": "mlp", "dims": [16]}))
    with pytest.raises(ConfigError, match="predictor: 'vit_predictor' is a token head"):
        check(masked(masker=None, predictor={"name": "vit_predictor", "width": 8, "heads": 2}))


def test_replace_needs_the_mask_token():
    with pytest.raises(ConfigError, match="backbone.mask_token: true"):
        check(masked(backbone={"mask_token": False}))


def test_a_masked_pipeline_needs_a_token_head_no_projector_and_a_target_maker():
    with pytest.raises(ConfigError, match="token head"):
        check(masked(predictor={"name": "mlp", "dims": [32]}))
    with pytest.raises(ConfigError, match="projector: null"):
        check(masked(projector={"name": "mlp", "dims": [32]}))
    with pytest.raises(ConfigError, match="makes the targets"):
        check(masked(functionals=[{"name": "variance"}]))


def test_the_masker_is_shown_and_checked():
    pipeline = masked()
    assert pipeline.to_dict()["masker"] == {"name": "block", "ratio": 0.5, "min_block": 2, "max_block": None,
                                            "aspect": [0.3, 1 / 0.3], "mode": "replace"}
    assert check(pipeline).patch_size == 4


class CentreMasker(torch.nn.Module):
    """A third-party masker (docs/masks.md's example): the same centre square of every view."""

    def __init__(self, side, patch_size, world_size):
        super().__init__()
        self.side, self.patch_size, self.world_size = side, patch_size, world_size

    def forward(self, view, generator=None):
        rows, cols = view.shape[-2] // self.patch_size, view.shape[-1] // self.patch_size
        grid = torch.zeros(view.shape[0], rows, cols, dtype=torch.bool)
        top, left = (rows - self.side) // 2, (cols - self.side) // 2
        grid[:, top:top + self.side, left:left + self.side] = True
        hidden = grid.flatten(1).to(view.device)
        return Masks(hidden=hidden, predict=(hidden,), mode="replace", grid=(rows, cols),
                     counts=(int(hidden.sum()) * self.world_size,), world_size=self.world_size)


class CentrePlugin:
    @hookimpl
    def jef_register_maskers(self, register):
        register("centre", lambda options, ctx: CentreMasker(2, ctx.patch_size, ctx.world_size),
                 description="the centre square of every view")


def test_a_plugin_masker_trains_a_masked_pipeline(tmp_path):
    plugins = fresh_plugins(CentrePlugin())
    masker = build_component(plugins, "masker", "centre")
    check_component("masker", masker, name="centre")
    result = tiny_run(merge(MASKED, {"masker": {"name": "centre"}, "eval": {"knn": {"enabled": False}}}),
                      steps=2, plugins=plugins, run_dir=tmp_path / "run")
    assert math.isfinite(result.metrics["loss"])
    assert plugins.registry.get("masker", "centre").provenance.plugin == "CentrePlugin"


def test_a_broken_masker_fails_its_contract():
    class EveryPatch(CentreMasker):
        def forward(self, view, generator=None):
            masks = super().forward(view, generator)
            return attrs.evolve(masks, hidden=torch.ones_like(masks.hidden))

    with pytest.raises(ContractError, match="hides every patch"):
        check_component("masker", EveryPatch(2, 4, 1), name="every_patch")
