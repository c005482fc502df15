"""Features of every image of a dataset from a trained run, written to a file (``jef embed``).

The data is a registered dataset (with the run's own options when it is the
run's dataset), a directory of images (an ``image_folder``, labelled by
subdirectory or not, loaded at the run's channels and image size) or a YAML file
whose ``data:`` slot says what to load. Every image goes through the run's
deterministic ``eval_view`` and the backbone (optionally the projector too) in
eval mode, in dataset order.

A file holds ``features`` (float32 ``[N, d]``), ``labels`` (int64 ``[N]``,
``-1`` when unlabelled), ``indices`` (int64 ``[N]``, each image's position in its
split) and, with ``split="all"``, ``split`` (uint8 ``[N]``: 0 train, 1 test);
plus the file names when the dataset has them (image folders) and metadata
(run, step, layer, split, dataset, ...). The format follows the suffix; see
:func:`save_embeddings`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

import jef
from jef.files import atomic_write
from jef.components import DataSplits
from jef.data.fields import as_fields
from jef.tools.export import ExportError
from jef.tools.runs import LoadedRun

__all__ = ["LAYERS", "SPLITS", "SUFFIXES", "Embeddings", "check_output", "embed", "extract", "load_embeddings",
           "open_data", "save_embeddings"]

SPLITS = ("train", "test", "all")
LAYERS = ("backbone", "projector")
SUFFIXES = (".safetensors", ".npz", ".pt")


@attrs.define
class Embeddings:
    """Features of a dataset and what they are.

    Attributes:
        features: float32 ``[N, d]``, on the CPU.
        labels: int64 ``[N]``, ``-1`` for unlabelled images.
        indices: int64 ``[N]``, each image's position in its split.
        split: uint8 ``[N]`` (0 train, 1 test) when both splits were embedded, else None.
        file_names: One path per image when the dataset knows them (image folders), else None.
        metadata: Run, step, layer, split, dataset, classes and how the features were made (JSON-friendly).
    """

    features: Tensor
    labels: Tensor
    indices: Tensor
    split: Tensor | None = None
    file_names: list[str] | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)

    def tensors(self) -> dict[str, Tensor]:
        """The tensors by name, as every format stores them."""
        out = {"features": self.features, "labels": self.labels, "indices": self.indices}
        return out if self.split is None else {**out, "split": self.split}


def _data_slot(run: LoadedRun, data: str, registry: Any) -> Any:
    """The ``data:`` slot DATA stands for, or None for the run's own dataset and options."""
    from jef.config import read_yaml

    path = Path(data).expanduser()
    if path.is_dir():
        splits = run.built.splits
        # The run's channels and size: the backbone was built for them (image_folder's minimum size is 8).
        return {"name": "image_folder", "root": str(path), "channels": splits.channels,
                "image_size": max(splits.image_size, 8)}
    if path.suffix.lower() in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such YAML file")
        slot = read_yaml(path).get("data")
        if slot is None:
            raise ExportError(f"{path}: no `data:` slot; write the data to embed there, e.g. "
                              f"`data: {{name: image_folder, root: photos}}`")
        return slot
    if path.exists() or "/" in data:
        raise ExportError(f"{data}: not a directory of images, a YAML file with a `data:` slot, or a dataset name "
                          f"(see `jef list dataset`)")
    entry, own = registry.get("dataset", data), run.pipeline.data.entry  # RegistryError names the closest one
    return None if (entry.name, entry.provenance) == (own.name, own.provenance) else {"name": data}


def open_data(run: LoadedRun, data: str, *, registry: Any = None) -> tuple[DataSplits, dict[str, Any]]:
    """Build the splits DATA stands for (see the module docstring).

    Returns:
        ``(splits, data slot)``, the slot fully resolved.

    Raises:
        ExportError: The data cannot be built, or its channels are not the run's.
        FileNotFoundError: DATA looks like a path that is not there.
        jef.registry.RegistryError: An unknown dataset name.
    """
    from jef.config import resolve
    from jef.model.build import build_data

    if registry is None:
        from jef.plugins import get_plugins

        registry = get_plugins().registry
    slot = _data_slot(run, data, registry)
    if slot is None:
        return run.built.splits, run.pipeline.data.plain()
    # Only the data slot changes; `method: None` keeps a recipe from merging its own data options back in.
    pipeline = resolve({**run.pipeline.to_dict(), "method": None, "data": slot}, source=data, registry=registry)
    try:
        splits = build_data(pipeline, run.built.ctx)
    except RuntimeError as error:
        # A dataset's own message (missing files, bad values) says what to do; a crash keeps the plugin's name.
        reason = error.__cause__ if isinstance(error.__cause__, OSError | ValueError) else error
        raise ExportError(f"{data}: {reason}") from error
    if splits.channels != run.built.ctx.in_channels:
        want = run.built.ctx.in_channels
        raise ExportError(f"{data}: has {splits.channels}-channel images but the run's backbone takes {want}-channel "
                          f"ones; embed data with {want} channels (an image folder, or a YAML `data:` slot with "
                          f"`name: image_folder` and `channels: {want}`, converts images to them)")
    return splits, pipeline.data.plain()


