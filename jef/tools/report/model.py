"""What a report needs from a run's trained model: augmented views, a 2-D map of embeddings, nearest neighbours.

These figures need the checkpoint, the plugins the run used and its data; when
one of them is missing the report says why in place of the figures and keeps
the sections made from the logged numbers.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from jef.data.fields import as_fields
from jef.evaluate.features import extract_features
from jef.registry import RegistryError
from jef.tools.report.data import ReportError
from jef.tools.report.figures import caption_figure, embedding_figure, retrieval_figure, to_png, views_figure
from jef.config.validate import ConfigError

__all__ = ["PROJECTIONS", "ModelFigures", "check_projection", "model_figures", "project_2d"]

#: 2-D projections of the embedding map, with the package each needs (None: torch alone).
PROJECTIONS = {"pca": None, "tsne": "sklearn", "umap": "umap"}
_INSTALL = {"sklearn": "scikit-learn", "umap": "umap-learn"}
#: What stops the model figures without being a bug of the report: plugins, data, checkpoint, model output.
MODEL_ERRORS = (ConfigError, RegistryError, OSError, RuntimeError, ValueError)


@attrs.define
class ModelFigures:
    """The model-dependent figures of one run (PNG bytes by name), their details, or why there are none."""

    pngs: dict[str, bytes] = attrs.field(factory=dict)
    details: dict[str, str] = attrs.field(factory=dict)
    note: str | None = None


def check_projection(method: str) -> None:
    """Raise :class:`ReportError` when ``method`` is unknown or its package is not installed."""
    if method not in PROJECTIONS:
        raise ReportError(f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}")
    package = PROJECTIONS[method]
    if package and importlib.util.find_spec(package) is None:
        raise ReportError(f"the {method} projection needs {_INSTALL[package]}: pip install {_INSTALL[package]} "
                          f"(or use the default, pca)")


def project_2d(features: Tensor, method: str = "pca") -> tuple[np.ndarray, tuple[str, str]]:
    """Map ``[N, d]`` features to 2-D, after l2-normalising them (kNN and retrieval compare by cosine).

    PCA is exact (an SVD) and deterministic: components are signed so that their largest loading is positive.

    Returns:
        ``(points [N, 2], axis names)``; PCA axes name the share of variance they explain.
    """
    x = F.normalize(features.float().cpu(), dim=1)
    if method == "pca":
        x = x - x.mean(dim=0)
        _, singular, vh = torch.linalg.svd(x, full_matrices=False)
        components = vh[:2]
        components = components * components.gather(1, components.abs().argmax(1, keepdim=True)).sign()
        points = x @ components.T
        share = singular.square() / singular.square().sum().clamp_min(1e-12)
        if points.shape[1] < 2:  # one-dimensional features: the second axis is flat
            points, share = F.pad(points, (0, 2 - points.shape[1])), F.pad(share, (0, 1))
        return points.numpy(), (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%} of variance)")
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
        points = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=0).fit_transform(x.numpy())
        return np.asarray(points), ("t-SNE 1", "t-SNE 2")
    import umap

    points = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=0).fit_transform(x.numpy())
    return np.asarray(points), ("UMAP 1", "UMAP 2")


def subset_indices(size: int, limit: int) -> list[int]:
    """All of ``range(size)``, or ``limit`` of them drawn with a fixed seed, in order (the same every report)."""
    if size <= limit:
        return list(range(size))
    return sorted(torch.randperm(size, generator=torch.Generator().manual_seed(0))[:limit].tolist())


def spread(labels: Sequence[int] | None, count: int, size: int) -> list[int]:
    """``count`` positions out of ``size``: one per class in turn when labelled, else evenly spaced."""
    count = min(count, size)
    if labels is None or count == 0:
        return sorted({round(i * (size - 1) / max(count - 1, 1)) for i in range(count)})
    queues: dict[int, list[int]] = {}
    for position, label in enumerate(labels[:size]):
        queues.setdefault(int(label), []).append(position)
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues.values():
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


class _Counting(nn.Module):
    """Runs ``inner`` and advances a progress bar by the batch size (extraction itself has no progress)."""

    def __init__(self, inner: nn.Module, bar: Any) -> None:
        super().__init__()
        self.inner, self.bar = inner, bar

    def forward(self, x: Tensor) -> Tensor:
        out = self.inner(x)
        self.bar.update(x.shape[0])
        return out


def _features(run: Any, dataset: Dataset, description: str, device: str) -> tuple[Tensor, Tensor]:
    with tqdm(total=len(dataset), desc=description, unit="img", leave=False) as bar:
        features, labels = extract_features(_Counting(run.backbone, bar), dataset, run.built.augmenter.eval_view,
                                            batch_size=run.pipeline.eval.knn.batch_size, device=device)
    return features.cpu(), labels.cpu()


def _as_images(images: Sequence[Tensor] | Tensor) -> np.ndarray:
    """uint8 (or ``[0, 1]`` float) images to a float ``[N, C, H, W]`` array in ``[0, 1]``."""
    stacked = torch.stack(list(images)) if not isinstance(images, Tensor) else images
    stacked = stacked.float().div(255) if stacked.dtype == torch.uint8 else stacked.float()
    return stacked.cpu().numpy()


def displayable(view: Tensor, augmenter: Any) -> np.ndarray:
    """Undo the augmenter's normalisation for display.

    The built-in ``views`` augmenter says its statistics (``options.channel_stats``); for another augmenter
    whose views leave ``[0, 1]``, each image is stretched to ``[0, 1]`` (colours are then only indicative).
    """
    view = view.detach().float().cpu()
    options = getattr(augmenter, "options", None)
    if getattr(options, "normalize", False) and callable(getattr(options, "channel_stats", None)):
        mean, std = options.channel_stats(view.shape[1])
        view = view * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    elif view.min() < 0 or view.max() > 1:
        low = view.amin(dim=(1, 2, 3), keepdim=True)
        view = (view - low) / (view.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-8)
    return view.clamp(0, 1).numpy()


def _image(dataset: Dataset, index: int) -> Tensor:
    """The uint8 image of one sample, a tuple or a mapping of named fields."""
    return as_fields(dataset[index])["image"]


def _dataset_labels(dataset: Dataset, limit: int = 500) -> list[int]:
    """Labels of the first items (from an in-memory label tensor when there is one, without loading images)."""
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, Tensor):
        return labels[:limit].tolist()
    return [int(as_fields(dataset[i])["label"]) for i in range(min(limit, len(dataset)))]  # type: ignore[arg-type]


def model_figures(directory: Path, *, plugins: Any, device: str = "cpu", max_points: int = 2000,
                  projection: str = "pca", images: int = 4, queries: int = 6, top_k: int = 5) -> ModelFigures:
    """Load the run's model and draw its views, embedding map and retrievals.

    Args:
        directory: The run directory (with ``checkpoint.pt``).
        plugins: Loaded plugins, to rebuild the pipeline.
        device: Where the backbone runs.
        max_points: At most this many images of each split are embedded (a fixed random subset).
        projection: ``pca``, ``tsne`` or ``umap``.
        images: Training images in the views grid.
        queries: Test images whose neighbours are shown.
        top_k: Neighbours per query.

    Returns:
        The figures, or a note saying why they could not be made (a missing plugin or dataset, say).
    """
    from jef.tools.runs import load_run

    try:
        run = load_run(directory, plugins=plugins, device=device)
        splits = run.built.splits
        run.built.augmenter.to(device)
        result = ModelFigures()
        _views(run, result, images, device)
        _embeddings_and_neighbours(run, result, max_points, projection, queries, top_k, device)
        _caption_retrievals(run, result, max_points, queries, top_k, device)
    except MODEL_ERRORS as error:
        return ModelFigures(note=f"the figures that need the model could not be made: {error}")
    if not splits.labelled:
        result.details["labels"] = "the data is unlabelled: no class colours, no correct/incorrect marks"
    return result


def _views(run: Any, result: ModelFigures, images: int, device: str) -> None:
    splits, augmenter = run.built.splits, run.built.augmenter
    labels = _dataset_labels(splits.train) if splits.labelled else None
    chosen = spread(labels, images, len(splits.train) if labels is None else len(labels))
    raw = torch.stack([_image(splits.train, i) for i in chosen])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        views = augmenter(raw.to(device), generator=generator)
        masker = getattr(run.built.model, "masker", None)
        masks = [masker(view, generator=generator) for view in views] if masker is not None else None
    n_global = int(getattr(augmenter, "n_global", len(views)))
    names = [f"global {i + 1}" if i < n_global else f"local {i - n_global + 1}" for i in range(len(views))]
    names = [f"{name}, {view.shape[-1]}px" for name, view in zip(names, views, strict=True)]
    shown = [displayable(v, augmenter) for v in views]
    if masks is not None:  # each view, then what the online encoder sees of it (ARCHITECTURE §8)
        names = [name for pair in zip(names, [f"{n.split(',')[0]}, masked" for n in names], strict=True)
                 for name in pair]
        shown = [image for view, m in zip(shown, masks, strict=True) for image in (view, masked_display(view, m))]
    classes = getattr(splits.train, "classes", None)
    rows = [f"#{i}" + (f" {_class_name(classes, labels[i])}" if labels else "") for i in chosen]
    result.pngs["views"] = to_png(views_figure(_as_images(raw), shown, names, rows))
    masked = ", each beside its masks (hidden patches grey, predicted ones red)" if masks is not None else ""
    result.details["views"] = f"{len(chosen)} training images x {len(views)} views (seed 0){masked}"


def masked_display(view: np.ndarray, masks: Any) -> np.ndarray:
    """A displayed view ``[N, C, h, w]`` (in [0, 1]) as the online encoder sees it: hidden patches grey, RGB.

    Patches a predicted set holds but the encoder still sees (none for data2vec and MAE) are not hidden; hidden
    and predicted patches (I-JEPA's targets, data2vec's masked patches) get a red tint over the grey.
    """
    rows, cols = masks.grid
    n, channels, h, w = view.shape
    rgb = np.repeat(view, 3, axis=1) if channels == 1 else view[:, :3].copy()
    def upscale(grid_mask: torch.Tensor) -> np.ndarray:  # [N, T] -> [N, 1, h, w] pixels
        m = grid_mask.detach().cpu().numpy().reshape(n, rows, cols)
        return m.repeat(h // rows, axis=1).repeat(w // cols, axis=2)[:, None]
    hidden = upscale(masks.hidden)
    predicted = np.zeros_like(hidden)
    for positions in masks.predict:
        predicted |= upscale(positions)
    out = np.where(hidden, 0.5, rgb)
    red = np.array([0.85, 0.35, 0.35]).reshape(1, 3, 1, 1)
    return np.where(predicted & hidden, 0.5 * out + 0.5 * red, out)


def _caption_retrievals(run: Any, result: ModelFigures, max_points: int, queries: int, top_k: int,
                        device: str) -> None:
    """With a text encoder and captioned test images: the captions each query image retrieves."""
    from jef.evaluate.multimodal import image_embeddings, text_embeddings, text_tower

    splits, model = run.built.splits, run.built.model
    tower, test = text_tower(model), splits.test
    texts = getattr(test, "texts", None)
    if tower is None or not isinstance(texts, list) or not texts:
        return
    positions = subset_indices(len(test), max_points)
    images, labels = image_embeddings(model, Subset(test, positions), run.built.augmenter.eval_view,
                                      run.pipeline.eval.zero_shot.batch_size, device)
    captions = [texts[i] for i in positions]
    modes = [(module, module.training) for module in tower.modules()]
    tower.eval()
    try:
        text = text_embeddings(tower, captions, run.pipeline.eval.zero_shot.batch_size, device)
    finally:
        for module, was_training in modes:
            module.training = was_training
    chosen = spread(labels.tolist() if splits.labelled else None, queries, len(positions))
    k = min(top_k, len(captions))
    values, found = (F.normalize(images[chosen], dim=1) @ F.normalize(text, dim=1).T).topk(k, dim=1)
    retrieved = [[(captions[j], float(v), j == i) for j, v in zip(row, sims, strict=True)]
                 for i, row, sims in zip(chosen, found.tolist(), values.tolist(), strict=True)]
    result.pngs["captions"] = to_png(caption_figure(_as_images([_image(test, positions[i]) for i in chosen]),
                                                    [captions[i] for i in chosen], retrieved))
    result.details["captions"] = (f"{len(chosen)} test images, top {k} of {len(captions)} test captions by cosine "
                                  f"similarity of the image and text embeddings")


def _class_name(classes: Sequence[str] | None, label: int) -> str:
    return classes[label] if classes and 0 <= label < len(classes) else f"class {label}"


def _embeddings_and_neighbours(run: Any, result: ModelFigures, max_points: int, projection: str, queries: int,
                               top_k: int, device: str) -> None:
    splits = run.built.splits
    train_idx = subset_indices(len(splits.train), max_points)
    bank, bank_labels = _features(run, Subset(splits.train, train_idx), "embedding train split", device)
    if splits.test is not None:
        test_name, test_idx = "test", subset_indices(len(splits.test), max_points)
        test, test_labels = _features(run, Subset(splits.test, test_idx), "embedding test split", device)
        query_set = splits.test
    else:  # no test split: queries come from the training images, which are then not their own neighbours
        test_name, test_idx, test, test_labels, query_set = "train", train_idx, bank, bank_labels, splits.train
    labelled = splits.labelled
    classes = getattr(query_set, "classes", None) or getattr(splits.train, "classes", None)
    points, axes = project_2d(test, projection)
    title = f"{projection.upper() if projection == 'pca' else projection} of backbone features, " \
            f"{test_name} split ({len(test_idx)} images)"
    result.pngs["embeddings"] = to_png(embedding_figure(points, test_labels.numpy() if labelled else None,
                                                        classes, axes, title))
    result.details["embeddings"] = title

    chosen = spread(test_labels.tolist() if labelled else None, queries, len(test_idx))
    similarity = F.normalize(test[chosen], dim=1) @ F.normalize(bank, dim=1).T
    if splits.test is None:
        similarity[torch.arange(len(chosen)), torch.tensor(chosen)] = -float("inf")
    k = min(top_k, bank.shape[0] - (splits.test is None))
    if k < 1:
        raise ValueError("too few training images to show neighbours")
    values, neighbours = similarity.topk(k, dim=1)
    neighbour_images = np.stack([_as_images([_image(splits.train, train_idx[j]) for j in row])
                                 for row in neighbours.tolist()])
    result.pngs["retrievals"] = to_png(retrieval_figure(
        _as_images([_image(query_set, test_idx[i]) for i in chosen]), neighbour_images, values.numpy(),
        [int(test_labels[i]) for i in chosen] if labelled else None,
        bank_labels[neighbours].numpy() if labelled else None, classes))
    result.details["retrievals"] = (f"{len(chosen)} {test_name} queries, top {k} of {len(train_idx)} training "
                                    f"images by cosine similarity of backbone features")
