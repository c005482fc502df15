"""``synthetic``: procedurally generated texture classes for tests and quick runs.

Each class is a texture family (stripes of one orientation, checkerboard,
dots, rings, ...) that fills the whole image, so any crop of an image still
shows its class. Everything a self-supervised method should learn to ignore
is random per image: the texture's period, phase, small rotation, brightness,
contrast (possibly inverted), tint and pixel noise. Horizontal flips map
every class onto itself (diagonal stripes come in both directions), so flip
augmentation does not confuse classes. Pixel statistics overlap between
classes, which leaves room for training to improve over random features:
with the defaults (10 classes, 32x32 RGB), a 3-layer CNN's kNN accuracy went
from 0.56 at random initialisation to 0.87 after 300 SimCLR steps (batch
128, crops + flips + colour jitter, about 3 CPU minutes); raw pixels give 0.37.
Greyscale is easier (0.86 at random initialisation, 0.93 after 100 steps).

Generation is vectorised NumPy: 10,000 32x32 RGB images take about a second.
"""

import attrs
import numpy as np

from jef.components import DataSplits, RunContext
from jef.data.base import InMemoryImages, make_splits

#: Class names, indexed by label.
SYNTHETIC_CLASSES = ("horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard",
                     "dots", "rings", "grid lines", "wavy stripes", "blobs", "spokes")


