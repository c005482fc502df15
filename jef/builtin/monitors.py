"""Built-in monitors: the collapse monitor, and :func:`notice` for every monitor's one-time messages.

The probes are :mod:`jef.builtin.online_linear` and :mod:`jef.builtin.periodic_knn`.

A monitor is an object with ``@hookimpl`` run hooks; jef registers it as a
plugin only while a run that selected it is going on.
"""

import logging
import math
import warnings
from typing import Any

import attrs

from jef.components import RunContext, StepOutputs
from jef.evaluate.collapse import (
    CollapseWarning,
    alignment,
    assignment_entropy,
    class_usage,
    effective_rank,
    embedding_std,
    row_spread,
    uniformity,
)
from jef.hookspecs import Register, hookimpl

__all__ = ["CollapseMonitor", "CollapseOptions", "build_collapse", "jef_register_monitors", "notice"]

logger = logging.getLogger("jef")


def notice(run: Any, message: str) -> None:
    """Say ``message`` once, as a ``UserWarning`` and on the ``jef`` logger, from the main process only.

    Every process would say the same; the caller makes sure it is said once per run.
    """
    if getattr(getattr(run, "ctx", None), "rank", 0) == 0:
        warnings.warn(message, UserWarning, stacklevel=3)
        logger.warning(message)


@attrs.frozen(kw_only=True)
class CollapseOptions:
    """Options of the collapse monitor."""

    every: int = attrs.field(default=10, validator=attrs.validators.ge(1),
                             metadata={"doc": "check every this many optimiser steps"})
    std_threshold: float = attrs.field(
        default=0.1, validator=attrs.validators.ge(0.0),
        metadata={"doc": "warn when embedding std x sqrt(d) (1 when healthy, 0 when collapsed) is below this"},
    )
    rank_threshold: float = attrs.field(
        default=1.5, validator=attrs.validators.ge(0.0),
        metadata={"doc": "warn when the effective rank (RankMe) of the embeddings is below this"},
    )
    uniform_threshold: float = attrs.field(
        default=0.99, validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)],
        metadata={"doc": "warn when the entropy of made target distributions (SwAV codes, DINO teacher), "
                         "divided by log K, is at least this (uniform collapse)"},
    )
    target_std_threshold: float = attrs.field(
        default=0.1, validator=attrs.validators.ge(0.0),
        metadata={"doc": "masked pipelines: warn when the per-dimension std of the targets at the masked "
                         "patches (collapse/target_std) is below this (data2vec's min_target_var)"},
    )
    stop: bool = attrs.field(
        default=False,
        metadata={"doc": "stop the run (on every process, checkpoint kept) when a collapse is diagnosed, "
                         "instead of only warning"},
    )


