"""The channel groups CMC contrasts: CIE L*a*b* for colour images, a low/high-pass split for grey ones.

CMC [1] (§4.1, "the L and ab channels") turns an RGB image into two views, its lightness ``L`` and its two
colour channels ``ab``, by converting it to the CIE 1976 L*a*b* space. The conversion is written out here in
torch, batched, with the formulas of the sRGB standard [2] and CIE 15 [3]:

1. sRGB -> linear RGB (the inverse gamma of IEC 61966-2-1)::

       c_lin = c / 12.92                       if c <= 0.04045
               ((c + 0.055) / 1.055) ** 2.4    otherwise

2. linear RGB -> CIE XYZ with the sRGB primaries and the D65 white (:data:`RGB_TO_XYZ`, whose rows sum to the
   D65 white point :data:`D65_WHITE`, so sRGB white maps to ``X/Xn = Y/Yn = Z/Zn = 1``).
3. XYZ -> L*a*b*, with ``f(t) = t^(1/3)`` above ``δ³`` (``δ = 6/29``) and the linear segment
   ``t / (3δ²) + 4/29`` below it::

       L = 116 f(Y/Yn) − 16,   a = 500 (f(X/Xn) − f(Y/Yn)),   b = 200 (f(Y/Yn) − f(Z/Zn))

   ``L`` lies in ``[0, 100]``; sRGB white is ``(100, 0, 0)`` and pure red ``(53.24, 80.09, 67.20)``.

The official code converts with skimage's ``rgb2lab`` (the same formulas, D65, with a matrix rounded to 6
digits) on each uint8 crop in the data loader; here the crop is converted in float32, on the training device.

The views are then scaled with the constants of the official code's ``Normalize`` (:data:`LAB_MEAN`,
:data:`LAB_SCALE`): the midpoint and half-range of each channel over the sRGB gamut (``L`` in ``[0, 100]``,
``a`` in ``[−86.183, 98.233]``, ``b`` in ``[−107.857, 94.478]``), which maps every channel into ``[−1, 1]``.

Grey images (Fashion-MNIST) have no colour to split. **jef's choice, not the paper's:** view 0 is a low-pass
version of the image (a Gaussian blur, :func:`low_high_pass`) and view 1 the high-pass residual
``image − blur``, so that the two views carry complementary frequency bands of the same pixels, as ``L`` and
``ab`` carry complementary channels; they sum to the image exactly.

References:
    [1] Tian, Krishnan, Isola. Contrastive Multiview Coding. ECCV 2020. arXiv:1906.05849.
    [2] IEC 61966-2-1:1999, Multimedia systems and equipment -- Colour measurement and management -- Default RGB
        colour space -- sRGB.
    [3] CIE 15:2004, Colorimetry, 3rd edition (§8.2.1, CIE 1976 L*a*b*).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from jef.augment import ops

__all__ = ["D65_WHITE", "GREY_MEAN", "GREY_SCALE", "LAB_MEAN", "LAB_SCALE", "RGB_TO_XYZ", "blur_kernel_side",
           "lab_views", "low_high_pass", "normalise", "srgb_to_lab"]

#: Linear sRGB -> XYZ, the sRGB primaries under D65 (IEC 61966-2-1, to 7 digits as derived from the primaries).
RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
              (0.2126729, 0.7151522, 0.0721750),
              (0.0193339, 0.1191920, 0.9503041))
#: The D65 reference white (Xn, Yn, Zn), Y normalised to 1: the row sums of :data:`RGB_TO_XYZ`.
D65_WHITE = (0.95047, 1.0, 1.08883)
#: Midpoint of L, a, b over the sRGB gamut (the official code's ``Normalize`` mean).
LAB_MEAN = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
#: Half-range of L, a, b over the sRGB gamut (the official code's ``Normalize`` std).
LAB_SCALE = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)
#: Grey views (jef's): mean and scale of the low-pass view and of the residual, measured on 512 images of
#: jef's ``fashion_mnist_mini`` at 28 px with σ = 1 px (low pass: mean 0.287, std 0.307; residual: mean
#: −0.004, std 0.116), rounded. Other grey data or another σ gives other statistics: the views stay finite
#: and centred near 0, which is what the encoders need.
GREY_MEAN = (0.287, 0.0)
GREY_SCALE = (0.307, 0.116)

_DELTA = 6.0 / 29.0


def _check_rgb(fn: str, rgb: Tensor) -> None:
    if rgb.dim() != 4 or rgb.shape[1] != 3 or not rgb.is_floating_point():
        raise ValueError(f"{fn}: expected float RGB images [B, 3, H, W] in [0, 1], got {rgb.dtype} of shape "
                         f"{tuple(rgb.shape)}")


def srgb_to_lab(rgb: Tensor) -> Tensor:
    """CIE L*a*b* (D65) of sRGB images, as written out in the module docstring.

    Args:
        rgb: ``[B, 3, H, W]`` float sRGB in ``[0, 1]`` (values outside are clamped: a resample can overshoot by
            an ulp, and the gamma of a negative value is undefined).

    Returns:
        ``[B, 3, H, W]`` of ``rgb``'s dtype: ``L`` in ``[0, 100]``, then ``a`` and ``b``.
    """
    _check_rgb("srgb_to_lab", rgb)
    c = rgb.clamp(0.0, 1.0)
    linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(D65_WHITE, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear) / white.view(1, 3, 1, 1)
    # f(t): the cube root above δ³, the tangent line below it (CIE 15); the clamp keeps the unused branch real.
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(_DELTA ** 3) ** (1.0 / 3.0),
                    xyz / (3.0 * _DELTA ** 2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(dim=1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def normalise(x: Tensor, mean: tuple[float, ...], scale: tuple[float, ...]) -> Tensor:
    """``(x − mean) / scale`` per channel (``[C]`` constants over ``[B, C, H, W]``)."""
    return ops.normalize(x, x.new_tensor(mean), x.new_tensor(scale))


def lab_views(rgb: Tensor) -> tuple[Tensor, Tensor]:
    """CMC's two views of RGB images: the scaled ``L`` ``[B, 1, H, W]`` and ``ab`` ``[B, 2, H, W]``."""
    lab = normalise(srgb_to_lab(rgb), LAB_MEAN, LAB_SCALE)
    return lab[:, :1].contiguous(), lab[:, 1:].contiguous()


