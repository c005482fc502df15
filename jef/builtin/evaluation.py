"""Built-in run plugin: the ``eval:`` protocols when a run ends, and the random-backbone kNN baseline.

The loop knows nothing of evaluation: it registers a :class:`RunEvaluation` with the run's other objects
(pytest's stepwise plugin is registered the same way), and the plugin adds its results to the final
metrics in ``jef_run_end``, before any other plugin's ``jef_run_end`` reads them. A run stopped by a signal
never reaches ``jef_run_end``, so it is not evaluated.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from jef.evaluate.knn import knn_evaluate
from jef.config.validate import ConfigError
from jef.evaluate.multimodal import can_run
from jef.evaluate.progress import progress_shown
from jef.evaluate.results import Result
from jef.evaluate.protocols import check_backbone, evaluate_backbone, write_evaluation
from jef.hookspecs import hookimpl

__all__ = ["BASELINES", "RunEvaluation"]

#: What ``eval.baselines`` can score instead of the trained backbone, in words.
BASELINES = {"random": "the backbone at random initialisation (before the first step)",
             "pixels": "the eval view's pixels, flattened"}


class RunEvaluation:
    """Evaluates a run's backbone with the protocols its pipeline enables (labelled data only).

    Args:
        pipeline: The run's pipeline (``eval:`` says what runs).
        backbone: The backbone as built, before training or a checkpoint changes it: with
            ``eval.knn.baseline`` a copy is kept, and its kNN accuracy is the run's ``knn_top1_random``.
    """

    def __init__(self, pipeline: Any, backbone: nn.Module) -> None:
        self.pipeline = pipeline
        try:  # eval options the backbone cannot serve (a CNN's last_blocks) fail before training, not after
            check_backbone(backbone, pipeline.eval)
        except ConfigError as error:
            raise error.located(pipeline.source) from None
        wanted = pipeline.eval.knn.baseline or "random" in pipeline.eval.baselines
        self.random_backbone = copy.deepcopy(backbone) if wanted else None
        self.baseline: float | None = None

    def _shown(self, run: Any) -> bool:
        """The protocols' bars show where the training bar does: ``train.progress``, on the main process."""
        return bool(self.pipeline.train.progress and run.accelerator.is_main_process)

    @hookimpl(tryfirst=True)
    def jef_run_start(self, run: Any) -> None:
        """The random backbone's kNN accuracy, before any step (it needs only the frozen copy)."""
        if self.random_backbone is None or "random" in self.pipeline.eval.baselines:  # at the end, with the rest
            return
        options = self.pipeline.eval.knn
        backbone, self.random_backbone = self.random_backbone.to(run.accelerator.device), None
        with progress_shown(self._shown(run)):
            self.baseline = knn_evaluate(backbone, run.splits, run.augmenter.eval_view, k=options.k,
                                         temperature=options.temperature, batch_size=options.batch_size,
                                         device=run.accelerator.device, description="kNN of the random backbone")

    def _baselines(self, run: Any, protocols: set[str] | None) -> list[Result]:
        """``eval.baselines`` scored with the enabled kNN and linear probe, keys suffixed ``_random``/``_pixels``."""
        options = self.pipeline.eval
        chosen = [name for name in ("knn", "linear") if getattr(options, name).enabled
                  and (protocols is None or name in protocols)]
        if not chosen or not run.splits.labelled:
            return []
        results: list[Result] = []
        for name in options.baselines:
            backbone = self.random_backbone if name == "random" else nn.Flatten()
            with progress_shown(self._shown(run)):
                scored = evaluate_backbone(backbone.to(run.accelerator.device).eval(), run.splits,
                                           run.augmenter.eval_view, options, run.accelerator.device,
                                           seed=self.pipeline.seed, protocols=chosen)
            what = BASELINES[name]
            results += [Result(f"{r.key}_{name}", r.value, f"baseline, {what}: {r.protocol}") for r in scored]
        self.random_backbone = None
        return results

    @hookimpl(tryfirst=True)
    def jef_run_end(self, run: Any, metrics: dict[str, float]) -> None:
        """Add the baseline and the ``eval:`` protocols' results to ``metrics``; write ``evaluation.json``."""
        if self.baseline is not None:
            metrics["knn_top1_random"] = self.baseline
        splits, model = run.splits, run.unwrapped_model
        if splits.test is None or not (splits.labelled or can_run(model, splits)):
            return
        protocols = None if splits.labelled else can_run(model, splits) & {  # unlabelled captions: retrieval only
            name for name in ("retrieval",) if self.pipeline.eval.retrieval.enabled}
        with progress_shown(self._shown(run)):
            results = evaluate_backbone(model.backbone, splits, run.augmenter.eval_view, self.pipeline.eval,
                                        run.accelerator.device, seed=self.pipeline.seed, model=model,
                                        protocols=protocols)
        results += self._baselines(run, protocols)
        metrics.update({result.key: result.value for result in results})
        if run.directory is not None and results:
            write_evaluation(run.directory, results, step=run.step)
