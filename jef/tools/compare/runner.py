"""Train (or resume) every run of a compare, evaluate the baselines, then write the summary files.

A run directory that holds a checkpoint is resumed (``train(resume=True)``): a finished run is not trained
again (the loop says so and returns its recorded metrics), an interrupted one continues from its checkpoint. A
directory holding a run that stopped before its first checkpoint is started again (the old files are moved
aside, as ``jef train --overwrite`` does). A run that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from jef.run.checkpoint import CHECKPOINT_NAME
from jef.run.directory import holds_run, recorded_final_metrics
from jef.tools.compare.plan import Plan, RunSpec

__all__ = ["Outcome", "compare", "evaluate_baseline", "train_run"]


@attrs.define
class Outcome:
    """What one run (or one baseline evaluation) gave.

    Attributes:
        status: ``trained``, ``resumed``, ``complete`` (finished by an earlier compare) or ``failed``.
        seconds: Wall time of this call.
        metrics: The final metrics (``knn_top1``, loss terms, ...); evaluation.json is read by the summary.
        error: What went wrong, for a failed one.
    """

    status: str
    seconds: float
    metrics: dict[str, float] = attrs.field(factory=dict)
    error: str | None = None


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    # The CLI's own errors read well alone; anything else is named by its type.
    from jef.config import ConfigError
    from jef.registry import BuildError

    readable = isinstance(error, ConfigError | BuildError | FileNotFoundError)
    return text if readable else f"{type(error).__name__}: {text}"


def train_run(spec: RunSpec, *, plugins: Any, cpu: bool | None) -> Outcome:
    """Train, resume or read back one run; a failure is returned, not raised (except a stop signal)."""
    from jef.run.faults import RunInterrupted
    from jef.run.loop import train

    directory = spec.directory
    has_checkpoint = (directory / CHECKPOINT_NAME).is_file()
    finished = has_checkpoint and bool(recorded_final_metrics(directory))
    status = "complete" if finished else "resumed" if has_checkpoint else "trained"
    started = time.perf_counter()
    try:
        metrics = train(spec.pipeline, run_dir=directory, resume=has_checkpoint,
                        overwrite=not has_checkpoint and holds_run(directory), plugins=plugins, cpu=cpu)
    except RunInterrupted:  # the user stopped the compare: the checkpoint is written, the next compare resumes
        raise
    except Exception as error:  # one method's failure does not lose the others
        return Outcome("failed", time.perf_counter() - started, error=f"method {spec.method}, seed {spec.seed}: "
                       f"{_describe(error)}")
    return Outcome(status, time.perf_counter() - started, dict(metrics))


def evaluate_baseline(name: str, spec: RunSpec, directory: Path, *, device: str) -> Outcome:
    """Evaluate a baseline with ``spec``'s pipeline (its data, eval view and protocols); cached in ``directory``.

    ``random``: the pipeline's backbone at random initialisation (seeded with the run's seed; ``backbone.weights``
    is not loaded), with the protocols the pipeline's ``eval`` enables. ``pixels``: the eval view's pixels,
    flattened, with kNN and the linear probe (those of them the pipeline enables).
    """
    import torch
    from torch import nn

    from jef.components import RunContext
    from jef.evaluate.protocols import BACKBONE_PROTOCOLS, evaluate_backbone, read_evaluation, write_evaluation
    from jef.model.build import build

    started = time.perf_counter()
    cached = read_evaluation(directory)
    if cached:
        return Outcome("complete", time.perf_counter() - started,
                       {key: entry["value"] for key, entry in cached.items() if isinstance(entry, dict)})
    pipeline = spec.pipeline
    enabled = [p for p in BACKBONE_PROTOCOLS if getattr(pipeline.eval, p).enabled]
    protocols = enabled if name == "random" else [p for p in enabled if p in ("knn", "linear")]
    try:
        if not protocols:
            raise ValueError("the pipeline's eval section enables none of the protocols this baseline runs "
                             f"({'kNN, linear probe, fine-tuning' if name == 'random' else 'kNN, linear probe'})")
        torch.manual_seed(pipeline.seed)
        ctx = RunContext(seed=pipeline.seed, batch_size=pipeline.train.batch_size,
                         global_batch_size=pipeline.train.batch_size, epochs=pipeline.train.epochs, run_dir=directory)
        built = build(pipeline, ctx, weights=False)
        backbone = built.model.backbone if name == "random" else nn.Flatten()
        backbone.to(device).eval()
        results = evaluate_backbone(backbone, built.splits, built.augmenter.eval_view, pipeline.eval, device,
                                    seed=pipeline.seed, protocols=protocols, num_workers=pipeline.train.num_workers)
    except Exception as error:
        return Outcome("failed", time.perf_counter() - started,
                       error=f"baseline {name}, seed {spec.seed}: {_describe(error)}")
    write_evaluation(directory, results, step=0, merge=False)
    return Outcome("trained", time.perf_counter() - started, {r.key: r.value for r in results})


def _line(index: int, total: int, what: str, outcome: Outcome, key: str = "knn_top1") -> str:
    baseline = what.startswith("baseline ")
    verb = {"trained": "evaluated" if baseline else "trained", "resumed": "resumed and finished",
            "complete": "finished earlier, read back",
            "failed": "FAILED"}[outcome.status]
    text = f"[{index}/{total}] {what}: {verb}"
    if outcome.status == "failed":
        return f"{text} after {outcome.seconds:.1f} s: {outcome.error}"
    if outcome.status != "complete":
        text += f" in {outcome.seconds:.1f} s"
    value = outcome.metrics.get(key)
    return text + (f", {key} {value:.3f}" if isinstance(value, int | float) else "")


def compare(plan: Plan, *, plugins: Any, cpu: bool = False,
            say: Callable[[str], None] = lambda text: print(text, flush=True)) -> tuple[Path, bool]:
    """Run the plan: every run (resumed where it can be), the baselines, then the summary files.

    Returns:
        ``compare.html``'s path, and whether every run and baseline succeeded.

    Raises:
        jef.run.faults.RunInterrupted: A signal stopped a run (its checkpoint is written): the compare stops;
            the same command resumes it.
    """
    import torch

    from jef.tools.compare.page import write_page
    from jef.tools.compare.summary import summarise, write_tables

    device = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    outcomes: dict[tuple[str, int], Outcome] = {}
    jobs: Sequence[tuple[str, int]] = [*((spec.method, spec.seed) for spec in plan.runs),
                                       *((f"baseline:{b}", s) for b in plan.baselines for s in plan.seeds)]
    by_key = {(spec.method, spec.seed): spec for spec in plan.runs}
    for index, (name, seed) in enumerate(jobs, start=1):
        if name.startswith("baseline:"):
            baseline = name.removeprefix("baseline:")
            # The first method's pipeline, unless its run failed (it may not build): then the next one's.
            specs = [spec for spec in plan.runs if spec.seed == seed]
            spec = next((s for s in specs if outcomes[(s.method, seed)].status != "failed"), specs[0])
            outcome = evaluate_baseline(baseline, spec, plan.output / "baselines" / baseline / f"seed{seed}",
                                        device=device)
            what = f"baseline {baseline} seed {seed}"
        else:
            outcome = train_run(by_key[(name, seed)], plugins=plugins, cpu=True if cpu else None)
            what = f"{name} seed {seed}"
        outcomes[(name, seed)] = outcome
        say(_line(index, len(jobs), what, outcome))
    summary = summarise(plan, outcomes)
    write_tables(plan.output, summary)
    page = write_page(plan, summary)
    ok = all(outcome.status != "failed" for outcome in outcomes.values())
    if not ok:
        print(f"jef: {sum(o.status == 'failed' for o in outcomes.values())} of {len(jobs)} runs failed (their "
              f"errors are in the table); run the same command again to retry them", file=sys.stderr)
    return page, ok
