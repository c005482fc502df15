"""Registration hooks (``jef_register_*``) and ``jef_addhooks``: called once on every loaded plugin.

Re-exported by :mod:`jef.hookspecs`; see there for the two families of hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jef.hookspecs._markers import hookspec
from jef.registry import Register, RegisterCommand, RegisterMethod

if TYPE_CHECKING:
    import pluggy as _pluggy

__all__ = ["Register", "RegisterCommand", "RegisterMethod"]


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
def jef_register_loggers(register: Register) -> None:
    """Register loggers (``loggers:``): where a run's metrics go beside ``metrics.jsonl`` (TensorBoard, CSV, ...).

    ``factory(options, ctx)`` returns an object, built on the main process only, with
    ``open(directory, resumed_from)`` (the run directory; the step a resumed run restarts from, or None: a
    resumed logger drops or hides what it holds after that step, so the history is not doubled),
    ``write(step, metrics)`` (a mapping of floats, and the odd string, as in ``metrics.jsonl``),
    ``hparams(pipeline, metrics)`` (the resolved pipeline as plain data and the final metrics, once, at the
    run's end) and ``close()``; optionally ``images(step, tag, images)`` (a float tensor ``[N, C, H, W]`` in
    ``[0, 1]``: a grid of the run's views, once per epoch) and ``loss_terms(names)`` (before ``open``: the
    pipeline's functional names, whose keys, like ``energy/...``, are loss terms). ``metrics.jsonl`` is written
    whatever the loggers.

    Args:
        register: Adds one logger to jef's table (a :class:`Register`).
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


