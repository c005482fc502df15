"""The fused numba CPU kernels of the ``views`` augmenter equal its eager torch operations."""

import pytest
import torch

from jef.augment import ViewsAugmenter, ViewsOptions, cpu_kernels, ops
from jef.augment.params import crop_flip_theta

numba = pytest.importorskip("numba", reason="the fused CPU kernels need numba (pip install 'jef[numba]')")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, channels, height, width), dtype=torch.uint8, generator=seeded(seed))


@pytest.mark.parametrize(("height", "width", "size"), [(21, 19, 16), (13, 13, 32), (40, 30, 7)])
def test_crop_resample_equals_the_eager_operation(height: int, width: int, size: int) -> None:
    x = uint8_images(5, 3, height, width, seed=1)
    g = seeded(2)
    n = 3 * 5  # three views of five images
    theta = crop_flip_theta(torch.rand(n, 10, generator=g), torch.rand(n, 10, generator=g),
                            torch.rand(n, 2, generator=g), torch.rand(n, generator=g) < 0.5, aspect=width / height,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)).view(3, 5, 2, 3)
    for source in (x, x.float() / 255.0):
        torch.testing.assert_close(cpu_kernels.crop_resample(source, theta, size),
                                   ops.crop_resample(source, theta, size), atol=1e-6, rtol=0)


def test_crop_resample_refuses_rotations() -> None:
    theta = torch.tensor([[[[1.0, 0.1, 0.0], [0.0, 1.0, 0.0]]]])
    with pytest.raises(ValueError, match="axis-aligned"):
        cpu_kernels.crop_resample(uint8_images(1, 3, 8, 8), theta, 8)


@pytest.mark.parametrize("channels", [3, 1])
def test_colour_equals_the_eager_operations_in_each_samples_order(channels: int) -> None:
    g = seeded(3)
    n = 24
    x = torch.rand(n, channels, 9, 11, generator=g)
    factors = torch.cat([torch.rand(n, 3, generator=g) * 1.6 + 0.2, torch.rand(n, 1, generator=g) - 0.5], dim=1)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(n)])
    jitter, gray = torch.rand(n, generator=g) < 0.7, torch.rand(n, generator=g) < 0.3
    runs = [ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, ops.adjust_hue]
    rgb = channels == 3
    expected = []
    for i in range(n):
        image = x[i:i + 1]
        if jitter[i]:
            for op in order[i].tolist():
                if op < 2 or rgb:
                    image = runs[op](image, factors[i:i + 1, op])
        if gray[i] and rgb:
            image = ops.grayscale(image)
        expected.append(image)
    fused = cpu_kernels.colour(x.clone(), factors, order, jitter, gray, saturation=rgb, hue=rgb)
    torch.testing.assert_close(fused, torch.cat(expected), atol=2e-6, rtol=0)


def test_colour_without_hue_leaves_the_hue_alone() -> None:
    x = torch.rand(2, 3, 6, 6, generator=seeded(4))
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.3]] * 2)
    order = torch.arange(4).expand(2, 4)
    on = torch.ones(2, dtype=torch.bool)
    torch.testing.assert_close(cpu_kernels.colour(x.clone(), factors, order, on, ~on, saturation=True, hue=False), x)
    torch.testing.assert_close(cpu_kernels.colour(x.clone(), factors, order, on, ~on, saturation=True, hue=True),
                               ops.adjust_hue(x, factors[:, 3]), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("side", "kernel"), [(16, 5), (9, 7), (3, 7)])  # reflected borders; replicated (pad >= side)
def test_blur_equals_the_eager_operation_on_the_samples_it_applies_to(side: int, kernel: int) -> None:
    x = torch.rand(6, 3, side, side + 2, generator=seeded(5))
    sigma = torch.rand(6, generator=seeded(6)) * 2.0 + 0.1
    apply = torch.tensor([True, False, True, True, False, True])
    kernels = ops.gaussian_kernels(sigma, apply, kernel)
    expected = torch.where(apply.view(-1, 1, 1, 1), ops.gaussian_blur(x, kernels), x)
    torch.testing.assert_close(cpu_kernels.blur(x.clone(), kernels, apply), expected, atol=1e-6, rtol=0)


RECIPES = [
    dict(size=16),
    dict(size=16, n_local=2, local_size=8, blur_p=[1.0, 0.3], solarize_p=[0.0, 0.5], hue=0.2, grayscale_p=0.5),
    dict(size=24, jitter_random_order=False, normalize=False, solarize_threshold=0.3),
    dict(size=20, hue=0.0, mean=[0.4], std=[0.3]),
]


@pytest.mark.parametrize("options", RECIPES)
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_the_numba_backend_makes_the_views_of_the_torch_backend(options: dict, channels: int,
                                                                dtype: torch.dtype) -> None:
    if channels == 3 and options.get("mean") == [0.4]:
        options = {**options, "mean": None, "std": None}
    x = uint8_images(7, channels, 21, 19, seed=7)
    x = x if dtype == torch.uint8 else x.float() / 255.0
    fused = ViewsAugmenter(ViewsOptions(cpu_backend="numba", **options))(x, seeded(8))
    eager = ViewsAugmenter(ViewsOptions(cpu_backend="torch", **options))(x, seeded(8))
    assert [v.shape for v in fused] == [v.shape for v in eager]
    for a, b in zip(fused, eager, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)  # a few float32 ulps, scaled by 1 / std


def test_auto_uses_numba_when_it_is_installed_and_torch_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ViewsAugmenter(ViewsOptions(size=8))._fused_cpu
    monkeypatch.setattr(cpu_kernels, "_import", lambda: None)  # as if numba were not installed
    aug = ViewsAugmenter(ViewsOptions(size=8))
    assert not aug._fused_cpu
    assert [v.shape for v in aug(uint8_images(2, 3, 8, 8), seeded(0))] == [(2, 3, 8, 8)] * 2


def test_asking_for_numba_without_it_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernels, "_import", lambda: None)
    with pytest.raises(ImportError, match=r"need numba.*pip install 'jef\[numba\]'.*cpu_backend: torch"):
        ViewsAugmenter(ViewsOptions(size=8, cpu_backend="numba"))


def test_an_unknown_backend_is_explained() -> None:
    from jef.config.validate import ConfigError, build_options

    with pytest.raises(ValueError, match="'cpu_backend' must be in"):
        ViewsOptions(cpu_backend="gpu")
    with pytest.raises(ConfigError, match="aug.cpu_backend"):
        build_options(ViewsOptions, {"cpu_backend": "gpu"}, "aug")


def test_chunks_on_several_threads_make_the_views_of_one_thread() -> None:
    previous = torch.get_num_threads()
    aug = ViewsAugmenter(ViewsOptions(size=12, n_local=1, blur_p=0.5, solarize_p=0.5, cpu_backend="numba"))
    x = uint8_images(9, 3, 14, 14, seed=9)
    try:
        torch.set_num_threads(1)
        one = aug(x, seeded(10))
        torch.set_num_threads(3)  # three chunks of three images, one per thread
        three = aug(x, seeded(10))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(one, three, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_error_in_a_chunk_reaches_the_caller() -> None:
    def work(start: int, stop: int) -> None:
        if start == 2:
            raise RuntimeError(f"chunk {start}:{stop} failed")

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="chunk 2:4 failed"):
            cpu_kernels.map_chunks(work, [(0, 2), (2, 4), (4, 5)])
    finally:
        torch.set_num_threads(previous)
