"""Start a backbone from a local state dict: the backbone slot's ``weights: PATH`` (and ``weights_strict``).

Any backbone gets it, a plugin's too: the keys belong to the slot, not to the backbone's options. The file is
read without unpickling objects (safetensors, or ``torch.load(..., weights_only=True)``) and nothing is
downloaded. What it may hold:

* a plain ``state_dict`` (torchvision's and timm's weight files, ``jef export``'s ``backbone.pt`` and
  ``backbone.safetensors``);
* a checkpoint that wraps one under ``state_dict`` or ``model`` (timm's training checkpoints, jef's own
  ``checkpoint.pt``, whose model keys put the backbone under ``backbone.``);
* keys under a common prefix (``module.`` of DistributedDataParallel, ``backbone.``, ``encoder.``, MoCo's
  ``encoder_q.`` and ``base_encoder.``): the prefix under which the most keys match the backbone is stripped,
  and keys outside it are ignored.

``PATH`` may also be a directory: what ``jef export`` wrote (``backbone.safetensors`` or ``backbone.pt``) or
a run directory (``checkpoint.pt``). Shapes that differ are an error; backbone keys the file lacks are an
error with ``weights_strict: true`` (the default) and a warning with ``false``; keys the backbone lacks
(a classifier ``fc.*``) are reported and left out.
"""

from __future__ import annotations

import itertools
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from jef.config.validate import ConfigError

__all__ = ["PREFIXES", "WeightsError", "WeightsReport", "find_weights", "load_weights", "match_prefix",
           "read_state_dict"]

#: Leading key parts that wrappers add (DDP's ``module.``, a model's ``backbone.``/``encoder.``, MoCo's encoders).
PREFIXES = ("module.", "model.", "backbone.", "encoder.", "encoder_q.", "base_encoder.")
#: Keys under which checkpoints keep their state dict.
WRAPPERS = ("state_dict", "model")
#: In a directory: what ``jef export`` writes, then what ``jef train`` writes.
DIRECTORY_FILES = ("backbone.safetensors", "backbone.pt", "checkpoint.pt")
#: How many key names a message shows.
SHOWN = 5


class WeightsError(ConfigError):
    """The file named by ``backbone.weights`` cannot start the backbone; the message names the file and says why.

    A :class:`~jef.config.validate.ConfigError` (the YAML path is ``backbone.weights``), so the command line
    prints it as ``jef: error: ...``.

    Attributes:
        file: The weights file.
    """

    def __init__(self, message: str, *, file: str | Path, source: str = "") -> None:
        self.file = str(file)
        super().__init__(f"{file}: {message}", path="backbone.weights", source=source)


@attrs.frozen
class WeightsReport:
    """What :func:`load_weights` loaded.

    Attributes:
        file: The file read.
        prefix: The key prefix stripped ("" for none).
        loaded: Backbone tensors set from the file.
        total: The backbone's tensors (parameters and buffers).
        missing: Backbone keys the file lacks (left at their initial values).
        unexpected: Keys under ``prefix`` that the backbone lacks (not loaded).
        ignored: Keys of the file outside ``prefix`` (a checkpoint's projector, optimiser-free heads...).
    """

    file: str
    prefix: str
    loaded: int
    total: int
    missing: list[str]
    unexpected: list[str]
    ignored: int = 0

    def line(self) -> str:
        """One line for the log: counts, and the first few names."""
        under = f"keys under {self.prefix!r}" if self.prefix else "keys as they are"
        ignored = f", {self.ignored} other key(s) ignored" if self.ignored else ""
        return (f"jef: backbone.weights: loaded {self.loaded} of the backbone's {self.total} tensors from "
                f"{self.file} ({under}{ignored}); missing {_counted(self.missing)}; "
                f"unexpected {_counted(self.unexpected)}")


def find_weights(path: str | Path, *, source: str = "") -> Path:
    """The weights file ``path`` names (a file, or a directory ``jef export`` or ``jef train`` wrote).

    Reads nothing: ``jef config show`` checks with it that the file is there.

    Raises:
        ConfigError: No such file, or a directory without weights (YAML path ``backbone.weights``).
    """
    file = Path(path).expanduser()
    if file.is_dir():
        for name in DIRECTORY_FILES:
            if (file / name).is_file():
                return file / name
        raise ConfigError(f"{file} is a directory without {', '.join(DIRECTORY_FILES[:-1])} (written by jef "
                          f"export) or {DIRECTORY_FILES[-1]} (written by jef train); name the weights file",
                          path="backbone.weights", source=source)
    if not file.is_file():
        raise ConfigError(f"no such file: {file} (relative paths are from the current directory); give the path "
                          f"of a local .safetensors or torch state dict (jef downloads nothing)",
                          path="backbone.weights", source=source)
    return file


