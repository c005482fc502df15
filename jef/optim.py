"""Optimisers and learning-rate schedules used by the training loop."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from jef.options import OptimizerOptions, ScheduleOptions


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling.

    Each parameter's update is scaled by the trust ratio ``η·‖w‖ / ‖∇w + λw‖``
    (You et al., LARS, 2017, arXiv:1708.03888), as SimCLR and BYOL train with it.
    Parameter groups with ``lars_exclude=True`` (norms and biases) take plain
    SGD steps without weight decay or adaptation.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "eps": eps, "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(update)
                    # A zero norm (fresh zero-initialised layer) would give a zero or infinite ratio: use 1.
                    trust = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["trust_coefficient"] * param_norm / (update_norm + group["eps"]),
                                        torch.ones_like(param_norm))
                    update = update * trust
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, options: OptimizerOptions) -> list[dict]:
    """Trainable parameters split into decayed weights and undecayed norms/biases (1-D tensors)."""
    decayed, plain = [], []
    for param in model.parameters():
        if param.requires_grad:
            (plain if options.exclude_norm_and_bias and param.ndim <= 1 else decayed).append(param)
    groups = [{"params": decayed, "weight_decay": options.weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def scaled_lr(options: OptimizerOptions, global_batch_size: int) -> float:
    """The base rate scaled for the global batch (Goyal et al., 2017, arXiv:1706.02677)."""
    ratio = global_batch_size / 256
    return options.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[options.scale_lr]


def build_optimizer(model: nn.Module, options: OptimizerOptions, global_batch_size: int) -> torch.optim.Optimizer:
    """The optimiser named in ``train.optimizer``."""
    groups = parameter_groups(model, options)
    lr = scaled_lr(options, global_batch_size)
    if options.name == "lars":
        return LARS(groups, lr=lr, momentum=options.momentum, trust_coefficient=options.trust_coefficient)
    if options.name == "adamw":
        for group in groups:
            group.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, betas=options.betas)
    for group in groups:
        group.pop("lars_exclude", None)
    return torch.optim.SGD(groups, lr=lr, momentum=options.momentum)


def warmup_cosine(options: ScheduleOptions, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak rate at each step: linear warm-up, then cosine (or constant)."""
    warmup = int(round(options.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if options.name == "constant":
            return 1.0
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return options.final_lr_ratio + (1 - options.final_lr_ratio) * cosine

    return factor
