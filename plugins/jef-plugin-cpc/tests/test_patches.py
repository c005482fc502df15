"""The ``patch_grid`` augmenter: the grid's geometry, CPC v2's patch augmentation, W processes as one, errors."""

from __future__ import annotations

import pytest
import torch
from jef_plugin_cpc.patches import PatchGrid, PatchGridOptions

from jef.components import RunContext, Views
from jef.testing import build_component, check_component


def _images(batch: int, channels: int, side: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, side, side), dtype=torch.uint8, generator=gen)


def _normalised(augmenter: PatchGrid, images: torch.Tensor) -> torch.Tensor:
    return augmenter.normalise(images.float() / 255)


@pytest.mark.parametrize(("grid", "patch", "stride"), [(6, 8, 4), (3, 8, 4), (4, 5, 3), (2, 6, 6)])
def test_patch_r_c_is_the_image_at_r_stride_c_stride(grid, patch, stride):
    side = patch + (grid - 1) * stride
    options = PatchGridOptions(grid=grid, patch=patch, stride=stride, scale=(1.0, 1.0), flip_p=0.0)
    augmenter = PatchGrid(options, channels=3)
    assert (augmenter.n_views, augmenter.n_global, augmenter.size) == (grid * grid, grid * grid, side)
    images = _images(3, 3, side)
    views = augmenter(images, generator=torch.Generator().manual_seed(0))
    assert isinstance(views, Views) and len(views) == grid * grid
    want = _normalised(augmenter, images)
    for r in range(grid):
        for c in range(grid):
            crop = want[..., r * stride:r * stride + patch, c * stride:c * stride + patch]
            torch.testing.assert_close(views[r * grid + c], crop, rtol=0, atol=1e-5,
                                       msg=lambda m, r=r, c=c: f"patch ({r}, {c}): {m}")
    assert torch.equal(views.facts["grid"], torch.full((3, 2), grid))
    # A flipped crop is cut after the flip: patch (r, c) is the mirrored image's.
    flipped = PatchGrid(PatchGridOptions(grid=grid, patch=patch, stride=stride, scale=(1.0, 1.0), flip_p=1.0))
    views = flipped(images, generator=torch.Generator().manual_seed(0))
    mirrored = want.flip(-1)
    torch.testing.assert_close(views[grid - 1], mirrored[..., :patch, (grid - 1) * stride:], rtol=0, atol=1e-5)


def test_eval_view_is_the_whole_normalised_image():
    augmenter = PatchGrid(PatchGridOptions(grid=3, patch=8, stride=4), channels=1)
    images = _images(2, 1, 16)
    torch.testing.assert_close(augmenter.eval_view(images), _normalised(augmenter, images), rtol=0, atol=1e-6)
    assert augmenter.eval_view(_images(2, 1, 28)).shape == (2, 1, 16, 16)  # resized to the crop side


def test_grey_patch_grid_passes_jefs_augmenter_contract():
    check_component("augmenter", PatchGrid(PatchGridOptions(grid=3, patch=8, stride=4, scale=(0.5, 1.0)),
                                           channels=1), channels=1, size=16)


def test_colour_drop_keeps_one_channel_of_every_patch():
    base = dict(grid=3, patch=6, stride=3, scale=(1.0, 1.0), flip_p=0.0)
    images = _images(4, 3, 12)
    plain = PatchGrid(PatchGridOptions(**base))(images, generator=torch.Generator().manual_seed(2))
    dropped = PatchGrid(PatchGridOptions(**base, colour_drop_p=1.0))(images, generator=torch.Generator().manual_seed(2))
    kept = []
    for p, d in zip(plain, dropped, strict=True):
        zero = (d == 0).flatten(2).all(-1)  # [B, 3]: the dropped channels read their mean, 0 once normalised
        assert torch.equal(zero.sum(1), torch.full((4,), 2)), zero
        keep = (~zero).float().argmax(1)
        kept.append(keep)
        for n in range(4):
            torch.testing.assert_close(d[n, keep[n]], p[n, keep[n]], rtol=0, atol=0)
    kept = torch.stack(kept)
    assert len(kept.unique()) == 3 and not (kept == kept[0]).all()  # drawn per patch, every channel kept somewhere


def test_jitter_changes_patches_independently_and_does_nothing_at_strength_0():
    base = dict(grid=2, patch=6, stride=6, scale=(1.0, 1.0), flip_p=0.0)
    images = _images(4, 3, 12)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    plain = PatchGrid(PatchGridOptions(**base))(images, generator=gen())
    none = PatchGrid(PatchGridOptions(**base, jitter_p=1.0, jitter=0.0))(images, generator=gen())
    for p, n in zip(plain, none, strict=True):
        torch.testing.assert_close(n, p, rtol=0, atol=1e-6)
    jittered = PatchGrid(PatchGridOptions(**base, jitter_p=1.0, jitter=0.4))(images, generator=gen())
    ratios = torch.stack([(j - p).abs().mean((1, 2, 3)) for j, p in zip(jittered, plain, strict=True)])
    assert bool((ratios > 1e-3).all()) and ratios[:, 0].unique().numel() == 4


@pytest.mark.parametrize("augment", [{}, {"colour_drop_p": 0.5, "jitter_p": 0.5, "scale": (0.3, 1.0)}])
def test_each_process_makes_its_rows_of_the_global_batch_views(augment):
    options = PatchGridOptions(grid=3, patch=6, stride=3, **augment)
    images = _images(8, 3, 14)
    want = PatchGrid(options)(images, generator=torch.Generator().manual_seed(7))
    for world in (2, 4):
        b = images.shape[0] // world
        parts = [PatchGrid(options, rank=r, world_size=world)(images[r * b:(r + 1) * b],
                                                               generator=torch.Generator().manual_seed(7))
                 for r in range(world)]
        for v, view in enumerate(want):
            torch.testing.assert_close(torch.cat([p[v] for p in parts]), view, rtol=0, atol=1e-6,
                                       msg=lambda m, v=v, w=world: f"view {v}, {w} processes: {m}")
        assert torch.equal(torch.cat([p.facts["grid"] for p in parts]), want.facts["grid"])


def test_clear_errors():
    with pytest.raises(ValueError, match="stride 9 > patch 8"):
        PatchGridOptions(patch=8, stride=9)
    with pytest.raises(ValueError, match="scale must be"):
        PatchGridOptions(scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="mean and std together"):
        PatchGridOptions(mean=(0.5,))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        PatchGrid(channels=2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\)"):
        PatchGrid(rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\].*\(2, 1, 8, 8\)"):
        PatchGrid(channels=3)(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_the_factory_reads_the_run_context(plugins):
    built = build_component(plugins, "augmenter", "patch_grid", {"grid": 6, "patch": 8, "stride": 4},
                            RunContext(in_channels=1, rank=1, world_size=2))
    assert (built.size, built.n_views, built.channels, built.rank, built.world_size) == (28, 36, 1, 1, 2)
    paper = build_component(plugins, "augmenter", "patch_grid", {}, RunContext(in_channels=3))
    assert (paper.grid, paper.options.patch, paper.options.stride, paper.size) == (7, 64, 32, 256)
