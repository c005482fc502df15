"""MoCo v3's contrastive term: in-batch negatives from the *other* view's keys only.

MoCo v3 [1] drops the queue and, for queries ``q1, q2`` (online, through the
predictor) and keys ``k1, k2`` (momentum encoder), minimises
``2τ · (ctr(q1, k2) + ctr(q2, k1))`` where ``ctr(q, k)`` is the cross-entropy
of picking ``k_i`` for ``q_i`` among all keys ``k_j`` of the global batch::

    ctr(q, k) = mean_i [ −cos(q_i, k_i)/τ + log Σ_j exp(cos(q_i, k_j)/τ) ]

jef's ``info_nce`` functional does not give this denominator: its candidates
are the keys of *every* global view (for ``q1``: ``k1`` of the other samples
as well as all of ``k2``), as NT-Xent needs. ``moco_v3_info_nce`` takes, for
each ordered pair of views ``(a, b)``, only the keys of view ``b``, gathered
over processes (with gradients, for a ``shared`` target). With the
``scaled_cosine`` energy at the same temperature, both weighted ``4τ``, the
objective is exactly MoCo v3's loss (jef averages the pairs, the paper sums
two ``ctr`` terms times ``2τ``).

References:
    [1] Chen, Xie, He. An Empirical Study of Training Self-Supervised Vision
        Transformers (MoCo v3). ICCV 2021. arXiv:2104.02057.
"""

from __future__ import annotations

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef import dist
from jef.components import RunContext, StepOutputs
from jef.functional import info_nce_denominator

__all__ = ["MocoV3InfoNCE", "MocoV3InfoNCEOptions", "build_moco_v3_info_nce"]


@attrs.frozen(kw_only=True)
class MocoV3InfoNCEOptions:
    """Options of the ``moco_v3_info_nce`` functional."""

    temperature: float = attrs.field(
        default=1.0, validator=v.gt(0.0),
        metadata={"doc": "τ (1.0 for ResNet, 0.2 for ViT in MoCo v3); equal to the scaled_cosine energy's"},
    )


class MocoV3InfoNCE(nn.Module):
    """``mean_(a,b) mean_i log Σ_j exp(cos(q_a^i, k_b^j)/τ)``, ``j`` over view ``b``'s global batch.

    ``q_a = out.online.out[a]`` (every view), ``k_b = out.target.z[b]`` (every
    global view ``b ≠ a``), the same pairs as the energy term. The positive
    ``k_b^i`` is one of the candidates, so with the energy this is a softmax
    cross-entropy.

    Args:
        temperature: ``τ > 0``.
    """

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, out: StepOutputs) -> Tensor:
        """The scalar denominator term for one step."""
        queries, keys = out.online.out, out.target.z
        pairs = [(a, b) for a in range(len(queries)) for b in range(len(keys)) if a != b]
        if not pairs:
            raise ValueError(f"moco_v3_info_nce: no (query, key) view pairs among {len(queries)} online and "
                             f"{len(keys)} target views; the augmenter must make at least 2 views")
        gathered = [dist.gather(k) for k in keys]  # the global batch of each key view, rank-major
        values = [info_nce_denominator(queries[a], gathered[b], self.temperature) for a, b in pairs]
        return torch.stack(values).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def build_moco_v3_info_nce(options: MocoV3InfoNCEOptions, ctx: RunContext) -> MocoV3InfoNCE:
    """The ``moco_v3_info_nce`` functional."""
    return MocoV3InfoNCE(options.temperature)