class CollapseMonitor:
    """Watches the online projector outputs for complete and dimensional collapse.

    Every ``every`` steps it computes, on view 0 of the online branch's ``z``,
    the mean per-dimension std of the l2-normalised embeddings (SimSiam,
    arXiv:2011.10566) and their effective rank (RankMe, arXiv:2210.02885),
    logs them as ``collapse/std`` and ``collapse/rank`` (with the width d as
    ``collapse/dim``, in the logged lines only) and warns once per run
    (:class:`~jef.evaluate.collapse.CollapseWarning` and the ``jef`` logger)
    when either falls under its threshold. The std threshold is relative to the
    healthy value ``1/sqrt(d)``, so one threshold fits every projector width.
    With ``stop: true`` it also asks the run to stop after that step
    (``run.request_stop``; every process stops and the checkpoint is kept).

    With two or more views it also logs the alignment of views 0 and 1
    (``collapse/alignment``, ``E||z0 - z1||^2``) and their uniformity
    (``collapse/uniformity``, ``log E exp(-2||zi - zj||^2)``, the mean over the
    two views) of Wang & Isola, arXiv:2005.10242; both are computed on the
    l2-normalised z and are logged only (complete collapse shows as
    uniformity 0, which the std check already catches).

    When a functional made target distributions (``outputs.assignments``:
    SwAV's codes, DINO's teacher probabilities) it also logs, on the first
    global view, ``collapse/target_entropy`` (mean entropy / log K: DINO's
    teacher entropy) and ``collapse/target_usage`` (the fraction of classes
    that are some sample's most likely one: SwAV's prototype usage), and warns
    when every sample lands in one class or the targets are uniform.

    In a masked pipeline (``outputs.masked``; ``z`` is then the pooled backbone output) it logs the spread of
    the first view's targets and predictions at the masked patches (``collapse/target_std``,
    ``collapse/prediction_std``: data2vec's ``target_var``, ``pred_var``) and warns when the targets' falls
    under ``target_std_threshold``.

    Args:
        options: Check period and thresholds.
    """

    def __init__(self, options: CollapseOptions) -> None:
        self.options = options
        self.last: dict[str, float] = {}
        self.warned = False

    @hookimpl
    def jef_run_start(self, run: Any) -> None:
        """Forget the previous run's values, so a reused monitor warns again."""
        self.last = {}
        self.warned = False

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        """Check the step's embeddings when ``run.step`` is a multiple of ``every``."""
        if outputs is None or run.step % self.options.every != 0 or not outputs.online.z:
            return
        z = outputs.online.z[0].detach()
        if z.dim() != 2 or z.shape[0] < 2:
            return  # a std over a single sample means nothing
        std = embedding_std(z).item()
        rank = effective_rank(z).item()
        self.last = {"collapse/std": std, "collapse/rank": rank}
        other = outputs.online.z[1].detach() if len(outputs.online.z) > 1 else None
        if other is not None and other.shape == z.shape:
            self.last["collapse/alignment"] = alignment(z, other).item()
            self.last["collapse/uniformity"] = (uniformity(z).item() + uniformity(other).item()) / 2
        assigned = outputs.assignments[0].detach() if outputs.assignments else None
        if assigned is not None:
            self.last["collapse/target_entropy"] = assignment_entropy(assigned).item()
            self.last["collapse/target_usage"] = class_usage(assigned).item()
        masked = outputs.masked
        if masked is not None and masked.targets and masked.targets[0] and masked.targets[0][0].shape[0] >= 2:
            self.last["collapse/target_std"] = row_spread(masked.targets[0][0].detach()).item()
            self.last["collapse/prediction_std"] = row_spread(masked.predictions[0][0].detach()).item()
        # d rides along (logged, not a final metric) so `jef report` can draw the healthy std 1/sqrt(d) and the
        # warning threshold std_threshold/sqrt(d) on the collapse/std curve.
        run.log({**self.last, "collapse/dim": float(z.shape[1])})
        # Every process sees the same kind of batch; one warning from rank 0 is enough.
        if not self.warned and getattr(getattr(run, "ctx", None), "rank", 0) == 0:
            problems = self._problems(std, rank, z.shape[1], assigned)
            if problems:
                self.warned = True
                message = self._message(problems, run.step)
                warnings.warn(message, CollapseWarning, stacklevel=2)
                logger.warning(message)
                if self.options.stop:
                    # One process asks; the loop's trigger stops every process together (within train.log_every steps).
                    run.request_stop(f"the collapse monitor (stop: true) diagnosed {'; '.join(problems)}")

    @hookimpl
    def jef_run_end(self, run: Any, metrics: dict[str, float]) -> None:
        """Report the last measured values in the final metrics."""
        metrics.update(self.last)

    def _diagnose(self, std: float, rank: float, dim: int, step: int, assigned: Any = None) -> str | None:
        """Explain what collapsed and what to try, or return None when healthy."""
        problems = self._problems(std, rank, dim, assigned)
        return self._message(problems, step) if problems else None

    def _problems(self, std: float, rank: float, dim: int, assigned: Any = None) -> list[str]:
        """What collapsed, one phrase per kind of collapse (empty when healthy)."""
        relative = std * math.sqrt(dim)
        problems = []
        if relative < self.options.std_threshold:
            problems.append(
                f"complete collapse: the l2-normalised embeddings have per-dimension std {std:.4g}, "
                f"{relative:.3g}x the healthy 1/sqrt({dim})={1 / math.sqrt(dim):.4g} "
                f"(threshold {self.options.std_threshold:g}x), so all images map to nearly one point"
            )
        if rank < self.options.rank_threshold:
            problems.append(
                f"dimensional collapse: effective rank {rank:.3g} of {dim} dimensions "
                f"(threshold {self.options.rank_threshold:g}), so the embeddings span about one direction"
            )
        target_std = self.last.get("collapse/target_std")
        if target_std is not None and target_std < self.options.target_std_threshold:
            problems.append(f"target collapse: the targets at the masked patches have per-dimension std "
                            f"{target_std:.3g} (threshold {self.options.target_std_threshold:g}), so the target "
                            f"encoder maps every patch to about one vector; raise the EMA momentum or lower the "
                            f"learning rate")
        if assigned is not None:
            n, k = assigned.shape
            if n >= 4 and self.last["collapse/target_usage"] * min(n, k) < 1.5:
                problems.append(f"target collapse: all {n} samples' targets put most mass on one of {k} classes "
                                f"(prototypes or output dimensions)")
            entropy = self.last["collapse/target_entropy"]
            if entropy >= self.options.uniform_threshold:
                problems.append(f"uniform collapse: the targets' entropy is {entropy:.3f} of the uniform "
                                f"log {k} (threshold {self.options.uniform_threshold:g}), so they carry no "
                                f"information; sharpen them (lower teacher temperature or Sinkhorn epsilon)")
        return problems

    @staticmethod
    def _message(problems: list[str], step: int) -> str:
        """The warning: what collapsed, and what to try."""
        return (
            f"jef: representation collapse at step {step} (online projector z, view 0): "
            + "; ".join(problems)
            + ". Things to try: check that the target branch is stop-gradient or EMA for "
            "BYOL/SimSiam-style methods, that variance/covariance or negative terms carry enough weight "
            "(VICReg, Barlow Twins, contrastive), and lower the learning rate or lengthen the warm-up. "
            "This warning is shown once per run."
        )


def build_collapse(options: CollapseOptions, ctx: RunContext) -> CollapseMonitor:
    """Collapse monitor factory."""
    return CollapseMonitor(options)


@hookimpl
def jef_register_monitors(register: Register) -> None:
    """Register ``collapse``."""
    register("collapse", build_collapse, options=CollapseOptions,
             description="online diagnostics every `every` steps on the training batch's l2-normalised projector "
                         "z: collapse/std and collapse/rank (RankMe) of view 0, collapse/alignment (alpha=2) "
                         "and collapse/uniformity (t=2) of views 0 and 1; warns on collapse (stop: true stops the run)",
             paper="Chen & He, SimSiam, arXiv:2011.10566; Garrido et al., RankMe, arXiv:2210.02885; "
                   "Wang & Isola, arXiv:2005.10242")
