"""The ``cmc_views`` augmenter: channel groups of one shared crop, shapes, errors, and W processes as one."""

from __future__ import annotations

import pytest
import torch
from jef_plugin_cmc.colour import GREY_MEAN, GREY_SCALE, lab_views, low_high_pass
from jef_plugin_cmc.views import CMCViews, CMCViewsOptions

from jef.augment import ops
from jef.components import RunContext
from jef.testing import build_component, check_component


def _images(batch: int, channels: int, side: int = 14, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, side, side), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize(("channels", "view_channels"), [(3, (1, 2)), (1, (1, 1))])
def test_views_have_the_channels_they_declare(channels, view_channels):
    augmenter = CMCViews(CMCViewsOptions(size=12), channels=channels)
    assert (augmenter.n_views, augmenter.n_global, augmenter.size) == (2, 2, 12)
    assert augmenter.view_channels == view_channels
    views = augmenter(_images(5, channels), generator=torch.Generator().manual_seed(1))
    assert [tuple(v.shape) for v in views] == [(5, c, 12, 12) for c in view_channels]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    evals = augmenter.eval_views(_images(5, channels))
    assert [tuple(v.shape) for v in evals] == [(5, c, 12, 12) for c in view_channels]
    assert torch.equal(augmenter.eval_view(_images(5, channels)), evals[0])


def test_grey_views_pass_jefs_augmenter_contract():
    # The contract wants views with the input's channels: true of grey images (1 | 1), not of RGB ones (1 | 2).
    check_component("augmenter", CMCViews(CMCViewsOptions(size=12), channels=1), channels=1, size=16)


def test_an_uncropped_view_is_the_channel_split_of_the_image():
    # scale (1, 1), ratio 1 and the views' side = the images' side: the identity crop, which resamples exactly.
    images = _images(4, 3, side=12)
    x = images.float() / 255
    options = CMCViewsOptions(size=12, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    l_view, ab_view = CMCViews(options, channels=3)(images, generator=torch.Generator().manual_seed(0))
    want_l, want_ab = lab_views(x)
    torch.testing.assert_close(l_view, want_l, rtol=0, atol=1e-5)
    torch.testing.assert_close(ab_view, want_ab, rtol=0, atol=1e-5)
    flipped = CMCViews(CMCViewsOptions(size=12, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0), channels=3)
    l_flip, ab_flip = flipped(images, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(l_flip, want_l.flip(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(ab_flip, want_ab.flip(-1), rtol=0, atol=1e-5)


def test_both_views_come_from_one_crop():
    augmenter = CMCViews(CMCViewsOptions(size=10, scale=(0.2, 0.6)), channels=1)
    images = _images(6, 1)
    views = augmenter(images, generator=torch.Generator().manual_seed(3))
    theta = augmenter.draw(6, 1.0, torch.Generator().manual_seed(3))
    crops = ops.crop_resample(images, theta, 10)
    low, high = low_high_pass(crops, 1.0)
    torch.testing.assert_close(views[0], (low - GREY_MEAN[0]) / GREY_SCALE[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(views[1], (high - GREY_MEAN[1]) / GREY_SCALE[1], rtol=0, atol=1e-5)
    # Undo the scaling: the two views add up to the crop itself.
    total = views[0] * GREY_SCALE[0] + GREY_MEAN[0] + views[1] * GREY_SCALE[1] + GREY_MEAN[1]
    torch.testing.assert_close(total, crops, rtol=0, atol=1e-5)


def test_uint8_and_float_images_give_the_same_views():
    augmenter = CMCViews(CMCViewsOptions(size=12), channels=3)
    images = _images(3, 3)
    a = augmenter(images, generator=torch.Generator().manual_seed(4))
    b = augmenter(images.float() / 255, generator=torch.Generator().manual_seed(4))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels", [3, 1])
def test_each_process_makes_its_rows_of_the_global_batch_views(channels):
    options = CMCViewsOptions(size=10, scale=(0.2, 1.0))
    images = _images(8, channels)
    want = CMCViews(options, channels=channels)(images, generator=torch.Generator().manual_seed(7))
    for world in (2, 4):
        b = images.shape[0] // world
        parts = [CMCViews(options, channels=channels, rank=r, world_size=world)(
            images[r * b:(r + 1) * b], generator=torch.Generator().manual_seed(7)) for r in range(world)]
        for v, view in enumerate(want):
            torch.testing.assert_close(torch.cat([p[v] for p in parts]), view, rtol=0, atol=1e-6,
                                       msg=lambda m, v=v, w=world: f"view {v}, {w} processes: {m}")


def test_clear_errors_for_the_wrong_channels():
    with pytest.raises(ValueError, match=r"makes its views from RGB \(3 channels: L \| ab\) or grey.*channels=2"):
        CMCViews(CMCViewsOptions(size=8), channels=2)
    rgb = CMCViews(CMCViewsOptions(size=8), channels=3)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\].*got shape \(2, 2, 8, 8\)"):
        rgb(torch.zeros(2, 2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        rgb.eval_view(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\)"):
        CMCViews(CMCViewsOptions(size=8), channels=3, rank=2, world_size=2)
    with pytest.raises(ValueError, match="scale must be"):
        CMCViewsOptions(scale=(0.5, 1.5))


def test_the_factory_reads_the_run_context(plugins):
    grey = build_component(plugins, "augmenter", "cmc_views", {"size": None},
                           RunContext(in_channels=1, image_size=28))
    assert (grey.size, grey.channels, grey.view_channels) == (28, 1, (1, 1))
    rgb = build_component(plugins, "augmenter", "cmc_views", {}, RunContext(in_channels=3, rank=1, world_size=2))
    assert (rgb.size, rgb.view_channels, rgb.rank, rgb.world_size) == (224, (1, 2), 1, 2)
    forced = build_component(plugins, "augmenter", "cmc_views", {"channels": 1, "size": 8, "blur_sigma": 0.5},
                             RunContext(in_channels=3))
    assert forced.view_channels == (1, 1) and forced.options.blur_sigma == 0.5
