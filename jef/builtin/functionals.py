"""Built-in functionals: batch-level loss terms over the whole :class:`~jef.components.StepOutputs`.

``info_nce`` is the log-sum-exp (denominator) part of InfoNCE / NT-Xent
(:func:`jef.functional.info_nce_denominator`, whose module
:mod:`jef.functional.contrastive` holds the paper references) over the
*global* batch: with the ``scaled_cosine`` energy at the same temperature and
a shared target it is exactly SimCLR's loss.
"""

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef import dist
from jef.components import RunContext, StepOutputs
from jef.functional import info_nce_denominator
from jef.hookspecs import Register, hookimpl

__all__ = ["InfoNCEDenominator", "InfoNCEOptions", "build_info_nce", "jef_register_functionals"]


@attrs.frozen(kw_only=True)
class InfoNCEOptions:
    """Options of the ``info_nce`` functional."""

    temperature: float = attrs.field(
        default=0.1, validator=v.gt(0.0),
        metadata={"doc": "τ in exp(cos/τ); set it equal to the scaled_cosine energy's temperature for NT-Xent"},
    )


class InfoNCEDenominator(nn.Module):
    """Mean over anchors of ``log Σ_{k ≠ self} exp(cos(p_a^i, t_k)/τ)`` over the global batch.

    Anchors are every online view's output ``out.online.out[a]`` (the local
    ``N`` samples of each view). Candidates are every target view's ``z``
    gathered from all processes with :func:`jef.dist.gather` (which carries
    gradients back to the process that produced them), concatenated view by
    view: candidate ``b * W*N + r*N + j`` is view ``b`` of sample ``j`` of
    rank ``r``. Anchor ``(a, i)`` on rank ``r`` leaves out its own entry
    ``a * W*N + r*N + i`` when view ``a`` has a target (a global view); local
    views keep all candidates. The result is the mean over this process's
    anchors, so averaging it over processes (what DDP does to gradients)
    gives the single-process value on the global batch.

    Args:
        temperature: ``τ > 0``.
    """

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, out: StepOutputs) -> Tensor:
        """The scalar denominator term for one step."""
        anchors, targets = out.online.out, out.target.z
        if not anchors or not targets:
            raise ValueError(f"info_nce: needs online and target views, got {len(anchors)} online "
                             f"and {len(targets)} target views")
        n = anchors[0].shape[0]
        for name, views in (("online output", anchors), ("target z", targets)):
            sizes = [t.shape[0] for t in views]
            if any(size != n for size in sizes):
                raise ValueError(f"info_nce: every view must hold the same N samples, got {name} sizes "
                                 f"{sizes} (online view 0 has {n})")
        gathered = [dist.gather(t) for t in targets]
        global_n = gathered[0].shape[0]
        candidates = torch.cat(gathered, dim=0)
        first = dist.rank() * n  # row of this rank's sample 0 within one gathered view
        values = [
            info_nce_denominator(
                view, candidates, self.temperature, reduction="none",
                self_mask_offset=a * global_n + first if a < len(targets) else None,
            )
            for a, view in enumerate(anchors)
        ]
        return torch.cat(values).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def build_info_nce(options: InfoNCEOptions, ctx: RunContext) -> InfoNCEDenominator:
    """The ``info_nce`` functional."""
    return InfoNCEDenominator(options.temperature)


@hookimpl
def jef_register_functionals(register: Register) -> None:
    """Register ``info_nce``."""
    register("info_nce", build_info_nce, options=InfoNCEOptions,
             description="InfoNCE log-sum-exp over the gathered global batch, own entry excluded "
                         "(NT-Xent with the scaled_cosine energy)",
             paper="van den Oord et al., CPC/InfoNCE, arXiv:1807.03748; Chen et al., SimCLR, arXiv:2002.05709")
