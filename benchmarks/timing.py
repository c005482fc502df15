"""Timing pieces the step benchmarks share: the bare backbone step, timed blocks, interleaved repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def bare_backbone_step(backbone: Callable[[torch.Tensor], torch.Tensor], views: Sequence[torch.Tensor],
                       parameters: Any, device: torch.device, autocast: Any) -> torch.Tensor:
    """The backbone's own work: one call per view resolution, as jef makes them, the mean of the outputs as the
    loss (the forward under ``autocast``, a context manager, as the other side's), ``backward`` and ``zero_grad``."""
    total = torch.zeros((), device=device)
    with autocast:
        for shape in dict.fromkeys(v.shape[-2:] for v in views):
            batch = torch.cat([v for v in views if v.shape[-2:] == shape])
            total = total + backbone(batch).float().mean()
    total.backward()
    parameters.zero_grad(set_to_none=True)
    return total.detach()


def timed_block(step: Callable[[], Any], steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` calls of ``step``, the device synchronised at both ends."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - started) / steps


def interleaved(first: Callable[[], Any], second: Callable[[], Any], *, repeats: int, steps: int,
                device: torch.device) -> tuple[float, float, float, float]:
    """Blocks of the two steps in turn (which goes first alternates); the medians of each and the range of the
    per-repeat ratios first / second."""
    a, b = [], []
    for repeat in range(repeats):
        pair = [(a, first), (b, second)]
        for times, step in pair if repeat % 2 == 0 else pair[::-1]:
            times.append(timed_block(step, steps, device))
    ratios = sorted(x / y for x, y in zip(a, b, strict=True))
    return statistics.median(a), statistics.median(b), ratios[0], ratios[-1]


def build_with_views(pipeline: Any, *, batch: int, device: str = "cpu", precision: str = "no",
                     run_dir: Any = None, augment_on: str = "cpu") -> tuple[Any, list[torch.Tensor]]:
    """Build a resolved pipeline with jef (seed 0, schedules long enough never to end) and make one batch's views
    from its training split, with the augmenter on ``augment_on``: what the step benchmarks train on.

    Returns:
        jef's built pipeline (``jef.model.build.Built``) and the views, contiguous, on the augmenter's device.
    """
    from jef.components import RunContext
    from jef.model.build import build, build_data

    ctx = RunContext(seed=0, device=device, world_size=1, rank=0, batch_size=batch, global_batch_size=batch,
                     epochs=pipeline.train.epochs, precision=precision, run_dir=run_dir, steps_per_epoch=1,
                     total_steps=10 ** 7)
    splits = build_data(pipeline, ctx)
    torch.manual_seed(0)
    built = build(pipeline, ctx, splits)
    images = torch.stack([splits.train[i][0] for i in range(batch)]).to(augment_on)
    views = built.augmenter.to(augment_on)(images, generator=torch.Generator().manual_seed(0))
    return built, [view.contiguous() for view in views]


def jef_model_step(bench: Any, forward: Callable[..., Any], autocast: Any) -> torch.Tensor:
    """One training step of a built jef model as jef's loop runs it, without Accelerate or the hook machinery.

    ``forward(views)`` (forward and loss, under ``autocast``), ``backward``, the components' ``jef_after_backward``,
    clipping where the recipe clips, the optimiser and scheduler steps, ``zero_grad``, the components'
    ``jef_step_end`` (EMA teachers, centring). ``bench`` holds ``views``, ``model``, ``optimizer``, ``scheduler``,
    ``clip``, ``run`` (what the hooks read) and the components in ``after_backward`` and ``step_end``.
    """
    with autocast:
        loss, terms, outputs = forward(bench.views)
    loss.backward()
    for component in bench.after_backward:  # SwAV's prototype freeze, DINO's frozen last layer
        component.jef_after_backward(run=bench.run)
    if bench.clip:
        torch.nn.utils.clip_grad_norm_(bench.model.parameters(), bench.clip)
    bench.optimizer.step()
    bench.scheduler.step()
    bench.optimizer.zero_grad(set_to_none=True)
    bench.run.step += 1
    for component in bench.step_end:
        component.jef_step_end(run=bench.run, outputs=outputs, terms={})
    return loss.detach()
