"""The IDX file format (MNIST, Fashion-MNIST, EMNIST, KMNIST) and the ``idx`` dataset.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element
type, ``NN`` the number of dimensions), ``NN`` big-endian uint32 sizes, then
the elements in C order, big-endian. Files are often gzip-compressed; the
reader looks at the content, not the file name.

References:
    Y. LeCun, C. Cortes, C. J. C. Burges. *The MNIST database of handwritten
    digits*, http://yann.lecun.com/exdb/mnist/ (section "File formats").
"""

import gzip
import os
import zlib
from pathlib import Path

import attrs
import numpy as np

from jef.components import DataSplits, RunContext
from jef.data.base import InMemoryImages, make_splits

# Element type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder(">"): code for code, dtype in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """The bytes are not a valid IDX file."""


def parse_idx(data: bytes | bytearray, source: str = "<bytes>") -> np.ndarray:
    """Parse the (uncompressed) bytes of an IDX file into an array.

    Args:
        data: The file's bytes.
        source: Name used in error messages (usually the path).

    Returns:
        An array of the file's shape in native byte order; a view of
        ``data`` when no byte swap was needed (uint8, int8), writable when
        ``data`` is a ``bytearray``.

    Raises:
        IdxFormatError: Bad magic number, unknown element type or a size
            that disagrees with the header.
    """
    if len(data) < 4:
        raise IdxFormatError(f"{source}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise IdxFormatError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()} (expected 00 00 TT NN with TT one of "
            f"{', '.join(f'{c:02x}' for c in IDX_DTYPES)}); is it an IDX file, and if gzip-compressed, intact?")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{source}: truncated header ({len(data)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxFormatError(f"{source}: file {kind}: header says shape {shape} of {dtype.name} "
                             f"({expected} bytes) but it holds {len(data)} bytes")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw (detected from its first bytes).

    The elements land in one writable buffer that the returned array views
    (for uint8 and int8 files), so a dataset can keep it without another copy:
    loading Fashion-MNIST's 47 MB of training images then holds the file and
    its decompressed bytes, never a third copy.

    Raises:
        FileNotFoundError: No such file.
        IdxFormatError: See :func:`parse_idx`; also a damaged gzip stream.
    """
    path = Path(path).expanduser()
    data = _read_all(path)
    if data[:2] == _GZIP_MAGIC:
        try:
            data = _decompressed(data)
        except zlib.error as err:  # bad CRC or length, cut short, damaged deflate data
            raise IdxFormatError(f"{path}: corrupt gzip stream ({err}); download the file again") from err
    return parse_idx(data, str(path))


def _read_all(path: Path) -> bytearray:
    with path.open("rb") as file:
        data = bytearray(os.fstat(file.fileno()).st_size)
        got = file.readinto(data)
    del data[got:]  # a file that shrank while we read it
    return data


# Deflate expands at most 1032:1; a trailer claiming more is damage, not a size to allocate.
_MAX_DEFLATE_RATIO = 1032
_GZIP_CHUNK = 1 << 16


def _decompressed(data: bytearray) -> bytearray:
    """Decompress every gzip member of ``data`` into one buffer.

    The buffer is sized from the last member's ISIZE trailer (the whole
    size for the usual single-member file) and grows when members are
    several; zlib checks each member's CRC and length itself.
    """
    size = int.from_bytes(data[-4:], "little") if len(data) >= 18 else 0
    out = bytearray(min(size, _MAX_DEFLATE_RATIO * len(data)))
    view, filled, start = memoryview(data), 0, 0
    while True:
        member, pos = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), start
        while not member.eof and pos < len(data):
            piece = member.decompress(view[pos:pos + _GZIP_CHUNK])
            out[filled:filled + len(piece)] = piece  # grows the buffer only past its estimated end
            filled += len(piece)
            pos += _GZIP_CHUNK
        if not member.eof:
            raise zlib.error("the stream ends before its last member does (the file is cut short)")
        start = min(pos, len(data)) - len(member.unused_data)
        if not any(view[start:]):  # nothing, or the zero padding some tools append
            break
        if view[start:start + 2] != _GZIP_MAGIC:
            raise zlib.error(f"{len(data) - start} bytes after the last gzip member are not another member")
    view.release()
    del out[filled:]
    return out


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write an array as an IDX file.

    Args:
        path: Destination; gzip-compressed when ``compress`` is True, or when
            it is None and the name ends in ``.gz``.
        array: Array of a dtype IDX supports (uint8, int8, int16, int32,
            float32, float64), at most 255 dimensions.
        compress: Force (True) or forbid (False) gzip compression.
    """
    path = Path(path).expanduser()
    array = np.asarray(array)
    big = array.dtype.newbyteorder(">")
    if big not in _CODES or array.ndim > 255:
        raise ValueError(f"IDX cannot hold a {array.ndim}-d {array.dtype} array")
    data = (bytes([0, 0, _CODES[big], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
            + np.ascontiguousarray(array, dtype=big).tobytes())
    if compress or (compress is None and path.suffix == ".gz"):
        data = gzip.compress(data, mtime=0)  # mtime=0: identical input, identical file
    path.write_bytes(data)
    return path


def images_from_idx(array: np.ndarray, source: str, *, channels_last: bool = True) -> np.ndarray:
    """Check an IDX image array and bring it to uint8 ``[N, C, H, W]``.

    Args:
        array: ``[N, H, W]`` (greyscale) or 4-d colour images.
        source: Path for error messages.
        channels_last: Whether 4-d arrays are ``[N, H, W, C]`` (else ``[N, C, H, W]``).
    """
    if array.dtype != np.uint8:
        raise ValueError(f"{source}: images must be uint8 (IDX type 0x08), found {array.dtype}")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and channels_last:
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim != 4:
        raise ValueError(f"{source}: images must be 3-d [N, H, W] or 4-d, found shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{source}: the file holds no images (shape {array.shape})")
    if array.shape[2] != array.shape[3]:
        raise ValueError(f"{source}: images are {array.shape[2]}x{array.shape[3]}; jef expects square images "
                         "(crop them, or use the image_folder dataset which resizes)")
    if array.shape[1] not in (1, 3):
        raise ValueError(f"{source}: images have {array.shape[1]} channels, expected 1 or 3 "
                         "(set channels_last to match the file's layout)")
    return np.ascontiguousarray(array)


def labels_from_idx(array: np.ndarray, n_images: int, source: str) -> np.ndarray:
    """Check an IDX label array: 1-d integers, one per image."""
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"{source}: labels must be a 1-d integer IDX file, found {array.dtype} {array.shape}")
    if len(array) != n_images:
        raise ValueError(f"{source}: {len(array)} labels for {n_images} images")
    return array.astype(np.int64)


def load_idx_split(images: str, labels: str | None, *, channels_last: bool = True) -> InMemoryImages:
    """Read an images file and optional labels file into an in-memory split."""
    x = images_from_idx(read_idx(images), images, channels_last=channels_last)
    y = labels_from_idx(read_idx(labels), len(x), labels) if labels else None
    return InMemoryImages(x, y)


@attrs.frozen(kw_only=True)
class IdxOptions:
    """Options of the ``idx`` dataset."""

    images: str = attrs.field(metadata={"doc": "IDX file of training images (gzip or raw)"})
    labels: str | None = attrs.field(default=None, metadata={"doc": "IDX file of training labels; none: unlabelled"})
    test_images: str | None = attrs.field(default=None, metadata={"doc": "IDX file of test images"})
    test_labels: str | None = attrs.field(default=None, metadata={"doc": "IDX file of test labels"})
    num_classes: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1)),
        metadata={"doc": "number of classes; default: largest label + 1"})
    channels_last: bool = attrs.field(default=True, metadata={"doc": "4-d image files are [N, H, W, C]"})
    subset_train: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1)),
        metadata={"doc": "keep only the first N training images"})
    subset_test: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1)),
        metadata={"doc": "keep only the first N test images"})


