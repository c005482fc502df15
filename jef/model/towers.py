"""Named encoders beside the online branch (the pipeline's ``encoders:``) and the ``tower`` target.

A :class:`Tower` is one encoder: a backbone, an optional projector and, for a text field, the tokenizer whose
state (a fitted vocabulary) is saved with the model. It encodes either a field of the batch (``field``; text
arrives as token ids, tokenized in the DataLoader's workers by :class:`FieldCollate`) or a group of the
augmenter's views (``views``). The model runs every tower at every step and hands their branches to the
objective as ``StepOutputs.towers``; a :class:`TowerTarget` makes one of them the target branch, with its
gradients (CLIP's text tower, CMC's ab encoder): it is a separate network, not a copy of the online one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.utils.data import default_collate

from jef.components import Branch

__all__ = ["FieldCollate", "Tower", "TowerTarget", "field_collate", "field_texts"]


class Tower(nn.Module):
    """One named encoder.

    Args:
        name: The encoder's name (its key under ``encoders:``).
        backbone: Maps its input to ``[B, out_dim]``.
        projector: Maps the backbone's output to ``z``, or None (``z = h``).
        tokenizer: For a text field, the tokenizer (it holds no parameters, only state), or None.
        field: The batch field it encodes, or None.
        views: The view positions it encodes, or None.
        out_dim: The width of its ``z``.
    """

    def __init__(self, name: str, backbone: nn.Module, projector: nn.Module | None, tokenizer: nn.Module | None,
                 field: str | None, views: Sequence[int] | None, out_dim: int) -> None:
        super().__init__()
        self.name, self.field = name, field
        self.views = tuple(views) if views is not None else None
        self.backbone = backbone
        self.projector = projector if projector is not None else nn.Identity()
        self.tokenizer = tokenizer
        self.out_dim = out_dim

    def encode(self, model: nn.Module, views: list[Tensor], fields: Mapping[str, Any] | None) -> Branch:
        """Its branch: one entry for a field, one per view of its group (``model.encode``, one call per size)."""
        if self.views is not None:
            return model.encode([views[i] for i in self.views], self.backbone, self.projector)
        if not fields or self.field not in fields:
            have = ", ".join(sorted(fields or {})) or "none beyond image, label and index"
            raise ValueError(f"encoder {self.name!r} reads the batch's field {self.field!r}, which this batch does "
                             f"not have (its other fields: {have}); the data must yield it")
        inputs = fields[self.field]
        if not isinstance(inputs, Tensor):
            raise ValueError(f"encoder {self.name!r}: field {self.field!r} reached the model as "
                             f"{type(inputs).__name__}, not a tensor; give the encoder a tokenizer to turn its "
                             f"text into token ids")
        h = self.backbone(inputs)
        return Branch(h=[h], z=[self.projector(h)])


class TowerTarget:
    """The target branch is a named encoder's own output, with its gradients (``target: {name: tower}``).

    The two branches are two networks trained together, as in CLIP (image and text towers; Radford et al., 2021,
    arXiv:2103.00020) and CMC (one encoder per view; Tian et al., 2019, arXiv:1906.05849).

    Args:
        encoder: The name of the encoder under ``encoders:``.
    """

    shuffle_bn = False

    def __init__(self, encoder: str) -> None:
        self.encoder = encoder
        self.projected = True

    def attach(self, model: nn.Module) -> None:
        """Check the model has the encoder (the pipeline checked its name; a hand-built model may not)."""
        towers = getattr(model, "towers", None)
        if towers is None or self.encoder not in towers:
            raise ValueError(f"target tower: the model has no encoder {self.encoder!r} "
                             f"(encoders: {', '.join(towers or {}) or 'none'})")

    def embed(self, model: nn.Module, views: list[Tensor], online: Branch) -> Branch:
        """Without the towers' outputs there is nothing to embed with: the model calls :meth:`embed_towers`."""
        raise RuntimeError("the tower target embeds with a named encoder; the model calls embed_towers")

    def embed_towers(self, model: nn.Module, views: list[Tensor], online: Branch,
                     towers: Mapping[str, Branch]) -> Branch:
        """The named encoder's branch of this step."""
        return towers[self.encoder]


class FieldCollate:
    """The DataLoader's ``collate_fn`` for samples with named fields: text fields become token ids.

    Tokenizing here runs in the DataLoader's workers, beside image decoding, rather than on the training
    process between steps.

    Args:
        tokenizers: The tokenizer of each text field the model encodes.
    """

    def __init__(self, tokenizers: Mapping[str, nn.Module]) -> None:
        self.tokenizers = dict(tokenizers)

    def __call__(self, samples: list[Any]) -> Any:
        if not samples or not isinstance(samples[0], Mapping):
            return default_collate(samples)
        texts = {field: [sample[field] for sample in samples] for field in self.tokenizers}
        rest = [{k: v for k, v in sample.items() if k not in self.tokenizers} for sample in samples]
        batch = default_collate(rest)
        for field, tokenizer in self.tokenizers.items():
            batch[field] = tokenizer.encode(texts[field])
        return batch


def field_collate(model: nn.Module) -> FieldCollate | None:
    """The ``collate_fn`` for a model's training batches: a :class:`FieldCollate` when a tower tokenizes a field,
    else None (the DataLoader's default)."""
    towers = getattr(model, "towers", None) or {}
    tokenizers = {tower.field: tower.tokenizer for tower in towers.values() if tower.tokenizer is not None}
    return FieldCollate(tokenizers) if tokenizers else None


def field_texts(dataset: Any, field: str) -> list[str]:
    """Every sample's ``field`` of a split, to fit a tokenizer on.

    An image-text split keeps its captions as ``texts`` (no image is decoded); another split is read sample by
    sample.

    Raises:
        ValueError: A sample without the field, or whose value is not a string.
    """
    from jef.data.fields import as_fields

    if field == "text" and isinstance(getattr(dataset, "texts", None), list):
        return list(dataset.texts)
    values = []
    for i in range(len(dataset)):
        value = as_fields(dataset[i]).get(field)
        if not isinstance(value, str):
            raise ValueError(f"sample {i} of the training split has no text field {field!r} (got "
                             f"{type(value).__name__}); a tokenizer needs a string per sample")
        values.append(value)
    return values