def extract(model: nn.Module, dataset: Dataset, transform: Callable[[Tensor], Tensor], *, batch_size: int = 256,
            device: str | torch.device = "cpu", num_workers: int = 0, progress: bool = True,
            desc: str = "embed") -> tuple[Tensor, Tensor, Tensor]:
    """:func:`jef.evaluate.extract_features` that also returns the items' indices and shows a progress bar.

    Returns:
        ``(features, labels, indices)`` on the CPU: float32 ``[N, d]``, int64 ``[N]``, int64 ``[N]``.

    Raises:
        ValueError: The dataset is empty or the model does not return ``[B, d]``.
    """
    from tqdm.auto import tqdm

    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{desc}: the dataset is empty")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    modes = [(module, module.training) for module in model.modules()]
    feats, labels, indices = [], [], []
    # disable=None: a bar on a terminal only, never in logs; short runs (one batch) need none.
    bar = tqdm(total=len(dataset), desc=desc, unit="img", disable=None if progress and len(loader) > 1 else True)
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                fields = as_fields(batch)  # a tuple, or a mapping of named fields (image-text data)
                images, targets, positions = fields["image"], fields["label"], fields["index"]
                out = model(transform(images.to(device, non_blocking=True)))
                if out.dim() != 2:
                    raise ValueError(f"{desc}: the model must return [B, d] features, got shape {tuple(out.shape)}")
                feats.append(out.float().cpu())  # float32, as extract_features: bf16 models stay comparable
                labels.append(torch.as_tensor(targets, dtype=torch.long))
                indices.append(torch.as_tensor(positions, dtype=torch.long))
                bar.update(len(images))
    finally:
        bar.close()
        for module, was_training in modes:
            module.training = was_training
    return torch.cat(feats), torch.cat(labels), torch.cat(indices)


def _file_names(dataset: Dataset, indices: Tensor) -> list[str] | None:
    """Paths of the items at ``indices`` when the dataset keeps them (``image_folder``'s ``paths``)."""
    while isinstance(dataset, Subset):  # subset_train/subset_test keep the first N: indices are unchanged
        dataset = dataset.dataset
    paths = getattr(dataset, "paths", None)
    return None if paths is None else [str(paths[i]) for i in indices.tolist()]


def embed(run: LoadedRun, data: str, *, split: str = "all", layer: str = "backbone", batch_size: int = 256,
          device: str | torch.device = "cpu", num_workers: int = 0, progress: bool = True,
          registry: Any = None) -> Embeddings:
    """Features of every image of ``data`` (dataset name, image directory or YAML file) from ``run``.

    Args:
        run: An opened run (:func:`jef.tools.export.open_run`), its model on ``device``.
        data: See :func:`open_data`.
        split: ``"train"``, ``"test"`` or ``"all"`` (train then test).
        layer: ``"backbone"`` (the representation ``h``) or ``"projector"`` (the embedding ``z``).
        batch_size: Images per forward pass.
        device: Where the model is.
        num_workers: DataLoader worker processes (decoding image files).
        progress: Show a progress bar on a terminal.
        registry: Component registry (default: the loaded plugins').

    Raises:
        ExportError: A split or layer the run or data does not have, or data that cannot be built.
    """
    if split not in SPLITS or layer not in LAYERS:
        raise ExportError(f"split must be one of {', '.join(SPLITS)} and layer one of {', '.join(LAYERS)}; "
                          f"got {split!r} and {layer!r}")
    if layer == "projector" and run.pipeline.projector is None:
        raise ExportError(f"{run.directory}: the run has no projector; use --layer backbone")
    splits, slot = open_data(run, data, registry=registry)
    chosen = {"train": [("train", splits.train)], "test": [("test", splits.test)],
              "all": [("train", splits.train), ("test", splits.test)]}[split]
    if split == "test" and splits.test is None:
        raise ExportError(f"{data}: the dataset has no test split; use --split train or --split all")
    chosen = [(name, part) for name, part in chosen if part is not None]
    model = run.backbone if layer == "backbone" else nn.Sequential(run.backbone, run.built.model.projector)
    dataset = ConcatDataset([part for _, part in chosen])
    features, labels, indices = extract(model, dataset, run.built.augmenter.eval_view, batch_size=batch_size,
                                        device=device, num_workers=num_workers, progress=progress,
                                        desc=f"jef embed {splits.name or slot['name']}")
    sizes = [len(part) for _, part in chosen]  # type: ignore[arg-type]
    names = [_file_names(part, ids) for (_, part), ids in zip(chosen, indices.split(sizes), strict=True)]
    which = torch.cat([torch.full((n,), 0 if name == "train" else 1, dtype=torch.uint8)
                       for (name, _), n in zip(chosen, sizes, strict=True)])
    metadata = {
        "jef_version": jef.__version__, "run": str(run.directory), "step": run.step, "epoch": run.epoch,
        "layer": layer, "split": split, "splits": [name for name, _ in chosen],
        "dataset": {"name": splits.name, "slot": slot}, "classes": _classes(chosen),
        "backbone": run.pipeline.backbone.name, "count": int(features.shape[0]), "dim": int(features.shape[1]),
        "protocol": f"augmenter {run.pipeline.augmenter.name!r} eval_view, then the {layer} in eval mode "
                    f"(BatchNorm running statistics), float32",
    }
    return Embeddings(features, labels, indices, which if split == "all" else None,
                      None if any(n is None for n in names) else sum(names, []), metadata)


