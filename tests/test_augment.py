"""Tests of the batched ``views`` augmenter (jef.augment) on tiny CPU tensors."""

import pytest
import torch

from jef.augment import ViewsAugmenter, ViewsOptions, build_views, ops
from jef.augment.params import crop_flip_theta
from jef.components import RunContext

#: Every random transform off and crops covering the whole image: the identity recipe.
PLAIN = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
             blur_p=0.0, solarize_p=0.0, normalize=False, size=12)


def images(batch: int = 4, channels: int = 3, side: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, side, side), dtype=torch.uint8, generator=g)


def augmenter(**overrides: object) -> ViewsAugmenter:
    return ViewsAugmenter(ViewsOptions(**{**PLAIN, **overrides}))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_dtype_device_and_attributes() -> None:
    aug = ViewsAugmenter(ViewsOptions(n_global=2, n_local=3, size=16, local_size=8, blur_p=0.5))
    views = aug(images(side=20), seeded(0))
    assert (aug.n_views, aug.n_global, len(views)) == (5, 2, 5)
    assert [tuple(v.shape) for v in views] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 3
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in views)
    assert all(torch.isfinite(v).all() for v in views)


def test_views_stay_float32_under_autocast() -> None:
    aug = ViewsAugmenter(ViewsOptions(size=12, blur_p=1.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views, test = aug(images(), seeded(0)), aug.eval_view(images(side=10))
    assert all(v.dtype == torch.float32 for v in [*views, test])


def test_single_channel_images() -> None:
    aug = ViewsAugmenter(ViewsOptions(size=12, n_local=1), in_channels=1)
    views = aug(images(channels=1), seeded(0))
    assert [v.shape[1] for v in views] == [1, 1, 1]
    assert aug.eval_view(images(channels=1)).shape == (4, 1, 12, 12)


def test_unnormalised_views_stay_in_unit_range() -> None:
    aug = augmenter(scale=(0.08, 1.0), ratio=(0.5, 2.0), flip_p=0.5, jitter_p=1.0, brightness=0.9, contrast=0.9,
                    saturation=0.9, hue=0.5, grayscale_p=0.3, blur_p=0.5, solarize_p=0.5, n_local=1)
    for view in aug(images(batch=8), seeded(1)):
        assert view.min() >= 0.0 and view.max() <= 1.0


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_colour_ops_stay_in_unit_range(op: str) -> None:
    x = torch.rand(6, 3, 5, 5, generator=seeded(2))
    factor = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0]) if op != "hue" else torch.linspace(-0.5, 0.5, 6)
    out = getattr(ops, f"adjust_{op}")(x, factor)
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
    identity = torch.tensor([0.0 if op == "hue" else 1.0]).expand(6)
    torch.testing.assert_close(getattr(ops, f"adjust_{op}")(x, identity), x, atol=1e-6, rtol=0)