def _existing(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    full = Path(path).expanduser()
    if not full.is_file():
        raise FileNotFoundError(f"idx dataset: {what} file {full} does not exist")
    return str(full)


def build_idx(options: IdxOptions, ctx: RunContext) -> DataSplits:
    """Build the ``idx`` dataset: images (and labels) from IDX files."""
    train = load_idx_split(_existing(options.images, "images"), _existing(options.labels, "labels"),
                           channels_last=options.channels_last)
    test = None
    if options.test_images:
        test = load_idx_split(_existing(options.test_images, "test_images"),
                              _existing(options.test_labels, "test_labels"), channels_last=options.channels_last)
        if test.images.shape[1:] != train.images.shape[1:]:
            raise ValueError(f"idx dataset: test images {tuple(test.images.shape[1:])} differ from "
                             f"training images {tuple(train.images.shape[1:])}")
    num_classes = options.num_classes
    if num_classes is None and train.labels is not None:
        num_classes = int(train.labels.max()) + 1
    for split, file in ((train, options.labels), (test, options.test_labels)):
        if split is not None and split.labels is not None and num_classes is not None:
            low, high = int(split.labels.min()), int(split.labels.max())
            if low < 0 or high >= num_classes:
                raise ValueError(f"idx dataset: labels in {file} range over [{low}, {high}], outside the "
                                 f"{num_classes} classes [0, {num_classes - 1}]; check the file or num_classes")
    return make_splits(train, test, num_classes=num_classes, channels=train.images.shape[1],
                       image_size=train.images.shape[2], name=f"idx:{Path(options.images).name}",
                       subset_train=options.subset_train, subset_test=options.subset_test)
