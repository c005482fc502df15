"""numba kernels of :mod:`jef.augment.cpu_kernels`: one pass per image over its pixels, in the cache.

Imported only when numba is installed and the CPU path asks for it. Every
kernel does the arithmetic of its eager counterpart in
:mod:`jef.augment.ops` in the same order and precision (float32 pixels,
float64 sampling positions), so the two agree to a few float32 ulps; what
changes is that the whole chain runs per pixel while it is in registers,
where the eager ops make a pass over memory per elementary operation. Loops
write ``x if c else y`` rather than branches so that LLVM can vectorise them.

The kernels are serial and release the GIL: :mod:`jef.augment.cpu_kernels`
runs chunks of images on a pool of threads. numba's own threading layers are
left unused, because on Linux its OpenMP layer is not fork-safe and the
training process forks ``DataLoader`` workers.
"""

import numba
import numpy as np

from jef.augment.ops import LUMA

F0, F1, F2 = np.float32(0.0), np.float32(1.0), np.float32(2.0)
LUMA_R, LUMA_G, LUMA_B = (np.float32(weight) for weight in LUMA)

_JIT = dict(cache=True, error_model="numpy", nogil=True)


@numba.njit(inline="always")
def _clamp(value):  # noqa: ANN001, ANN202
    return min(max(value, F0), F1)


@numba.njit(inline="always")
def _lerp(start, end, weight):  # noqa: ANN001, ANN202
    # torch.lerp's CPU formula: exact at both ends, the closer end as the base.
    diff = end - start
    low = start + weight * diff
    high = end - diff * (F1 - weight)
    return low if abs(weight) < 0.5 else high


@numba.njit(**_JIT)
def _taps(scale, shift, length, size, low, high, frac):  # noqa: ANN001, ANN202
    # Output pixel centre -> input coordinate as affine_grid + grid_sample (align_corners=False, border).
    for o in range(size):
        u = (2.0 * o + 1.0) / size - 1.0
        pos = ((scale * u + shift + 1.0) * length - 1.0) / 2.0
        pos = min(max(pos, 0.0), length - 1.0)
        floor = np.floor(pos)
        low[o] = int(floor)
        high[o] = min(int(floor) + 1, length - 1)
        frac[o] = np.float32(pos - floor)


@numba.njit(**_JIT)
def _resample_line(line, left, right, fx, out):  # noqa: ANN001, ANN202
    for j in range(out.shape[0]):
        out[j] = _lerp(np.float32(line[left[j]]), np.float32(line[right[j]]), fx[j])


@numba.njit(**_JIT)
def crop_resample(src, theta, scale, out):  # noqa: ANN001, ANN201
    """Separable bilinear crop of ``src`` [B, C, H, W] through ``theta`` [R, 2, 3] into ``out`` [R, C, S, S].

    Row ``r`` of the output samples image ``r % B`` (view-major rows). Only
    the source lines a view needs are resampled across, each once, and the
    vertical blend reads them from two line buffers.
    """
    batch, channels, height, width = src.shape
    rows, size = out.shape[0], out.shape[2]
    left, right = np.empty(size, np.int64), np.empty(size, np.int64)
    top, bottom = np.empty(size, np.int64), np.empty(size, np.int64)
    fx, fy = np.empty(size, np.float32), np.empty(size, np.float32)
    for job in range(rows * channels):
        r, c = job // channels, job % channels
        if c == 0:  # the sampling positions of a view, shared by its channels
            _taps(np.float64(theta[r, 0, 0]), np.float64(theta[r, 0, 2]), width, size, left, right, fx)
            _taps(np.float64(theta[r, 1, 1]), np.float64(theta[r, 1, 2]), height, size, top, bottom, fy)
        plane, dst = src[r % batch, c], out[r, c]
        upper, lower = np.empty(size, np.float32), np.empty(size, np.float32)
        upper_line, lower_line = -1, -1
        for i in range(size):
            if top[i] == lower_line:  # moving down: the lower line becomes the upper one
                upper, lower = lower, upper
                upper_line, lower_line = lower_line, upper_line
            if top[i] != upper_line:
                _resample_line(plane[top[i]], left, right, fx, upper)
                upper_line = top[i]
            if bottom[i] != lower_line:
                _resample_line(plane[bottom[i]], left, right, fx, lower)
                lower_line = bottom[i]
            weight, row = fy[i], dst[i]
            if abs(weight) < 0.5:
                for j in range(size):
                    row[j] = (upper[j] + weight * (lower[j] - upper[j])) * scale
            else:
                rest = F1 - weight
                for j in range(size):
                    row[j] = (lower[j] - (lower[j] - upper[j]) * rest) * scale
    return out


@numba.njit(**_JIT)
def _contrast(image, factor):  # noqa: ANN001, ANN202
    channels, pixels = image.shape
    means = np.empty(channels, np.float32)
    for c in range(channels):
        total = 0.0
        for i in range(pixels):
            total += image[c, i]
        means[c] = np.float32(total / pixels)
    mean = means[0] * LUMA_R + means[1] * LUMA_G + means[2] * LUMA_B if channels == 3 else means[0]
    offset = (F1 - factor) * mean
    for c in range(channels):
        plane = image[c]
        for i in range(pixels):
            plane[i] = _clamp(plane[i] * factor + offset)


