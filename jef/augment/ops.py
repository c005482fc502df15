"""Pure, batched image operations with per-sample parameters.

Every function takes float images ``[N, C, H, W]`` in ``[0, 1]`` and tensors of
per-sample parameters on the same device, and runs a fixed number of
vectorised kernels whatever ``N`` is: there is no loop over samples. Colour
operations follow the definitions of torchvision's functional transforms
(ITU-R 601-2 luma, blends clamped to ``[0, 1]``) so that recipes written for
torchvision mean the same here.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation", "blur_kernel_size",
           "gaussian_blur", "gaussian_kernels", "grayscale", "normalize", "random_grayscale", "resample",
           "solarize", "to_float"]

#: ITU-R 601-2 luma weights, the grayscale of PIL and torchvision.
LUMA = (0.299, 0.587, 0.114)


def to_float(images: Tensor, who: str = "views augmenter") -> Tensor:
    """Check a ``[B, C, H, W]`` batch and return it as float32 in ``[0, 1]``.

    uint8 images are divided by 255; floating images are assumed to be in
    ``[0, 1]`` already (not checked: that would synchronise with the device).

    Raises:
        ValueError: If the shape is not ``[B, C, H, W]`` with ``C`` in {1, 3}
            or the dtype is neither uint8 nor floating.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[-1] < 1 or images.shape[-2] < 1:
        raise ValueError(f"{who}: expected images [B, C, H, W] with C in {{1, 3}}, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"{who}: expected uint8 (0..255) or float (0..1) images, got dtype {images.dtype}")
    return images.to(torch.float32)


def resample(images: Tensor, theta: Tensor, size: int) -> Tensor:
    """Bilinear resample of every image through several affine maps at once.

    ``theta[v, b]`` maps output coordinates to input coordinates in the
    normalised ``[-1, 1]`` frame of :func:`torch.nn.functional.affine_grid`
    (``align_corners=False``, so the identity map reproduces the input
    exactly and ``x -> -x`` is an exact mirror). The ``V`` grids of one image
    are stacked along the output height so the input is read in place, never
    repeated ``V`` times. Sampling is bilinear without antialiasing: a crop
    much larger than ``size`` (e.g. 224 px images to 32 px views) aliases,
    where torchvision's resized crop would smooth first.

    Args:
        images: ``[B, C, H, W]`` float images.
        theta: ``[V, B, 2, 3]`` affine maps, one per view and image.
        size: Side of the square outputs.

    Returns:
        ``[V * B, C, size, size]``, view-major (rows ``v * B .. v * B + B - 1``
        are view ``v``).
    """
    n_views, batch = theta.shape[:2]
    channels = images.shape[1]
    grid = F.affine_grid(theta.reshape(n_views * batch, 2, 3).to(images.dtype),
                         [n_views * batch, channels, size, size], align_corners=False)
    grid = grid.view(n_views, batch, size, size, 2).transpose(0, 1).reshape(batch, n_views * size, size, 2)
    # Crops lie inside the image; "border" only guards the last ulp at the edges.
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.view(batch, channels, n_views, size, size).permute(2, 0, 1, 3, 4)
    return out.reshape(n_views * batch, channels, size, size)


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _luma(images: Tensor) -> Tensor:
    """``[N, 1, H, W]`` luma of RGB images (the image itself when single-channel)."""
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Multiply by ``factor[n]`` (1 leaves the image unchanged), clamped to ``[0, 1]``."""
    return (images * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its mean luma: ``f * x + (1 - f) * mean``, clamped."""
    mean = _luma(images).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_sample(factor)
    return (f * images + (1.0 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend RGB images with their grayscale: ``f * x + (1 - f) * gray``, clamped."""
    f = _per_sample(factor)
    return (f * images + (1.0 - f) * _luma(images)).clamp_(0.0, 1.0)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of RGB images by ``shift[n]`` turns (in ``[-0.5, 0.5]``).

    Saturation and value are kept, so the result is rebuilt from the new hue
    with the closed form ``max - (max - min) * clamp(min(k, 4 - k), 0, 1)``,
    ``k = (n + 6 h) mod 6`` for ``n = 5, 3, 1`` (R, G, B): one pass, no
    per-sextant branches.
    """
    maxc, argmax = images.max(dim=1, keepdim=True)
    delta = maxc - images.min(dim=1, keepdim=True).values
    # Grey pixels (delta 0) have no hue; any value works since delta scales it away.
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = images.unbind(dim=1)
    r, g, b = r.unsqueeze(1), g.unsqueeze(1), b.unsqueeze(1)
    hue = torch.where(argmax == 0, (g - b) / safe,
                      torch.where(argmax == 1, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue6 = torch.remainder(hue + 6.0 * _per_sample(shift), 6.0)
    n = images.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = torch.remainder(n + hue6, 6.0)
    return (maxc - delta * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)).clamp_(0.0, 1.0)


def grayscale(images: Tensor) -> Tensor:
    """Luma of RGB images, repeated on the three channels."""
    return _luma(images).expand_as(images)


def random_grayscale(images: Tensor, apply: Tensor) -> Tensor:
    """Replace image ``n`` by its grayscale where ``apply[n]`` (bool) is true."""
    return torch.where(_per_sample(apply), grayscale(images), images)


def solarize(images: Tensor, apply: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert pixels ``>= threshold`` (``x -> 1 - x``) of the images where ``apply[n]``.

    The solarisation of BYOL (Grill et al., arXiv:2006.07733, app. B), as
    PIL's ``ImageOps.solarize`` with threshold 128/255.
    """
    return torch.where(_per_sample(apply) & (images >= threshold), 1.0 - images, images)


def blur_kernel_size(size: int, fraction: float) -> int:
    """Odd Gaussian kernel side, ``fraction`` of the image side and at least 3.

    SimCLR (arXiv:2002.05709, app. A) blurs with a kernel 10% of the image
    side; 224 px gives 23, BYOL's value.
    """
    k = max(3, int(size * fraction))
    return k if k % 2 else k + 1


def gaussian_kernels(sigma: Tensor, apply: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels ``[N, k]``, a unit impulse where not ``apply[n]``.

    The impulse makes un-blurred samples exact copies while keeping one
    convolution for the whole batch.
    """
    x = torch.arange(kernel_size, device=sigma.device, dtype=torch.float32) - kernel_size // 2
    kernels = torch.exp(-(x.unsqueeze(0) ** 2) / (2.0 * sigma.float().unsqueeze(1) ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    impulse = (x == 0).to(kernels.dtype).expand_as(kernels)
    return torch.where(apply.view(-1, 1), kernels, impulse)


def gaussian_blur(images: Tensor, kernels: Tensor) -> Tensor:
    """Separable blur of image ``n`` by ``kernels[n]`` (``[N, k]``, odd ``k``).

    Each (sample, channel) plane is a group of one grouped convolution, so the
    whole batch is two kernels (rows then columns). Borders are reflected as in
    torchvision's ``GaussianBlur``; replicated when the image is too small to
    reflect.
    """
    n, c, h, w = images.shape
    k = kernels.shape[1]
    pad = k // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    weight = kernels.to(images.dtype).repeat_interleave(c, dim=0)  # [N * C, k], one row per plane
    planes = images.reshape(1, n * c, h, w)
    planes = F.conv2d(F.pad(planes, (pad, pad, 0, 0), mode=mode), weight.view(n * c, 1, 1, k), groups=n * c)
    planes = F.conv2d(F.pad(planes, (0, 0, pad, pad), mode=mode), weight.view(n * c, 1, k, 1), groups=n * c)
    return planes.view(n, c, h, w)


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` with ``mean``/``std`` of shape ``[C]`` or ``[1]``."""
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
