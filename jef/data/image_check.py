"""Finding the files of an image folder that are not readable images, and keeping the list of those skipped.

Used by ``image_folder`` (:mod:`jef.data.folder`): a header check of every file
when the dataset is built, decoding that reports failures instead of raising,
and the run directory's ``skipped_images.txt``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch import Tensor

from jef.data.base import ImageModeError, decode_errors, pil_to_uint8
from jef.config.validate import ConfigError

__all__ = ["SHOWN_IN_MESSAGES", "SKIPPED_NAME", "ImageDecodeError", "UnreadableImageError", "check_images",
           "decode_image", "listing", "record_skipped", "try_decode"]

#: File in the run directory that lists the skipped files, one ``path<TAB>reason`` per line.
SKIPPED_NAME = "skipped_images.txt"
#: Files named in a warning or an error message; the rest are in :data:`SKIPPED_NAME`.
SHOWN_IN_MESSAGES = 5
#: Below this many files the header check runs in the calling thread.
_POOL_FROM = 256
_CHUNK = 256


class UnreadableImageError(OSError):
    """An image file PIL cannot decode (or no readable image is left), with ``on_bad_image: error``."""


class ImageDecodeError(UnreadableImageError, ConfigError):
    """A file that failed while decoding, during a run: an error the command line shows as one line.

    It is a :class:`~jef.config.validate.ConfigError` (what the user must change is the data or ``data.on_bad_image``;
    a traceback would not help) and still an :class:`UnreadableImageError`. Raised in a DataLoader worker, it
    reaches the main process re-made by torch as ``ImageDecodeError(text)``, the text holding the worker's
    whole traceback: the constructor keeps only the original message from it, so the error stays one line.
    """

    def __init__(self, message: str) -> None:
        ConfigError.__init__(self, _worker_message(message, type(self).__name__))


def _worker_message(message: str, name: str) -> str:
    """The original message of an error re-raised from a DataLoader worker (``message`` itself otherwise)."""
    if not (message.startswith(f"Caught {name} ") and "\nOriginal Traceback" in message):
        return message
    for line in reversed(message.splitlines()):
        head, sep, rest = line.partition(f"{name}: ")
        if sep and (not head or head.endswith(".")):  # `jef.data.image_check.ImageDecodeError: ...`
            return f"{rest} (in a DataLoader worker)"
    return message


def _reason(path: str, err: BaseException) -> str:
    """A short reason for the skipped-files list and messages (PIL's own often repeats the path)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        try:
            if os.path.getsize(path) == 0:
                return "empty file"
        except OSError:
            pass
        return "not an image PIL can identify"
    if isinstance(err, Image.DecompressionBombError):
        return f"{err} (raise PIL.Image.MAX_IMAGE_PIXELS to read it)"
    if isinstance(err, PermissionError):
        return "permission denied"
    return f"{type(err).__name__}: {err}"


def _probe(paths: Sequence[str], min_side: int) -> tuple[dict[str, str], list[tuple[str, int, int]]]:
    """Open each file's header: ``{path: reason}`` if unreadable, ``(path, w, h)`` if smaller than ``min_side``."""
    from PIL import Image

    bad, small = {}, []
    for path in paths:
        try:
            with Image.open(path) as img:
                width, height = img.size
        except decode_errors() as err:
            bad[path] = _reason(path, err)
            continue
        if min(width, height) < min_side:
            small.append((path, width, height))
    return bad, small


def try_decode(path: str, channels: int, image_size: int | None) -> tuple[Tensor | None, str | None]:
    """``(image, None)``, or ``(None, reason)`` when PIL cannot decode the file or convert its colour mode."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not halfway through the conversion
            return pil_to_uint8(img, channels, image_size), None
    except (*decode_errors(), ImageModeError) as err:
        return None, _reason(path, err)


def decode_image(path: str, channels: int, image_size: int | None) -> Tensor:
    """Decode an image file into uint8 ``[channels, S, S]`` (see :func:`jef.data.base.pil_to_uint8`).

    Raises:
        UnreadableImageError: PIL cannot read or decode the file, or convert its colour mode.
    """
    image, reason = try_decode(path, channels, image_size)
    if image is None:
        raise UnreadableImageError(f"{path}: {reason}")
    return image


def listing(names: Sequence[Any]) -> str:
    """The first few of ``names``, comma-separated, with the count of the rest."""
    shown = ", ".join(str(n) for n in names[:SHOWN_IN_MESSAGES])
    return shown + (f" and {len(names) - SHOWN_IN_MESSAGES} more" if len(names) > SHOWN_IN_MESSAGES else "")


def record_skipped(path: Path | None, entries: dict[str, str]) -> None:
    """Merge ``{file: reason}`` into the skipped-files list at ``path`` (atomically; earlier entries are kept)."""
    if path is None or not entries:
        return
    from jef.files import atomic_write

    merged: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            name, sep, why = line.partition("\t")
            if sep:
                merged[name] = why
    merged.update(entries)
    text = "".join(f"{name}\t{why}\n" for name, why in sorted(merged.items()))
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_images(paths: Sequence[str], *, min_side: int = 0,
                 progress: bool = True) -> tuple[dict[str, str], list[tuple[str, int, int]]]:
    """Open every file's header (not its pixels) to find the ones that are not readable images.

    Large lists are checked in a thread pool (it overlaps file-system waits;
    header parsing itself holds the GIL) with a progress bar for scans longer
    than two seconds. In a distributed run every process checks its share and
    the processes exchange what they found, so all of them drop the same files.

    Args:
        paths: Image files.
        min_side: Report readable images whose shorter side is below this.
        progress: Show a progress bar (on the main process only).

    Returns:
        ``{path: reason}`` of the unreadable files, and ``(path, width, height)``
        of the readable images smaller than ``min_side``.
    """
    from tqdm.auto import tqdm

    from jef import dist

    rank, world = dist.rank(), dist.world_size()
    mine = list(paths[rank::world])
    chunks = [mine[i:i + _CHUNK] for i in range(0, len(mine), _CHUNK)]
    bad: dict[str, str] = {}
    small: list[tuple[str, int, int]] = []
    pool = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4)) if len(mine) >= _POOL_FROM else None
    try:
        probed = (pool.map if pool is not None else map)(functools.partial(_probe, min_side=min_side), chunks)
        with tqdm(total=len(mine), desc="image_folder: checking images", unit="file", delay=2.0, mininterval=0.5,
                  disable=not progress or rank != 0) as bar:
            for chunk, (chunk_bad, chunk_small) in zip(chunks, probed, strict=True):
                bad.update(chunk_bad)
                small += chunk_small
                bar.update(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if dist.is_distributed():
        import torch.distributed as tdist

        gathered: list[Any] = [None] * world
        tdist.all_gather_object(gathered, (bad, small))
        bad = {path: why for part, _ in gathered for path, why in part.items()}
        small = [entry for _, part in gathered for entry in part]
    return bad, sorted(small)
