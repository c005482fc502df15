"""Datasets: loaders that turn files into :class:`jef.components.DataSplits`.

Every split yields ``(image uint8 [C, H, W], label int, index int)``; label
``-1`` marks unlabelled images. Modules:

* :mod:`jef.data.base` -- in-memory and helper datasets, PIL conversion.
* :mod:`jef.data.idx` -- the IDX format and the ``idx`` dataset.
* :mod:`jef.data.fashion` -- ``fashion_mnist_mini`` (bundled) and ``fashion_mnist``.
* :mod:`jef.data.folder` -- ``image_folder`` (labelled or unlabelled).
* :mod:`jef.data.tvision` -- ``torchvision`` (any torchvision dataset class).
* :mod:`jef.data.synthetic` -- ``synthetic`` texture classes.
* :mod:`jef.data.bundled` -- the shipped archive and the script that rebuilds it.

They are registered as plugins in :mod:`jef.builtin.datasets`.
"""

from jef.data.base import IMAGE_EXTENSIONS, InMemoryImages, make_splits, pil_to_uint8
from jef.data.idx import IdxFormatError, parse_idx, read_idx, write_idx

__all__ = ["IMAGE_EXTENSIONS", "IdxFormatError", "InMemoryImages", "make_splits", "parse_idx", "pil_to_uint8",
           "read_idx", "write_idx"]
