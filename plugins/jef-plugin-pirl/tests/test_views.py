"""The ``pirl_views`` augmenter: the image view, the jigsaw tiles of the second crop, permutations, W processes."""

from __future__ import annotations

import pytest
import torch
from jef_plugin_pirl.views import PIRLViews, PIRLViewsOptions

from jef.components import RunContext, Views
from jef.testing import build_component, check_component


def _images(batch: int, channels: int = 3, side: int = 20, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, side, side), dtype=torch.uint8, generator=gen)


def _reassemble(augmenter: PIRLViews, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
    """Each tile put back at its cell and offset (written out per image): the canvas and the pixels covered."""
    tiles, permutation, offsets = views[1:], views.facts["permutation"], views.facts["offsets"]
    batch, channels = tiles[0].shape[:2]
    canvas = torch.zeros(batch, channels, augmenter.grid, augmenter.grid)
    covered = torch.zeros(batch, 1, augmenter.grid, augmenter.grid, dtype=torch.bool)
    t = augmenter.tile
    for b in range(batch):
        for j, tile in enumerate(tiles):
            cell = int(permutation[b, j])  # view 1 + j is the tile of this cell
            top = cell // 3 * augmenter.cell + int(offsets[b, cell, 0])
            left = cell % 3 * augmenter.cell + int(offsets[b, cell, 1])
            canvas[b, :, top:top + t, left:left + t] = tile[b]
            covered[b, :, top:top + t, left:left + t] = True
    return canvas, covered


@pytest.mark.parametrize("channels", [3, 1])
def test_views_shapes_and_facts(channels):
    augmenter = PIRLViews(PIRLViewsOptions(size=16, grid=18, tile=4))
    assert (augmenter.n_views, augmenter.n_global, augmenter.n_local) == (10, 1, 9)
    assert (augmenter.cell, augmenter.jitter) == (6, 2)
    views = augmenter(_images(5, channels), generator=torch.Generator().manual_seed(1))
    assert isinstance(views, Views) and len(views) == 10
    assert [tuple(v.shape) for v in views] == [(5, channels, 16, 16)] + [(5, channels, 4, 4)] * 9
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    permutation, offsets = views.facts["permutation"], views.facts["offsets"]
    assert permutation.shape == (5, 9) and offsets.shape == (5, 9, 2)
    assert all(sorted(row.tolist()) == list(range(9)) for row in permutation)  # a permutation per image
    assert offsets.min() >= 0 and offsets.max() <= 2
    assert tuple(augmenter.eval_view(_images(5, channels)).shape) == (5, channels, 16, 16)
    check_component("augmenter", augmenter, channels=channels, size=20)


def test_the_tiles_put_back_by_the_permutation_are_the_second_crop():
    augmenter = PIRLViews(PIRLViewsOptions(size=12, grid=21, tile=5))  # cells of 7, offsets 0..2
    images = _images(4)
    views = augmenter(images, generator=torch.Generator().manual_seed(2))
    # The same generator, step by step: the image and the jigsaw crop, then the permutations and offsets.
    gen = torch.Generator().manual_seed(2)
    image, crop = augmenter.views(images, generator=gen)
    permutation, offsets = augmenter.draw(4, gen)
    assert torch.equal(views[0], image)
    assert torch.equal(views.facts["permutation"], permutation) and torch.equal(views.facts["offsets"], offsets)
    canvas, covered = _reassemble(augmenter, views)
    assert int(covered.sum()) == 4 * 9 * 25  # nine disjoint tiles per image
    assert torch.equal(canvas * covered, crop * covered)


def test_tiles_as_large_as_the_cells_tile_the_whole_crop():
    augmenter = PIRLViews(PIRLViewsOptions(size=12, grid=15, tile=5))  # no jitter: the grid itself
    images = _images(3)
    views = augmenter(images, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    _, crop = augmenter.views(images, generator=gen)
    canvas, covered = _reassemble(augmenter, views)
    assert bool(covered.all()) and int(views.facts["offsets"].abs().sum()) == 0
    assert torch.equal(canvas, crop)


def test_permutations_are_drawn_from_all_of_them_not_a_fixed_set():
    augmenter = PIRLViews(PIRLViewsOptions(size=8, grid=9, tile=3))
    permutation, _ = augmenter.draw(3000, torch.Generator().manual_seed(4))
    assert len({tuple(row) for row in permutation.tolist()}) > 2950  # of 9! = 362880; a fixed set would repeat
    counts = torch.bincount(permutation[:, 0], minlength=9).double() / 3000
    assert (counts - 1 / 9).abs().max() < 0.03  # every cell equally likely in every position


def test_each_process_makes_its_rows_of_the_global_batch_views():
    options = PIRLViewsOptions(size=10, grid=12, tile=3)
    images = _images(8)
    want = PIRLViews(options)(images, generator=torch.Generator().manual_seed(7))
    for world in (2, 4):
        b = images.shape[0] // world
        parts = [PIRLViews(options, rank=r, world_size=world)(images[r * b:(r + 1) * b],
                                                              generator=torch.Generator().manual_seed(7))
                 for r in range(world)]
        for v, view in enumerate(want):
            torch.testing.assert_close(torch.cat([p[v] for p in parts]), view, rtol=0, atol=1e-6,
                                       msg=lambda m, v=v, w=world: f"view {v}, {w} processes: {m}")
        for fact in ("permutation", "offsets"):
            assert torch.equal(torch.cat([p.facts[fact] for p in parts]), want.facts[fact]), (fact, world)


def test_clear_errors():
    with pytest.raises(ValueError, match="grid must be a multiple of 3"):
        PIRLViewsOptions(grid=256)
    with pytest.raises(ValueError, match=r"tile=90 does not fit in the 85-pixel cells"):
        PIRLViewsOptions(tile=90)
    with pytest.raises(ValueError, match="jigsaw_scale must be"):
        PIRLViewsOptions(jigsaw_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\)"):
        PIRLViews(PIRLViewsOptions(size=8), rank=2, world_size=2)
    with pytest.raises(ValueError, match="size is null"):
        PIRLViews(PIRLViewsOptions(size=None))


def test_the_factory_reads_the_run_context(plugins):
    paper = build_component(plugins, "augmenter", "pirl_views", {}, RunContext())
    assert (paper.size, paper.grid, paper.cell, paper.tile, paper.jitter) == (224, 255, 85, 64, 21)
    small = build_component(plugins, "augmenter", "pirl_views", {"size": None, "grid": None, "tile": None},
                            RunContext(image_size=32, rank=1, world_size=2))
    assert (small.size, small.grid, small.cell, small.tile, small.rank, small.world_size) == (32, 36, 12, 9, 1, 2)
