"""The four augmenters: the facts say what was done to the views, W processes make what one makes."""

from __future__ import annotations

import pytest
import torch
from jef_plugin_pretext.denoise import DenoiseOptions, DenoiseViews
from jef_plugin_pretext.jigsaw import JigsawOptions, JigsawViews
from jef_plugin_pretext.relative_patch import NEIGHBOURS, RelativePatchOptions, RelativePatchViews
from jef_plugin_pretext.rotation import RotationOptions, RotationViews

from jef.augment.options import ViewsOptions
from jef.augment.views import ViewsAugmenter
from jef.components import RunContext, Views
from jef.testing import build_component, check_component

#: Options that make the crop the identity (whole image, no flip): the views are then exact functions of it.
WHOLE = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip_p": 0.0}
MEAN, STD = 0.449, 0.226  # jef's grey default: ImageNet's statistics averaged


def _images(batch: int, channels: int = 1, side: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, side, side), dtype=torch.uint8, generator=gen)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normalised(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - MEAN) / STD


MAKERS = {
    "rotation_views": lambda **kw: RotationViews(RotationOptions(), **kw),
    "rotation_views (all)": lambda **kw: RotationViews(RotationOptions(all_rotations=True), **kw),
    "jigsaw_views": lambda **kw: JigsawViews(JigsawOptions(tile=4, gap=1, jitter=1, permutations=20), **kw),
    "relative_patch_views": lambda **kw: RelativePatchViews(RelativePatchOptions(tile=4, gap=1, jitter=1), **kw),
    "denoise_views": lambda **kw: DenoiseViews(DenoiseOptions(), **kw),
    "denoise_views (gaussian)": lambda **kw: DenoiseViews(DenoiseOptions(noise="gaussian", flip_p=0.5,
                                                                         scale=(0.5, 1.0)), **kw),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_each_augmenter_passes_jefs_augmenter_contract(name):
    check_component("augmenter", MAKERS[name](channels=3, image_size=16), channels=3, size=16)


@pytest.mark.parametrize("name", list(MAKERS))
def test_each_process_makes_its_rows_of_the_global_batch_views_and_facts(name):
    images = _images(8, side=16)
    want = MAKERS[name](channels=1, image_size=16)(images, generator=_gen(7))
    assert isinstance(want, Views) and want.facts
    for world in (2, 4):
        b = 8 // world
        parts = [MAKERS[name](channels=1, image_size=16, rank=r, world_size=world)(
            images[r * b:(r + 1) * b], generator=_gen(7)) for r in range(world)]
        for v, view in enumerate(want):
            assert torch.equal(torch.cat([p[v] for p in parts]), view), f"view {v}, {world} processes"
        for key, value in want.facts.items():
            assert torch.equal(torch.cat([p.facts[key] for p in parts]), value), f"{key}, {world} processes"


def test_the_eval_view_is_jefs_views_augmenter_eval_view():
    images = _images(3, 3, side=20)
    want = ViewsAugmenter(ViewsOptions(size=16, cpu_backend="torch")).eval_view(images)
    for name, make in MAKERS.items():
        augmenter = make(channels=3, image_size=20)
        augmenter.size = 16
        torch.testing.assert_close(augmenter.eval_view(images), want, rtol=0, atol=1e-6, msg=name)


def test_rotating_back_by_the_fact_recovers_the_crop():
    images = _images(64)
    views = RotationViews(RotationOptions(**WHOLE), channels=1, image_size=12)(images, generator=_gen(1))
    (view,), k = views, views.facts["rotation"]
    assert k.shape == (64,) and k.dtype == torch.long and set(k.tolist()) == {0, 1, 2, 3}
    for i in range(64):
        torch.testing.assert_close(torch.rot90(view[i], -int(k[i]), dims=(-2, -1)), _normalised(images[i]),
                                   rtol=0, atol=1e-5)
    # With random crops too: the same crops, rotated.
    random = RotationViews(RotationOptions(), channels=1, image_size=12)
    rotated = random(images, generator=_gen(2))
    crops = random.normalise(random.crop(images, random.draw(64, 24, _gen(2)), 12))
    back = torch.stack([torch.rot90(v, -int(q), dims=(-2, -1)) for v, q in zip(rotated[0], rotated.facts["rotation"],
                                                                                strict=True)])
    torch.testing.assert_close(back, crops, rtol=0, atol=1e-6)


def test_all_rotations_gives_four_views_with_one_class_each():
    images = _images(5)
    views = RotationViews(RotationOptions(all_rotations=True, **WHOLE), channels=1, image_size=12)(images, _gen())
    assert len(views) == 4 and views.facts["rotation"].tolist() == [[0, 1, 2, 3]] * 5
    for j, view in enumerate(views):
        torch.testing.assert_close(view, torch.rot90(_normalised(images), j, dims=(-2, -1)), rtol=0, atol=1e-5)


def test_the_tiles_put_back_by_the_permutation_rebuild_the_grid():
    # No gap, no jitter and a 12-pixel grid of 12-pixel images: the grid is the image itself.
    images = _images(16)
    augmenter = JigsawViews(JigsawOptions(tile=4, gap=0, jitter=0, permutations=30, tile_normalise=False, **WHOLE),
                            channels=1, image_size=12)
    views = augmenter(images, generator=_gen(3))
    p = views.facts["permutation"]
    assert len(views) == 9 and all(v.shape == (16, 1, 4, 4) for v in views)
    assert p.min() >= 0 and p.max() < 30 and len(set(p.tolist())) > 5
    rebuilt = torch.empty(16, 1, 12, 12)
    for b in range(16):
        for i, cell in enumerate(augmenter.perms[p[b]].tolist()):
            row, col = divmod(cell, 3)
            rebuilt[b, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4] = views[i][b]
    torch.testing.assert_close(rebuilt, _normalised(images), rtol=0, atol=1e-5)


def test_tiles_keep_their_gap_and_jitter_and_are_normalised_one_by_one():
    # tile 3, gap 2, jitter 1: a 15-pixel grid; each tile starts within 1 pixel of 1 + 5 * (row, col).
    images = _images(6, side=15)
    augmenter = JigsawViews(JigsawOptions(tile=3, gap=2, jitter=1, permutations=10, tile_normalise=False, **WHOLE),
                            channels=1, image_size=15)
    views = augmenter(images, generator=_gen(4))
    x = _normalised(images)
    for b in range(6):
        for i, cell in enumerate(augmenter.perms[views.facts["permutation"][b]].tolist()):
            row, col = divmod(cell, 3)
            found = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                     if torch.allclose(x[b, :, 1 + 5 * row + dy:4 + 5 * row + dy, 1 + 5 * col + dx:4 + 5 * col + dx],
                                       views[i][b], atol=1e-5)]
            assert found, (b, i, cell)
    normalised = JigsawViews(JigsawOptions(tile=3, gap=2, jitter=1, permutations=10), channels=1, image_size=15)
    tiles = torch.stack(list(normalised(images, generator=_gen(4))))
    torch.testing.assert_close(tiles.mean(dim=(-2, -1)), torch.zeros(9, 6, 1), rtol=0, atol=1e-5)


