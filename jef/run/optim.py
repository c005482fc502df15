"""Optimisers and learning-rate schedules used by the training loop."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from jef.config.options import FLOAT32_MAX, OptimizerOptions, ScheduleOptions
from jef.config.validate import ConfigError


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
    """Trainable parameters split into decayed weights and undecayed norms/biases (1-D tensors).

    With ``options.fixed_lr_predictor`` the predictor's parameters (``model.predictor``) get their own
    groups tagged ``fixed_lr=True``, after the others, so that group 0 (whose rate the loop logs) stays a
    scheduled group. Every group carries ``fixed_lr``; :func:`lr_lambdas` reads it. With
    ``options.final_weight_decay`` the decayed groups also carry ``initial_weight_decay`` and
    ``final_weight_decay`` (the ends of their weight-decay schedule, as torch's schedulers keep ``initial_lr``).

    Raises:
        ValueError: ``fixed_lr_predictor`` is set but the model has no predictor.
    """
    fixed: set[int] = set()
    if options.fixed_lr_predictor:
        predictor = getattr(model, "predictor", None)
        if predictor is None:
            raise ValueError("train.optimizer.fixed_lr_predictor is true but the pipeline has no predictor; "
                             "set fixed_lr_predictor: false or add a predictor")
        fixed = {id(param) for param in predictor.parameters()}
    groups = []
    for is_fixed in (False, True):
        decayed, plain = [], []
        for param in model.parameters():
            if param.requires_grad and (id(param) in fixed) == is_fixed:
                (plain if options.exclude_norm_and_bias and param.ndim <= 1 else decayed).append(param)
        if is_fixed and not (decayed or plain):
            continue
        group = {"params": decayed, "weight_decay": options.weight_decay, "fixed_lr": is_fixed}
        if options.final_weight_decay is not None:
            group.update(initial_weight_decay=options.weight_decay, final_weight_decay=options.final_weight_decay)
        groups.append(group)
        if plain:
            groups.append({"params": plain, "weight_decay": 0.0, "lars_exclude": True, "fixed_lr": is_fixed})
    return groups


def scaled_lr(options: OptimizerOptions, global_batch_size: int) -> float:
    """The base rate scaled for the global batch (Goyal et al., 2017, arXiv:1706.02677).

    Raises:
        ConfigError: The scaled rate does not fit in float32 (``train.optimizer.lr``).
    """
    ratio = global_batch_size / 256
    lr = options.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[options.scale_lr]
    if not math.isfinite(lr) or lr > FLOAT32_MAX:
        raise ConfigError(f"{options.lr:g} scaled ({options.scale_lr}) for a global batch of {global_batch_size} "
                          f"is {lr:g}, beyond the largest float32 ({FLOAT32_MAX:.4g}) torch computes the update "
                          "with; lower it (it is the rate for a batch of 256) or set scale_lr: none",
                          path="train.optimizer.lr")
    return lr


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


def weight_decay_at(start: float, end: float, step: int, total_steps: int) -> float:
    """The weight decay of optimiser step ``step`` (from 0) of ``total_steps``: a cosine from ``start`` to ``end``.

    The same cosine as the EMA target's momentum (:meth:`jef.model.targets.EmaTarget.momentum`), as DINO
    schedules both (Caron et al., 2021, arXiv:2104.14294, Sec. 4.1): ``start`` at step 0, their mean at half
    way, ``end`` from ``total_steps`` on.
    """
    total = max(total_steps, 1)
    return end - (end - start) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


def lr_lambdas(optimizer: torch.optim.Optimizer, options: ScheduleOptions, steps_per_epoch: int,
               total_steps: int) -> list[Callable[[int], float]]:
    """One ``LambdaLR`` multiplier per parameter group.

    Groups tagged ``fixed_lr`` (see :func:`parameter_groups`) keep factor 1.0 from the first step, warm-up
    included: SimSiam's official code sets the predictor's rate to the base rate at every epoch and never
    warms it up (Chen & He, 2021, arXiv:2011.10566, Sec. 4.1). The others follow :func:`warmup_cosine`.

    A group tagged with a weight-decay schedule (``final_weight_decay``, see :func:`parameter_groups`) gets a
    multiplier that also sets the group's ``weight_decay`` to :func:`weight_decay_at` of the step it is called
    with: ``LambdaLR`` calls every multiplier once per ``scheduler.step()`` (and once when it is made) with the
    number of steps taken, so the loop's one scheduler step drives both schedules, and the decay of optimiser
    step ``k`` is the schedule's value at ``k``, as its rate is. The schedule is a function of the step count
    alone and the value in use is saved with the optimiser's parameter groups, so a resumed run continues it
    exactly. Groups without the tag (norms and biases at weight decay 0) are left alone.
    """
    scheduled = warmup_cosine(options, steps_per_epoch, total_steps)
    lambdas = []
    for index, group in enumerate(optimizer.param_groups):
        factor = _constant if group.get("fixed_lr") else scheduled
        if group.get("final_weight_decay") is not None:
            factor = _decaying(optimizer, index, factor, group["initial_weight_decay"], group["final_weight_decay"],
                               total_steps)
        lambdas.append(factor)
    return lambdas


def _decaying(optimizer: torch.optim.Optimizer, index: int, factor: Callable[[int], float], start: float,
              end: float, total_steps: int) -> Callable[[int], float]:
    """``factor``, also setting parameter group ``index``'s weight decay for the step.

    A closure, not an object: ``LambdaLR.state_dict`` saves the ``__dict__`` of callable objects, and this one
    holds the optimiser. The group is looked up at each call: loading a state dict (a resume, Accelerate's
    device placement) replaces the optimiser's group dicts.
    """

    def decaying(step: int) -> float:
        optimizer.param_groups[index]["weight_decay"] = weight_decay_at(start, end, step, total_steps)
        return factor(step)

    return decaying


def _constant(step: int) -> float:
    return 1.0
