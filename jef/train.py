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
import math
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

from jef.checkpoint import CHECKPOINT_NAME, check_resumable, load_checkpoint, restore_run, save_run
from jef.components import RunContext
from jef.config import Pipeline
from jef.data_order import EpochSampler
from jef.evaluate.protocols import evaluate_backbone, write_evaluation
from jef.faults import RunInterrupted, handle_nonfinite, nonfinite_terms, stop_on_signals
from jef.optim import build_optimizer, lr_lambdas
from jef.pipeline import build, build_data
from jef.plugins import Plugins, get_plugins
from jef.run_state import Run, run_plugins
from jef.runlog import MetricsLogger, plugin_listing, write_run_files
from jef.validate import ConfigError

__all__ = ["Run", "train"]


def train(pipeline: Pipeline, *, run_dir: str | Path | None = None, resume: bool | Literal["force"] = False,
          plugins: Plugins | None = None, cpu: bool | None = None) -> dict[str, float]:
    """Train ``pipeline``; return the final metrics (loss terms, ``knn_top1`` when labelled).

    Args:
        pipeline: The validated pipeline.
        run_dir: Where the checkpoint, metrics and resolved pipeline go (default ``runs/<file stem>``).
        resume: Continue from the run directory's checkpoint; refused when the pipeline differs from the one
            that wrote it, unless ``"force"``.
        plugins: Loaded plugins (default: the installed ones).
        cpu: Force the CPU (default: a GPU when there is one).

    Raises:
        jef.faults.RunInterrupted: SIGTERM or SIGINT stopped the run after its checkpoint was written.
        jef.faults.NonFiniteLossError: The loss went NaN/inf (``train.on_nonfinite: stop``); nothing was saved.
        jef.checkpoint.CheckpointError: The checkpoint to resume is unreadable or from another pipeline.
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
    torch.manual_seed(pipeline.seed + accelerator.process_index)
    directory = Path(run_dir or pipeline.run_dir or Path("runs") / Path(pipeline.source).stem).expanduser()
    resumed = None
    if resume:  # before anything is built or written: a refused resume leaves the run directory as it was
        resumed = load_checkpoint(directory / CHECKPOINT_NAME)
        check_resumable(resumed, pipeline.to_dict(), directory / CHECKPOINT_NAME, force=resume == "force")
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
    total = per_epoch * train_options.epochs
    if train_options.max_steps:
        total = min(total, train_options.max_steps)
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
    if resumed is not None:  # before the run directory is touched: a checkpoint that does not fit changes nothing
        restore_run(run, resumed)
    logger = MetricsLogger(directory, enabled=accelerator.is_main_process, tensorboard=train_options.tensorboard)
    if accelerator.is_main_process:
        write_run_files(directory, pipeline.to_dict(), plugin_listing(plugins))
    hook = plugins.manager.hook
    metrics: dict[str, float] = {}
    with run_plugins(plugins, [*built.components.values(), *built.monitors]):
        if random_backbone is not None:
            metrics["knn_top1_random"] = _knn(run, random_backbone.to(accelerator.device), built.splits)
        hook.jef_run_start(run=run)
        bar = tqdm(total=total, initial=run.step, disable=not (train_options.progress and accelerator.is_main_process),
                   desc=f"train {pipeline.method.name if pipeline.method else 'pipeline'}", unit="step",
                   mininterval=0.5)
        with stop_on_signals(run.request_stop) as received:
            try:
                while run.step < total and not run.stop_reason:
                    epoch_terms, finished = _train_epoch(run, loader, hook, bar, logger, total)
                    metrics.update(epoch_terms)
                    if finished:
                        epoch, run.epoch, run.batch_in_epoch = run.epoch, run.epoch + 1, 0
                        hook.jef_epoch_end(run=run, epoch=epoch, metrics=epoch_terms)
                        logger.write(run.step, {f"epoch/{k}": v for k, v in epoch_terms.items()})
                        if (epoch + 1) % train_options.checkpoint_every == 0:  # after the hooks: their state too
                            save_run(run)
            except KeyboardInterrupt:
                save_run(run)  # nothing lost: the run resumes from here with --resume
                raise
            finally:
                bar.close()
            if run.checkpoint_step != run.step:  # the last epoch's checkpoint may already hold this step
                save_run(run)
        if received:  # SIGTERM/SIGINT: checkpoint written; no evaluation, the job is being stopped
            logger.close()
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
    logger.close()
    accelerator.end_training()
    return metrics


def _train_epoch(run: Run, loader: Any, hook: Any, bar: Any, logger: MetricsLogger,
                 total: int) -> tuple[dict[str, float], bool]:
    """Train until the epoch ends or the run's steps are done.

    Returns:
        The epoch's mean loss terms, and whether the epoch's data is exhausted.
    """
    accelerator, options = run.accelerator, run.pipeline.train
    loader.set_epoch(run.epoch)
    batches = accelerator.skip_first_batches(loader, run.batch_in_epoch) if run.batch_in_epoch else loader
    if run.batch_in_epoch:
        batches.set_epoch(run.epoch)
    sums: dict[str, float] = {}
    count, started, images, accumulated = 0, time.perf_counter(), 0, 0.0
    for batch in batches:
        with accelerator.accumulate(run.model):
            result = hook.jef_train_step(run=run, batch=batch)
            accelerator.backward(result["loss"])
            accumulated = accumulated + result["loss"].detach()  # a NaN in any micro-batch stays visible
            bad: list[str] = []
            if accelerator.sync_gradients:
                terms = _reduced_terms(accelerator, result, accumulated)
                bad, accumulated = nonfinite_terms(terms), 0.0
                if bad:  # before the update, so a non-finite step never reaches the weights
                    handle_nonfinite(run, run.step + 1, terms, bad)  # raises unless train.on_nonfinite: skip
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
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
        if options.checkpoint_every_steps and run.step % options.checkpoint_every_steps == 0:
            save_run(run)
        if accelerator.check_trigger():  # some process asked to stop; all stop after the same step
            run.stop_reason = run.stop_reason or "stop requested by another process"
        rate = images / max(time.perf_counter() - started, 1e-9)
        bar.update(1)
        bar.set_postfix(epoch=run.epoch, loss=f"{terms['loss']:.4f}", img_s=f"{rate:.0f}")
        if run.step % options.log_every == 0 or run.step == total:
            record = {**({} if bad else terms), "lr": run.scheduler.get_last_lr()[0], "images_per_s": rate,
                      "epoch": run.epoch, **run.pending}
            run.pending.clear()
            logger.write(run.step, record)
            run.history.append({"step": run.step, **record})
        if run.step >= total or run.stop_reason:
            break
    finished = run.batch_in_epoch >= len(loader)
    return {k: v / max(count, 1) for k, v in sums.items()}, finished


def _reduced_terms(accelerator: Accelerator, result: dict[str, Any], accumulated: Any) -> dict[str, float]:
    """The step's loss terms, averaged over processes; ``loss`` is non-finite if any accumulated micro-batch was."""
    terms = {"loss": result["loss"].detach(), **{k: v.detach() for k, v in result["terms"].items()},
             "_accumulated": torch.as_tensor(accumulated, device=result["loss"].device)}
    terms = {k: float(v) for k, v in accelerator.reduce(terms, reduction="mean").items()}
    accumulated_loss = terms.pop("_accumulated")
    if not math.isfinite(accumulated_loss):  # an earlier micro-batch of this optimiser step went non-finite
        terms["loss"] = accumulated_loss
    return terms


def _knn(run: Run, backbone: torch.nn.Module, splits: Any) -> float:
    from jef.evaluate import knn_evaluate

    options = run.pipeline.eval.knn
    return knn_evaluate(backbone, splits, run.augmenter.eval_view, k=options.k, temperature=options.temperature,
                        batch_size=options.batch_size, device=run.accelerator.device)
