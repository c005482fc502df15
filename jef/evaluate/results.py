"""The value every offline evaluation protocol returns (apart from :mod:`jef.evaluate.protocols`, which runs them,
so that the protocols of the text encoder in :mod:`jef.evaluate.multimodal` can return it without a cycle)."""

from __future__ import annotations

import attrs

__all__ = ["Result"]


@attrs.frozen
class Result:
    """One offline evaluation number.

    Attributes:
        key: ``knn_top1``, ``knn_top5``, ``linear_top1``, ``linear_top5``, ``finetune_top1``, ``finetune_top5``,
            ``zero_shot_top1``, ``zero_shot_top5``, ``image_to_text_r@k`` or ``text_to_image_r@k``.
        value: Accuracy (or recall) in ``[0, 1]`` on the test split.
        protocol: What was measured, in words: the protocol and every setting, the data and their sizes.
    """

    key: str
    value: float
    protocol: str
