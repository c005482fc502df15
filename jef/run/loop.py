"""The training loop, in the shape of Accelerate's examples.

Runs unchanged on:
  - CPU:               jef train pipeline.yaml
  - one GPU:           jef train pipeline.yaml
  - several GPUs:      accelerate launch --multi_gpu -m jef train pipeline.yaml
  - several nodes:     accelerate launch --num_machines N ... -m jef train pipeline.yaml

Build everything, one ``accelerator.prepare(...)``, then a plain loop with the
run hooks at named points: ``jef_run_start``, ``jef_train_step`` (the loss),
``jef_after_backward``, ``jef_step_end``, ``jef_epoch_end``, ``jef_run_end``.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from jef.run.checkpoint import save_run
from jef.components import RunContext
from jef.config import Pipeline
from jef.run.sampler import EpochSampler
from jef.evaluate.protocols import evaluate_backbone, write_evaluation
from jef.run.faults import RunInterrupted, handle_nonfinite, keep_buffers, nonfinite_terms, stop_on_signals, sync_point
from jef.run.launch import check_process_count
from jef.run.optim import build_optimizer, lr_lambdas
from jef.model.build import build, build_data
from jef.plugins import Plugins, get_plugins
from jef.run.directory import RunDir, claim_run_dir
from jef.run.state import Run, run_plugins
from jef.run.log import MetricsLogger, plugin_listing
from jef.run.terms import EpochTerms, on_host, step_terms
from jef.config.validate import ConfigError

__all__ = ["Run", "train"]


def train(pipeline: Pipeline, *, run_dir: str | Path | None = None, resume: bool | Literal["force"] = False,
          overwrite: bool = False, plugins: Plugins | None = None, cpu: bool | None = None) -> dict[str, float]:
    """Train ``pipeline``; return the final metrics (loss terms, ``knn_top1`` when labelled).

    Args:
        pipeline: The validated pipeline.
        run_dir: Where the checkpoint, metrics and resolved pipeline go (default ``runs/<file stem>``).
        resume: Continue the run directory's run; refused when the pipeline differs, unless ``"force"``.
        overwrite: Move a run already in the run directory aside (``NAME.old-<time>``); else it is refused.
        plugins: Loaded plugins (default: the installed ones).
        cpu: Force the CPU (default: a GPU when there is one).

    Raises:
        jef.run.faults.RunInterrupted: SIGTERM or SIGINT stopped the run after its checkpoint was written.
        jef.run.faults.NonFiniteLossError: The loss went NaN/inf (``train.on_nonfinite: stop``); no checkpoint was
            written after that step.
        jef.run.directory.RunDirError, jef.run.checkpoint.CheckpointError: The run directory or its checkpoint is unusable.
    """
    plugins = plugins or get_plugins()
    train_options = pipeline.train
    AcceleratorState._reset_state()  # let several runs with different precisions share a process
    GradientState._reset_state()
    use_cpu = cpu if cpu is not None else not torch.cuda.is_available()
    if use_cpu and train_options.precision == "fp16":
        raise ConfigError("fp16 needs a GPU; use bf16 on CPU", path="train.precision", source=pipeline.source)
    # The schedule is defined in optimiser steps: step it once per optimiser step, whatever the world size.
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=train_options.precision,
                              gradient_accumulation_steps=train_options.grad_accum,
                              step_scheduler_with_optimizer=False)
    check_process_count(accelerator.num_processes, source=pipeline.source)  # before anything is written
    torch.manual_seed(pipeline.seed + accelerator.process_index)
    with claim_run_dir(pipeline, run_dir, accelerator, resume=resume, overwrite=overwrite) as claim:
        return _train(pipeline, plugins, accelerator, claim)  # locked until it returns or raises


def _train(pipeline: Pipeline, plugins: Plugins, accelerator: Accelerator, claim: RunDir) -> dict[str, float]:
    train_options, directory = pipeline.train, claim.directory
    ctx = RunContext(seed=pipeline.seed, device=str(accelerator.device), world_size=accelerator.num_processes,
                     rank=accelerator.process_index, batch_size=train_options.batch_size,
                     global_batch_size=train_options.batch_size * accelerator.num_processes,
                     epochs=train_options.epochs, precision=train_options.precision, run_dir=directory)
    splits = build_data(pipeline, ctx)  # first: the number of steps depends on the data's size
    per_epoch = len(splits.train) // (ctx.global_batch_size * train_options.grad_accum)
    if per_epoch == 0:
        raise ConfigError(f"data {pipeline.data.name!r} has {len(splits.train)} images, fewer than one step's "
                          f"{ctx.global_batch_size * train_options.grad_accum}; lower train.batch_size",
                          path="train.batch_size", source=pipeline.source)
    total = min(per_epoch * train_options.epochs, train_options.max_steps or sys.maxsize)  # None: no cap
    if (complete := claim.already_complete(total)) is not None:  # resumed a finished run: nothing to do
        return complete
    built = build(pipeline, attrs.evolve(ctx, steps_per_epoch=per_epoch, total_steps=total), splits)
    ctx = built.ctx
    random_backbone = copy.deepcopy(built.model.backbone) if pipeline.eval.knn.baseline else None

    sampler = EpochSampler(len(built.splits.train), seed=pipeline.seed)
    # Its own generator: otherwise each new iterator (each epoch, a resumed epoch) draws from the global RNG, which
    # the step's own randomness (MoCo's shuffled BN) uses, and a resumed run would drift from an uninterrupted one.
    loader = DataLoader(built.splits.train, batch_size=train_options.batch_size, sampler=sampler, drop_last=True,
                        num_workers=train_options.num_workers, persistent_workers=train_options.num_workers > 0,
                        generator=torch.Generator().manual_seed(pipeline.seed))
    # Linear scaling follows the batch of one optimiser step, accumulation included.
    step_batch = ctx.global_batch_size * train_options.grad_accum
    optimizer = build_optimizer(built.model, train_options.optimizer, step_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambdas(optimizer, train_options.scheduler, per_epoch, total))
    model, optimizer, loader, scheduler = accelerator.prepare(built.model, optimizer, loader, scheduler)
    augmenter = built.augmenter.to(accelerator.device)
    generator = torch.Generator().manual_seed(pipeline.seed * 1000)  # alike everywhere: views of the global batch
    run = Run(ctx, pipeline, accelerator, model, augmenter, optimizer, scheduler,
              directory if accelerator.is_main_process else None, generator, built.splits, built.monitors)
    logger = claim.open(run, plugin_listing(plugins))  # restores the checkpoint, writes the run's files, says where
    metrics: dict[str, float] = {}
    with run_plugins(plugins, [*built.components.values(), *built.monitors], pipeline) as hook:
        if random_backbone is not None:
            metrics["knn_top1_random"] = _knn(run, random_backbone.to(accelerator.device), built.splits)
        hook.jef_run_start(run=run)
        bar = tqdm(total=total, initial=run.step, disable=not (train_options.progress and accelerator.is_main_process),
                   desc=f"train {pipeline.method.name if pipeline.method else 'pipeline'}", unit="step",
                   mininterval=0.5)
        with stop_on_signals(run) as received:  # a signal stops the run after the step, on every process
            try:
                while run.step < total and not run.stopping:
                    epoch_terms, finished = _train_epoch(run, loader, hook, bar, logger, total)
                    metrics.update(epoch_terms)
                    if finished:
                        epoch, run.epoch, run.batch_in_epoch = run.epoch, run.epoch + 1, 0
                        hook.jef_epoch_end(run=run, epoch=epoch, metrics=epoch_terms)
                        logger.write(run.step, {f"epoch/{k}": v for k, v in epoch_terms.items()})
                        if (epoch + 1) % train_options.checkpoint_every == 0:  # after the hooks: their state too
                            save_run(run)
            except KeyboardInterrupt:
                save_run(run)  # raised by a plugin (jef.testing.InterruptAt): the run resumes from here with --resume
                raise
            finally:
                bar.close()
            if run.checkpoint_step != run.step:  # the last epoch's checkpoint may already hold this step
                save_run(run)
        if received:  # SIGTERM/SIGINT: checkpoint written; no evaluation, the job is being stopped
            raise RunInterrupted(received["signal"], run.step, directory)
        if run.stop_reason:
            tqdm.write(f"jef: run stopped at step {run.step}: {run.stop_reason}; checkpoint saved in {directory}",
                       file=sys.stderr)
        if built.splits.labelled and built.splits.test is not None:  # the offline protocols enabled in `eval:`
            results = evaluate_backbone(run.unwrapped_model.backbone, built.splits, augmenter.eval_view,
                                        pipeline.eval, accelerator.device, seed=pipeline.seed)
            metrics.update({result.key: result.value for result in results})
            if run.directory is not None and results:
                write_evaluation(run.directory, results, step=run.step)
        hook.jef_run_end(run=run, metrics=metrics)
        logger.write(run.step, {f"final/{k}": v for k, v in metrics.items()})
    accelerator.wait_for_everyone()  # none tears the group down while another still uses it
    accelerator.end_training()  # the claim of the run directory closes the logger, however the run ends
    return metrics


def _train_epoch(run: Run, loader: Any, hook: Any, bar: Any, logger: MetricsLogger,
                 total: int) -> tuple[dict[str, float], bool]:
    """Train until the epoch ends or the run's steps are done.

    Nothing here reads a tensor on the host at every step (that would make the host wait for the device): the
    terms stay on the device and are read at log steps, the epoch's end and checkpoints (``sync_point``), except in
    ``train.on_nonfinite: skip``, which must look at each step's loss before its update.

    Returns:
        The epoch's mean loss terms, and whether the epoch's data is exhausted.
    """
    accelerator, options = run.accelerator, run.pipeline.train
    skip_mode = options.on_nonfinite == "skip"
    loader.set_epoch(run.epoch)
    batches = accelerator.skip_first_batches(loader, run.batch_in_epoch) if run.batch_in_epoch else loader
    if run.batch_in_epoch:
        batches.set_epoch(run.epoch)
    epoch_terms, started, images, accumulated = EpochTerms(), time.perf_counter(), 0, None
    for batch in batches:
        if skip_mode and accumulated is None:  # before the step's first forward pass: a skipped step is undone
            keep_buffers(run)
        with accelerator.accumulate(run.model):
            result = hook.jef_train_step(run=run, batch=batch)
            accelerator.backward(result["loss"])
            loss = result["loss"].detach()  # the sum keeps a NaN of any micro-batch visible
            accumulated = loss if accumulated is None else accumulated + loss
            bad: list[str] = []
            if accelerator.sync_gradients:
                terms, accumulated = step_terms(result, accumulated, accelerator), None
                if skip_mode:  # the update depends on this step's loss: read it now (a sync per step)
                    bad = nonfinite_terms(terms.floats())
                else:  # remembered on the device, read at the next sync point
                    run.nonfinite.observe(run.step + 1, terms.names, terms.values)
                if bad:  # before the update, so a non-finite step never reaches the weights
                    handle_nonfinite(run, run.step + 1, terms.floats(), bad)  # raises after too many in a row
                else:
                    hook.jef_after_backward(run=run)
                    if options.clip_grad_norm:
                        accelerator.clip_grad_norm_(run.model.parameters(), options.clip_grad_norm)
            if not bad:
                run.optimizer.step()
            if accelerator.sync_gradients:
                with warnings.catch_warnings():  # a skipped first step is not the misordering torch warns of
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                    run.scheduler.step()  # skipped steps count: the schedule keeps its length
            run.optimizer.zero_grad(set_to_none=True)
        run.batch_in_epoch += 1
        images += batch[0].shape[0] * run.ctx.world_size
        if not accelerator.sync_gradients:
            continue
        run.step += 1
        if not bad:
            run.skipped_in_a_row = 0
            hook.jef_step_end(run=run, outputs=result.get("outputs"), terms=terms)
            epoch_terms.add(terms)
        if options.checkpoint_every_steps and run.step % options.checkpoint_every_steps == 0:
            save_run(run)
        bar.update(1)
        if run.step % options.log_every == 0 or run.step == total:
            sync_point(run)
            rate = images / max(time.perf_counter() - started, 1e-9)
            record = {**({} if bad else terms.floats()), "lr": run.scheduler.get_last_lr()[0],
                      "images_per_s": rate, "epoch": run.epoch, **on_host(run.pending)}
            run.pending.clear()
            logger.write(run.step, record)
            run.history.append({"step": run.step, **record})
            bar.set_postfix(epoch=run.epoch, loss=f"{record.get('loss', float('nan')):.4f}", img_s=f"{rate:.0f}")
        run.stopping = run.stopping or bool(run.stop_reason) and run.ctx.world_size == 1  # alone: stop now
        if run.step >= total or run.stopping:
            break
    finished = run.batch_in_epoch >= len(loader)
    sync_point(run)
    return epoch_terms.means(accelerator), finished


def _knn(run: Run, backbone: torch.nn.Module, splits: Any) -> float:
    from jef.evaluate import knn_evaluate

    options = run.pipeline.eval.knn
    return knn_evaluate(backbone, splits, run.augmenter.eval_view, k=options.k, temperature=options.temperature,
                        batch_size=options.batch_size, device=run.accelerator.device)
