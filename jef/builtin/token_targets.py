"""Built-in target makers of masked pipelines (functionals with ``targets``): ``token_targets``, ``patch_pixels``.

They fill ``StepOutputs.masked.targets``, row for row with the token head's predictions, and add no term of
their own; the energy D compares the two (:mod:`jef.model.masked`). The maths is in :mod:`jef.functional.tokens`.
"""

from __future__ import annotations

from typing import Literal

import attrs
from attrs import validators as v
from torch import Tensor, nn

from jef.components import RunContext, StepOutputs
from jef.functional.tokens import block_average, normalize_tokens, patch_pixels
from jef.hookspecs import Register, hookimpl

__all__ = ["PatchPixels", "PatchPixelsOptions", "TokenTargets", "TokenTargetsOptions"]

Norm = Literal["instance", "layer", "none"]


@attrs.frozen(kw_only=True)
class TokenTargetsOptions:
    """Targets from the target encoder's tokens of the whole view (data2vec: blocks 6; I-JEPA: blocks 0)."""

    blocks: int = attrs.field(default=0, validator=v.ge(0), metadata={"doc": (
        "average the outputs of the top `blocks` blocks (data2vec: 6); 0: the encoder's final output (I-JEPA)")})
    each_norm: Norm = attrs.field(default="instance", metadata={"doc": (
        "parameter-free norm of each block output before the average (data2vec: instance)")})
    norm: Norm = attrs.field(default="layer", metadata={"doc": (
        "parameter-free norm of the target tokens (data2vec, I-JEPA: layer)")})


def _require_masked(name: str, out: StepOutputs) -> None:
    if out.masked is None:
        raise ValueError(f"the {name} functional makes targets for masked predictions, but the step has no masks; "
                         f"add a masker (masker: {{name: block}}) or remove {name}")


def _with_targets(out: StepOutputs, targets: list[list[Tensor]]) -> StepOutputs:
    return attrs.evolve(out, masked=attrs.evolve(out.masked, targets=targets))


class TokenTargets(nn.Module):
    """The target encoder's patch tokens at the predicted positions, from its top blocks or its output.

    ``blocks = K > 0``: data2vec's target (:func:`jef.functional.block_average` of the top K block outputs, CLS
    left out); ``blocks = 0``: the final patch tokens normalised by ``norm`` (I-JEPA's layer-normed targets).
    """

    #: Only a masked pipeline has what it reads (checked when the pipeline is built).
    needs_masks = True

    def __init__(self, options: TokenTargetsOptions) -> None:
        super().__init__()
        self.options = options
        #: The blocks the model's masked path asks the target encoder for.
        self.target_blocks = tuple(range(-options.blocks, 0))

    def extra_repr(self) -> str:
        o = self.options
        return f"blocks={o.blocks}, each_norm={o.each_norm}, norm={o.norm}"

    def targets(self, out: StepOutputs) -> StepOutputs:
        """``out`` with ``masked.targets``: one ``[R_k, d]`` per predicted set of each view."""
        _require_masked("token_targets", out)
        made = []
        for tokens, masks in zip(out.masked.target, out.masked.masks, strict=True):
            patches = masks.hidden.shape[1]
            if self.target_blocks:  # block outputs hold the CLS token (if any) first, then the patches
                y = block_average([tokens.blocks[i][:, -patches:] for i in self.target_blocks],
                                  self.options.each_norm, self.options.norm)
            else:
                y = normalize_tokens(tokens.patches, self.options.norm)
            made.append([y[positions] for positions in masks.predict])
        return _with_targets(out, made)

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        """No term of its own."""
        return {}


@attrs.frozen(kw_only=True)
class PatchPixelsOptions:
    """Pixel targets (MAE)."""

    normalize: bool = attrs.field(default=True, metadata={"doc": (
        "normalise each patch's pixels by their mean and std (MAE's norm_pix_loss)")})


class PatchPixels(nn.Module):
    """The pixels of the predicted patches of each view (:func:`jef.functional.patch_pixels`): MAE's targets."""

    needs_masks = True

    def __init__(self, options: PatchPixelsOptions, patch_size: int | None) -> None:
        super().__init__()
        self.options, self.patch_size = options, patch_size

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, normalize={self.options.normalize}"

    def targets(self, out: StepOutputs) -> StepOutputs:
        """``out`` with ``masked.targets``: ``[R_k, p·p·C]`` per predicted set of each view."""
        _require_masked("patch_pixels", out)
        made = []
        for view, masks in zip(out.masked.views, out.masked.masks, strict=True):
            pixels = patch_pixels(view, self.patch_size, self.options.normalize)
            made.append([pixels[positions] for positions in masks.predict])
        return _with_targets(out, made)

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        """No term of its own."""
        return {}


def build_token_targets(options: TokenTargetsOptions, ctx: RunContext) -> TokenTargets:
    """The ``token_targets`` target maker."""
    return TokenTargets(options)


def build_patch_pixels(options: PatchPixelsOptions, ctx: RunContext) -> PatchPixels:
    """The ``patch_pixels`` target maker, on the backbone's patches.

    Without a token backbone (``ctx.patch_size`` None) the pipeline has no masker either (a masker needs the
    patches), and the build refuses a masked target maker without one, naming the YAML path.
    """
    return PatchPixels(options, ctx.patch_size)


@hookimpl
def jef_register_functionals(register: Register) -> None:
    """Register ``token_targets`` and ``patch_pixels``."""
    register("token_targets", build_token_targets, options=TokenTargetsOptions,
             description="targets of masked predictions: the target encoder's tokens, its top blocks averaged "
                         "and normalised (data2vec) or its output layer-normed (I-JEPA); no term",
             paper="Baevski et al., data2vec, arXiv:2202.03555; Assran et al., I-JEPA, arXiv:2301.08243")
    register("patch_pixels", build_patch_pixels, options=PatchPixelsOptions,
             description="targets of masked predictions: the patches' pixels, normalised per patch (MAE); no term",
             paper="He et al., MAE, arXiv:2111.06377")