def test_hue_rotation_of_primaries() -> None:
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(3, 3, 1, 1)
    out = ops.adjust_hue(red, torch.tensor([1 / 3, -1 / 3, 0.5]))
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]).view(3, 3, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_colour_ops_match_torchvision() -> None:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = torch.rand(3, 3, 6, 7, generator=seeded(3))
    shift = torch.tensor([-0.4, 0.1, 0.45])
    expected = torch.stack([tvf.adjust_hue(x[i], float(shift[i])) for i in range(3)])
    torch.testing.assert_close(ops.adjust_hue(x, shift), expected, atol=1e-5, rtol=0)
    factor = torch.tensor([0.3, 1.0, 1.7])
    expected = torch.stack([tvf.adjust_contrast(x[i], float(factor[i])) for i in range(3)])
    torch.testing.assert_close(ops.adjust_contrast(x, factor), expected, atol=1e-3, rtol=0)


def test_per_sample_randomness() -> None:
    x = images(batch=1).expand(2, -1, -1, -1)  # the same image twice
    views = augmenter(scale=(0.1, 0.5), ratio=(0.75, 1.33))(x, seeded(0))
    assert not torch.allclose(views[0][0], views[0][1])
    assert not torch.allclose(views[0], views[1])  # and the two views differ


def test_same_seed_same_views_other_seed_other_views() -> None:
    aug = ViewsAugmenter(ViewsOptions(size=12, n_local=1, blur_p=0.5, solarize_p=0.5))
    x = images()
    first, again, other = aug(x, seeded(7)), aug(x, seeded(7)), aug(x, seeded(8))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.allclose(first[0], other[0])
    torch.manual_seed(5)
    global_rng = aug(x)
    torch.manual_seed(5)
    assert torch.equal(aug(x)[0], global_rng[0])


def test_uint8_and_float_inputs_agree() -> None:
    aug = ViewsAugmenter(ViewsOptions(size=10, blur_p=0.5))
    x = images()
    from_uint8, from_float = aug(x, seeded(3)), aug(x.double() / 255.0, seeded(3))
    for a, b in zip(from_uint8, from_float, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_identity_crop_reproduces_input() -> None:
    x = images()
    for view in augmenter()(x, seeded(0)):
        torch.testing.assert_close(view, x.float() / 255.0, atol=1e-5, rtol=0)


def test_flip_is_a_true_mirror() -> None:
    x = images()
    for view in augmenter(flip_p=1.0)(x, seeded(0)):
        torch.testing.assert_close(view, torch.flip(x.float() / 255.0, dims=[-1]), atol=1e-5, rtol=0)


def test_crop_geometry() -> None:
    n, tries = 64, 10
    u = torch.rand(n, 2 * tries + 2, generator=seeded(4))
    flip = torch.arange(n) % 2 == 0
    theta = crop_flip_theta(u[:, :tries], u[:, tries:2 * tries], u[:, -2:], flip, aspect=1.0,
                            scale=(0.2, 0.6), ratio=(0.5, 2.0))
    width, height = theta[:, 0, 0].abs(), theta[:, 1, 1]
    area = width * height
    assert (area >= 0.2 - 1e-6).all() and (area <= 0.6 + 1e-6).all()
    assert (theta[:, 0, 2].abs() + width <= 1 + 1e-6).all() and (theta[:, 1, 2].abs() + height <= 1 + 1e-6).all()
    assert torch.equal(theta[:, 0, 0] < 0, flip)
    assert not torch.allclose(width, height)  # the aspect ratio varies


def test_per_view_probabilities_are_honoured() -> None:
    x = images()
    plain = x.float() / 255.0
    views = augmenter(solarize_p=[1.0, 0.0])(x, seeded(0))
    torch.testing.assert_close(views[0], torch.where(plain >= 0.5, 1.0 - plain, plain), atol=1e-5, rtol=0)
    torch.testing.assert_close(views[1], plain, atol=1e-5, rtol=0)


def test_local_views_take_the_last_global_value_or_their_own() -> None:
    x = images()
    plain = x.float() / 255.0
    solarized = torch.where(plain >= 0.5, 1.0 - plain, plain)
    local = dict(n_local=1, local_size=12, local_scale=(1.0, 1.0))
    views = augmenter(solarize_p=[0.0, 1.0], **local)(x, seeded(0))
    torch.testing.assert_close(views[2], solarized, atol=1e-5, rtol=0)
    views = augmenter(solarize_p=[0.0, 1.0, 0.0], **local)(x, seeded(0))
    torch.testing.assert_close(views[2], plain, atol=1e-5, rtol=0)


def test_grayscale_has_equal_channels() -> None:
    for view in augmenter(grayscale_p=1.0)(images(), seeded(0)):
        assert torch.allclose(view[:, 0], view[:, 1]) and torch.allclose(view[:, 1], view[:, 2])


def test_blur() -> None:
    x = images()
    tiny = augmenter(blur_p=1.0, blur_sigma=(1e-3, 1e-3))(x, seeded(0))[0]
    torch.testing.assert_close(tiny, x.float() / 255.0, atol=1e-5, rtol=0)
    wide = augmenter(blur_p=1.0, blur_sigma=(3.0, 3.0), blur_kernel=0.5)(x, seeded(0))[0]
    assert wide.std() < 0.5 * (x.float() / 255.0).std()
    flat = torch.full((2, 3, 9, 9), 0.25)
    kernels = ops.gaussian_kernels(torch.tensor([0.5, 2.0]), torch.tensor([True, True]), 5)
    torch.testing.assert_close(ops.gaussian_blur(flat, kernels), flat)
    assert ops.blur_kernel_size(224, 0.1) == 23 and ops.blur_kernel_size(32, 0.1) == 3


def test_jitter_off_is_identity_and_on_changes_colours() -> None:
    x = images()
    for order in (True, False):
        views = augmenter(jitter_p=1.0, jitter_random_order=order)(x, seeded(0))
        assert not torch.allclose(views[0], x.float() / 255.0)


def test_normalisation_and_eval_view() -> None:
    x = images()
    aug = ViewsAugmenter(ViewsOptions(size=12, mean=[0.5], std=[0.25]))
    torch.testing.assert_close(aug.eval_view(x), (x.float() / 255.0 - 0.5) / 0.25)
    resized = ViewsAugmenter(ViewsOptions(size=8)).eval_view(images(side=10))
    assert resized.shape == (4, 3, 8, 8) and torch.equal(resized, ViewsAugmenter(ViewsOptions(size=8)).eval_view(
        images(side=10)))
    default = ViewsAugmenter(ViewsOptions(size=12)).eval_view(torch.full((1, 3, 12, 12), 0.485))
    assert default[0, 0].abs().max() < 1e-5  # ImageNet mean by default


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 2, 8, 8), (2, 4, 8, 8), (1, 2, 3, 8, 8)])
def test_bad_shapes_are_explained(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\] with C in \{1, 3\}, got shape"):
        ViewsAugmenter(ViewsOptions(size=8))(torch.zeros(shape, dtype=torch.uint8))


