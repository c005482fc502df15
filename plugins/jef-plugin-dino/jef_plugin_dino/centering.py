"""DINO's teacher targets, the ``centering`` functional: centre, sharpen, then update the centre.

DINO [1] trains the student to match the teacher's distribution over ``K``
outputs. What keeps the two from collapsing is done to the teacher's logits
``t`` only (Sec. 3.1, Eq. 4 and Algorithm 1)::

    P_t = softmax((t − c) / τ_t)                   centring (c) and sharpening (τ_t < τ_s)
    c  ← m·c + (1 − m) · mean over the batch of t  after the targets are made

Centring alone would drive every output towards the uniform distribution and
sharpening alone towards one dimension; together they balance. The mean runs
over the global views, the samples and every process, so each process ends
with the same centre. The teacher temperature ramps linearly over the first
``warmup_teacher_temperature_epochs`` epochs, one value per epoch, as in the
paper's code (``linspace(warmup, final, W)`` indexed by the epoch).

In jef's terms this module *makes the targets* (``targets(out)``): it
replaces the teacher's logits ``out.target.z`` with ``P_t`` and sets
``out.assignments`` (so the collapse monitor reports the teacher's entropy).
The energy ``cross_entropy`` with temperature ``τ_s`` then compares
``softmax(s_a / τ_s)`` with ``P_t`` of every global view ``b ≠ a``, averaged
over the pairs: exactly DINO's loss. ``forward`` adds no term of its own.

The epoch comes from the run hooks: ``jef_run_start`` reads ``run.epoch``
(also right after a resume) and ``jef_epoch_end`` moves to the next epoch.
Outside a run the module stays at epoch 0; set ``epoch`` to choose another.

References:
    [1] Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin. Emerging
        Properties in Self-Supervised Vision Transformers (DINO). ICCV 2021.
        arXiv:2104.14294.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef import dist, hookimpl
from jef.components import RunContext, StepOutputs

__all__ = ["Centering", "CenteringOptions", "build_centering", "teacher_temperature"]


@attrs.frozen(kw_only=True)
class CenteringOptions:
    """Options of the ``centering`` functional."""

    center_momentum: float = attrs.field(
        default=0.9, validator=[v.ge(0.0), v.lt(1.0)],
        metadata={"doc": "m in c ← m·c + (1 − m)·batch mean of the teacher's logits"},
    )
    teacher_temperature: float = attrs.field(
        default=0.04, validator=v.gt(0.0),
        metadata={"doc": "τ_t after the warm-up (0.04; the paper's README suggests 0.07 for longer runs)"},
    )
    warmup_teacher_temperature: float = attrs.field(
        default=0.04, validator=v.gt(0.0), metadata={"doc": "τ_t at epoch 0 of the warm-up"},
    )
    warmup_teacher_temperature_epochs: int = attrs.field(
        default=0, validator=v.ge(0),
        metadata={"doc": "epochs of the linear τ_t warm-up (0: none; the paper's README suggests 30)"},
    )


def teacher_temperature(epoch: int, final: float, warmup: float, warmup_epochs: int) -> float:
    """τ_t at ``epoch``: ``W`` evenly spaced values from ``warmup`` to ``final`` for the first ``W`` epochs.

    The last warm-up epoch ``W − 1`` already uses ``final`` (``linspace``
    includes both ends); with ``W = 1`` epoch 0 uses ``warmup``.
    """
    if epoch >= warmup_epochs:
        return final
    if warmup_epochs == 1:
        return warmup
    return warmup + (final - warmup) * epoch / (warmup_epochs - 1)


class Centering(nn.Module):
    """Centred, sharpened teacher probabilities and the centre's EMA (DINO [1]).

    Args:
        dim: ``K``, the width of the teacher's logits (the projector's ``out_dim``).
        center_momentum: ``m`` in ``[0, 1)``.
        teacher_temperature: ``τ_t`` after the warm-up.
        warmup_teacher_temperature: ``τ_t`` at epoch 0.
        warmup_teacher_temperature_epochs: Length of the warm-up, in epochs.

    Buffers (in the checkpoint, moved by ``.to()``):
        center: ``[1, K]``, zeros at first as in the paper.
    """

    def __init__(self, dim: int, *, center_momentum: float = 0.9, teacher_temperature: float = 0.04,
                 warmup_teacher_temperature: float = 0.04, warmup_teacher_temperature_epochs: int = 0) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(1, dim))
        self.center_momentum = float(center_momentum)
        self.final_temperature = float(teacher_temperature)
        self.warmup_temperature = float(warmup_teacher_temperature)
        self.warmup_epochs = int(warmup_teacher_temperature_epochs)
        self.epoch = 0

    def temperature(self, epoch: int | None = None) -> float:
        """τ_t at ``epoch`` (default: the current one)."""
        return teacher_temperature(self.epoch if epoch is None else epoch, self.final_temperature,
                                   self.warmup_temperature, self.warmup_epochs)

    @torch.no_grad()
    def targets(self, out: StepOutputs) -> StepOutputs:
        """Replace the teacher's logits with ``softmax((t − c)/τ_t)``, then update the centre.

        Returns:
            ``out`` with ``target.z`` and ``assignments`` set to the teacher's
            probabilities, one ``[N, K]`` tensor per global view (no gradient).
        """
        logits = [self._checked(b, t) for b, t in enumerate(out.target.z)]
        if not logits:
            raise ValueError("centering: the step has no teacher (target) views to make targets from; "
                             "the augmenter must make at least one global view")
        with _no_autocast(logits[0]):
            tau = self.temperature()
            probs = [torch.softmax((t - self.center) / tau, dim=-1) for t in logits]
            self.update_center(logits)  # after: this step's targets use the centre of the previous steps
        return attrs.evolve(out, target=attrs.evolve(out.target, z=probs), assignments=probs)

    @torch.no_grad()
    def update_center(self, logits: list[Tensor]) -> None:
        """``c ← m·c + (1 − m)·mean(t)``, the mean over views, samples and processes.

        Sum and count travel in one all-reduce, so every process computes the
        same centre (and DDP's buffer broadcast leaves it unchanged).
        """
        stacked = torch.cat([t.detach() for t in logits]).to(self.center.dtype)
        totals = torch.cat([stacked.sum(dim=0), stacked.new_tensor([stacked.shape[0]])])
        totals = dist.all_reduce_sum(totals)
        mean = totals[:-1] / totals[-1]
        self.center.mul_(self.center_momentum).add_(mean.unsqueeze(0), alpha=1.0 - self.center_momentum)

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        """No term of its own: the ``cross_entropy`` energy compares the student with the targets made here."""
        return {}

    def _checked(self, b: int, t: Tensor) -> Tensor:
        k = self.center.shape[-1]
        if t.dim() != 2 or t.shape[-1] != k:
            raise ValueError(f"centering: teacher view {b} has shape {list(t.shape)} but the centre has K={k} "
                             "dimensions; the centre's width is the projector's out_dim when the pipeline is "
                             "built, so the teacher's projector must output [N, K]")
        # Softmax and centre in at least the centre's precision (float32), also under mixed precision.
        return t.detach().to(torch.promote_types(t.dtype, self.center.dtype))

    @hookimpl
    def jef_run_start(self, run: Any) -> None:
        """Start at the run's epoch (after a resume: the epoch it resumes in)."""
        self.epoch = run.epoch

    @hookimpl
    def jef_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        """The next steps belong to epoch ``epoch + 1``."""
        self.epoch = epoch + 1

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        """Log the teacher temperature of the step."""
        run.log({"centering/teacher_temperature": self.temperature()})

    def extra_repr(self) -> str:
        return (f"dim={self.center.shape[-1]}, center_momentum={self.center_momentum}, "
                f"teacher_temperature={self.final_temperature}, warmup_teacher_temperature="
                f"{self.warmup_temperature}, warmup_teacher_temperature_epochs={self.warmup_epochs}")


def _no_autocast(x: Tensor) -> Any:
    """Disable autocast on ``x``'s device: the softmax at τ_t = 0.04 needs float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def build_centering(options: CenteringOptions, ctx: RunContext) -> Centering:
    """The ``centering`` functional; ``K`` is ``ctx.in_dim``, the projector's output width."""
    if ctx.in_dim is None:
        raise ValueError("centering needs the width K of the teacher's logits (ctx.in_dim, the projector's "
                         "out_dim), but it is None; build it inside a pipeline or with RunContext(in_dim=K)")
    if options.warmup_teacher_temperature_epochs > ctx.epochs:
        raise ValueError(f"centering: warmup_teacher_temperature_epochs={options.warmup_teacher_temperature_epochs}"
                         f" is longer than the run's {ctx.epochs} epoch(s) (train.epochs), so the teacher "
                         "temperature would never reach teacher_temperature; shorten the warm-up")
    return Centering(ctx.in_dim, center_momentum=options.center_momentum,
                     teacher_temperature=options.teacher_temperature,
                     warmup_teacher_temperature=options.warmup_teacher_temperature,
                     warmup_teacher_temperature_epochs=options.warmup_teacher_temperature_epochs)
