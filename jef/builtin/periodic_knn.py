"""The ``knn`` monitor: the offline weighted-kNN protocol, run *periodically* during training.

Every ``every_epochs`` epochs the backbone of that epoch is evaluated with
:func:`jef.evaluate.knn_evaluate` (eval mode, the augmenter's eval view, train
split as the bank, test split as the queries) and ``periodic/knn_top1`` is
logged. The key differs from the end-of-training ``knn_top1`` (the same
protocol on the final backbone, with ``eval.knn``'s settings) and from the
*online* probe of :mod:`jef.builtin.online_linear`, which is trained on the
augmented training batches.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.distributed as tdist
from attrs import validators as v
from torch.utils.data import Subset

from jef.builtin.monitors import notice
from jef.components import RunContext
from jef.dist import is_distributed
from jef.evaluate.knn import knn_evaluate
from jef.hookspecs import Register, hookimpl

__all__ = ["KnnMonitor", "KnnMonitorOptions", "build_knn", "jef_register_monitors"]


@attrs.frozen(kw_only=True)
class KnnMonitorOptions:
    """Options of the periodic kNN monitor; unset values are taken from the pipeline's ``eval.knn``."""

    every_epochs: int = attrs.field(default=1, validator=v.ge(1),
                                    metadata={"doc": "evaluate at the end of every this many epochs"})
    k: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)),
                                metadata={"doc": "neighbours; null: eval.knn.k"})
    temperature: float | None = attrs.field(default=None, validator=v.optional(v.gt(0.0)),
                                            metadata={"doc": "T in the vote weights exp(sim / T); null: "
                                                             "eval.knn.temperature"})
    batch_size: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)),
                                         metadata={"doc": "images per forward pass; null: eval.knn.batch_size"})
    max_train: int | None = attrs.field(
        default=None, validator=v.optional(v.ge(1)),
        metadata={"doc": "use a fixed random subset of this many training images as the bank (faster); "
                         "null: the whole train split"})


class KnnMonitor:
    """The offline weighted-kNN protocol, run every ``every_epochs`` epochs during training.

    At the end of epochs ``every_epochs - 1, 2 * every_epochs - 1, ...``
    (0-based) it calls :func:`jef.evaluate.knn_evaluate` on the online
    backbone as it is then: eval mode during the evaluation (each module's
    mode restored afterwards), the augmenter's ``eval_view``, the train split
    (or a fixed subset of ``max_train`` images) as the bank, the test split as
    the queries, ``k`` neighbours voting with ``exp(sim / T)`` (Wu et al.,
    InstDisc, arXiv:1805.01978). It logs ``periodic/knn_top1`` with the epoch's
    metrics and puts the last value, and the 0-based epoch it was measured
    at (``periodic/knn_epoch``), in the final metrics.

    Every process evaluates the whole splits itself on its device, so no
    process idles in a collective while another computes (a long evaluation
    would hit the process group's timeout). The processes' numbers can differ
    slightly, as DDP keeps BatchNorm running statistics per process until its
    next forward; the main process's value, the one the checkpoint's weights
    give, is then broadcast so that every process reports the same. The
    evaluation runs inside :func:`torch.random.fork_rng`, so the training's
    random stream, and therefore a seeded run, is the same with or without it.

    Args:
        options: Period, kNN settings and bank size.
    """

    KEY = "periodic/knn_top1"

    def __init__(self, options: KnnMonitorOptions) -> None:
        self.options = options
        self.last: float | None = None
        self.last_epoch = -1
        self._restored = False  # set by load_state_dict: the next jef_run_start keeps the restored values
        self.settings: dict[str, Any] = {}
        self.splits: Any = None

    @hookimpl
    def jef_run_start(self, run: Any) -> None:
        """Settle k, T and the bank; turn off, saying why, without labels or a test split."""
        if not self._restored:
            self.last, self.last_epoch = None, -1
        self._restored = False
        splits = getattr(run, "splits", None)
        if splits is None or not splits.labelled or splits.test is None:
            name = getattr(splits, "name", "") or "this dataset"
            self.splits = None
            missing = "no labels" if splits is None or not splits.labelled else "no test split"
            notice(run, f"jef: the knn monitor is off for this run: data {name!r} has {missing}; kNN needs labelled "
                        f"train and test splits: use such a dataset or remove {{name: knn}} from monitors")
            return
        final, options = run.pipeline.eval.knn, self.options  # the end-of-training kNN's settings fill the gaps
        self.settings = {"k": final.k if options.k is None else options.k,
                         "temperature": final.temperature if options.temperature is None else options.temperature,
                         "batch_size": final.batch_size if options.batch_size is None else options.batch_size}
        self.splits = splits
        if options.max_train is not None and options.max_train < len(splits.train):
            # A fixed subset (from the run's seed, not the global random stream): every evaluation of the run, on
            # every process, compares against the same bank.
            order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(run.pipeline.seed))
            self.splits = attrs.evolve(splits, train=Subset(splits.train, order[:options.max_train].sort()[0].tolist()))

    @hookimpl
    def jef_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        """Evaluate at the end of every ``every_epochs``-th epoch."""
        if self.splits is None or (epoch + 1) % self.options.every_epochs != 0:
            return
        with torch.random.fork_rng(devices=[]):  # the DataLoader draws a seed from the global generator
            value = knn_evaluate(run.unwrapped_model.backbone, self.splits, run.augmenter.eval_view,
                                 device=run.accelerator.device, **self.settings)
        if is_distributed():  # every process is here, done with the same work: no one waits long
            shared = torch.tensor([value], dtype=torch.float64, device=run.accelerator.device)
            tdist.broadcast(shared, src=0)
            value = shared.item()
        metrics[self.KEY] = self.last = value
        self.last_epoch = epoch

    @hookimpl
    def jef_run_end(self, run: Any, metrics: dict[str, float]) -> None:
        """The last evaluation and its epoch in the final metrics."""
        if self.last is not None:
            metrics[self.KEY] = self.last
            metrics["periodic/knn_epoch"] = float(self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The last value and its epoch, so that a resumed run still reports them."""
        return {"last": self.last, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result."""
        self.last, self.last_epoch, self._restored = state["last"], state["last_epoch"], True


def build_knn(options: KnnMonitorOptions, ctx: RunContext) -> KnnMonitor:
    """Periodic kNN monitor factory."""
    return KnnMonitor(options)


@hookimpl
def jef_register_monitors(register: Register) -> None:
    """Register ``knn``."""
    register("knn", build_knn, options=KnnMonitorOptions,
             description="periodic offline kNN: every `every_epochs` epochs, weighted kNN top-1 of that epoch's "
                         "backbone h (eval mode, eval view, train split -> test split; k and T of eval.knn unless set) "
                         "as periodic/knn_top1; the final knn_top1 is the same protocol on the final backbone",
             paper="Wu et al., InstDisc, arXiv:1805.01978")