def read_state_dict(path: str | Path, *, source: str = "") -> dict[str, Tensor]:
    """The tensors of a weights file, unwrapped from ``state_dict`` / ``model`` (safetensors or a torch file).

    Raises:
        WeightsError: The file cannot be read, holds pickled objects, or holds no tensors; ``safetensors`` is
            not installed for a ``.safetensors`` file.
    """
    file = Path(path)
    if file.suffix == ".safetensors":
        data: Any = _read_safetensors(file, source)
    else:
        data = _read_torch(file, source)
    while isinstance(data, Mapping) and not any(isinstance(value, Tensor) for value in data.values()):
        inner = next((data[key] for key in WRAPPERS if isinstance(data.get(key), Mapping)), None)
        if inner is None:
            break
        data = inner
    tensors = {key: value for key, value in data.items() if isinstance(key, str) and isinstance(value, Tensor)
               } if isinstance(data, Mapping) else {}
    if not tensors:
        keys = ", ".join(map(str, list(data)[:SHOWN])) if isinstance(data, Mapping) else type(data).__name__
        raise WeightsError(f"holds no tensors where a state dict should be (found: {keys or 'nothing'}); save the "
                           f"model's state_dict(), a mapping of names to tensors", file=file, source=source)
    return tensors


def _read_safetensors(file: Path, source: str) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as error:
        raise WeightsError("reading .safetensors files needs the safetensors package: pip install safetensors "
                           "(or save the weights with torch.save and name that file)",
                           file=file, source=source) from error
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"cannot be read as safetensors ({_first_line(error)}); is it a complete "
                           f".safetensors file?", file=file, source=source) from error


def _read_torch(file: Path, source: str) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = _unpickler_detail(error)
        if "global" not in detail:  # not a refused object: bytes that are no pickle (a text file, a cut-off file)
            raise WeightsError(f"cannot be read as a torch file ({detail}); give a file written by torch.save, "
                               f"or a .safetensors file", file=file, source=source) from error
        raise WeightsError(f"holds objects other than tensors and plain data, which jef does not unpickle "
                           f"(arbitrary code could run); load it yourself if you trust it and save its "
                           f"state_dict() ({detail})", file=file, source=source) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise WeightsError(f"cannot be read as a torch file ({_first_line(error)}); give a file written by "
                           f"torch.save, or a .safetensors file", file=file, source=source) from error


def _prefixes(keys: list[str]) -> set[str]:
    """Every combination of :data:`PREFIXES` (up to three deep) that some key starts with, and ""."""
    found = {""}
    for depth in (1, 2, 3):
        for parts in itertools.product(PREFIXES, repeat=depth):
            prefix = "".join(parts)
            if any(key.startswith(prefix) for key in keys):
                found.add(prefix)
    return found


def match_prefix(keys: list[str], wanted: set[str]) -> str:
    """The prefix of ``keys`` under which the most keys are in ``wanted`` (the shortest such prefix on a tie)."""
    return max(sorted(_prefixes(keys), key=lambda prefix: (len(prefix), prefix)),
               key=lambda prefix: sum(key[len(prefix):] in wanted for key in keys if key.startswith(prefix)))


def load_weights(module: nn.Module, path: str | Path, *, strict: bool = True, source: str = "") -> WeightsReport:
    """Load the state dict in ``path`` into ``module`` (a backbone), stripping a wrapper's key prefix.

    Args:
        module: The freshly built backbone.
        path: A weights file or a directory holding one (see :func:`find_weights`).
        strict: Every key of ``module`` must be in the file; else missing keys keep their initial values.
        source: The pipeline file, for messages.

    Returns:
        What was loaded (:meth:`WeightsReport.line` is the log line).

    Raises:
        ConfigError: No such file.
        WeightsError: The file is unreadable; none of its keys match; some shapes differ; ``strict`` and keys
            are missing.
    """
    file = find_weights(path, source=source)
    tensors = read_state_dict(file, source=source)
    own = module.state_dict()
    keys = list(tensors)
    prefix = match_prefix(keys, set(own))
    chosen = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    matching = [key for key in chosen if key in own]
    if not matching:
        raise WeightsError(f"none of the {len(keys)} keys of the file match the backbone's {len(own)} parameters "
                           f"and buffers, with or without a prefix ({', '.join(PREFIXES)}); first keys: "
                           f"{_names(keys)}; the backbone's: {_names(list(own))}; is it the weights of "
                           f"another network?", file=file, source=source)
    shapes = [f"{key}: file {list(chosen[key].shape)}, backbone {list(own[key].shape)}" for key in matching
              if chosen[key].shape != own[key].shape]
    if shapes:
        raise WeightsError(f"{len(shapes)} of the {len(matching)} matching tensors have another shape than the "
                           f"backbone's: {'; '.join(shapes[:SHOWN])}{' ...' if len(shapes) > SHOWN else ''}; "
                           f"the backbone's options (width, channels, image size) must be those the weights "
                           f"were trained with", file=file, source=source)
    result = module.load_state_dict(chosen, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and missing:
        raise WeightsError(f"{len(missing)} of the backbone's {len(own)} keys are not in the file: "
                           f"{_names(missing)}; use the weights of the same backbone, or set "
                           f"backbone.weights_strict: false to keep those at their initial values",
                           file=file, source=source)
    return WeightsReport(str(file), prefix, len(own) - len(missing), len(own), missing, unexpected,
                         len(keys) - len(chosen))


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (" ..." if len(keys) > SHOWN else "")


def _counted(keys: list[str]) -> str:
    return f"{len(keys)} ({_names(keys)})" if keys else "0"


def _unpickler_detail(error: BaseException) -> str:
    """What torch's weights-only unpickler found, without the paragraph about ``weights_only`` it puts first."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "global" in line.lower():
            return line
        if line.endswith("WeightsUnpickler error:") and index + 1 < len(lines):
            return lines[index + 1]
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
