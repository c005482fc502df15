"""Hook specifications: every hook jef calls, and the reference for plugin authors.

A plugin is a module (or object) with functions named after these hooks and
decorated with ``@jef.hookimpl``. Installed plugins are found through the
``jef`` entry-point group; built-ins are plugins of the same kind.

Two families of hooks:

* **Registration hooks** (``jef_register_*``) are called once on every loaded
  plugin. Each receives a ``register`` callable (typed by :class:`Register`, or :class:`RegisterMethod` and
  :class:`RegisterCommand`); jef owns the name table and records which plugin (and distribution, version)
  provided each name.
* **Run hooks** (``jef_run_start`` ... ``jef_run_end``) are called during
  ``jef train`` on the plugins *active in that run*: the built-ins, ``--plugin``
  files and plugin objects, the installed plugins the pipeline selected (its
  method's or its components'), and the components and monitors it built,
  which are registered for the run and unregistered after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from jef.registry import Register, RegisterCommand, RegisterMethod

if TYPE_CHECKING:
    import pluggy as _pluggy

    from jef.components import StepOutputs, StepResult
    from jef.run.state import Run

PROJECT = "jef"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
__all__ = ["PROJECT", "Register", "RegisterCommand", "RegisterMethod", "hookimpl", "hookspec"]


# -- Plugin set-up ---------------------------------------------------------------------------------


@hookspec(historic=True)
def jef_addhooks(pluginmanager: _pluggy.PluginManager) -> None:
    """Let a plugin publish hooks of its own.

    Called on every plugin as it is registered (historic: plugins registered
    later still receive it). Call ``pluginmanager.add_hookspecs(module)`` here.

    Args:
        pluginmanager: jef's plugin manager.
    """


# -- Registration hooks: called once on every loaded plugin ----------------------------------------


@hookspec
def jef_register_methods(register: RegisterMethod) -> None:
    """Register method recipes.

    ``recipe`` is a mapping or the path of a YAML file holding a partial
    pipeline (the defaults for every slot). Users select it with
    ``method: NAME``; their file and command-line overrides win over it.
    ``multi_crop=True`` declares that the method's objective is meant for
    local views too; without it, a pipeline with local views is refused.

    Args:
        register: Adds one method to jef's table (a :class:`RegisterMethod`).
    """


@hookspec
def jef_register_augmenters(register: Register) -> None:
    """Register augmenters (the views makers).

    ``factory(options, ctx)`` returns an ``nn.Module`` whose
    ``forward(images, generator=None)`` returns the list of views, with
    attributes ``n_views``, ``n_global`` and an ``eval_view(images)`` method.
    In a run the generator is in the same state on every process: so that
    ``W`` processes of ``B`` images see the views one process would make of
    the global batch, draw the random parameters for ``ctx.world_size × B``
    images and keep rows ``ctx.rank × B`` onwards (as the built-in ``views``
    does with ``ViewParams.shard``); otherwise the same parameters are used on
    every process's images.

    Args:
        register: Adds one augmenter to jef's table (a :class:`Register`).
    """


@hookspec
def jef_register_backbones(register: Register) -> None:
    """Register backbones (image -> representation ``h``).

    ``factory(options, ctx)`` returns an ``nn.Module`` with an ``out_dim``
    attribute, taking ``ctx.in_channels``-channel images.

    Args:
        register: Adds one backbone to jef's table (a :class:`Register`).
    """


@hookspec
def jef_register_heads(register: Register) -> None:
    """Register heads, used as projectors (``h -> z``) or predictors (``z -> p``).

    ``factory(options, ctx)`` returns an ``nn.Module`` taking ``ctx.in_dim``
    features, with an ``out_dim`` attribute.

    Args:
        register: Adds one head to jef's table (a :class:`Register`).
    """


@hookspec
def jef_register_energies(register: Register) -> None:
    """Register energies D: per-sample distances between two embeddings.

    ``factory(options, ctx)`` returns an ``nn.Module`` with
    ``forward(a, b) -> Tensor[N]``; ``a`` is
    ``ctx.online_dim`` wide, ``b`` ``ctx.target_dim`` (``ctx.in_dim``).

    Args:
        register: Adds one energy to jef's table (a :class:`Register`).
    """


@hookspec
def jef_register_functionals(register: Register) -> None:
    """Register functionals A/B: batch-level loss terms over all embeddings.

    ``factory(options, ctx)`` returns an ``nn.Module`` whose
    ``forward(out: StepOutputs)`` returns a scalar or a dict of named scalars.
    Terms over the global batch must use ``jef.dist.gather``. The widths of the
    online outputs and target embeddings are ``ctx.online_dim`` and ``ctx.target_dim``.

    Args:
        register: Adds one functional to jef's table (a :class:`Register`).
    """


@hookspec
def jef_register_targets(register: Register) -> None:
    """Register target makers (``target:``): how the target branch is made from the online network.

    ``factory(options, ctx)`` returns a :class:`jef.components.Target`; it may implement run hooks (the
    ``ema`` target moves its momentum copy in ``jef_step_end``).

    Args:
        register: Adds one target maker to jef's table (a :class:`Register`).
    """


@hookspec
def jef_register_maskers(register: Register) -> None:
    """Register maskers (``masker:``): per-sample token masks for masked methods (data2vec, I-JEPA, MAE).

    ``factory(options, ctx)`` returns an ``nn.Module`` whose ``forward(view, generator=None)`` returns a
    :class:`jef.components.Masks` on the patch grid of ``ctx.patch_size``; like an augmenter it draws for
    ``ctx.world_size × B`` samples from the run's generator and keeps rows ``ctx.rank × B`` onwards.

    Args:
        register: Adds one masker to jef's table (a :class:`Register`).
    """


@hookspec
def jef_register_tokenizers(register: Register) -> None:
    """Register tokenizers (``encoders.<name>.tokenizer``): text -> token ids for a text encoder (CLIP, SigLIP).

    ``factory(options, ctx)`` returns an ``nn.Module`` (no parameters; its state, e.g. a vocabulary, in
    ``get_extra_state``) with ``context_length``, ``vocab_size``, ``encode(texts) -> LongTensor [B, L]`` (padding
    ``pad_id``), and optionally ``fit(texts)`` to learn its state from the training split's texts.

    Args:
        register: Adds one tokenizer to jef's table (a :class:`Register`).
    """


@hookspec
def jef_register_datasets(register: Register) -> None:
    """Register datasets.

    ``factory(options, ctx)`` returns a :class:`jef.components.DataSplits`.

    Args:
        register: Adds one dataset to jef's table (a :class:`Register`).
    """


@hookspec
def jef_register_monitors(register: Register) -> None:
    """Register monitors: objects that watch a run through the run hooks.

    ``factory(options, ctx)`` returns an object with ``@jef.hookimpl``
    methods; it is registered as a plugin only while a run that selected it
    is going on.

    Args:
        register: Adds one monitor to jef's table (a :class:`Register`).
    """


@hookspec
def jef_register_commands(register: RegisterCommand) -> None:
    """Register sub-commands of the ``jef`` command line.

    ``arguments(parser)`` adds the command's options to an
    ``argparse.ArgumentParser``; ``handler(args) -> int`` runs it and returns
    the exit status.

    Args:
        register: Adds one command to jef's table (a :class:`RegisterCommand`).
    """


# -- Run hooks: called during a run on the plugins active in it ------------------------------------


@hookspec
def jef_run_start(run: Run) -> None:
    """Called once after the model, optimiser and data are prepared, before the first step.

    Args:
        run: The run: its context, pipeline, model, optimiser, accelerator and counters.
    """


@hookspec(firstresult=True)
def jef_train_step(run: Run, batch: Any) -> StepResult | None:
    """Compute the loss of one batch (forward only; the loop does backward).

    Stops at the first non-None result. jef's built-in implementation is
    ``trylast``: it augments the batch, runs both branches and evaluates the
    objective; a plugin the pipeline selected (its method or one of its
    components) that returns a result replaces it.

    Args:
        run: The run.
        batch: What the data loader yielded: ``(images, labels, indices)``.

    Returns:
        A :class:`~jef.components.StepResult`: ``loss`` (scalar tensor to
        back-propagate), ``terms`` (dict of named scalar tensors for logging)
        and ``outputs`` (:class:`~jef.components.StepOutputs` or None); or
        None to defer. A dict with those keys is accepted, with a
        DeprecationWarning, for one release.
    """


@hookspec
def jef_after_backward(run: Run) -> None:
    """Called after the backward pass and before the optimiser step.

    The place to edit gradients (e.g. zero the gradient of a frozen layer).

    Args:
        run: The run.
    """


@hookspec
def jef_step_end(run: Run, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
    """Called after each optimiser step (EMA update, queue enqueue, monitors).

    Args:
        run: The run; ``run.step`` is the number of optimiser steps done.
        outputs: The step's model outputs (detach before keeping them).
        terms: The step's loss terms, a mapping of floats averaged over processes that is read from the
            device only when a value is first accessed (``jef.run.terms.StepTerms``). Reading one stalls the
            step on a GPU and, with several processes, is an all-reduce every process must then do: read them
            only on steps where you need them (e.g. every N steps, on every process alike).
    """


@hookspec
def jef_epoch_end(run: Run, epoch: int, metrics: dict[str, float]) -> None:
    """Called at the end of each epoch, before its checkpoint (so what the hooks change is in it).

    Args:
        run: The run.
        epoch: The epoch just finished (0-based).
        metrics: Averages of the epoch's logged terms; hooks may add entries.
    """


@hookspec
def jef_run_end(run: Run, metrics: dict[str, float]) -> None:
    """Called once when training finished, after the final checkpoint.

    Args:
        run: The run.
        metrics: The final metrics (e.g. ``knn_top1``); hooks may add entries.
    """
