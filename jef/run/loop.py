"""The training loop, in the shape of Accelerate's examples.

Runs unchanged on:
  - CPU:               jef train pipeline.yaml
  - one GPU:           jef train pipeline.yaml
  - several GPUs:      accelerate launch --multi_gpu -m jef train pipeline.yaml
  - several nodes:     accelerate launch --num_machines N ... -m jef train pipeline.yaml

Build everything, one ``accelerator.prepare(...)``, then a plain loop, run hooks at named points:
``jef_run_start``, ``jef_train_step`` (the loss), ``jef_after_backward``, ``jef_step_end``,
``jef_epoch_end``, ``jef_run_end`` (where evaluation runs: :mod:`jef.builtin.evaluation`).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from jef.builtin.evaluation import RunEvaluation
from jef.components import RunContext
from jef.config import Pipeline
from jef.config.validate import ConfigError
from jef.data.fields import batch_size
from jef.model.build import build, build_data
from jef.model.towers import field_collate
from jef.plugins import Plugins, get_plugins
from jef.run.accelerate_compat import reset_accelerate_state
from jef.run.accumulation import Accumulation, as_step_result
from jef.run.checkpoint import save_run
from jef.run.directory import RunDir, claim_run_dir
from jef.run.faults import RunInterrupted, stop_on_signals, sync_point
from jef.run.host_memory import cpu_malloc
from jef.run.launch import check_process_count
from jef.run.layout import apply_layout
from jef.run.log import MetricsLogger, plugin_listing
from jef.run.optim import build_optimizer, lr_lambdas
from jef.run.progress import TrainProgress
from jef.run.sampler import EpochSampler
from jef.run.state import Run, run_plugins
from jef.run.terms import EpochTerms, log_record

__all__ = ["Run", "train"]


def train(pipeline: Pipeline, *, run_dir: str | Path | None = None,
          resume: bool | Literal["force"] = False, overwrite: bool = False,
          plugins: Plugins | None = None, cpu: bool | None = None) -> dict[str, float]:
    """Train ``pipeline``; return the final metrics (loss terms, ``knn_top1`` when labelled).

    Args:
        pipeline: The validated pipeline.
        run_dir: Where the checkpoint, metrics and resolved pipeline go (default
            ``runs/<file stem>``).
        resume: Continue the run directory's run; refused when the pipeline differs, unless
            ``"force"``.
        overwrite: Move a run already in the run directory aside (``NAME.old-<time>``); else it
            is refused.
        plugins: Loaded plugins (default: the installed ones).
        cpu: Force the CPU (default: a GPU when there is one).

    Raises:
        jef.run.faults.RunInterrupted: SIGTERM or SIGINT stopped the run after its checkpoint
            was written.
        jef.run.faults.NonFiniteLossError: The loss went NaN/inf (``train.on_nonfinite: stop``);
            no checkpoint was written after that step.
        jef.run.directory.RunDirError, jef.run.checkpoint.CheckpointError: The run directory or
            its checkpoint is unusable.
    """
    plugins = plugins or get_plugins()
    options = pipeline.train
    reset_accelerate_state()  # several runs, with different precisions, may share a process
    use_cpu = cpu if cpu is not None else not torch.cuda.is_available()
    if use_cpu and options.precision == "fp16":
        raise ConfigError("fp16 needs a GPU; use bf16 on CPU", path="train.precision",
                          source=pipeline.source)
    # The schedule is defined in optimiser steps: step it once per optimiser step, whatever the
    # world size.
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=options.precision,
                              gradient_accumulation_steps=options.grad_accum,
                              step_scheduler_with_optimizer=False)
    check_process_count(accelerator.num_processes, source=pipeline.source)  # before any write
    torch.manual_seed(pipeline.seed + accelerator.process_index)
    claiming = claim_run_dir(pipeline, run_dir, accelerator, resume=resume, overwrite=overwrite)
    with claiming as claim, cpu_malloc(options.cpu_malloc, accelerator.device):
        return _train(pipeline, plugins, accelerator, claim)  # locked until it returns or raises


def _train(pipeline: Pipeline, plugins: Plugins, accelerator: Accelerator,
           claim: RunDir) -> dict[str, float]:
    options, directory, world = pipeline.train, claim.directory, accelerator.num_processes
    ctx = RunContext(seed=pipeline.seed, device=str(accelerator.device), world_size=world,
                     rank=accelerator.process_index, batch_size=options.batch_size,
                     global_batch_size=options.batch_size * world, epochs=options.epochs,
                     precision=options.precision, run_dir=directory)
    splits = build_data(pipeline, ctx)  # first: the number of steps depends on the data's size
    step_batch = ctx.global_batch_size * options.grad_accum  # images of one optimiser step
    per_epoch = len(splits.train) // step_batch
    if per_epoch == 0:
        raise ConfigError(f"data {pipeline.data.name!r} has {len(splits.train)} images, fewer than "
                          f"one step's {step_batch}; lower train.batch_size",
                          path="train.batch_size", source=pipeline.source)
    total = min(per_epoch * options.epochs, options.max_steps or sys.maxsize)  # None: no cap
    if (complete := claim.already_complete(total)) is not None:  # a finished run: nothing to do
        return complete
    # A resumed run's weights come from its checkpoint: backbone.weights need not be there any more.
    built = build(pipeline, attrs.evolve(ctx, steps_per_epoch=per_epoch, total_steps=total), splits,
                  weights=claim.resumed is None)
    evaluation = RunEvaluation(pipeline, built.model.backbone)  # before a checkpoint changes it
    # Its own generator: otherwise each new iterator (each epoch, a resumed epoch) draws from the
    # global RNG, which the step's own randomness (MoCo's shuffled BN) uses, and a resumed run
    # would drift from an uninterrupted one.
    loader = DataLoader(built.splits.train, batch_size=options.batch_size, drop_last=True,
                        sampler=EpochSampler(len(built.splits.train), seed=pipeline.seed),
                        num_workers=options.num_workers,
                        persistent_workers=options.num_workers > 0,
                        generator=torch.Generator().manual_seed(pipeline.seed),
                        collate_fn=field_collate(built.model))
    apply_layout(built.model, options)  # channels_last, compile: before the optimiser sees it
    # Linear scaling follows the batch of one optimiser step, accumulation included.
    optimizer = build_optimizer(built.model, options.optimizer, step_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambdas(optimizer, options.scheduler, per_epoch, total))
    model, optimizer, loader, scheduler = accelerator.prepare(built.model, optimizer, loader,
                                                              scheduler)
    augmenter = built.augmenter.to(accelerator.device)
    # Alike on every process: the views of the global batch.
    generator = torch.Generator().manual_seed(pipeline.seed * 1000)
    run = Run(built.ctx, pipeline, accelerator, model, augmenter, optimizer, scheduler,
              directory if accelerator.is_main_process else None, generator, built.splits,
              built.monitors)
    # Restores the checkpoint, writes the run's files, says where it runs.
    logger = claim.open(run, plugin_listing(plugins))
    objects = [*built.components.values(), *built.monitors, evaluation]
    metrics: dict[str, float] = {}
    with run_plugins(plugins, objects, pipeline) as hook:
        hook.jef_run_start(run=run)
        name = pipeline.method.name if pipeline.method else "pipeline"
        bar = TrainProgress(name, total, run.step, per_epoch,
                            enabled=options.progress and accelerator.is_main_process)
        with stop_on_signals(run) as received:  # stops after the step, on every process
            try:
                while run.step < total and not run.stopping:
                    epoch_terms, finished = _train_epoch(run, loader, hook, bar, logger, total)
                    metrics.update(epoch_terms)
                    if finished:
                        _end_epoch(run, hook, logger, epoch_terms)
            except KeyboardInterrupt:  # raised by a plugin (jef.testing.InterruptAt)
                save_run(run)  # the run resumes from here with --resume
                raise
            finally:
                bar.close()
            if run.checkpoint_step != run.step:  # the last epoch's may already hold this step
                save_run(run)
        if received:  # SIGTERM/SIGINT: checkpoint written; no evaluation, the job is stopping
            raise RunInterrupted(received["signal"], run.step, directory)
        if run.stop_reason:
            tqdm.write(f"jef: run stopped at step {run.step}: {run.stop_reason}; checkpoint "
                       f"saved in {directory}", file=sys.stderr)
        hook.jef_run_end(run=run, metrics=metrics)  # evaluation adds its results here
        logger.write(run.step, {f"final/{k}": v for k, v in metrics.items()})
        bar.print_summary(run.step, directory)
    accelerator.wait_for_everyone()  # none tears the group down while another still uses it
    accelerator.end_training()  # the claim closes the logger, however the run ends
    return metrics


def _end_epoch(run: Run, hook: Any, logger: MetricsLogger, terms: dict[str, float]) -> None:
    """The epoch-end hooks, the epoch's line of metrics, and the epoch's checkpoint."""
    epoch, run.epoch, run.batch_in_epoch = run.epoch, run.epoch + 1, 0
    hook.jef_epoch_end(run=run, epoch=epoch, metrics=terms)
    logger.write(run.step, {f"epoch/{k}": v for k, v in terms.items()})
    if (epoch + 1) % run.pipeline.train.checkpoint_every == 0:  # after the hooks: their state too
        save_run(run)


def _train_epoch(run: Run, loader: Any, hook: Any, bar: TrainProgress, logger: MetricsLogger,
                 total: int) -> tuple[dict[str, float], bool]:
    """Train until the epoch ends or the run's steps are done.

    Nothing here reads a tensor on the host at every step (that would make the host wait for the
    device): the terms stay on the device and are read at log steps, the epoch's end and
    checkpoints (``sync_point``), except in ``train.on_nonfinite: skip``, which must look at each
    step's loss before its update (:class:`~jef.run.accumulation.Accumulation`).

    Returns:
        The epoch's mean loss terms, and whether the epoch's data is exhausted.
    """
    accelerator, options = run.accelerator, run.pipeline.train
    loader.set_epoch(run.epoch)
    batches = loader
    if run.batch_in_epoch:  # resumed within the epoch
        batches = accelerator.skip_first_batches(loader, run.batch_in_epoch)
        batches.set_epoch(run.epoch)
    epoch_terms, step = EpochTerms(), Accumulation(run)
    started, images, step_images = time.perf_counter(), 0, 0
    for batch in batches:
        with accelerator.accumulate(run.model):
            step.start()
            result = as_step_result(hook.jef_train_step(run=run, batch=batch))
            accelerator.backward(result.loss)
            step.add(result)  # at the step's last micro-batch: its terms, and whether it updates
            if step.terms is not None and step.update:
                hook.jef_after_backward(run=run)
                if options.clip_grad_norm:
                    accelerator.clip_grad_norm_(run.model.parameters(), options.clip_grad_norm)
            if step.update:
                run.optimizer.step()
            if step.terms is not None:
                with warnings.catch_warnings():  # a skipped first step is not torch's misordering
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step",
                                            UserWarning)
                    run.scheduler.step()  # skipped steps count: the schedule keeps its length
            run.optimizer.zero_grad(set_to_none=True)
        run.batch_in_epoch += 1
        images += (batch_images := batch_size(batch) * run.ctx.world_size)
        step_images += batch_images
        terms = step.terms
        if terms is None:  # a micro-batch, not the step's last
            continue
        run.step += 1
        if step.update:
            run.skipped_in_a_row = 0
            hook.jef_step_end(run=run, outputs=result.outputs, terms=terms)
            epoch_terms.add(terms)
        if options.checkpoint_every_steps and run.step % options.checkpoint_every_steps == 0:
            save_run(run)
        rate = images / max(time.perf_counter() - started, 1e-9)
        bar.step(run.epoch, step_images, rate)
        step_images = 0
        if run.step % options.log_every == 0 or run.step == total:
            sync_point(run)
            record = log_record(run, terms if step.update else None, rate)
            logger.write(run.step, record)
            bar.logged(record)
        # Alone, a stop requested by a plugin stops now; with several processes, at a sync point.
        run.stopping = run.stopping or bool(run.stop_reason) and run.ctx.world_size == 1
        if run.step >= total or run.stopping:
            break
    finished = run.batch_in_epoch >= len(loader)
    sync_point(run)
    return epoch_terms.means(accelerator), finished
