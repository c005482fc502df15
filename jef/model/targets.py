"""Target makers: how the target branch ``t`` is made from the online network (the ``target`` registry kind).

A target object is built by its factory from the pipeline's ``target:`` slot and attached to the model
once; it then makes the target branch of every step from the views and the online branch:

* :class:`SharedTarget` -- the online branch itself (SimCLR, VICReg): gradients flow through both sides;
* :class:`StopGradTarget` -- the online outputs detached (SimSiam);
* :class:`EmaTarget` -- a momentum copy of the backbone (and projector) that gradients never reach, moved
  after every optimiser step by its own ``jef_step_end`` run hook (BYOL, MoCo, DINO).

Targets come only from the global views ``[0, n_global)``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from jef.components import Branch, StepOutputs, Target, Tokens
from jef.hookspecs import hookimpl
from jef.model.shuffle_bn import shuffled_encode

__all__ = ["EmaTarget", "SharedTarget", "StopGradTarget", "Target"]


class SharedTarget:
    """The online branch itself: no copy, gradients flow through both sides of every pair."""

    projected = True
    shuffle_bn = False

    def attach(self, model: nn.Module) -> None:
        """Nothing to attach."""

    def embed(self, model: nn.Module, views: list[Tensor], online: Branch) -> Branch:
        g = model.n_global
        return Branch(h=online.h[:g], z=online.z[:g])

    def tokens(self, model: nn.Module, views: list[Tensor], blocks: tuple[int, ...]) -> list[Tokens]:
        """The online backbone's tokens of the whole (unmasked) views, with ``blocks``' outputs (masked path)."""
        return [model.backbone.forward_tokens(view, blocks=blocks) for view in views]


class StopGradTarget(SharedTarget):
    """The online outputs, detached (Chen & He, SimSiam, 2021, arXiv:2011.10566)."""

    def embed(self, model: nn.Module, views: list[Tensor], online: Branch) -> Branch:
        g = model.n_global
        return Branch(h=[x.detach() for x in online.h[:g]], z=[x.detach() for x in online.z[:g]])

    def tokens(self, model: nn.Module, views: list[Tensor], blocks: tuple[int, ...]) -> list[Tokens]:
        """As the shared target's, without gradients."""
        with torch.no_grad():
            return super().tokens(model, views, blocks)


class EmaTarget:
    """A momentum copy of the online network, and the run hook that moves it after every optimiser step.

    ϑ ← mϑ + (1−m)θ with m on a cosine schedule from ``momentum`` to ``final_momentum`` (Grill et al., BYOL,
    2020, arXiv:2006.07733), with ``torch._foreach_*`` ops: one kernel per group, not one per parameter. The
    copies live on the model (``target_backbone``, ``target_projector``) so that they are checkpointed,
    moved by ``.to()`` and prepared by Accelerate with it; this object only holds the schedule.

    Args:
        options: ``momentum``, ``final_momentum``, ``schedule`` (``constant`` | ``cosine``), ``projector``
            (the target has its own projector copy) and ``shuffle_bn`` (MoCo's shuffling BN for the keys).
        total_steps: The run's optimiser steps (the cosine schedule's length).
    """

    def __init__(self, options: Any, total_steps: int) -> None:
        self.options, self.total_steps = options, max(total_steps, 1)
        self.projected = bool(options.projector)
        self.shuffle_bn = bool(options.shuffle_bn)
        self.model: nn.Module | None = None

    def attach(self, model: nn.Module) -> None:
        """Give the model its frozen copies (``target_backbone`` and, with ``projector``, ``target_projector``)."""
        self.model = model
        model.target_backbone = _frozen_copy(model.backbone)
        model.target_projector = _frozen_copy(model.projector) if self.projected else None

    def embed(self, model: nn.Module, views: list[Tensor], online: Branch) -> Branch:
        global_views = views[:model.n_global]
        if self.shuffle_bn:
            return shuffled_encode(global_views, model.target_backbone, model.target_projector)
        with torch.no_grad():
            return model.encode(global_views, model.target_backbone, model.target_projector)

    def tokens(self, model: nn.Module, views: list[Tensor], blocks: tuple[int, ...]) -> list[Tokens]:
        """The momentum backbone's tokens of the whole views, with ``blocks``' outputs (masked path: data2vec's
        teacher, I-JEPA's target encoder)."""
        with torch.no_grad():
            return [model.target_backbone.forward_tokens(view, blocks=blocks) for view in views]

    def momentum(self, step: int) -> float:
        """m after ``step`` optimiser steps."""
        start, end = self.options.momentum, self.options.final_momentum
        if self.options.schedule == "constant":
            return start
        return end - (end - start) * (math.cos(math.pi * min(step, self.total_steps) / self.total_steps) + 1) / 2

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """One EMA step for every target parameter; buffers (BN statistics) are copied."""
        model = self.model
        if model is None:
            raise RuntimeError("EmaTarget.update: the target is not attached to a model (call attach(model))")
        pairs = [(model.backbone, model.target_backbone)]
        if model.target_projector is not None:
            pairs.append((model.projector, model.target_projector))
        for online, target in pairs:
            t_params = list(target.parameters())
            o_params = [p.detach() for p in online.parameters()]
            torch._foreach_mul_(t_params, momentum)
            torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)
            t_buffers, o_buffers = list(target.buffers()), list(online.buffers())
            if t_buffers:
                torch._foreach_copy_(t_buffers, o_buffers)

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        momentum = self.momentum(run.step)
        self.update(momentum)
        run.log({"target/momentum": momentum})


def _frozen_copy(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied
