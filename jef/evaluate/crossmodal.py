"""Image–text evaluation of frozen features: zero-shot classification and cross-modal retrieval.

Zero-shot classification follows CLIP [1], sec. 3.1.4: each class name is put
into several prompt templates ("a photo of a {}."), the text encoder embeds
every prompt, and a class's weight is the ℓ2-normalised mean of its
ℓ2-normalised prompt embeddings (prompt ensembling). An image is assigned the
class whose weight is most cosine-similar to its feature.

Retrieval follows the COCO / Flickr30k protocol of Karpathy & Fei-Fei [2], as
reported in CLIP's Table 13: with several captions per image, image→text
recall@k is the fraction of images for which *any* of their captions is among
the ``k`` most similar texts, and text→image recall@k the fraction of captions
whose image is among the ``k`` most similar images.

Ranks are counted, not sorted: a candidate's rank is the number of candidates
more similar than it plus the number of equally similar candidates of lower
index, so ties go deterministically to the lower index, and a ``k`` larger than
the number of candidates behaves as that number.

References:
    [1] Radford et al., Learning Transferable Visual Models From Natural
        Language Supervision (CLIP), 2021, arXiv:2103.00020.
    [2] Karpathy & Fei-Fei, Deep Visual-Semantic Alignments for Generating
        Image Descriptions, 2015, arXiv:1412.2306.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_TEMPLATES", "prompts", "retrieval_recall", "zero_shot_accuracy", "zero_shot_weights"]

#: CLIP-style prompt templates, one ``{}`` each for the class name (CLIP [1], sec. 3.1.4).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)


def prompts(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[str]:
    """Every template filled with every class name, class-major.

    The prompt of class ``c`` and template ``t`` is at index ``c * len(templates) + t``, the order
    :func:`zero_shot_weights` expects. The name replaces the ``{}`` literally, so names and templates
    may contain other braces.

    Args:
        class_names: The class names, at least one.
        templates: Templates with exactly one ``{}`` each, at least one.

    Returns:
        ``len(class_names) * len(templates)`` prompts.

    Raises:
        ValueError: No class names, no templates, or a template without exactly one ``{}``.
    """
    if isinstance(class_names, str) or isinstance(templates, str):
        raise ValueError("prompts: class_names and templates must be sequences of strings, not a single string")
    if len(class_names) == 0:
        raise ValueError("prompts: the list of class names is empty")
    if len(templates) == 0:
        raise ValueError("prompts: the list of templates is empty")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompts: template {template!r} must contain exactly one '{{}}' for the class name, "
                             f"found {template.count('{}')}")
    return [template.replace("{}", str(name)) for name in class_names for template in templates]


def zero_shot_weights(text_features: Tensor, n_classes: int, n_templates: int) -> Tensor:
    """Class weights by prompt ensembling: normalise each prompt, average per class, normalise again.

    CLIP [1], sec. 3.1.4, averages the embeddings of a class's prompts; as in its reference code the
    embeddings are ℓ2-normalised before and after the mean.

    Args:
        text_features: Prompt embeddings ``[n_classes * n_templates, d]``, class-major (the order of
            :func:`prompts`).
        n_classes: Number of classes ``C``.
        n_templates: Templates per class ``T``.

    Returns:
        Unit-norm class weights ``[C, d]`` (float32, on the features' device).

    Raises:
        ValueError: ``n_classes`` or ``n_templates`` below 1, or features not of shape ``[C * T, d]``.
    """
    if n_classes < 1 or n_templates < 1:
        raise ValueError(f"zero_shot_weights: n_classes and n_templates must be >= 1, got {n_classes} "
                         f"and {n_templates}")
    if text_features.dim() != 2 or text_features.shape[0] != n_classes * n_templates:
        raise ValueError(f"zero_shot_weights: expected [{n_classes} * {n_templates}, d] = "
                         f"[{n_classes * n_templates}, d] prompt features, got {tuple(text_features.shape)}")
    per_prompt = F.normalize(text_features.float(), dim=1)
    return F.normalize(per_prompt.view(n_classes, n_templates, -1).mean(dim=1), dim=1)


def _check_ks(ks: Sequence[int], where: str) -> None:
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"{where}: ks must be integers >= 1, got {tuple(ks)}")


def _ranks(sims: Tensor, target: Tensor) -> Tensor:
    """Rank of column ``target[r]`` in row ``r`` of ``sims``: more similar columns, plus equal ones of lower index."""
    own = sims.gather(1, target[:, None])
    columns = torch.arange(sims.shape[1], device=sims.device)
    return (sims > own).sum(dim=1) + ((sims == own) & (columns[None, :] < target[:, None])).sum(dim=1)


def zero_shot_accuracy(
    image_features: Tensor,
    class_weights: Tensor,
    labels: Tensor,
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Top-k zero-shot accuracy: the class of an image is that of its most cosine-similar weight.

    An image counts as correct at ``k`` when its class ranks among the ``k`` most similar classes;
    equally similar classes rank by index (the lower first). A ``k`` larger than the number of classes
    ``C`` is clamped to ``C`` (so top-k is then 1.0); the result keeps the requested ``k`` as key.

    Args:
        image_features: ``[N, d]`` image embeddings (need not be normalised).
        class_weights: ``[C, d]`` class weights, e.g. from :func:`zero_shot_weights` (normalised here
            too, so raw text embeddings work as well).
        labels: ``[N]`` classes in ``[0, C)``; ``-1`` marks an unlabelled image, which is ignored.
        ks: The ``k`` to report.

    Returns:
        ``{k: accuracy in [0, 1]}`` over the labelled images.

    Raises:
        ValueError: Shapes that do not fit, labels outside ``[0, C)`` other than ``-1``, no labelled
            image, or a ``k`` below 1.
    """
    _check_ks(ks, "zero_shot_accuracy")
    if image_features.dim() != 2 or class_weights.dim() != 2 or image_features.shape[1] != class_weights.shape[1]:
        raise ValueError(f"zero_shot_accuracy: expected [N, d] image features and [C, d] class weights, got "
                         f"{tuple(image_features.shape)} and {tuple(class_weights.shape)}")
    if class_weights.shape[0] == 0:
        raise ValueError("zero_shot_accuracy: there are no class weights")
    if labels.shape != (image_features.shape[0],):
        raise ValueError(f"zero_shot_accuracy: expected {image_features.shape[0]} labels, got shape "
                         f"{tuple(labels.shape)}")
    n_classes = class_weights.shape[0]
    labels = labels.to(device=image_features.device, dtype=torch.long)
    bad = (labels < -1) | (labels >= n_classes)
    if bad.any():
        raise ValueError(f"zero_shot_accuracy: labels must lie in [0, {n_classes}) or be -1 (unlabelled), "
                         f"found {int(labels[bad][0])}")
    keep = labels >= 0
    if not keep.any():
        raise ValueError("zero_shot_accuracy: no labelled image to score (every label is -1)")
    images = F.normalize(image_features[keep].float(), dim=1)
    weights = F.normalize(class_weights.float().to(images.device), dim=1)
    ranks = _ranks(images @ weights.T, labels[keep])
    # Counted in integers and divided in Python, so that 13/30 is the float nearest 13/30.
    return {k: int((ranks < k).sum()) / len(ranks) for k in ks}


def retrieval_recall(
    image_features: Tensor,
    text_features: Tensor,
    image_of_text: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Image→text and text→image recall@k by cosine similarity (COCO / Flickr30k protocol [2]).

    Image→text: an image is a hit at ``k`` when its best-ranked text is among the ``k`` most similar
    texts. Text→image: a text is a hit at ``k`` when its image is among the ``k`` most similar images.
    Equally similar candidates rank by index, the lower first, so the result is deterministic; a ``k``
    larger than the number of candidates behaves as that number. Queries are scored ``chunk`` at a
    time, so memory is ``O(chunk * max(N, M))``.

    Args:
        image_features: ``[N, d]`` image embeddings (need not be normalised).
        text_features: ``[M, d]`` text embeddings.
        image_of_text: ``[M]`` integer index of the image each text describes; default (``None``):
            ``M == N`` and text ``j`` describes image ``j``.
        ks: The ``k`` to report.
        chunk: Queries scored at once.

    Returns:
        ``{"image_to_text_r@k": recall, "text_to_image_r@k": recall}`` for each ``k``, in ``[0, 1]``.

    Raises:
        ValueError: Shapes that do not fit, no image or text, pairings outside ``[0, N)``, an image
            without any text (the message names them), or ``k`` or ``chunk`` below 1.
    """
    _check_ks(ks, "retrieval_recall")
    if chunk < 1:
        raise ValueError(f"retrieval_recall: chunk must be >= 1, got {chunk}")
    if image_features.dim() != 2 or text_features.dim() != 2 or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"retrieval_recall: expected [N, d] image and [M, d] text features, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    n_images, n_texts = image_features.shape[0], text_features.shape[0]
    if n_images == 0 or n_texts == 0:
        raise ValueError(f"retrieval_recall: needs at least one image and one text, got {n_images} and {n_texts}")
    device = image_features.device
    if image_of_text is None:
        if n_texts != n_images:
            raise ValueError(f"retrieval_recall: without image_of_text there must be one text per image, got "
                             f"{n_images} images and {n_texts} texts")
        image_of_text = torch.arange(n_images, device=device)
    if image_of_text.shape != (n_texts,) or image_of_text.is_floating_point() or image_of_text.dtype == torch.bool:
        raise ValueError(f"retrieval_recall: image_of_text must be an integer tensor of shape [{n_texts}], got "
                         f"{image_of_text.dtype} of shape {tuple(image_of_text.shape)}")
    owner = image_of_text.to(device=device, dtype=torch.long)
    low, high = int(owner.min()), int(owner.max())
    if low < 0 or high >= n_images:
        raise ValueError(f"retrieval_recall: image_of_text must lie in [0, {n_images}), found [{low}, {high}]")
    orphans = (torch.bincount(owner, minlength=n_images) == 0).nonzero()[:, 0].tolist()
    if orphans:
        shown = ", ".join(map(str, orphans[:10])) + (", ..." if len(orphans) > 10 else "")
        raise ValueError(f"retrieval_recall: {len(orphans)} image(s) have no text: {shown}")

    images = F.normalize(image_features.float(), dim=1)
    texts = F.normalize(text_features.float().to(device), dim=1)
    text_index = torch.arange(n_texts, device=device)
    i2t = []  # rank of each image's best-ranked text
    for start in range(0, n_images, chunk):
        sims = images[start:start + chunk] @ texts.T  # [b, M]
        rows = torch.arange(start, start + sims.shape[0], device=device)
        own = owner[None, :] == rows[:, None]
        # The best-ranked own text: the most similar one, the lowest index among equals.
        best = sims.masked_fill(~own, float("-inf")).amax(dim=1, keepdim=True)
        first = torch.where(own & (sims == best), text_index[None, :], n_texts).amin(dim=1)
        i2t.append(_ranks(sims, first))
    t2i = [_ranks(texts[start:start + chunk] @ images.T, owner[start:start + chunk])
           for start in range(0, n_texts, chunk)]
    i2t_ranks, t2i_ranks = torch.cat(i2t), torch.cat(t2i)
    result = {f"image_to_text_r@{k}": int((i2t_ranks < k).sum()) / n_images for k in ks}
    result.update({f"text_to_image_r@{k}": int((t2i_ranks < k).sum()) / n_texts for k in ks})
    return result
