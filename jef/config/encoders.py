"""The pipeline's ``encoders:`` key: named encoders beside the online branch (ARCHITECTURE §8).

Most methods run every view through one backbone. CLIP and SigLIP encode a second field of each sample (its
caption) with a second network, and CMC encodes a second group of views (the ab channels) with one; the pipeline
names such an encoder, and a ``tower`` target (``target: {name: tower, encoder: text}``) makes it the target
branch::

    encoders:
      text:
        field: text                       # a field of each sample, tokenized when a tokenizer is given
        tokenizer: {name: words}
        backbone: {name: text_transformer}
        projector: {name: mlp, dims: [128], batch_norm: false}

An encoder reads either a ``field`` of the samples (its values are strings turned into token ids by the
``tokenizer`` in the DataLoader's workers, or tensors the backbone takes as they are) or ``views``, the
positions of the augmenter's views it encodes; the online branch sees the views no encoder claims. The checks
that need the data or the augmenter (the field exists, the view positions exist) run when the model is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from jef.config.validate import ConfigError, describe, join

__all__ = ["ENCODER_KEYS", "Encoder", "parse_encoders"]

#: The keys of one encoder.
ENCODER_KEYS = ("field", "views", "tokenizer", "backbone", "projector")
#: Fields every sample has that no encoder may read: they are the batch's bookkeeping, not its inputs.
RESERVED_FIELDS = ("label", "index")


@attrs.frozen
class Encoder:
    """One named encoder of a pipeline.

    Attributes:
        name: Its name, the key under ``encoders:`` (what a ``tower`` target names).
        field: The sample field it encodes, or None when it encodes views.
        views: The positions of the augmenter's views it encodes, or None when it encodes a field.
        backbone: Its backbone slot.
        projector: Its projector slot, or None (``z = h``).
        tokenizer: Its tokenizer slot (a text field), or None.
    """

    name: str
    field: str | None
    views: tuple[int, ...] | None
    backbone: Any
    projector: Any | None = None
    tokenizer: Any | None = None

    def plain(self) -> dict[str, Any]:
        """The encoder as it would be written in YAML."""
        data: dict[str, Any] = {"field": self.field} if self.field is not None else {"views": list(self.views or ())}
        if self.tokenizer is not None:
            data["tokenizer"] = self.tokenizer.plain()
        data["backbone"] = self.backbone.plain()
        data["projector"] = self.projector.plain() if self.projector is not None else None
        return data

    def slots(self) -> list[tuple[str, Any]]:
        """Its components with their YAML paths."""
        path = join("encoders", self.name)
        named = (("tokenizer", self.tokenizer), ("backbone", self.backbone), ("projector", self.projector))
        return [(join(path, key), slot) for key, slot in named if slot is not None]


def parse_encoders(data: Any, make_slot: Callable[[str, Any, str], Any]) -> dict[str, Encoder]:
    """Validate the ``encoders:`` mapping.

    Args:
        data: The mapping under ``encoders:`` (None or empty: no encoder).
        make_slot: ``make_slot(kind, value, path)`` validates one component slot (the pipeline's slot parser).

    Raises:
        ConfigError: A malformed encoder; the message names its YAML path.
    """
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of named encoders such as {{text: {{field: text, backbone: ...}}}}, "
                          f"got {describe(data)}", path="encoders")
    encoders = {}
    for name, spec in data.items():
        path = join("encoders", name)
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"an encoder's name must be a word such as 'text', got {describe(name)}", path=path)
        if not isinstance(spec, Mapping):
            raise ConfigError(f"expected a mapping with `field` or `views`, and `backbone`, got {describe(spec)}",
                              path=path)
        for key in spec:
            if key not in ENCODER_KEYS:
                raise ConfigError(f"unknown key {describe(key)} (valid keys: {', '.join(ENCODER_KEYS)})",
                                  path=join(path, key))
        field, views = _source(spec, path)
        if spec.get("backbone") is None:
            raise ConfigError("an encoder needs a backbone, e.g. {name: text_transformer}", path=join(path, "backbone"))
        tokenizer = spec.get("tokenizer")
        if tokenizer is not None and field is None:
            raise ConfigError("a tokenizer turns a text field into token ids; this encoder reads views, so drop "
                              "the tokenizer or set `field:` instead of `views:`", path=join(path, "tokenizer"))
        encoders[name] = Encoder(
            name=name, field=field, views=views,
            backbone=make_slot("backbone", spec["backbone"], join(path, "backbone")),
            projector=None if spec.get("projector") is None else make_slot("head", spec["projector"],
                                                                         join(path, "projector")),
            tokenizer=None if tokenizer is None else make_slot("tokenizer", tokenizer, join(path, "tokenizer")))
    return encoders


def _source(spec: Mapping[str, Any], path: str) -> tuple[str | None, tuple[int, ...] | None]:
    """The encoder's ``field`` or ``views``: exactly one of them."""
    field, views = spec.get("field"), spec.get("views")
    if (field is None) == (views is None):
        raise ConfigError("set exactly one of `field` (a field of each sample, e.g. text) and `views` (positions "
                          "of the augmenter's views, e.g. [1])", path=path)
    if field is not None:
        if not isinstance(field, str) or not field:
            raise ConfigError(f"expected the name of a sample field, e.g. text, got {describe(field)}",
                              path=join(path, "field"))
        if field in RESERVED_FIELDS:
            raise ConfigError(f"{field!r} is bookkeeping, not an input an encoder may read; name another field, "
                              f"e.g. text", path=join(path, "field"))
        return field, None
    if (not isinstance(views, list) or not views
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in views)):
        raise ConfigError(f"expected a non-empty list of view positions (integers from 0), e.g. [1], got "
                          f"{describe(views)}", path=join(path, "views"))
    if len(set(views)) != len(views):
        raise ConfigError(f"view positions repeat in {views}", path=join(path, "views"))
    return None, tuple(views)
