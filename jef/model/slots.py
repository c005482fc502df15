"""Calling a pipeline slot's factory, and measuring a head's width: shared by the model's builders."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jef.components import RunContext
from jef.config.pipeline import Pipeline, Slot
from jef.registry import BuildError

__all__ = ["head_width", "make_component"]


def make_component(slot: Slot, ctx: RunContext, pipeline: Pipeline, path: str) -> Any:
    """Call a slot's factory; if it fails, name the pipeline file, the slot's YAML ``path``, the component and its
    plugin."""
    try:
        return slot.entry.factory(slot.options, ctx)
    except Exception as error:
        where = ": ".join(part for part in (pipeline.source, path) if part)
        raise BuildError(f"{where}: building {slot.kind} {slot.name!r} from plugin "
                         f"{slot.entry.provenance} failed: {type(error).__name__}: {error}") from error


def head_width(slot: Slot, head: nn.Module, in_dim: int) -> int:
    """A head's output width: its ``out_dim``, or (for a head that does not declare one) a dry forward of 2 rows."""
    declared = getattr(head, "out_dim", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    training = head.training
    try:
        with torch.no_grad():
            out = head.eval()(torch.zeros(2, in_dim))
    except Exception as error:
        raise BuildError(f"{slot.kind} {slot.name!r} from plugin {slot.entry.provenance} declares no out_dim, and "
                         f"measuring it on a [2, {in_dim}] input failed: {type(error).__name__}: {error}") from error
    finally:
        head.train(training)
    return int(out.shape[-1])
