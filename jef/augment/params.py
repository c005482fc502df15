"""Random parameters of a group of views, drawn on the CPU from one generator.

Drawing the few numbers per sample on the CPU makes a seed give the same
views on every device; the tensors are then moved to the images' device in
one small copy each. Every call draws the same amount of randomness whatever
the options are, so turning one transform off does not reshuffle the others.
"""

import math

import attrs
import torch
from torch import Tensor

__all__ = ["ViewParams", "crop_flip_theta", "sample_params"]

#: Candidate crops per sample before falling back to the whole image (torchvision draws 10 too).
CROP_TRIES = 10


@attrs.frozen(kw_only=True)
class ViewParams:
    """Per-sample parameters of ``N = V * B`` rows (view-major).

    Attributes:
        theta: ``[V, B, 2, 3]`` crop-and-flip affine maps.
        jitter: ``[N, 4]`` brightness, contrast, saturation factors and hue
            shift; ``(1, 1, 1, 0)`` (identity) where jitter is not applied.
        order: ``[N, 4]`` long, per-sample order of the four jitter operations.
        gray: ``[N]`` bool, grayscale applied.
        blur: ``[N]`` bool, blur applied.
        sigma: ``[N]`` blur standard deviations, in pixels.
        solarize: ``[N]`` bool, solarisation applied.
    """

    theta: Tensor
    jitter: Tensor
    order: Tensor
    gray: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor

    def to(self, device: torch.device) -> "ViewParams":
        """The same parameters on ``device``."""
        return ViewParams(**{f.name: getattr(self, f.name).to(device) for f in attrs.fields(ViewParams)})

    def shard(self, index: int, count: int) -> "ViewParams":
        """The parameters of samples ``[index·b, (index+1)·b)`` of every view, ``b = B / count``.

        With ``W`` processes each drawing the parameters of the global batch
        from the same generator, process ``r`` keeps ``shard(r, W)``: the rows
        of its own images in the global batch, so that the views are those of
        one process on the global batch.
        """
        batch = self.theta.shape[1]
        if not 0 <= index < count or batch % count:
            raise ValueError(f"ViewParams.shard: cannot take shard {index} of {count} from {batch} samples per view")
        size = batch // count
        return self.images(index * size, (index + 1) * size)

    def images(self, start: int, stop: int) -> "ViewParams":
        """The parameters of images ``[start, stop)`` of the batch, in every view (still view-major)."""
        n_views, batch = self.theta.shape[:2]
        rows = slice(start, stop)

        def part(t: Tensor) -> Tensor:  # view-major [V*B, ...] -> [V*(stop-start), ...]
            return t.reshape(n_views, batch, *t.shape[1:])[:, rows].reshape(-1, *t.shape[1:])

        fields = {f.name: part(getattr(self, f.name)) for f in attrs.fields(ViewParams) if f.name != "theta"}
        return ViewParams(theta=self.theta[:, rows], **fields)


def _between(u: Tensor, low: float, high: float) -> Tensor:
    return low + (high - low) * u


def crop_flip_theta(u_area: Tensor, u_ratio: Tensor, u_pos: Tensor, flip: Tensor, *, aspect: float,
                    scale: tuple[float, float], ratio: tuple[float, float]) -> Tensor:
    """Affine maps of random resized crops, mirrored where ``flip``.

    The sampling of Inception's and SimCLR's random resized crop (Szegedy et
    al., arXiv:1409.4842; Chen et al., arXiv:2002.05709, app. A): the crop
    area is a uniform fraction in ``scale`` of the image area and its aspect
    ratio log-uniform in ``ratio``. Of ``T`` candidates per sample the first
    that fits in the image is kept; samples with none take the whole image
    (torchvision takes a centre crop there, the same thing for square images).
    Sizes are continuous, not rounded to pixels.

    Args:
        u_area: ``[N, T]`` uniforms for the area fractions.
        u_ratio: ``[N, T]`` uniforms for the log aspect ratios.
        u_pos: ``[N, 2]`` uniforms for the crop centre (x, y).
        flip: ``[N]`` bool, mirror horizontally.
        aspect: Input width / height.
        scale: Range of the area fraction.
        ratio: Range of the crop's width / height.

    Returns:
        ``[N, 2, 3]`` maps from output to input in ``affine_grid``'s normalised frame.
    """
    area = _between(u_area, *scale)
    log_ratio = _between(u_ratio, math.log(ratio[0]), math.log(ratio[1]))
    # Fractions of the input width and height: w * h = area, (w * W) / (h * H) = ratio.
    width = torch.sqrt(area * torch.exp(log_ratio) / aspect)
    height = torch.sqrt(area * aspect / torch.exp(log_ratio))
    fits = (width <= 1.0) & (height <= 1.0)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting try (0 when none fits)
    any_fits = fits.any(dim=1)
    width = torch.where(any_fits, width.gather(1, first).squeeze(1), torch.ones_like(any_fits, dtype=width.dtype))
    height = torch.where(any_fits, height.gather(1, first).squeeze(1), torch.ones_like(width))
    # In the [-1, 1] frame the crop spans 2 * width; its centre keeps it inside.
    cx = (2.0 * u_pos[:, 0] - 1.0) * (1.0 - width)
    cy = (2.0 * u_pos[:, 1] - 1.0) * (1.0 - height)
    theta = torch.zeros(width.shape[0], 2, 3, dtype=width.dtype)
    theta[:, 0, 0] = torch.where(flip, -width, width)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = height
    theta[:, 1, 2] = cy
    return theta


