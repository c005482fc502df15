"""Building the pipeline's named encoders (``encoders:``) and the checks that need the augmenter or the data.

Apart from :mod:`jef.model.build` so that the one-backbone path there stays as it was; what a tower is and does
is in :mod:`jef.model.towers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from torch import nn

from jef.components import DataSplits, RunContext
from jef.config.encoders import Encoder
from jef.config.pipeline import Pipeline
from jef.config.validate import ConfigError, join
from jef.data.fields import as_fields
from jef.model.slots import head_width, make_component
from jef.model.towers import Tower, field_texts

__all__ = ["build_towers", "online_view_positions", "view_context"]


def build_towers(pipeline: Pipeline, ctx: RunContext, augmenter: nn.Module, splits: DataSplits | None, *,
                 weights: bool, start: Callable[..., None]) -> dict[str, Tower]:
    """Every named encoder, in file order: tokenizer (fitted on the training texts), backbone, projector.

    Args:
        pipeline: The pipeline.
        ctx: The context after the augmenter (view counts, image size).
        augmenter: The built augmenter (its view count, and ``view_channels`` when its views differ in channels).
        splits: The data, or None in a dry run (fields are then not checked and tokenizers not fitted).
        weights: Load an encoder backbone's ``weights`` file.
        start: ``start(pipeline, backbone, ctx, slot)`` loads a backbone's weights.

    Raises:
        ConfigError: A view position the augmenter does not make, a field the data does not have, a text field
            without a tokenizer; the message names the YAML path.
    """
    towers: dict[str, Tower] = {}
    for name, encoder in pipeline.encoders.items():
        path = join("encoders", name)
        tokenizer = None
        if encoder.views is not None:
            tower_ctx = view_context(pipeline, ctx, augmenter, encoder.views, join(path, "views"))
        else:
            tower_ctx = ctx
            _check_field(pipeline, encoder, splits, path)
            if encoder.tokenizer is not None:
                tokenizer = make_component(encoder.tokenizer, ctx, pipeline, join(path, "tokenizer"))
                if splits is not None and callable(getattr(tokenizer, "fit", None)):
                    tokenizer.fit(field_texts(splits.train, encoder.field))
                tower_ctx = attrs.evolve(ctx, vocab_size=tokenizer.vocab_size,
                                         context_length=tokenizer.context_length)
        backbone = make_component(encoder.backbone, tower_ctx, pipeline, join(path, "backbone"))
        if weights:
            start(pipeline, backbone, ctx, encoder.backbone)
        out_dim = backbone.out_dim
        projector = None
        if encoder.projector is not None:
            projector = make_component(encoder.projector, attrs.evolve(tower_ctx, in_dim=out_dim), pipeline,
                             join(path, "projector"))
            out_dim = head_width(encoder.projector, projector, out_dim)
        towers[name] = Tower(name, backbone, projector, tokenizer, encoder.field, encoder.views, out_dim)
    return towers


def online_view_positions(pipeline: Pipeline, augmenter: nn.Module, towers: dict[str, Tower]) -> list[int]:
    """The view positions the online branch encodes: those no encoder claims.

    Raises:
        ConfigError: Two encoders claim one view, or every view is claimed.
    """
    owner: dict[int, str] = {}
    for name, tower in towers.items():
        for i in tower.views or ():
            if i in owner:
                raise ConfigError(f"view {i} is claimed by encoders {owner[i]!r} and {name!r}; each view goes to one "
                                  f"encoder", path=join("encoders", name, "views"), source=pipeline.source)
            owner[i] = name
    online = [i for i in range(augmenter.n_views) if i not in owner]
    if not online:
        raise ConfigError(f"the encoders claim all {augmenter.n_views} views and the online backbone has none; "
                          f"leave at least one view (e.g. view 0) to it", path="encoders", source=pipeline.source)
    return online


def view_context(pipeline: Pipeline, ctx: RunContext, augmenter: nn.Module, views: Sequence[int],
                 path: str) -> RunContext:
    """The context of a backbone that encodes ``views``: their channels when the augmenter's views differ in them.

    An augmenter whose views have different channels (CMC's L and ab) declares ``view_channels``, one count per
    view; a backbone's views must then agree.

    Raises:
        ConfigError: A view position out of range, or views of different channel counts.
    """
    missing = [i for i in views if i >= augmenter.n_views]
    if missing:
        raise ConfigError(f"the augmenter makes {augmenter.n_views} views (positions 0 to {augmenter.n_views - 1}); "
                          f"there is no view {missing[0]}", path=path, source=pipeline.source)
    channels = getattr(augmenter, "view_channels", None)
    if channels is None:
        return ctx
    counts = sorted({int(channels[i]) for i in views})
    if len(counts) > 1:
        raise ConfigError(f"views {list(views)} have {counts} channels, and one backbone takes one channel count; "
                          f"give views of different channels to different encoders (`encoders:`)", path=path,
                          source=pipeline.source)
    return attrs.evolve(ctx, in_channels=counts[0])


def _check_field(pipeline: Pipeline, encoder: Encoder, splits: DataSplits | None, path: str) -> None:
    """The data yields the encoder's field, and a text field has a tokenizer."""
    if splits is None:
        return
    if encoder.field not in splits.fields:
        raise ConfigError(f"data {pipeline.data.name!r} yields the fields {', '.join(splits.fields)}, not "
                          f"{encoder.field!r}; name one of them, or use image-text data (e.g. data: "
                          f"{{name: image_text}})", path=join(path, "field"), source=pipeline.source)
    if encoder.tokenizer is None and len(splits.train) and isinstance(
            as_fields(splits.train[0]).get(encoder.field), str):
        raise ConfigError(f"field {encoder.field!r} holds text; add a tokenizer to turn it into token ids, e.g. "
                          f"tokenizer: {{name: words}} (`jef list tokenizer` lists them)", path=path,
                          source=pipeline.source)
