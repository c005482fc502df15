"""The default training step: augment, run both branches, evaluate the objective."""

from __future__ import annotations

from typing import Any

import attrs

from jef.components import StepResult
from jef.data.fields import as_fields, extra_fields
from jef.hookspecs import hookimpl


@hookimpl(trylast=True)
def jef_train_step(run: Any, batch: Any) -> StepResult:
    """Views of the batch on the training device, then the model's :class:`~jef.components.StepResult`.

    ``trylast``: a plugin the pipeline selected that implements ``jef_train_step`` runs first and, by
    returning a result, replaces this one.
    """
    fields = as_fields(batch)  # an (image, label, index) tuple, or a mapping of named fields (image-text data)
    views = run.augmenter(fields["image"], generator=run.generator)
    # A masker draws from the same generator, after the views: W processes draw what one draws.
    result = run.model(views, fields["index"], mask_generator=run.generator, fields=extra_fields(fields) or None,
                       facts=getattr(views, "facts", None))
    # Labels join the outputs only after the objective, for monitors (online probes).
    return result._replace(outputs=attrs.evolve(result.outputs, labels=fields["label"]))