def test_bad_dtype_and_channel_stats() -> None:
    with pytest.raises(ValueError, match="uint8 .* or float"):
        ViewsAugmenter(ViewsOptions(size=8))(torch.zeros(2, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="'mean' has 3 values but the images have 1 channel"):
        ViewsAugmenter(ViewsOptions(size=8, mean=[0.1, 0.2, 0.3], std=[1.0]), in_channels=1)


@pytest.mark.parametrize(("options", "message"), [
    (dict(blur_p=[1.0, 0.1, 0.5]), r"'blur_p' must be a number or a list of 2 values \(one per global view\)"),
    (dict(solarize_p=[0.1], n_global=2, n_local=2), "or 4 .one per view., got 1 values"),
    (dict(solarize_p=[0.1, 0.2, 0.3, 0.4], n_global=2, n_local=3), r"2 values \(one per global view\), 3 \(the "
                                                                    r"global views', then one for every local view\)"),
    (dict(flip_p=1.5), r"probability in \[0, 1\]"),
    (dict(jitter_p=[]), "non-empty list"),
    (dict(scale=(0.5, 0.2)), "low <= high"),
    (dict(mean=[0.1, 0.2]), "1 or 3 values"),
    (dict(std=[0.5]), "given together"),
])
def test_invalid_options_are_explained(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViewsOptions(**options)


def test_one_value_for_every_local_view() -> None:
    options = ViewsOptions(n_global=2, n_local=3, blur_p=[1.0, 0.1, 0.5], solarize_p=[0.0, 0.2])
    assert options.per_view("blur_p") == [1.0, 0.1, 0.5, 0.5, 0.5]
    assert options.per_view("solarize_p") == [0.0, 0.2, 0.2, 0.2, 0.2]
    assert ViewsOptions(n_global=2, n_local=3, flip_p=[0, 1, 0, 1, 0]).per_view("flip_p") == [0, 1, 0, 1, 0]


def test_options_build_from_yaml_data() -> None:
    from jef.config.validate import ConfigError, build_options

    built = build_options(ViewsOptions, {"blur_p": [1, 0.1], "scale": [0.2, 1], "mean": [0.5], "std": [0.5]}, "aug")
    assert built.blur_p == [1.0, 0.1] and built.scale == (0.2, 1.0)
    with pytest.raises(ConfigError, match="aug.solarize_p"):
        build_options(ViewsOptions, {"solarize_p": [0.0, 0.2, 0.3]}, "aug")


def test_registered_factory_builds_through_the_hook() -> None:
    from jef.builtin import augmenters

    calls = []
    augmenters.jef_register_augmenters(register=lambda *args, **kwargs: calls.append((args, kwargs)))
    [((name, factory), kwargs)] = calls
    assert name == "views" and kwargs["options"] is ViewsOptions and "2002.05709" in kwargs["paper"]
    aug = factory(kwargs["options"](size=8), RunContext(in_channels=3))
    assert isinstance(aug, ViewsAugmenter) and build_views is factory
    assert [v.shape for v in aug(images(), seeded(0))] == [(4, 3, 8, 8)] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_device_of_its_input() -> None:
    aug = ViewsAugmenter(ViewsOptions(size=12, n_local=1, blur_p=0.5, solarize_p=0.5))
    x = images()
    on_gpu = aug(x.cuda(), seeded(0))
    assert all(v.device.type == "cuda" and v.dtype == torch.float32 for v in on_gpu)
    for a, b in zip(on_gpu, aug(x, seeded(0)), strict=True):  # same seed, same views on every device
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=0)
    assert aug.eval_view(x.cuda()).device.type == "cuda"


def test_size_defaults_to_the_data_image_size_through_the_factory():
    from jef.components import RunContext

    built = build_views(ViewsOptions(), RunContext(in_channels=1, image_size=20))
    assert built.size == 20 and built(torch.zeros(2, 1, 20, 20, dtype=torch.uint8))[0].shape == (2, 1, 20, 20)
    with pytest.raises(ValueError, match="size is null and no image size was given"):
        ViewsAugmenter(ViewsOptions())


# -- the batched operations against per-image references, with the same drawn parameters ----------------------


def test_crop_resample_equals_grid_sample_resample() -> None:
    """The separable fast path samples exactly where affine_grid + grid_sample do (crops, flips, uint8 or float)."""
    n, tries = 6, 10
    u = torch.rand(2 * n, 2 * tries + 2, generator=seeded(11))
    theta = crop_flip_theta(u[:, :tries], u[:, tries:2 * tries], u[:, -2:], torch.arange(2 * n) % 3 == 0,
                            aspect=20 / 14, scale=(0.05, 1.0), ratio=(0.5, 2.0)).view(2, n, 2, 3)
    x = torch.randint(0, 256, (n, 3, 14, 20), dtype=torch.uint8, generator=seeded(12))
    for size in (7, 16, 31):
        expected = ops.resample(x.float() / 255.0, theta, size)
        torch.testing.assert_close(ops.crop_resample(x, theta, size), expected, atol=2e-5, rtol=0)
        torch.testing.assert_close(ops.crop_resample(x.float() / 255.0, theta, size), expected, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="axis-aligned"):
        ops.crop_resample(x, theta + torch.tensor([[0.0, 0.1, 0.0], [0.0, 0.0, 0.0]]), 8)


def _per_image(op: str, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    run = {"brightness": tvf.adjust_brightness, "contrast": tvf.adjust_contrast, "saturation": tvf.adjust_saturation,
           "hue": tvf.adjust_hue}[op]
    return torch.stack([run(x[i], float(values[i])) for i in range(len(x))])


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_each_colour_op_equals_torchvision_per_image(op: str) -> None:
    x = torch.rand(8, 3, 9, 11, generator=seeded(13))
    low, high = (-0.5, 0.5) if op == "hue" else (0.0, 2.5)
    values = low + (high - low) * torch.rand(8, generator=seeded(14))
    # torchvision's grayscale weighs red 0.2989 where jef (as PIL) uses 0.299: a difference below 1e-4.
    atol = 1e-5 if op in ("brightness", "hue") else 2e-4
    torch.testing.assert_close(getattr(ops, f"adjust_{op}")(x, values), _per_image(op, x, values), atol=atol, rtol=0)


def test_grayscale_blur_solarize_equal_torchvision_per_image() -> None:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = torch.rand(5, 3, 12, 10, generator=seeded(15))
    expected = torch.stack([tvf.rgb_to_grayscale(img, num_output_channels=3) for img in x])
    torch.testing.assert_close(ops.grayscale(x), expected, atol=2e-4, rtol=0)
    apply = torch.tensor([True, False, True, True, False])
    expected = torch.stack([tvf.solarize(img, 0.5) if a else img for img, a in zip(x, apply, strict=True)])
    torch.testing.assert_close(ops.solarize(x, apply), expected)
    sigma = torch.tensor([0.3, 0.8, 1.5, 2.0, 3.0])
    for k in (3, 5, 9):
        kernels = ops.gaussian_kernels(sigma, torch.ones(5, dtype=torch.bool), k)
        expected = torch.stack([tvf.gaussian_blur(img, [k, k], [float(s), float(s)]) for img, s in zip(x, sigma,
                                                                                                       strict=True)])
        torch.testing.assert_close(ops.gaussian_blur(x, kernels), expected, atol=1e-5, rtol=0)


def test_views_equal_a_per_image_reference_with_the_same_parameters() -> None:
    """The whole augmenter = torchvision's functional ops applied image by image with the drawn parameters."""
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    from jef.augment.params import sample_params

    o = ViewsOptions(size=16, n_global=2, blur_p=[1.0, 0.3], solarize_p=[0.0, 0.5], grayscale_p=0.3, jitter_p=0.8,
                     hue=0.2, blur_kernel=0.3)
    aug = ViewsAugmenter(o)
    x = images(batch=6, side=20, seed=16)
    views = aug(x, seeded(17))
    params = sample_params({key: p[:2] for key, p in aug._probs.items()}, n_views=2, batch=6, aspect=1.0,
                           scale=o.scale, ratio=o.ratio, jitter_strength=(o.brightness, o.contrast, o.saturation,
                                                                         o.hue),
                           blur_sigma=o.blur_sigma, generator=seeded(17))
    crops = ops.resample(x.float() / 255.0, params.theta, 16)  # the grid_sample reference of the crop
    k = ops.blur_kernel_size(16, o.blur_kernel)
    runs = [tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue]
    mean, std = o.channel_stats(3)
    for row in range(12):
        img = crops[row]
        for op in params.order[row].tolist():
            img = runs[op](img, float(params.jitter[row, op]))
        if params.gray[row]:
            img = tvf.rgb_to_grayscale(img, num_output_channels=3)
        if params.blur[row]:
            s = float(params.sigma[row])
            img = tvf.gaussian_blur(img, [k, k], [s, s])
        if params.solarize[row]:
            img = tvf.solarize(img, 0.5)
        expected = tvf.normalize(img, list(mean), list(std))
        torch.testing.assert_close(views[row // 6][row % 6], expected, atol=2e-3, rtol=0)


def test_chunked_cpu_path_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from jef.augment import views as views_module

    aug = ViewsAugmenter(ViewsOptions(size=12, n_local=1, blur_p=0.5, solarize_p=0.5))
    x = images(batch=7)
    whole = aug(x, seeded(18))
    monkeypatch.setattr(views_module, "CPU_CHUNK_BYTES", 1)  # one image per chunk
    for a, b in zip(whole, aug(x, seeded(18)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
