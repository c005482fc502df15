"""The model's masked path: a pipeline with a masker (ARCHITECTURE §8, ``docs/masks.md``).

For each view ``v`` with masks ``m`` (drawn by the masker for the global batch)::

    online tokens   = backbone.forward_tokens(v, mask=m.hidden, mask_mode=m.mode)
    predictions[k]  = predictor.predict_tokens(online tokens, m)[k]     rows at m.predict[k]
    target tokens   = target.tokens(model, [v], blocks)                 the whole view, if a target maker asks
    targets[k]      = made by a functional's ``targets`` (the teacher's top blocks, its final tokens, pixels)
    L_D = mean over (v, k) of  Σ_rows D(predictions[k], targets[k]) / (m.counts[k] / world_size)

The energy's sum over rows divided by the global batch's count per process is the global batch's mean once the
processes' gradients are averaged, even when samples predict different numbers of patches (block masks).
Nothing here knows a method: data2vec, I-JEPA and MAE differ by masker, token head and target maker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from jef.components import Branch, MaskedOutputs, Masks, StepOutputs, Tokens
from jef.config.validate import ConfigError

__all__ = ["check_masked", "check_patches", "check_unmasked", "masked_energy", "masked_outputs", "target_blocks"]


def target_blocks(functionals: Sequence[nn.Module]) -> tuple[int, ...] | None:
    """The target encoder's blocks the target makers read (their ``target_blocks``), or None if none reads tokens."""
    wanted: set[int] | None = None
    for functional in functionals:
        blocks = getattr(functional, "target_blocks", None)
        if blocks is not None:
            wanted = (wanted or set()) | set(blocks)
    return None if wanted is None else tuple(sorted(wanted))


def pooled(backbone: nn.Module, tokens: Tokens) -> Tensor:
    """``h`` of a token set as the backbone pools: its CLS token, or the mean of the (kept) patch tokens."""
    if getattr(backbone, "pool", "cls") == "cls" and tokens.cls is not None:
        return tokens.cls
    return tokens.patches.mean(dim=1)


def masked_outputs(model: nn.Module, views: list[Tensor], masks: list[Masks], indices: Tensor | None) -> StepOutputs:
    """The outputs of a masked step (see the module docstring); ``h`` of each branch is its pooled tokens."""
    if len(masks) != len(views):
        raise ValueError(f"masked step: {len(masks)} masks for {len(views)} views; draw one per view")
    online = [model.backbone.forward_tokens(v, mask=m.hidden, mask_mode=m.mode) for v, m in zip(views, masks,
                                                                                                 strict=True)]
    predictions = [list(model.predictor.predict_tokens(t, m)) for t, m in zip(online, masks, strict=True)]
    for v, (rows, m) in enumerate(zip(predictions, masks, strict=True)):
        if len(rows) != len(m.predict):
            raise ValueError(f"the token head {type(model.predictor).__name__} returned {len(rows)} prediction(s) "
                             f"for view {v}, whose masks have {len(m.predict)} predicted set(s)")
    blocks = target_blocks(model.objective.functionals)
    target = model.target.tokens(model, views, blocks) if blocks is not None else None
    h = [pooled(model.backbone, t) for t in online]
    target_h = [pooled(model.backbone, t) for t in target] if target is not None else [x.detach() for x in h]
    return StepOutputs(online=Branch(h=h, z=h), target=Branch(h=target_h, z=target_h), n_global=len(views),
                       indices=indices, masked=MaskedOutputs(views=views, masks=masks, online=online,
                                                             predictions=predictions, target=target))