@numba.njit(**_JIT)
def _saturation(image, factor):  # noqa: ANN001, ANN202
    r, g, b = image[0], image[1], image[2]
    rest = F1 - factor
    for i in range(r.shape[0]):
        gray = (r[i] * LUMA_R + g[i] * LUMA_G + b[i] * LUMA_B) * rest
        r[i] = _clamp(r[i] * factor + gray)
        g[i] = _clamp(g[i] * factor + gray)
        b[i] = _clamp(b[i] * factor + gray)


@numba.njit(inline="always")
def _hue_channel(hue, offset, base, delta):  # noqa: ANN001, ANN202
    k = hue + offset
    k = k - np.float32(6.0) * np.floor(k / np.float32(6.0))  # torch.remainder(k, 6)
    return _clamp(base + delta * min(max(abs(k - F2), F1), F2))


@numba.njit(**_JIT)
def _hue(image, shift):  # noqa: ANN001, ANN202
    # The closed form of ops.adjust_hue: max - (max - min) * clamp(min(k, 4 - k), 0, 1).
    r, g, b = image[0], image[1], image[2]
    turn = np.float32(6.0) * shift
    for i in range(r.shape[0]):
        red, green, blue = r[i], g[i], b[i]
        top = max(max(red, green), blue)
        delta = top - min(min(red, green), blue)
        hue = (red - green) + np.float32(4.0) * delta
        hue = (blue - red) + F2 * delta if top == green else hue
        hue = green - blue if top == red else hue
        hue = hue / (delta if delta > F0 else F1) + turn
        base = top - F2 * delta
        r[i] = _hue_channel(hue, np.float32(5.0), base, delta)
        g[i] = _hue_channel(hue, np.float32(3.0), base, delta)
        b[i] = _hue_channel(hue, np.float32(1.0), base, delta)


@numba.njit(**_JIT)
def _grayscale(image):  # noqa: ANN001, ANN202
    r, g, b = image[0], image[1], image[2]
    for i in range(r.shape[0]):
        luma = r[i] * LUMA_R + g[i] * LUMA_G + b[i] * LUMA_B
        r[i], g[i], b[i] = luma, luma, luma


@numba.njit(**_JIT)
def colour(images, factors, order, jitter, gray, saturation_on, hue_on):  # noqa: ANN001, ANN201
    """Colour jitter in each sample's order, then grayscale, in place on ``images`` [N, C, P]."""
    for n in range(images.shape[0]):
        image = images[n]
        if jitter[n]:
            for slot in range(4):
                op = order[n, slot]
                factor = factors[n, op]
                if op == 0:
                    for c in range(image.shape[0]):
                        plane = image[c]
                        for i in range(plane.shape[0]):
                            plane[i] = _clamp(plane[i] * factor)
                elif op == 1:
                    _contrast(image, factor)
                elif op == 2 and saturation_on:
                    _saturation(image, factor)
                elif op == 3 and hue_on:
                    _hue(image, factor)
        if gray[n]:
            _grayscale(image)
    return images


@numba.njit(inline="always")
def _source(index, length, replicate):  # noqa: ANN001, ANN202
    # F.pad's "reflect" (no edge repeat) or "replicate" border, for an index within one padding of the line.
    if replicate:
        return min(max(index, 0), length - 1)
    index = -index if index < 0 else index
    return 2 * (length - 1) - index if index >= length else index


@numba.njit(**_JIT)
def blur(images, kernels, apply, replicate):  # noqa: ANN001, ANN201
    """Separable Gaussian blur of the samples of ``apply`` by their ``kernels`` [N, k], in place on [N, C, H, W].

    Rows first, then columns, as :func:`jef.augment.ops.gaussian_blur`.
    Each row is copied with its padding so that the sums run over
    contiguous memory, and columns are summed a whole row at a time. The
    taps are the outer loop: the inner loops are independent lanes, which
    LLVM vectorises (a sum over taps per pixel would be one serial chain).
    """
    count, channels, height, width = images.shape
    taps = kernels.shape[1]
    pad = taps // 2
    for job in range(count * channels):
        n, c = job // channels, job % channels
        if not apply[n]:
            continue
        plane, weight = images[n, c], kernels[n]
        line = np.empty(width + 2 * pad, np.float32)
        for y in range(height):
            row = plane[y]
            for i in range(width + 2 * pad):
                line[i] = row[_source(i - pad, width, replicate)]
            for x in range(width):
                row[x] = F0
            for t in range(taps):
                w = weight[t]
                for x in range(width):
                    row[x] += w * line[x + t]
        source = plane.copy()
        for y in range(height):
            row = plane[y]
            for x in range(width):
                row[x] = F0
            for t in range(taps):
                above, w = source[_source(y + t - pad, height, replicate)], weight[t]
                for x in range(width):
                    row[x] += w * above[x]
    return images


@numba.njit(**_JIT)
def finish(views, solarize, threshold, mean, std, out):  # noqa: ANN001, ANN201
    """Solarise the samples of ``solarize`` and normalise ``views`` [V·b, C, P] into ``out`` [V, b, C, P]."""
    chunk = out.shape[1]
    for job in range(views.shape[0] * views.shape[1]):
        n, c = job // views.shape[1], job % views.shape[1]
        src, dst = views[n, c], out[n // chunk, n % chunk, c]
        centre, scale, invert = mean[c], std[c], solarize[n]
        for i in range(src.shape[0]):
            value = src[i]
            value = F1 - value if invert and value >= threshold else value
            dst[i] = (value - centre) / scale
    return out
