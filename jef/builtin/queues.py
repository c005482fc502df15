"""Built-in functionals with a FIFO queue of past target embeddings (MoCo-style negatives).

``queue_info_nce`` is the log-sum-exp (denominator) of MoCo's InfoNCE over
each query's positive key and ``K`` queued keys
(:func:`jef.functional.queue_info_nce_denominator`, whose module
:mod:`jef.functional.queue` holds the paper references). With the
``scaled_cosine`` energy at the same temperature and an ``ema`` target it is
exactly MoCo's loss, averaged over the ordered pairs of global views (the
symmetrised loss; MoCo v1/v2 used one order, equal in expectation).

The queue lives in buffers of the module, which sits inside the model's
objective: it moves with ``.to()``, is saved in checkpoints and restored on
resume, and DDP keeps it equal on every process. The module is also a run
plugin (``jef_step_end``): after each optimiser step it enqueues the step's
keys, gathered from every process.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef import dist
from jef.components import RunContext, StepOutputs
from jef.config.options import size_limit
from jef.functional._checks import normalize
from jef.functional.queue import enqueue, queue_info_nce_denominator, random_unit_queue
from jef.hookspecs import Register, hookimpl

__all__ = ["QueueInfoNCE", "QueueInfoNCEOptions", "build_queue_info_nce", "jef_register_functionals"]

#: Width of the queue when neither the option nor the pipeline gives one.
DEFAULT_DIM = 128


@attrs.frozen(kw_only=True)
class QueueInfoNCEOptions:
    """Options of the ``queue_info_nce`` functional."""

    temperature: float = attrs.field(
        default=0.2, validator=v.gt(0.0),
        metadata={"doc": "τ (0.07 MoCo v1, 0.2 v2); set it equal to the scaled_cosine energy's temperature"},
    )
    size: int = attrs.field(
        default=4096, validator=[v.ge(1), size_limit],
        metadata={"doc": "K, queued negatives (65536 in MoCo on ImageNet; 4096 suits CIFAR-sized data)"},
    )
    dim: int | None = attrs.field(
        default=None, validator=v.optional([v.ge(1), size_limit]),
        metadata={"doc": f"width of the keys; null: the projector's output width ({DEFAULT_DIM} if unknown)"},
    )


class QueueInfoNCE(nn.Module):
    """``mean_(a,b) mean_i log( exp(cos(q_a^i, k_b^i)/τ) + Σ_k exp(cos(q_a^i, n_k)/τ) )``.

    ``q_a = out.online.out[a]`` for every view ``a``, ``k_b = out.target.z[b]``
    for every global view ``b ≠ a`` (the pairs of the energy term), and
    ``n_k`` the queued keys. Only the local samples are needed: the positive
    is the sample's own key and the queue is the same on every process, so the
    loss needs no gather (the enqueue does).

    Buffers (all in the checkpoint):
        queue: ``[K, dim]`` ℓ2-normalised keys, random unit vectors at first as in MoCo.
        pointer: Row of the oldest entry, the next one to overwrite.
        filled: How many real keys have been enqueued, capped at ``K``.

    Args:
        temperature: ``τ > 0``.
        size: ``K``.
        dim: Width of the keys.
        seed: Seed of the initial random queue (equal on every process).
    """

    def __init__(self, temperature: float, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        self.temperature = float(temperature)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", random_unit_queue(size, dim, generator))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def _check_width(self, width: int) -> None:
        if width != self.queue.shape[1]:
            raise ValueError(f"queue_info_nce: the queue holds {self.queue.shape[1]}-dimensional keys but the "
                             f"embeddings are {width}-dimensional; set the functional's `dim` option to {width} "
                             "(or leave it null to take the projector's width)")

    def forward(self, out: StepOutputs) -> Tensor:
        """The scalar denominator term for one step, averaged over view pairs and samples."""
        queries, keys = out.online.out, out.target.z
        pairs = [(a, b) for a in range(len(queries)) for b in range(len(keys)) if a != b]
        if not pairs:
            raise ValueError(f"queue_info_nce: no (query, key) view pairs among {len(queries)} online and "
                             f"{len(keys)} target views; the augmenter must make at least 2 views")
        self._check_width(queries[0].shape[-1])
        values = [queue_info_nce_denominator(queries[a], keys[b], self.queue, self.temperature) for a, b in pairs]
        return torch.stack(values).mean()

    @torch.no_grad()
    def push(self, keys: list[Tensor]) -> None:
        """Enqueue the keys of every global view, gathered from all processes.

        Order: view 0's keys of rank 0, rank 1, …, then view 1's, and so on;
        within a rank, the batch order. Keys are detached and ℓ2-normalised.
        """
        if not keys:
            return
        self._check_width(keys[0].shape[-1])
        gathered = torch.cat([normalize(dist.gather(k.detach())) for k in keys])
        # The pointer and fill level stay on the device: reading them would stall the step on the GPU.
        self.pointer.copy_(enqueue(self.queue, self.pointer, gathered))
        self.filled.add_(gathered.shape[0]).clamp_(max=self.queue.shape[0])

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        if outputs is None:
            raise RuntimeError("queue_info_nce: jef_step_end received no step outputs, so there are no keys to "
                               "enqueue; a plugin replacing jef_train_step must return 'outputs'")
        # Only the key branch is enqueued: the target's z (the EMA encoder's keys), never the queries.
        self.push(list(outputs.target.z))
        run.log({"queue/filled": self.filled})  # read when the metrics line is written

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, size={self.queue.shape[0]}, dim={self.queue.shape[1]}"


def build_queue_info_nce(options: QueueInfoNCEOptions, ctx: RunContext) -> QueueInfoNCE:
    """The ``queue_info_nce`` functional; the key width comes from ``dim`` or else ``ctx.in_dim``."""
    dim = options.dim or ctx.in_dim or DEFAULT_DIM
    return QueueInfoNCE(options.temperature, options.size, dim, seed=ctx.seed)


@hookimpl
def jef_register_functionals(register: Register) -> None:
    """Register ``queue_info_nce``."""
    register("queue_info_nce", build_queue_info_nce, options=QueueInfoNCEOptions,
             description="MoCo's InfoNCE log-sum-exp over the positive key and a FIFO queue of past keys "
                         "(with the scaled_cosine energy and an ema target: MoCo v1/v2)",
             paper="He et al., MoCo, arXiv:1911.05722; Chen et al., MoCo v2, arXiv:2003.04297")
