"""LeJEPA's two loss terms as jef functionals: ``sigreg`` and ``lejepa_prediction``.

The maths, its scale and the paper references are in :mod:`jef.functional.sigreg`; here are the run's parts:
the gathering over processes, the seeded directions and the step counter that checkpoints them.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef import dist, hookimpl
from jef.components import RunContext, StepOutputs
from jef.functional.sigreg import (
    cf_sums,
    epps_pulley_from_sums,
    epps_pulley_quadrature,
    lejepa_prediction,
    random_directions,
    sketch_seed,
)

__all__ = ["LeJEPAPrediction", "SIGReg", "SIGRegOptions", "build_prediction", "build_sigreg"]


@attrs.frozen(kw_only=True)
class SIGRegOptions:
    """Options of the ``sigreg`` functional."""

    num_slices: int = attrs.field(
        default=1024, validator=[v.instance_of(int), v.ge(1), v.le(1 << 20)],
        metadata={"doc": "M, random 1-D directions the embeddings are projected on each step (the official "
                         "README's 1024)"},
    )
    t_max: float = attrs.field(
        default=3.0, validator=[v.gt(0.0), v.le(100.0)],
        metadata={"doc": "the Epps-Pulley integral runs over t in [-t_max, t_max] (3 in the paper)"},
    )
    n_points: int = attrs.field(
        default=17, validator=[v.instance_of(int), v.ge(2), v.le(10_000)],
        metadata={"doc": "trapezoid nodes on [0, t_max], mirrored onto [-t_max, 0] (17 in the paper)"},
    )


class SIGReg(nn.Module):
    """SIGReg [1] of every view's projector output ``z``, over the global batch, averaged over views.

    Each step projects each view's ``[N, K]`` embeddings on the same ``M`` random unit directions, drawn from a
    CPU generator seeded by ``sketch_seed(seed, step)``: the run's seed and this module's step counter, equal on
    every process and on every device. The cosine and sine sums of each process (and its sample count) are
    concatenated and gathered with :func:`jef.dist.gather`, which carries the gradient back to every process's
    samples; each process then computes the statistic of the whole global batch, so ``W`` processes, with DDP's
    average of gradients, train as one process on the global batch.

    The counter ``step`` (a buffer: it is in the checkpoint, and a resumed run draws the directions an
    uninterrupted one draws) moves by one at each optimiser step's end (``jef_step_end``); all micro-batches of
    an accumulated step share its directions. Outside a run it stays where it is: call :meth:`advance`.

    Args:
        num_slices: ``M``.
        t_max: Half-width of the integration range.
        n_points: Quadrature nodes on ``[0, t_max]``.
        seed: The run's seed.
    """

    def __init__(self, num_slices: int = 1024, t_max: float = 3.0, n_points: int = 17, seed: int = 0) -> None:
        super().__init__()
        self.num_slices, self.t_max, self.n_points, self.seed = int(num_slices), float(t_max), int(n_points), int(seed)
        t, weights = epps_pulley_quadrature(self.t_max, self.n_points)
        self.register_buffer("t", t, persistent=False)  # made from the options: not state
        self.register_buffer("weights", weights, persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # A host-side copy of ``step``: reading the buffer on a GPU would stall every step.
        self._step = 0
        self.register_load_state_dict_post_hook(_sync_step)

    def directions(self, dim: int, device: torch.device | str = "cpu") -> Tensor:
        """This step's ``[dim, M]`` unit directions (the same on every process and device)."""
        generator = torch.Generator().manual_seed(sketch_seed(self.seed, self._step))
        directions = random_directions(dim, self.num_slices, generator)
        if torch.device(device).type == "cuda":  # a copy from pinned memory does not wait for the queued kernels
            return directions.pin_memory().to(device, non_blocking=True)
        return directions.to(device)

    def advance(self) -> None:
        """Move to the next step's directions."""
        self._step += 1
        self.step.fill_(self._step)

    def forward(self, out: StepOutputs) -> Tensor:
        """The mean over views and directions of the Epps–Pulley statistic of the global batch."""
        views = out.online.z
        if not views:
            raise ValueError("sigreg: the step has no views; the augmenter must make at least one")
        first = views[0]
        for i, z in enumerate(views):
            if z.dim() != 2 or z.shape != first.shape:
                raise ValueError(f"sigreg: every view's projector output must be [N, K] like view 0's "
                                 f"{list(first.shape)}, got view {i}: {list(z.shape)}")
        dtype = torch.promote_types(first.dtype, torch.float32)
        with torch.autocast(device_type=first.device.type, enabled=False):
            directions = self.directions(first.shape[1], first.device).to(dtype)
            t, weights = self.t.to(dtype), self.weights.to(dtype)
            sums = torch.stack([cf_sums(z.to(dtype) @ directions, t) for z in views])  # [V, 2, M, T]
            # One gather a step: every view's sums, then this process's sample count (no gradient).
            packed = torch.cat([sums.flatten(), sums.new_full((1,), first.shape[0])]).unsqueeze(0)
            total = dist.gather(packed, check_shapes=False).sum(dim=0)  # the same size on every process
            n, sums = total[-1].detach(), total[:-1].view_as(sums)
            return torch.stack([epps_pulley_from_sums(s, n, t, weights) for s in sums]).mean()

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        """The next step projects on new directions."""
        self.advance()

    def extra_repr(self) -> str:
        return f"num_slices={self.num_slices}, t_max={self.t_max}, n_points={self.n_points}, seed={self.seed}"


def _sync_step(module: SIGReg, incompatible_keys: Any) -> None:
    """After ``load_state_dict`` (a resumed run), the host-side counter follows the loaded buffer."""
    module._step = int(module.step)


class LeJEPAPrediction(nn.Module):
    """LeJEPA's prediction term [1]: every view's ``z`` towards the centre of the global views' (no stop-gradient).

    Per sample, so over processes DDP's average of the per-process means is the global batch's mean.
    """

    def forward(self, out: StepOutputs) -> Tensor:
        """``(1/V) Σ_v mean_{n,k} (μ − z_v)²`` over this process's samples (``jef.functional.lejepa_prediction``)."""
        if out.n_global < 1:
            raise ValueError("lejepa_prediction: the step has no global views to predict; the augmenter must "
                             "make at least one (augmenter.n_global)")
        return lejepa_prediction(out.online.z, out.n_global)


def build_sigreg(options: SIGRegOptions, ctx: RunContext) -> SIGReg:
    """The ``sigreg`` functional, seeded with the run's seed."""
    return SIGReg(options.num_slices, options.t_max, options.n_points, seed=ctx.seed)


def build_prediction(options: Any, ctx: RunContext) -> LeJEPAPrediction:
    """The ``lejepa_prediction`` functional."""
    return LeJEPAPrediction()
