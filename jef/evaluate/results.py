"""The value every offline evaluation protocol returns (apart from :mod:`jef.evaluate.protocols`, which runs them,
so that the protocols of the text encoder in :mod:`jef.evaluate.multimodal` can return it without a cycle)."""

from __future__ import annotations

import attrs

__all__ = ["Result", "baseline_table"]


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


#: The rows of :func:`baseline_table`: metric suffix and label.
_ROWS = (("", "trained backbone"), ("_random", "random-init backbone"), ("_pixels", "raw pixels"))
#: Its columns: metric and heading.
_COLUMNS = (("knn_top1", "kNN top-1"), ("linear_top1", "linear top-1"))


def baseline_table(metrics: dict[str, float]) -> list[str]:
    """The trained backbone against the ``eval.baselines`` (random init, raw pixels), for kNN and the linear probe.

    Returns:
        The table's lines (none when ``metrics`` holds no kNN or linear-probe accuracy); a row appears when it has
        a value, a missing value is shown as ``-``.
    """
    columns = [(key, heading) for key, heading in _COLUMNS if any(key + suffix in metrics for suffix, _ in _ROWS)]
    rows = [(label, [metrics.get(key + suffix) for key, _ in columns]) for suffix, label in _ROWS]
    rows = [(label, values) for label, values in rows if any(value is not None for value in values)]
    if not columns or not rows:
        return []
    width = max(len(label) for label, _ in rows)
    lines = [f"  {'':<{width}}" + "".join(f"  {heading:>12}" for _, heading in columns)]
    for label, values in rows:
        lines.append(f"  {label:<{width}}" + "".join(f"  {'-' if value is None else f'{value:.4f}':>12}"
                                                   for value in values))
    return lines