def _classes(chosen: list[tuple[str, Dataset]]) -> list[str] | None:
    for _, part in chosen:
        classes = getattr(part, "classes", None)
        if classes is not None:
            return [str(c) for c in classes]
    return None


# -- files -------------------------------------------------------------------------------------------


def check_output(path: str | Path, *, force: bool = False) -> Path:
    """Refuse an unknown suffix or an existing file (without ``force``) before any work is done."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise ExportError(f"--output {path}: unknown format {path.suffix or '(no suffix)'!r}; name the file "
                          f"with one of {', '.join(SUFFIXES)}")
    if path.is_dir():
        raise ExportError(f"--output {path} is a directory; give a file name ending in {', '.join(SUFFIXES)}")
    if path.exists() and not force:
        raise ExportError(f"--output {path} already exists; pass --force to overwrite it")
    return path


def save_embeddings(embeddings: Embeddings, path: str | Path, *, force: bool = False) -> Path:
    """Write ``embeddings`` atomically, in the format of the suffix.

    * ``.safetensors``: the tensors; file names and every metadata entry in the
      header's metadata, each a JSON string (``file_names`` is ``null`` when absent).
    * ``.npz``: the tensors, ``file_names`` (a string array, when present) and
      ``metadata`` (a JSON string); ``np.load`` reads it without pickle.
    * ``.pt``: a dict of the tensors, ``file_names`` (list or None) and ``metadata``
      (a dict); ``torch.load(path, weights_only=True)`` reads it.
    """
    path = check_output(path, force=force)
    tensors = {key: value.contiguous() for key, value in embeddings.tensors().items()}
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        header = {key: json.dumps(value) for key, value in
                  {**embeddings.metadata, "file_names": embeddings.file_names}.items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    elif suffix == ".npz":
        arrays = {key: value.numpy() for key, value in tensors.items()}
        if embeddings.file_names is not None:
            arrays["file_names"] = np.array(embeddings.file_names, dtype=str)
        arrays["metadata"] = np.array(json.dumps(embeddings.metadata))

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a handle: np.savez would append .npz to the temporary name
                np.savez(handle, **arrays)

        atomic_write(path, write)
    else:
        payload = {**tensors, "file_names": embeddings.file_names, "metadata": embeddings.metadata}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_embeddings(path: str | Path) -> Embeddings:
    """Read a file written by :func:`save_embeddings` (no pickle in any format)."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
            header = {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}
        names = header.pop("file_names", None)
    elif suffix == ".npz":
        with np.load(path) as arrays:
            tensors = {key: torch.from_numpy(arrays[key]) for key in ("features", "labels", "indices", "split")
                       if key in arrays}
            names = arrays["file_names"].tolist() if "file_names" in arrays else None
            header = json.loads(arrays["metadata"].item())
    elif suffix == ".pt":
        payload = torch.load(path, map_location="cpu", weights_only=True)
        names, header = payload.pop("file_names"), payload.pop("metadata")
        tensors = payload
    else:
        raise ExportError(f"{path}: unknown format {suffix!r}; jef writes {', '.join(SUFFIXES)}")
    return Embeddings(tensors["features"], tensors["labels"], tensors["indices"], tensors.get("split"), names,
                      header)