def masked_energy(energy: nn.Module, masked: MaskedOutputs) -> Tensor:
    """The energy term of a masked step: per predicted set, the sum over its rows over the global batch's count."""
    if masked.targets is None:
        raise ValueError("the masked predictions have no targets: add a functional that makes them (a target "
                         "maker such as token_targets or patch_pixels) under `functionals:`")
    terms = []
    for predictions, targets, masks in zip(masked.predictions, masked.targets, masked.masks, strict=True):
        for k, (a, b) in enumerate(zip(predictions, targets, strict=True)):
            if a.shape[0] != b.shape[0]:
                raise ValueError(f"predicted set {k}: {a.shape[0]} prediction rows but {b.shape[0]} target rows; a "
                                 f"token head and a target maker must both follow the masks' predicted positions")
            terms.append(energy(a, b).sum() * (masks.world_size / max(masks.counts[k], 1)))
    return torch.stack(terms).mean()


def check_patches(pipeline: Any, patch_size: int | None) -> None:
    """A masker masks patches: the backbone must make them (checked before anything that reads ``patch_size``)."""
    if patch_size is None:
        raise ConfigError(f"masker {pipeline.masker.name!r} masks patch tokens, but backbone "
                          f"{pipeline.backbone.name!r} makes none (it has no patch_size); use a token backbone "
                          f"such as `vit`, or remove the masker", path="masker", source=pipeline.source)


def check_unmasked(pipeline: Any, projector: nn.Module | None, predictor: nn.Module | None,
                   functionals: Sequence[Any]) -> None:
    """Without a masker, no part that only works on masks: a token-only head, a masked target maker."""
    for path, head in (("projector", projector), ("predictor", predictor)):
        if getattr(head, "token_only", False):
            raise ConfigError(f"{getattr(pipeline, path).name!r} is a token head: it predicts at masked patches, "
                              f"and the pipeline has no masker; add one (masker: {{name: random}}) or choose "
                              f"another {path}", path=path, source=pipeline.source)
    for i, term in enumerate(functionals):
        if getattr(term.module, "needs_masks", False):
            raise ConfigError(f"{term.name!r} makes the targets of masked predictions, and the pipeline has no "
                              f"masker; add one (masker: {{name: block}}) or remove it", path=f"functionals.{i}",
                              source=pipeline.source)


def check_masked(pipeline: Any, backbone: nn.Module, masker: nn.Module, predictor: nn.Module | None,
                 target: Any, functionals: Sequence[Any]) -> None:
    """The parts of a masked pipeline fit: a token backbone, a token head, a target that makes tokens."""
    source = pipeline.source
    if not callable(getattr(backbone, "forward_tokens", None)):
        raise ConfigError(f"masker {pipeline.masker.name!r} needs a backbone that makes tokens "
                          f"(forward_tokens), and {pipeline.backbone.name!r} does not; use `vit`",
                          path="backbone", source=source)
    if getattr(masker, "mode", None) == "replace" and getattr(backbone, "mask_token", None) is None:
        raise ConfigError("the masker replaces masked patches by a learned mask token, but the backbone has "
                          "none; set backbone.mask_token: true", path="backbone.mask_token", source=source)
    if pipeline.projector is not None:
        raise ConfigError("a masked pipeline has no projector: its token head is the predictor; set "
                          "projector: null", path="projector", source=source)
    if predictor is None or not callable(getattr(predictor, "predict_tokens", None)):
        name = f" {pipeline.predictor.name!r}" if pipeline.predictor is not None else ""
        raise ConfigError(f"a masked pipeline's predictor must be a token head (predict_tokens), and the "
                          f"predictor{name} is not; use e.g. token_linear", path="predictor", source=source)
    modules = [term.module for term in functionals]
    if target_blocks(modules) is not None and not callable(getattr(target, "tokens", None)):
        raise ConfigError(f"a target maker reads the target encoder's tokens, but target {pipeline.target.name!r} "
                          f"cannot make them (no tokens method)", path="target", source=source)
    if not any(callable(getattr(m, "targets", None)) for m in modules):
        raise ConfigError("a masked pipeline needs a functional that makes the targets of its predictions "
                          "(token_targets, or a method's own)", path="functionals", source=source)
