"""The default training step: augment, run both branches, evaluate the objective."""

from __future__ import annotations

from typing import Any

import attrs

from jef.hookspecs import hookimpl


@hookimpl(trylast=True)
def jef_train_step(run: Any, batch: Any) -> dict[str, Any]:
    """Views of the batch on the training device, then ``(loss, terms, outputs)`` from the model.

    ``trylast``: any plugin implementing ``jef_train_step`` runs first and, by
    returning a result, replaces this one.
    """
    images, labels, indices = batch
    views = run.augmenter(images, generator=run.generator)
    loss, terms, outputs = run.model(views, indices)
    # Labels join the outputs only after the objective, for monitors (online probes).
    return {"loss": loss, "terms": terms, "outputs": attrs.evolve(outputs, labels=labels)}
