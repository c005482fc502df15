"""The ``online_linear`` monitor: a linear probe trained alongside the run (an *online* protocol).

A linear head is trained every step on the detached features of the training
batch (augmented views of the train split) and reports ``online/linear_top1``,
the running top-1 of its predictions made before each update. This is not the
offline linear-probe or kNN protocol of the final backbone (``knn_top1``, a
held-out test split); see :mod:`jef.builtin.periodic_knn` for the offline kNN
run periodically during training.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
from attrs import validators as v

from jef.builtin.monitors import notice
from jef.components import RunContext, StepOutputs
from jef.dist import gather
from jef.evaluate.online import OnlineLinearProbe
from jef.hookspecs import Register, hookimpl

__all__ = ["OnlineLinearMonitor", "OnlineLinearOptions", "build_online_linear", "jef_register_monitors"]


@attrs.frozen(kw_only=True)
class OnlineLinearOptions:
    """Options of the online linear probe."""

    every: int = attrs.field(default=1, validator=v.ge(1), metadata={"doc": "train the probe every this many "
                                                                            "optimiser steps"})
    feature: Literal["h", "z"] = attrs.field(
        default="h", metadata={"doc": "what the probe reads, of the first global view (view 0): h, the backbone "
                                      "output (the representation evaluated), or z, the projector output"})
    lr: float = attrs.field(default=1e-3, validator=v.gt(0.0), metadata={"doc": "the probe's AdamW learning rate"})
    weight_decay: float = attrs.field(default=0.0, validator=v.ge(0.0),
                                      metadata={"doc": "the probe's AdamW weight decay"})


class OnlineLinearMonitor:
    """A linear classifier trained online on detached backbone features.

    Every ``every`` steps it gathers the feature (``h`` or ``z`` of view 0) and
    the labels of the whole global batch from every process, so each process
    trains an identical probe (:class:`~jef.evaluate.online.OnlineLinearProbe`),
    and takes one AdamW step on the labelled samples (label ``-1`` is
    skipped). The probe has its own optimiser and sees detached features: the
    self-supervised model's weights and gradients are untouched, and a seeded
    run trains to the same weights with or without it.

    It reports ``online/linear_top1``: the fraction of the epoch's labelled
    training samples whose prediction, made *before* the update on their
    batch, was right (augmented training views, not the test split). The
    final metrics hold the last complete epoch's value (the running value of
    the current epoch if none completed). Its weights, optimiser and counts
    are checkpointed, so a resumed run continues exactly.

    Args:
        options: Period, feature, learning rate and weight decay.
    """

    KEY = "online/linear_top1"

    def __init__(self, options: OnlineLinearOptions) -> None:
        self.options = options
        self._restored = False  # set by load_state_dict: the next jef_run_start keeps the restored state
        self._reset()

    def _reset(self) -> None:
        self.probe: OnlineLinearProbe | None = None
        self._saved: dict[str, Any] | None = None  # a checkpoint's probe, loaded when the probe is built
        # Device tensors while counting (no synchronisation per step), ints once read.
        self.correct: Any = 0
        self.counted: Any = 0
        self.count_epoch = -1
        self.last: float | None = None
        self.off: str | None = None

    @hookimpl
    def jef_run_start(self, run: Any) -> None:
        """Start afresh (unless a checkpoint was just restored); turn off, saying why, on unlabelled data."""
        if not self._restored:
            self._reset()
        self._restored = False
        self.off = None
        splits = getattr(run, "splits", None)
        if splits is None or not splits.labelled:
            name = getattr(splits, "name", "") or "this dataset"
            self._turn_off(run, f"data {name!r} has no labels (num_classes is None), so there is nothing to "
                                "classify; use a labelled dataset or remove {name: online_linear} from monitors")

    def _turn_off(self, run: Any, why: str) -> None:
        self.off = why
        notice(run, f"jef: the online_linear monitor is off for this run: {why}")

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        """Predict, then train on, the step's labelled samples every ``every`` steps."""
        if self.off or run.step % self.options.every != 0:
            return
        if outputs is None or outputs.labels is None:
            self._turn_off(run, "the training step's outputs carry no labels (a jef_train_step plugin that "
                                "replaces the default step must return outputs with StepOutputs.labels set)")
            return
        features = getattr(outputs.online, self.options.feature)[0].detach().float()
        if outputs.labels.shape != (features.shape[0],):
            raise ValueError(f"online_linear: the step's labels have shape {tuple(outputs.labels.shape)}, expected "
                             f"[{features.shape[0]}] (one per sample of view 0)")
        # Every process gets the global batch, so every process takes the same step on the same probe.
        x, y = gather(features), gather(outputs.labels.to(device=features.device, dtype=torch.long))
        if self.probe is None:
            self._build(run, x, y)
        if run.epoch != self.count_epoch:  # a new epoch is counted afresh; a run resumed mid-epoch keeps counting
            self.correct, self.counted, self.count_epoch = 0, 0, run.epoch
        correct, counted = self.probe.update(x, y)
        self.correct, self.counted = self.correct + correct, self.counted + counted

    def _build(self, run: Any, x: torch.Tensor, y: torch.Tensor) -> None:
        """Make the probe on the training device, once the feature width is known; load a checkpoint's state."""
        num_classes = run.splits.num_classes
        if int(y.max()) >= num_classes:  # checked once: cross_entropy would fail obscurely (on a GPU, asynchronously)
            raise ValueError(f"online_linear: a training label is {int(y.max())} but data {run.splits.name!r} "
                             f"declares num_classes={num_classes}; labels must lie in [0, num_classes) or be -1")
        self.probe = OnlineLinearProbe(x.shape[1], num_classes, lr=self.options.lr,
                                       weight_decay=self.options.weight_decay, device=x.device)
        if self._saved is not None:
            self.probe.load_state_dict(self._saved)
            self._saved = None

    def _running(self) -> float | None:
        counted = int(self.counted)
        return int(self.correct) / counted if counted else None

    @hookimpl
    def jef_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        """Report the epoch's running top-1 and start counting the next epoch."""
        value = self._running() if self.count_epoch == epoch else None
        if value is not None:
            metrics[self.KEY] = self.last = value
        self.correct, self.counted = 0, 0

    @hookimpl
    def jef_run_end(self, run: Any, metrics: dict[str, float]) -> None:
        """The last complete epoch's top-1 (or the current epoch's so far) in the final metrics."""
        value = self.last if self.last is not None else self._running()
        if value is not None:
            metrics[self.KEY] = value

    def state_dict(self) -> dict[str, Any]:
        """The probe (weights, optimiser) and the epoch's counts, for checkpoints."""
        probe = self.probe.state_dict() if self.probe is not None else self._saved
        return {"probe": probe, "correct": int(self.correct), "counted": int(self.counted),
                "count_epoch": self.count_epoch, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result (before ``jef_run_start``, which then keeps it)."""
        self._reset()
        self._saved, self._restored = state["probe"], True
        self.correct, self.counted, self.count_epoch = state["correct"], state["counted"], state["count_epoch"]
        self.last = state["last"]


def build_online_linear(options: OnlineLinearOptions, ctx: RunContext) -> OnlineLinearMonitor:
    """Online linear probe factory."""
    return OnlineLinearMonitor(options)


@hookimpl
def jef_register_monitors(register: Register) -> None:
    """Register ``online_linear``."""
    register("online_linear", build_online_linear, options=OnlineLinearOptions,
             description="online linear probe on the detached h (or z) of view 0 of each augmented training "
                         "batch, with its own AdamW; online/linear_top1 = per-epoch running top-1 of its predictions "
                         "before each update (train split, augmented views; not a test-split number)",
             paper="Chen et al., SimCLR, arXiv:2002.05709 (linear eval while pretraining); "
                   "da Costa et al., solo-learn, arXiv:2108.01775")
