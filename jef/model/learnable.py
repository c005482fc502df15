"""Loss functionals that own parameters (ARCHITECTURE §8): a learnable logit scale, clamped after every step.

CLIP's temperature and SigLIP's scale and bias are parameters of the objective, not of a network: a functional
that holds them as ``nn.Parameter`` is part of the model (the objective is), so the optimiser trains them (no
weight decay on a 0-d tensor with ``exclude_norm_and_bias``), checkpoints hold them and Accelerate prepares them.
What a plain parameter cannot do is stay in range; :class:`LearnableScale` clamps it in its own
``jef_step_end`` run hook, after the optimiser step (a functional is registered for the run like any
component).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from jef.hookspecs import hookimpl

__all__ = ["LearnableScale"]


class LearnableScale(nn.Module):
    """A log-scale ``t`` (the logits are multiplied by ``exp(t)``) clamped to ``t <= log max_scale``.

    Args:
        initial_scale: ``exp(t)`` at step 0 (CLIP: 1/0.07; SigLIP: 10).
        max_scale: The largest ``exp(t)`` (CLIP: 100, "to prevent scaling the logits by more than 100",
            Radford et al., 2021, arXiv:2103.00020, Sec. 2.5).
        learnable: Train ``t``; False keeps it fixed (a fixed temperature).
        log_name: The metric ``exp(t)`` is logged under.

    Raises:
        ValueError: ``initial_scale`` is not positive or above ``max_scale``.
    """

    def __init__(self, initial_scale: float, max_scale: float, learnable: bool = True,
                 log_name: str = "logit_scale") -> None:
        super().__init__()
        if not 0 < initial_scale <= max_scale:
            raise ValueError(f"the initial logit scale {initial_scale:g} must be positive and at most max_scale "
                             f"{max_scale:g}; raise max_scale or lower the initial scale")
        self.max_log, self.log_name = math.log(max_scale), log_name
        self.logit_scale = nn.Parameter(torch.tensor(math.log(initial_scale)), requires_grad=learnable)

    @torch.no_grad()
    def clamp(self) -> None:
        """``t <- min(t, log max_scale)``, in place (the optimiser keeps the same parameter)."""
        self.logit_scale.clamp_(max=self.max_log)

    @hookimpl
    def jef_step_end(self, run: Any, outputs: Any, terms: dict[str, Any]) -> None:
        """Clamp after the optimiser step, and log ``exp(t)`` (read at the next log step, no host sync here)."""
        self.clamp()
        run.log({self.log_name: self.logit_scale.detach().exp()})