def sample_params(probs: dict[str, Tensor], *, n_views: int, batch: int, aspect: float,
                  scale: tuple[float, float], ratio: tuple[float, float],
                  jitter_strength: tuple[float, float, float, float], blur_sigma: tuple[float, float],
                  generator: torch.Generator | None) -> ViewParams:
    """Draw the parameters of ``n_views`` views of a batch of ``batch`` images.

    Args:
        probs: Per-view probabilities, each a ``[n_views]`` CPU tensor, for
            ``flip``, ``jitter``, ``gray``, ``blur`` and ``solarize``.
        n_views: Views in this group (all of one size).
        batch: Images per view.
        aspect: Input width / height.
        scale: Crop area range.
        ratio: Crop aspect-ratio range.
        jitter_strength: Brightness, contrast, saturation and hue strengths;
            factors are uniform in ``[max(0, 1 - s), 1 + s]`` and the hue
            shift in ``[-s, s]``, as torchvision's ``ColorJitter``.
        blur_sigma: Range of the blur's standard deviation.
        generator: Generator (CPU preferred; another device's is drawn from
            there and copied back), or None for the global CPU RNG.

    Returns:
        The parameters, on the CPU.
    """
    n = n_views * batch
    # One draw for everything, in fixed columns, so the stream never depends on the options.
    device = generator.device if generator is not None else "cpu"
    u = torch.rand(n, 2 * CROP_TRIES + 16, generator=generator, device=device).cpu()
    u_area, u_ratio = u[:, :CROP_TRIES], u[:, CROP_TRIES:2 * CROP_TRIES]
    rest = u[:, 2 * CROP_TRIES:].unbind(dim=1)
    u_pos, u_flip = torch.stack(rest[0:2], dim=1), rest[2]
    u_jitter, u_factors, u_order = rest[3], torch.stack(rest[4:8], dim=1), torch.stack(rest[8:12], dim=1)
    u_gray, u_blur, u_sigma, u_solarize = rest[12:16]

    def happens(name: str, draw: Tensor) -> Tensor:
        return draw < probs[name].repeat_interleave(batch)

    theta = crop_flip_theta(u_area, u_ratio, u_pos, happens("flip", u_flip), aspect=aspect,
                            scale=scale, ratio=ratio)
    b, c, s, h = jitter_strength
    low = torch.tensor([max(0.0, 1.0 - b), max(0.0, 1.0 - c), max(0.0, 1.0 - s), -h])
    high = torch.tensor([1.0 + b, 1.0 + c, 1.0 + s, h])
    factors = low + (high - low) * u_factors
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0])
    jitter = torch.where(happens("jitter", u_jitter).unsqueeze(1), factors, identity)
    return ViewParams(
        theta=theta.view(n_views, batch, 2, 3),
        jitter=jitter,
        order=u_order.argsort(dim=1),
        gray=happens("gray", u_gray),
        blur=happens("blur", u_blur),
        sigma=_between(u_sigma, *blur_sigma),
        solarize=happens("solarize", u_solarize),
    )
