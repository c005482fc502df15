"""The L*a*b* conversion against the CIE formulas written out per pixel, and the grey views' low/high split."""

from __future__ import annotations

import math

import pytest
import torch
from jef_plugin_cmc.colour import (
    LAB_MEAN,
    LAB_SCALE,
    blur_kernel_side,
    lab_views,
    low_high_pass,
    srgb_to_lab,
)


def lab_reference(r: float, g: float, b: float) -> tuple[float, float, float]:
    """sRGB -> L*a*b* (D65) for one pixel in float64, from IEC 61966-2-1 and CIE 15:2004 as printed."""
    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    rl, gl, bl = linear(r), linear(g), linear(b)
    x = 0.4124564 * rl + 0.3575761 * gl + 0.1804375 * bl
    y = 0.2126729 * rl + 0.7151522 * gl + 0.0721750 * bl
    z = 0.0193339 * rl + 0.1191920 * gl + 0.9503041 * bl

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x / 0.95047), f(y / 1.0), f(z / 1.08883)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def test_lab_matches_the_cie_formulas_pixel_by_pixel():
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(3, 3, 5, 4, generator=gen, dtype=torch.float64)
    rgb[0, :, 0, 0] = 0.01  # the linear segments of both the gamma and f(t)
    rgb[0, :, 0, 1] = torch.tensor([0.0, 0.03, 0.04045])
    got = srgb_to_lab(rgb)
    want = torch.tensor([[[lab_reference(*rgb[n, :, i, j].tolist()) for j in range(4)] for i in range(5)]
                         for n in range(3)], dtype=torch.float64).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize(("colour", "lab"), [((1, 1, 1), (100.0, 0.0, 0.0)), ((1, 0, 0), (53.24, 80.09, 67.20)),
                                             ((0, 0, 0), (0.0, 0.0, 0.0)), ((0, 1, 0), (87.73, -86.18, 83.18)),
                                             ((0, 0, 1), (32.30, 79.19, -107.86))])
def test_known_colours(colour, lab):
    got = srgb_to_lab(torch.tensor(colour, dtype=torch.float64).view(1, 3, 1, 1)).flatten().tolist()
    assert got == pytest.approx(lab, abs=5e-3)


def test_the_views_scale_the_gamut_into_minus_one_one():
    # Green and blue are the gamut's ends of a and b: the official code's constants put them at -1.
    corners = torch.tensor([[float(i >> k & 1) for k in range(3)] for i in range(8)]).view(8, 3, 1, 1)
    l_view, ab_view = lab_views(corners)
    assert l_view.shape == (8, 1, 1, 1) and ab_view.shape == (8, 2, 1, 1)
    assert float(l_view.min()) == pytest.approx(-1.0) and float(l_view.max()) == pytest.approx(1.0, abs=1e-5)
    assert float(ab_view.abs().max()) <= 1.0 + 1e-4
    lab = srgb_to_lab(corners)
    torch.testing.assert_close(ab_view[:, 0], (lab[:, 1] - LAB_MEAN[1]) / LAB_SCALE[1])


def test_float32_lab_is_close_to_float64_and_out_of_range_values_are_clamped():
    rgb = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(srgb_to_lab(rgb.float()).double(), srgb_to_lab(rgb), rtol=0, atol=2e-4)
    assert torch.isfinite(srgb_to_lab(torch.full((1, 3, 2, 2), -1e-7))).all()
    with pytest.raises(ValueError, match=r"expected float RGB images \[B, 3, H, W\]"):
        srgb_to_lab(torch.rand(1, 2, 4, 4))


def test_low_and_high_pass_sum_to_the_image():
    grey = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for sigma in (0.5, 1.0, 3.0):  # 3.0: the kernel is wider than the image; the borders are replicated
        low, high = low_high_pass(grey, sigma)
        assert low.shape == high.shape == grey.shape
        torch.testing.assert_close(low + high, grey, rtol=0, atol=1e-12)
        assert float(low.std()) < float(grey.std())  # a low pass: the blur removes variance


def test_the_blur_is_a_normalised_gaussian_of_the_documented_sigma():
    assert blur_kernel_side(1.0) == 7 and blur_kernel_side(0.1) == 3
    impulse = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    impulse[0, 0, 7, 7] = 1.0
    low, _ = low_high_pass(impulse, 1.0)
    x = torch.arange(-3, 4, dtype=torch.float64)
    g = torch.exp(-x ** 2 / 2)
    g = g / g.sum()
    torch.testing.assert_close(low[0, 0, 4:11, 4:11], torch.outer(g, g), rtol=1e-6, atol=1e-9)
    assert float(low.sum()) == pytest.approx(1.0)
    constant = torch.full((1, 1, 8, 8), 0.3, dtype=torch.float64)
    # A constant passes the blur unchanged, up to the float32 kernel weights' rounding.
    torch.testing.assert_close(low_high_pass(constant, 1.0)[1], torch.zeros_like(constant), rtol=0, atol=1e-7)
    assert math.isfinite(float(low_high_pass(torch.rand(1, 1, 1, 1), 1.0)[0]))