def blur_kernel_side(sigma: float) -> int:
    """Odd side of a Gaussian kernel that holds ±3σ (99.7% of its mass), at least 3."""
    return max(3, 2 * math.ceil(3.0 * sigma) + 1)


def low_high_pass(grey: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """jef's two views of grey images: a Gaussian blur and the residual ``grey − blur`` (unscaled).

    The blur is separable, with reflected borders (:func:`jef.augment.ops.gaussian_blur`), so ``low + high``
    equals ``grey`` up to rounding.

    Args:
        grey: ``[B, 1, H, W]`` float images in ``[0, 1]``.
        sigma: The blur's standard deviation, in pixels of ``grey``.

    Returns:
        ``(low, high)``, each ``[B, 1, H, W]``.
    """
    if grey.dim() != 4 or grey.shape[1] != 1 or not grey.is_floating_point():
        raise ValueError(f"low_high_pass: expected float grey images [B, 1, H, W], got {grey.dtype} of shape "
                         f"{tuple(grey.shape)}")
    batch = grey.shape[0]
    sigmas = torch.full((batch,), float(sigma), device=grey.device)
    kernels = ops.gaussian_kernels(sigmas, torch.ones(batch, dtype=torch.bool, device=grey.device),
                                   blur_kernel_side(sigma))
    low = ops.gaussian_blur(grey, kernels.to(grey.dtype))
    return low, grey - low
