"""The ``sinkhorn`` functional: SwAV's prototypes and the Sinkhorn codes that are its targets.

SwAV scores every view's ℓ2-normalised embedding against ``K`` learned
prototypes ``c_k`` (unit vectors), turns the scores of each global view into
soft *codes* ``q`` with a few Sinkhorn–Knopp iterations (an equipartition of
the batch over the prototypes, :func:`jef.functional.sinkhorn_knopp`), and
asks every other view to predict those codes::

    ℓ(z_a, q_b) = − Σ_k q_b,k · log softmax(c_kᵀ z_a / τ)

In jef's terms this module is the functional that *makes the targets*: its
``targets(out)`` replaces the online outputs by the prototype scores and the
target embeddings by the codes, and the ``cross_entropy`` energy (τ = 0.1)
compares them over every ordered pair (any view, a different global view),
which is the paper's loss averaged over crops. ``forward`` adds no term.

State (all in the model's ``state_dict``, so checkpointed and restored):

* ``prototypes.weight`` ``[K, d]``: rows renormalised after every optimiser
  step, and left untouched (no gradient) for the first
  ``freeze_prototypes_steps`` steps, as in the paper.
* ``queue`` ``[n_global, L, d]`` and ``queue_filled``: with ``queue_length > 0``,
  one queue per global view of past ℓ2-normalised target embeddings, filled
  from epoch ``queue_start_epoch`` and used (scored with the current
  prototypes, stacked before the batch) only once full.

Several processes: DDP copies module buffers from rank 0 at every forward,
so a per-process queue would be overwritten. The queue is therefore the same
on every process: each enqueues the target embeddings gathered from all of
them, and process ``r`` of ``W`` scores rows ``r::W``. Together the processes
use the queue one process would hold for the global batch, and since the
Sinkhorn sums are all-reduced, the codes equal that process's.

The paper references are those of :func:`jef.functional.sinkhorn_knopp`
(SwAV and Sinkhorn-Knopp), the maths this module wraps.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor, nn

from jef import dist, hookimpl
from jef.components import RunContext, StepOutputs
from jef.functional import l2_normalize, sinkhorn_knopp

__all__ = ["SinkhornAssignment", "SinkhornOptions", "build_sinkhorn"]


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


#: The most prototypes or queued embeddings (2^24): more is a typo, whose weights would not fit torch's storage.
MAX_SIZE = 2**24


@attrs.frozen(kw_only=True)
class SinkhornOptions:
    """Options of the ``sinkhorn`` functional (defaults: SwAV's ImageNet settings)."""

    n_prototypes: int = attrs.field(default=3000, validator=[v.ge(2), v.le(MAX_SIZE)],
                                    metadata=_doc("K, learned prototypes (3000 in SwAV on ImageNet)"))
    epsilon: float = attrs.field(default=0.05, validator=v.gt(0.0),
                                 metadata=_doc("ε, entropic regularisation of the codes; smaller is sharper"))
    iterations: int = attrs.field(default=3, validator=v.ge(1),
                                  metadata=_doc("Sinkhorn-Knopp normalisation rounds (3 in SwAV)"))
    freeze_prototypes_steps: int = attrs.field(
        default=313, validator=v.ge(0),
        metadata=_doc("the prototypes get no update during this many first optimiser steps (SwAV: one "
                      "ImageNet epoch, 313 steps at batch 4096, 5005 at 256)"))
    queue_length: int = attrs.field(
        default=0, validator=[v.ge(0), v.le(MAX_SIZE)],
        metadata=_doc("past embeddings per global view stacked before the batch for the codes; 0: no queue; "
                      "a multiple of the global batch size (SwAV at batch 256: 3840)"))
    queue_start_epoch: int = attrs.field(default=15, validator=v.ge(0),
                                         metadata=_doc("epoch (0-based) from which the queue is filled"))


class SinkhornAssignment(nn.Module):
    """SwAV's prototypes and codes: makes the targets of the ``cross_entropy`` energy.

    Args:
        dim: Width ``d`` of the embeddings (the projector's output).
        n_prototypes: ``K``.
        epsilon: ``ε > 0``.
        iterations: Sinkhorn–Knopp rounds.
        freeze_prototypes_steps: Optimiser steps during which the prototypes get no update.
        queue_length: Queued embeddings per global view (0: no queue).
        queue_start_epoch: First epoch that fills the queue.
        n_global: Global views (one queue each).
    """

    def __init__(self, dim: int, n_prototypes: int = 3000, epsilon: float = 0.05, iterations: int = 3, *,
                 freeze_prototypes_steps: int = 0, queue_length: int = 0, queue_start_epoch: int = 0,
                 n_global: int = 2) -> None:
        super().__init__()
        self.epsilon, self.iterations = float(epsilon), int(iterations)
        self.freeze_prototypes_steps, self.queue_start_epoch = int(freeze_prototypes_steps), int(queue_start_epoch)
        self.prototypes = nn.Linear(dim, n_prototypes, bias=False)
        self.normalize_prototypes()
        self.queue: Tensor | None
        if queue_length:
            self.register_buffer("queue", torch.zeros(n_global, queue_length, dim))
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        else:
            self.queue = None
        # Set by the run hooks; the epoch itself is checkpointed by the training loop.
        self.epoch = 0
        # A host copy of queue_filled, so that no step reads the buffer back from the device (a sync); None:
        # read it once (after a checkpoint was loaded into the buffer).
        self._filled: int | None = 0

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Put every prototype back on the unit sphere (the scores are then cosines)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    @property
    def filled(self) -> int:
        """How many embeddings each view's queue holds (``queue_filled``, read from the device at most once)."""
        if self.queue is None:
            return 0
        if self._filled is None:
            self._filled = int(self.queue_filled)
        return self._filled

    @property
    def queue_in_use(self) -> bool:
        """True once the queue is full: SwAV never stacks a partly empty queue before the batch."""
        return self.queue is not None and self.filled >= self.queue.shape[1]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._filled = None  # the buffer may hold another value now

    def targets(self, out: StepOutputs) -> StepOutputs:
        """Online outputs → prototype scores (every view); target embeddings → codes (global views).

        The codes carry no gradient; each view's scores do (to the embeddings and the prototypes).
        """
        views = out.online.out
        width = self.prototypes.in_features
        for name, tensors in (("online output", views), ("target embedding", out.target.z)):
            for i, x in enumerate(tensors):
                if x.dim() != 2 or x.shape[1] != width:
                    raise ValueError(f"sinkhorn: {name} {i} has shape {list(x.shape)}, but the prototypes take "
                                     f"[N, {width}] embeddings (the projector's width); a predictor, if any, must "
                                     f"keep that width")
        scores = [self.prototypes(l2_normalize(x)) for x in views]
        with torch.no_grad():
            use_queue = self.queue_in_use
            if self.queue is not None and len(out.target.z) != self.queue.shape[0]:
                raise ValueError(f"sinkhorn: the queue holds {self.queue.shape[0]} global views but "
                                 f"{len(out.target.z)} came in; build it with ctx.n_global of the augmenter")
            codes = []
            for b, t in enumerate(out.target.z):
                # A shared target is the online tensor itself: reuse its scores instead of scoring it again.
                batch = scores[b].detach() if b < len(views) and t is views[b] else self.prototypes(l2_normalize(t))
                if use_queue:
                    stored = self.queue[b, dist.rank()::dist.world_size()]
                    batch = torch.cat([self.prototypes(stored).to(batch.dtype), batch])
                q = sinkhorn_knopp(batch, self.epsilon, self.iterations,
                                   reduce_sum=dist.all_reduce_sum, reduce_max=dist.all_reduce_max)
                codes.append(q[-t.shape[0]:])  # the queue only shapes the equipartition; keep this batch's codes
            # After the codes, as SwAV does: this batch never sits in the queue that assigns it.
            if self.training and self.queue is not None and self.epoch >= self.queue_start_epoch:
                self._enqueue([t.detach() for t in out.target.z])
        return attrs.evolve(out, online=attrs.evolve(out.online, p=scores),
                            target=attrs.evolve(out.target, z=codes), assignments=codes)

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        """No term of its own: the ``cross_entropy`` energy over the made targets is SwAV's loss."""
        return {}

    @torch.no_grad()
    def _enqueue(self, embeddings: list[Tensor]) -> None:
        """Put the global batch's normalised embeddings first in each view's queue (the oldest fall off)."""
        assert self.queue is not None
        new = torch.stack([dist.gather(l2_normalize(e).to(self.queue.dtype)) for e in embeddings])  # rank-major rows
        length, n = self.queue.shape[1], new.shape[1]
        if length % n:
            raise ValueError(f"sinkhorn: queue_length {length} is not a multiple of the global batch of "
                             f"{n} embeddings; the queue must hold whole batches")
        self.queue.copy_(torch.cat([new, self.queue[:, :length - n]], dim=1))
        self._filled = min(self.filled + n, length)
        self.queue_filled.fill_(self._filled)

    # -- run hooks (jef registers the module as a plugin for the run) ------------------------

    @hookimpl
    def jef_run_start(self, run: Any) -> None:
        """Take the epoch from the run (a resumed run restores it before this hook)."""
        self.epoch = run.epoch

    @hookimpl
    def jef_after_backward(self, run: Any) -> None:
        """Drop the prototypes' gradient during the first ``freeze_prototypes_steps`` steps.

        SwAV freezes them while the codes are still nearly random; ``grad = None`` makes every
        optimiser skip them, weight decay and momentum included.
        """
        if run.step < self.freeze_prototypes_steps:
            self.prototypes.weight.grad = None

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        """Renormalise the prototypes after a step that moved them; log the queue's fill level."""
        # run.step counts the step just done; while frozen nothing moved them, and renormalising unit rows
        # could still flip their last bits.
        if run.step > self.freeze_prototypes_steps:
            self.normalize_prototypes()
        if self.queue is not None:
            run.log({"sinkhorn/queue_filled": self.filled, "sinkhorn/queue_in_use": int(self.queue_in_use)})

    @hookimpl
    def jef_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        """The next epoch starts (the queue may start filling)."""
        self.epoch = epoch + 1

    def extra_repr(self) -> str:
        queue = f", queue_length={self.queue.shape[1]}" if self.queue is not None else ""
        return (f"n_prototypes={self.prototypes.out_features}, epsilon={self.epsilon}, iterations={self.iterations}, "
                f"freeze_prototypes_steps={self.freeze_prototypes_steps}{queue}")


def build_sinkhorn(options: SinkhornOptions, ctx: RunContext) -> SinkhornAssignment:
    """The ``sinkhorn`` functional; the prototypes take ``ctx.in_dim``-wide embeddings.

    Raises:
        ValueError: The embedding width is unknown, or ``queue_length`` is not a multiple of the global batch.
    """
    if ctx.in_dim is None:
        raise ValueError("sinkhorn: the width of the embeddings (ctx.in_dim) is unknown; build it as part of a "
                         "pipeline, or pass a RunContext with in_dim set")
    length, batch = options.queue_length, ctx.global_batch_size
    if length % batch:
        low, high = length // batch * batch, (length // batch + 1) * batch
        raise ValueError(
            f"sinkhorn: queue_length {length} is not a multiple of the global batch size {batch} "
            f"(train.batch_size {ctx.batch_size} x {ctx.world_size} process(es)); the queue holds whole batches: "
            f"set queue_length to {f'{low} or ' if low else ''}{high}, or 0 for no queue")
    return SinkhornAssignment(ctx.in_dim, options.n_prototypes, options.epsilon, options.iterations,
                              freeze_prototypes_steps=options.freeze_prototypes_steps, queue_length=length,
                              queue_start_epoch=options.queue_start_epoch, n_global=ctx.n_global)
