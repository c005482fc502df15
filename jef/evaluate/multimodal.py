"""Zero-shot classification and image-text retrieval of a model with a text encoder (CLIP, SigLIP).

The image side is the online branch, ``projector(backbone(eval_view(image)))``: the embedding the loss compared,
not the backbone's ``h`` that kNN and the linear probe read. The text side is the model's text tower (a named
encoder with a tokenizer; the target's, when several have one). Both run frozen, in eval mode, and every module
is put back in the mode it was in. The maths is in :mod:`jef.evaluate.crossmodal`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from jef.components import DataSplits
from jef.config.options import EvalOptions
from jef.evaluate.crossmodal import DEFAULT_TEMPLATES, prompts, retrieval_recall, zero_shot_accuracy, zero_shot_weights
from jef.evaluate.features import extract_feature_sets
from jef.evaluate.results import Result

__all__ = ["TOWER_PROTOCOLS", "can_run", "evaluate_towers", "image_embeddings", "text_embeddings", "text_tower"]

#: The protocols that need a text encoder, in the order they run.
TOWER_PROTOCOLS = ("zero_shot", "retrieval")


def text_tower(model: nn.Module) -> Any | None:
    """The model's text encoder: a named encoder with a tokenizer (the target's first), or None."""
    towers = getattr(model, "towers", None) or {}
    texts = [tower for tower in towers.values() if getattr(tower, "tokenizer", None) is not None]
    target = getattr(getattr(model, "target", None), "encoder", None)
    texts.sort(key=lambda tower: tower.name != target)
    return texts[0] if texts else None


def evaluate_towers(model: nn.Module, splits: DataSplits, eval_view: Callable[[Tensor], Tensor],
                    options: EvalOptions, device: str | torch.device, protocols: Sequence[str], *,
                    num_workers: int = 0) -> list[Result]:
    """Zero-shot top-1/top-5 and recall@k both ways on the test split, as :class:`~jef.evaluate.protocols.Result`.

    Args:
        model: A ``JointEmbedding`` with a text encoder, on ``device``.
        splits: Data with a test split; zero-shot needs labels and ``class_names``, retrieval captions
            (``texts``; ``image_ids`` when an image has several, COCO's layout).
        eval_view: The augmenter's deterministic test-time transform.
        options: The pipeline's ``eval`` section.
        device: Where the towers run.
        protocols: Which of :data:`TOWER_PROTOCOLS` to run.

    Raises:
        ValueError: No text encoder, no class names (zero-shot) or no captions (retrieval); the message says
            what the data must provide.
    """
    tower = text_tower(model)
    if tower is None:
        raise ValueError("zero-shot and retrieval need a text encoder: a named encoder with a tokenizer under "
                         "`encoders:` (method: clip or siglip)")
    test, name = splits.test, splits.name or "the data"
    if test is None or len(test) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{name}: zero-shot and retrieval score the test split, and the data has none")
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        images, labels = image_embeddings(model, test, eval_view, options.zero_shot.batch_size, device, num_workers)
        results: list[Result] = []
        if "zero_shot" in protocols:
            results += _zero_shot(tower, splits, images, labels, options, device)
        if "retrieval" in protocols:
            results += _retrieval(tower, splits, images, options, device)
    finally:
        for module, was_training in modes:
            module.training = was_training
    return results


def can_run(model: nn.Module, splits: DataSplits) -> set[str]:
    """The tower protocols this model and data can serve (the ones an end-of-run evaluation runs when enabled)."""
    if text_tower(model) is None or splits.test is None:
        return set()
    chosen = set()
    if splits.class_names and splits.labelled:
        chosen.add("zero_shot")
    if isinstance(getattr(splits.test, "texts", None), list):
        chosen.add("retrieval")
    return chosen


def image_embeddings(model: nn.Module, dataset: Any, eval_view: Callable[[Tensor], Tensor], batch_size: int,
                     device: str | torch.device, num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """``(projector(backbone(eval_view(image))) [N, d], labels [N])`` of a split, the model in eval mode."""
    def embed(views: Tensor) -> Tensor:
        return model.projector(model.backbone(views))

    (features,), labels = extract_feature_sets(model, dataset, [embed], eval_view, batch_size=batch_size,
                                               device=device, num_workers=num_workers)
    return features, labels


@torch.no_grad()
def text_embeddings(tower: Any, texts: Sequence[str], batch_size: int, device: str | torch.device) -> Tensor:
    """The text tower's ``z`` of each text, ``[M, d]`` float32 (tokenized here, in batches)."""
    rows = []
    for start in range(0, len(texts), batch_size):
        ids = tower.tokenizer.encode(list(texts[start:start + batch_size])).to(device)
        rows.append(tower.projector(tower.backbone(ids)).float())
    return torch.cat(rows)


def _zero_shot(tower: Any, splits: DataSplits, images: Tensor, labels: Tensor, options: EvalOptions,
               device: str | torch.device) -> list[Result]:
    name = splits.name or "the data"
    if not splits.class_names or not splits.labelled:
        raise ValueError(f"{name}: zero-shot classification needs labels and class names (DataSplits.class_names); "
                         f"this data has none")
    templates = list(options.zero_shot.templates or splits.prompt_templates or DEFAULT_TEMPLATES)
    classes = list(splits.class_names)
    weights = zero_shot_weights(text_embeddings(tower, prompts(classes, templates), options.zero_shot.batch_size,
                                                 device), len(classes), len(templates))
    top = zero_shot_accuracy(images, weights, labels, ks=(1, 5))
    source = ("the pipeline's" if options.zero_shot.templates else "the data's" if splits.prompt_templates
              else "CLIP-style default")
    label = (f"zero-shot classification (CLIP, arXiv:2103.00020, Sec. 3.1.4): cosine similarity of the image "
             f"embedding (eval view) to each class's mean prompt embedding over {len(templates)} {source} "
             f"template(s), e.g. {templates[0]!r}; {name} ({len(classes)} classes, chance "
             f"{1 / len(classes):.3f}): {int((labels >= 0).sum())} test images")
    return [Result("zero_shot_top1", top[1], label), Result("zero_shot_top5", top[5], label)]


def _retrieval(tower: Any, splits: DataSplits, images: Tensor, options: EvalOptions,
               device: str | torch.device) -> list[Result]:
    test, name = splits.test, splits.name or "the data"
    texts = getattr(test, "texts", None)
    if not isinstance(texts, list):
        raise ValueError(f"{name}: retrieval needs the test split's captions (its `texts`); this data has none")
    text_features = text_embeddings(tower, texts, options.zero_shot.batch_size, device)
    image_ids = getattr(test, "image_ids", None)
    image_of_text = None
    if image_ids is not None:  # one sample per caption (COCO): each image once, each caption pointing at it
        first: dict[Any, int] = {}
        for position, image_id in enumerate(image_ids):
            first.setdefault(image_id, position)
        order = {image_id: rank for rank, image_id in enumerate(first)}
        images = images[torch.tensor(list(first.values()), device=images.device)]
        image_of_text = torch.tensor([order[image_id] for image_id in image_ids], device=images.device)
    recall = retrieval_recall(images, text_features, image_of_text, ks=tuple(options.retrieval.ks))
    label = (f"image-text retrieval (Karpathy & Fei-Fei, arXiv:1412.2306): cosine similarity of image embeddings "
             f"(eval view) and caption embeddings; {name}: {images.shape[0]} test images, {len(texts)} captions")
    return [Result(key, value, label) for key, value in recall.items()]