def _pattern(cls: int, x: np.ndarray, y: np.ndarray, period: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture ``cls`` in [-1, 1] for ``n`` images, from rotated, shifted pixel coordinates.

    Args:
        cls: Class index.
        x: Rotated, shifted coordinates ``[n, H, W]`` (pixels).
        y: The same for the other axis.
        period: Texture period per image ``[n, 1, 1]`` (pixels).
        rng: Randomness for the class's own free parameters.
    """
    n = x.shape[0]
    tau = 2 * np.pi
    if cls == 0:  # horizontal stripes
        return np.sin(tau * y / period)
    if cls == 1:  # vertical stripes
        return np.sin(tau * x / period)
    if cls == 2:  # diagonal stripes, either direction so that h-flips stay in class
        sign = rng.choice([-1.0, 1.0], size=(n, 1, 1))
        return np.sin(tau * (x + sign * y) / (period * np.sqrt(2)))
    if cls == 3:  # checkerboard, softened so that it is not trivially high-contrast
        return np.tanh(3 * np.sin(tau * x / period) * np.sin(tau * y / period))
    if cls == 4:  # dots on a square lattice
        dx = (x / period) % 1 - 0.5
        dy = (y / period) % 1 - 0.5
        radius = rng.uniform(0.18, 0.32, size=(n, 1, 1))
        return np.tanh(8 * (radius - np.hypot(dx, dy)) / radius)
    if cls == 5:  # concentric rings around a centre near the image
        return np.sin(tau * np.hypot(x, y) / period)
    if cls == 6:  # thin grid lines
        lines = np.maximum(np.abs(np.cos(np.pi * x / period)), np.abs(np.cos(np.pi * y / period)))
        return 2 * lines**8 - 1
    if cls == 7:  # wavy horizontal stripes
        amplitude = rng.uniform(0.25, 0.5, size=(n, 1, 1)) * period
        return np.sin(tau * (y + amplitude * np.sin(tau * x / (2 * period))) / period)
    if cls == 8:  # smooth random blobs: low-pass filtered white noise
        h, w = x.shape[1:]
        spectrum = np.fft.rfft2(rng.standard_normal((n, h, w)))
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.rfftfreq(w)[None, :]
        cutoff = 0.5 / period  # blob size tracks the period, like the other classes
        field = np.fft.irfft2(spectrum * np.exp(-(fx**2 + fy**2) / (2 * cutoff**2)), s=(h, w))
        field /= field.std(axis=(1, 2), keepdims=True) + 1e-8
        return np.tanh(field)
    if cls == 9:  # spokes radiating from a centre near the image
        spokes = rng.integers(5, 9, size=(n, 1, 1))
        return np.sin(spokes * np.arctan2(y, x))
    raise ValueError(f"synthetic: no texture for class {cls}")


def generate(labels: np.ndarray, image_size: int, channels: int, rng: np.random.Generator,
             noise: float = 0.05) -> np.ndarray:
    """Render one image per label.

    Args:
        labels: Class of each image ``[N]``.
        image_size: Side of the images.
        channels: 1 or 3.
        rng: Source of randomness.
        noise: Standard deviation of the Gaussian pixel noise (intensities in [0, 1]).

    Returns:
        uint8 images ``[N, channels, image_size, image_size]``.
    """
    n, s = len(labels), image_size
    out = np.empty((n, channels, s, s), dtype=np.uint8)
    grid = np.arange(s, dtype=np.float32) - np.float32((s - 1) / 2)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        m = len(members)
        shape = (m, 1, 1)
        # float32 throughout: twice as fast as float64 and ample for 8-bit output.
        period = (s * rng.uniform(0.14, 0.34, size=shape)).astype(np.float32)
        angle = np.deg2rad(rng.uniform(-15, 15, size=shape)).astype(np.float32)
        # The shift moves the origin (ring / spoke centre) within the central half.
        cx, cy = (rng.uniform(-0.25, 0.25, size=(2, *shape)) * s).astype(np.float32)
        xx, yy = grid[None, None, :] - cx, grid[None, :, None] - cy
        x = xx * np.cos(angle) + yy * np.sin(angle)
        y = -xx * np.sin(angle) + yy * np.cos(angle)
        field = _pattern(int(cls), x, y, period, rng)  # [m, s, s] in [-1, 1]
        brightness = rng.uniform(0.3, 0.7, size=shape)
        contrast = rng.uniform(0.25, 0.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)
        value = (255 * (brightness + contrast * field)).astype(np.float32)
        if channels == 3:
            tint = rng.uniform(0.3, 1.0, size=(m, 3, 1, 1))
            image = value[:, None] * (tint / tint.max(axis=1, keepdims=True)).astype(np.float32)
        else:
            image = value[:, None]
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(255 * noise)
        out[members] = np.clip(np.rint(image), 0, 255)
    return out


@attrs.frozen(kw_only=True)
class SyntheticOptions:
    """Options of the ``synthetic`` dataset."""

    num_classes: int = attrs.field(
        default=10, validator=[attrs.validators.ge(2), attrs.validators.le(len(SYNTHETIC_CLASSES))],
        metadata={"doc": f"number of texture classes (2-{len(SYNTHETIC_CLASSES)})"})
    train_size: int = attrs.field(default=2000, validator=attrs.validators.ge(1),
                                  metadata={"doc": "training images"})
    test_size: int = attrs.field(default=500, validator=attrs.validators.ge(0),
                                 metadata={"doc": "test images (0: no test split)"})
    image_size: int = attrs.field(default=32, validator=attrs.validators.ge(8), metadata={"doc": "image side"})
    channels: int = attrs.field(default=3, validator=attrs.validators.in_([1, 3]), metadata={"doc": "1 or 3"})
    noise: float = attrs.field(default=0.05, validator=attrs.validators.ge(0.0),
                               metadata={"doc": "std of Gaussian pixel noise (intensity in [0, 1])"})
    seed: int = attrs.field(default=0, metadata={"doc": "seed of the generator (data do not depend on the run seed)"})


def _balanced_labels(size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(size) % num_classes)


def build_synthetic(options: SyntheticOptions, ctx: RunContext) -> DataSplits:
    """Build the ``synthetic`` dataset; identical for identical options."""
    # Independent streams: the training images do not change with test_size.
    train_seq, test_seq = np.random.SeedSequence(options.seed).spawn(2)
    classes = SYNTHETIC_CLASSES[: options.num_classes]
    splits = []
    for size, seq in ((options.train_size, train_seq), (options.test_size, test_seq)):
        if size == 0:
            splits.append(None)
            continue
        rng = np.random.default_rng(seq)
        labels = _balanced_labels(size, options.num_classes, rng)
        images = generate(labels, options.image_size, options.channels, rng, options.noise)
        splits.append(InMemoryImages(images, labels, classes))
    return make_splits(splits[0], splits[1], num_classes=options.num_classes, channels=options.channels,
                       image_size=options.image_size, name=f"synthetic{options.num_classes}")
