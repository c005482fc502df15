"""Pure, batched image operations with per-sample parameters.

Every function takes float images ``[N, C, H, W]`` in ``[0, 1]`` (and
:func:`crop_resample` uint8 images too) and tensors of per-sample parameters
on the same device, and runs a fixed number of vectorised kernels whatever
``N`` is: there is no loop over samples. Colour operations follow the
definitions of torchvision's functional transforms (ITU-R 601-2 luma, blends
clamped to ``[0, 1]``) so that recipes written for torchvision mean the same
here.

On a CPU these operations are memory-bound: a pass over a large freshly
allocated tensor costs several times one over a tensor in cache, so they work
on channel planes rather than reductions over the channel dimension, and
reduce to per-sample statistics (a mean) before broadcasting rather than
building whole intermediate images where the maths allows it.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation", "blur_kernel_size",
           "check_axis_aligned", "check_images", "crop_resample", "gaussian_blur", "gaussian_kernels", "grayscale",
           "normalize", "random_grayscale", "resample", "solarize", "to_float"]

#: ITU-R 601-2 luma weights, the grayscale of PIL and torchvision.
LUMA = (0.299, 0.587, 0.114)


def check_images(images: Tensor, who: str = "views augmenter") -> Tensor:
    """Check a ``[B, C, H, W]`` batch: uint8 images are returned as they are, floating ones as float32.

    Raises:
        ValueError: If the shape is not ``[B, C, H, W]`` with ``C`` in {1, 3}
            or the dtype is neither uint8 nor floating.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[-1] < 1 or images.shape[-2] < 1:
        raise ValueError(f"{who}: expected images [B, C, H, W] with C in {{1, 3}}, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"{who}: expected uint8 (0..255) or float (0..1) images, got dtype {images.dtype}")
    return images.to(torch.float32)


def to_float(images: Tensor, who: str = "views augmenter") -> Tensor:
    """Check a ``[B, C, H, W]`` batch (:func:`check_images`) and return it as float32 in ``[0, 1]``.

    uint8 images are divided by 255; floating images are assumed to be in
    ``[0, 1]`` already (not checked: that would synchronise with the device).
    """
    images = check_images(images, who)
    return images.to(torch.float32).div_(255.0) if images.dtype == torch.uint8 else images


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


def check_axis_aligned(theta: Tensor) -> None:
    """Raise unless the ``[..., 2, 3]`` maps only crop, scale and flip (no rotation or shear).

    Raises:
        ValueError: If a map rotates or shears.
    """
    if bool((theta[..., 0, 1] != 0).any()) or bool((theta[..., 1, 0] != 0).any()):
        raise ValueError("crop_resample: theta must be axis-aligned (crops and flips); use resample for rotations")


def crop_resample(images: Tensor, theta: Tensor, size: int) -> Tensor:
    """:func:`resample` for crops and flips (axis-aligned maps), separably and from uint8.

    The same bilinear sampling as :func:`resample` (``grid_sample`` with
    ``align_corners=False`` and border padding) when ``theta`` has no rotation
    or shear, computed as two one-dimensional interpolations: whole input rows
    are gathered (a row copy, from uint8 when the input is uint8, so the
    source image is never converted to float as a whole), blended, then
    columns. On a CPU this is several times faster than ``grid_sample``, which
    computes a 2-D grid and four taps per output pixel.

    Args:
        images: ``[B, C, H, W]`` uint8 (0..255) or float (``[0, 1]``) images.
        theta: ``[V, B, 2, 3]`` axis-aligned affine maps (``theta[..., 0, 1]``
            and ``theta[..., 1, 0]`` zero), preferably on the CPU, where the
            sampling positions are computed before one small copy to the device.
        size: Side of the square outputs.

    Returns:
        ``[V * B, C, size, size]`` float32 (``images``' dtype when floating) in
        ``[0, 1]``, view-major.

    Raises:
        ValueError: If a map rotates or shears.
    """
    n_views, batch = theta.shape[:2]
    _, channels, height, width = images.shape
    check_axis_aligned(theta)
    device = images.device
    dtype = images.dtype if images.is_floating_point() else torch.float32
    u = (2.0 * torch.arange(size, dtype=torch.float64, device=theta.device) + 1.0) / size - 1.0

    def taps(scale: Tensor, shift: Tensor, length: int) -> tuple[Tensor, Tensor, Tensor]:
        # Output pixel centre -> input pixel coordinate, as affine_grid + grid_sample compute it.
        pos = ((scale.double().unsqueeze(-1) * u + shift.double().unsqueeze(-1) + 1.0) * length - 1.0) / 2.0
        pos = pos.clamp(0.0, length - 1.0)  # border padding
        low = pos.floor()
        frac = (pos - low).to(dtype)
        low = low.long()
        return low.to(device), (low + 1).clamp_(max=length - 1).to(device), frac.to(device)

    def lines(matrix: Tensor, group: Tensor, length: int, index: Tensor) -> Tensor:
        # matrix: planes of `length` lines, plane g * C + c for channel c of group g (group: [V, B]);
        # returns lines index[v, b, o] of the planes of group[v, b], [V, B, C, size, line], as whole-line copies.
        plane = group.view(n_views, batch, 1, 1) * channels + torch.arange(channels, device=device).view(1, 1, -1, 1)
        flat = (plane * length + index.view(n_views, batch, 1, size)).reshape(-1)
        return matrix.index_select(0, flat).view(n_views, batch, channels, size, -1).to(dtype)

    left, right, fx = taps(theta[..., 0, 0], theta[..., 0, 2], width)  # [V, B, size] each
    top, bottom, fy = taps(theta[..., 1, 1], theta[..., 1, 2], height)
    # Columns first, from the transposed input (a cheap copy when uint8), so that both
    # passes select whole contiguous lines; the first pass writes its result transposed back.
    columns = images.transpose(-1, -2).reshape(batch * channels * width, height)
    image = torch.arange(batch, device=device).expand(n_views, batch)
    mid = torch.empty(n_views, batch, channels, height, size, dtype=dtype, device=device)
    torch.lerp(lines(columns, image, width, left).transpose(-1, -2),
               lines(columns, image, width, right).transpose(-1, -2), fx.view(n_views, batch, 1, 1, size), out=mid)
    rows = mid.view(n_views * batch * channels * height, size)
    view_image = torch.arange(n_views * batch, device=device).view(n_views, batch)
    out = lines(rows, view_image, height, top)
    out.lerp_(lines(rows, view_image, height, bottom), fy.view(n_views, batch, 1, size, 1))
    if not images.is_floating_point():
        out.mul_(1.0 / 255.0)
    return out.view(n_views * batch, channels, size, size)


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _luma(images: Tensor) -> Tensor:
    """``[N, 1, H, W]`` luma of RGB images (the image itself when single-channel).

    Summed plane by plane: a reduction over the channel dimension reads it
    with a stride and is many times slower on a CPU.
    """
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    return r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def _mean_luma(images: Tensor) -> Tensor:
    """``[N, 1, 1, 1]`` mean luma: the luma weights applied to the channel means (luma is linear)."""
    means = images.mean(dim=(2, 3))
    if images.shape[1] == 3:
        means = means @ means.new_tensor(LUMA).view(3, 1)
    return means.view(-1, 1, 1, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Multiply by ``factor[n]`` (1 leaves the image unchanged), clamped to ``[0, 1]``."""
    return (images * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its mean luma: ``f * x + (1 - f) * mean``, clamped."""
    f = _per_sample(factor)
    return (images * f).add_((1.0 - f) * _mean_luma(images)).clamp_(0.0, 1.0)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend RGB images with their grayscale: ``f * x + (1 - f) * gray``, clamped."""
    f = _per_sample(factor)
    return (images * f).add_(_luma(images).mul_(1.0 - f)).clamp_(0.0, 1.0)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of RGB images by ``shift[n]`` turns (in ``[-0.5, 0.5]``).

    Saturation and value are kept, so the result is rebuilt from the new hue
    with the closed form ``max - (max - min) * clamp(min(k, 4 - k), 0, 1)``,
    ``k = (n + 6 h) mod 6`` for ``n = 5, 3, 1`` (R, G, B): one pass, no
    per-sextant branches. ``min(k, 4 - k)`` is ``2 - |k - 2|``, so the result
    is ``(max - 2 (max - min)) + (max - min) * clamp(|k - 2|, 1, 2)``.
    """
    r, g, b = images.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    # Hue in sextants (0 red, 2 green, 4 blue), ties resolved red, green, blue as
    # an argmax would. Grey pixels (delta 0) have no hue; delta scales it away.
    hue = torch.where(maxc == r, g - b, torch.where(maxc == g, (b - r).add_(delta, alpha=2.0),
                                                    (r - g).add_(delta, alpha=4.0)))
    hue.div_(torch.where(delta > 0, delta, 1.0)).add_(6.0 * shift.view(-1, 1, 1))
    n = images.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = torch.remainder(hue.unsqueeze(1) + n, 6.0).sub_(2.0).abs_().clamp_(1.0, 2.0)
    base = maxc.sub(delta, alpha=2.0).unsqueeze(1)
    return torch.addcmul(base, delta.unsqueeze(1), k).clamp_(0.0, 1.0)


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

    Borders are reflected as in torchvision's ``GaussianBlur``; replicated
    when the image is too small to reflect. Each direction is one batched
    matrix product: the padded rows are cut into overlapping windows of
    ``block + k - 1`` pixels, each multiplied by the sample's ``[block + k - 1,
    block]`` Toeplitz matrix of its kernel. Per-sample kernels in a grouped
    convolution (one group per plane) take CPUs' slow depthwise path; a
    matrix product runs at the speed of the BLAS, and the blocks keep its
    wasted multiplications (the zeros of the band) to a few times ``k``.
    """
    n, c, h, w = images.shape
    pad = kernels.shape[1] // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    weight = kernels.to(images.dtype)
    rows = _blur_rows(images.reshape(n, c * h, w), weight, mode).view(n, c, h, w)
    columns = _blur_rows(rows.transpose(-1, -2).reshape(n, c * w, h), weight, mode)
    return columns.view(n, c, w, h).transpose(-1, -2).contiguous()


def _blur_rows(rows: Tensor, kernels: Tensor, mode: str) -> Tensor:
    """Blur every row of ``rows`` ``[N, R, L]`` by its sample's kernel (``[N, k]``)."""
    n, count, length = rows.shape
    k = kernels.shape[1]
    pad = k // 2
    block = min(length, max(8, 3 * pad))
    blocks = -(-length // block)
    padded = F.pad(rows, (pad, pad), mode=mode)
    if blocks * block > length:  # whole blocks; the extra outputs are cut off below
        padded = F.pad(padded, (0, blocks * block - length))
    windows = padded.unfold(-1, block + 2 * pad, block).reshape(n, count * blocks, block + 2 * pad)
    # Toeplitz: output i of a block is sum_t kernel[t] * window[i + t].
    offset = torch.arange(block + 2 * pad, device=rows.device).view(-1, 1) - torch.arange(block, device=rows.device)
    band = (offset >= 0) & (offset < k)
    toeplitz = torch.where(band, kernels[:, offset.clamp(0, k - 1)], kernels.new_zeros(()))
    out = torch.bmm(windows, toeplitz).view(n, count, blocks * block)
    return out[..., :length] if blocks * block > length else out


def normalize(images: Tensor, mean: Tensor, std: Tensor, *, inplace: bool = False) -> Tensor:
    """``(x - mean) / std`` with ``mean``/``std`` of shape ``[C]`` or ``[1]``; in ``images`` if ``inplace``."""
    if inplace:
        return images.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