def test_the_neighbour_sits_at_the_position_of_the_fact():
    images = _images(64, side=14)
    augmenter = RelativePatchViews(RelativePatchOptions(tile=4, gap=1, jitter=0, tile_normalise=False, **WHOLE),
                                   channels=1, image_size=14)
    centre, neighbour = views = augmenter(images, generator=_gen(5))
    position = views.facts["position"]
    assert set(position.tolist()) == set(range(8))
    x = _normalised(images)
    torch.testing.assert_close(centre, x[:, :, 5:9, 5:9], rtol=0, atol=1e-5)
    for b in range(64):
        row, col = divmod(NEIGHBOURS[int(position[b])], 3)
        torch.testing.assert_close(neighbour[b], x[b, :, 5 * row:5 * row + 4, 5 * col:5 * col + 4], rtol=0, atol=1e-5)


def test_masking_noise_zeroes_exactly_the_fraction_of_pixels():
    images = _images(8, 3, side=10) // 2 + 64  # no black pixel in the clean images
    views = DenoiseViews(DenoiseOptions(fraction=0.3), channels=3, image_size=10)(images, generator=_gen(6))
    (view,), clean, corrupted = views, views.facts["clean"], views.facts["corrupted"]
    assert corrupted.shape == (8, 1, 10, 10) and corrupted.sum(dim=(1, 2, 3)).tolist() == [30] * 8
    augmenter = DenoiseViews(DenoiseOptions(), channels=3, image_size=10)
    torch.testing.assert_close(clean, augmenter.eval_view(images), rtol=0, atol=1e-6)  # no crop: the image
    black = augmenter.normalise(torch.zeros(1, 3, 1, 1)).expand_as(view)
    torch.testing.assert_close(view[corrupted.expand_as(view)], black[corrupted.expand_as(view)], rtol=0, atol=1e-6)
    torch.testing.assert_close(view[~corrupted.expand_as(view)], clean[~corrupted.expand_as(view)], rtol=0, atol=0)
    # Another draw zeroes other pixels.
    other = DenoiseViews(DenoiseOptions(fraction=0.3), channels=3, image_size=10)(images, generator=_gen(7))
    assert not torch.equal(other.facts["corrupted"], corrupted)


def test_gaussian_noise_has_the_std_asked_for():
    images = _images(16, side=16)
    views = DenoiseViews(DenoiseOptions(noise="gaussian", sigma=0.2), channels=1, image_size=16)(images, _gen(8))
    noise = (views[0] - views.facts["clean"]) * STD  # back to pixel units
    assert abs(float(noise.std()) - 0.2) < 0.01 and abs(float(noise.mean())) < 0.01
    assert bool(views.facts["corrupted"].all())


def test_clear_errors():
    with pytest.raises(ValueError, match=r"expected images \[B, 1, H, W\]"):
        RotationViews(channels=1, image_size=8)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="size is null and the images' size is unknown"):
        DenoiseViews(channels=1)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\)"):
        JigsawViews(channels=1, image_size=32, rank=2, world_size=2)
    with pytest.raises(ValueError, match="scale must be"):
        RotationOptions(scale=(0.5, 1.5))


def test_the_factories_read_the_run_context(plugins):
    ctx = RunContext(in_channels=1, image_size=28, rank=1, world_size=2)
    jigsaw = build_component(plugins, "augmenter", "jigsaw_views", {"permutations": 10}, ctx)
    assert (jigsaw.size, jigsaw.grid, jigsaw.classes, jigsaw.rank, jigsaw.n_views) == (28, 30, 10, 1, 9)
    rotation = build_component(plugins, "augmenter", "rotation_views", {"all_rotations": True, "size": 16}, ctx)
    assert (rotation.size, rotation.n_views, rotation.n_global) == (16, 4, 4)
