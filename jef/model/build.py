"""Build the joint-embedding model and its objective from a :class:`~jef.config.Pipeline`.

Components are made by their registered factories in dependency order (data, augmenter, backbone, heads,
energy and functionals, target, monitors); the checks that need several of them at once (multi-crop
support, a target maker for an energy that needs one, the widths an energy compares) run here, before
anything trains, and name the YAML paths. The model and objective themselves are in :mod:`jef.model.joint`.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import attrs
import torch
from torch import nn

from jef.components import DataSplits, RunContext, Term
from jef.config.pipeline import Pipeline, Slot
from jef.config.validate import ConfigError
from jef.model.joint import JointEmbedding, Objective
from jef.model.masked import check_masked, check_patches, check_unmasked
from jef.model.sync_bn import convert_sync_batchnorm
from jef.model.slots import head_width as _out_dim
from jef.model.slots import make_component as _make
from jef.model.tower_build import build_towers, online_view_positions, view_context
from jef.model.targets import EmaTarget
from jef.model.weights import find_weights, load_weights

__all__ = ["Built", "EmaTarget", "JointEmbedding", "Objective", "build", "build_data", "check"]


@attrs.define
class Built:
    """Everything a run builds from a pipeline before Accelerate prepares it."""

    ctx: RunContext
    splits: DataSplits
    augmenter: nn.Module
    model: JointEmbedding
    monitors: list[Any]
    components: dict[str, Any]


def build_data(pipeline: Pipeline, ctx: RunContext) -> DataSplits:
    """The pipeline's data splits."""
    return _make(pipeline.data, ctx, pipeline, "data")


def build(pipeline: Pipeline, ctx: RunContext, splits: DataSplits | None = None, *, weights: bool = True) -> Built:
    """Build data (unless given), augmenter, model (with objective) and monitors in dependency order.

    ``ctx`` is refined as facts become known: channels and image size from the
    data, view counts from the augmenter, ``in_dim`` for each head, the widths
    of the online output and the target embedding for energies and functionals.

    With ``backbone.weights`` the backbone starts from that file (:mod:`jef.model.weights`), before the EMA
    target copies it; process 0 prints what was loaded. ``weights=False`` skips the file (a model whose
    weights come from a checkpoint next: a resumed run, a finished run opened for evaluation), which then
    need not exist any more.

    Raises:
        ConfigError: The components do not fit together (local views for a method without multi-crop, an energy
            without the target maker it needs, an online output whose width the energy cannot compare with the
            target's); the message names the YAML paths.
        BuildError: A component's factory failed.
        jef.model.weights.WeightsError: The weights file does not fit the backbone (a ``ConfigError``).
    """
    splits = splits if splits is not None else build_data(pipeline, ctx)
    ctx = attrs.evolve(ctx, in_channels=splits.channels, image_size=splits.image_size, train_size=len(splits.train))
    ctx, augmenter, model, monitors, components = _build_model(pipeline, ctx, weights=weights, splits=splits)
    return Built(ctx, splits, augmenter, model, monitors, components)


def check(pipeline: Pipeline, ctx: RunContext | None = None) -> RunContext:
    """Build every component but the data, on the CPU, to run every check :func:`build` runs (``jef config show``).

    The data is not loaded (it may be large, remote or not on this machine): its channels, image size and
    training-set size come from the data's options where it declares them (``channels``, ``image_size``,
    ``subset_train`` or ``train_size``) and are stand-ins otherwise, and ``ctx.dry_run`` tells factories so.
    Nothing is trained or written; a ``backbone.weights`` file must exist but is not read. Returns the refined
    context (``online_dim``, ``target_dim`` for the energy and functionals).

    Raises:
        ConfigError, BuildError: As :func:`build`.
    """
    train = pipeline.train
    ctx = ctx or RunContext(seed=pipeline.seed, batch_size=train.batch_size, global_batch_size=train.batch_size,
                            epochs=train.epochs, precision=train.precision)
    options = pipeline.data.options
    train_size = _declared(options, "subset_train", _declared(options, "train_size", ctx.train_size))
    ctx = attrs.evolve(ctx, dry_run=True, in_channels=_declared(options, "channels", ctx.in_channels),
                       image_size=_declared(options, "image_size", ctx.image_size), train_size=train_size)
    return _build_model(pipeline, ctx)[0]


def _declared(options: Any, name: str, default: int | None) -> int | None:
    """An integer the data's options declare (``channels: 1``), else ``default``."""
    value = getattr(options, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _build_model(pipeline: Pipeline, ctx: RunContext, *, weights: bool = True, splits: DataSplits | None = None
                 ) -> tuple[RunContext, nn.Module, JointEmbedding, list[Any], dict[str, Any]]:
    """Augmenter, model (with objective), monitors and the named components, for data facts already in ``ctx``.

    ``splits`` (None in a dry run) lets the encoders check their fields and fit their tokenizers."""
    augmenter = _make(pipeline.augmenter, ctx, pipeline, "augmenter")
    ctx = attrs.evolve(ctx, n_views=augmenter.n_views, n_global=augmenter.n_global,
                       image_size=getattr(augmenter, "size", ctx.image_size))
    _check_multi_crop(pipeline, augmenter)
    towers = build_towers(pipeline, ctx, augmenter, splits, weights=weights, start=_start_backbone)
    online_views = online_view_positions(pipeline, augmenter, towers)
    # From here ctx.in_channels is the online backbone's (CMC's L view: 1), which exports record.
    ctx = view_context(pipeline, ctx, augmenter, online_views, "backbone")
    backbone = _make(pipeline.backbone, ctx, pipeline, "backbone")
    if weights:
        _start_backbone(pipeline, backbone, ctx)  # before the model is made: an EMA target copies the backbone
    patch_size = getattr(backbone, "patch_size", None)
    ctx = attrs.evolve(ctx, patch_size=patch_size if isinstance(patch_size, int) else None)
    masker = None
    if pipeline.masker is not None:
        check_patches(pipeline, ctx.patch_size)
        masker = _make(pipeline.masker, ctx, pipeline, "masker")
    h_dim = z_dim = backbone.out_dim
    projector = predictor = None
    if pipeline.projector is not None:
        projector = _make(pipeline.projector, attrs.evolve(ctx, in_dim=h_dim), pipeline, "projector")
        z_dim = _out_dim(pipeline.projector, projector, h_dim)
    online_dim = z_dim
    if pipeline.predictor is not None:
        predictor = _make(pipeline.predictor, attrs.evolve(ctx, in_dim=z_dim), pipeline, "predictor")
        online_dim = _out_dim(pipeline.predictor, predictor, z_dim)
    target = _make(pipeline.target, ctx, pipeline, "target")
    # A target without its own projector (an EMA copy of the backbone only) compares backbone features.
    target_dim = z_dim if target.projected else h_dim
    if getattr(target, "encoder", None) in towers:  # a named encoder's own output (the tower target)
        target_dim = towers[target.encoder].out_dim
    # Energies and functionals see both widths; ``in_dim`` stays the target's (a queue sizes its buffer with it
    # before any batch, so that a checkpoint can be loaded into it).
    z_ctx = attrs.evolve(ctx, in_dim=target_dim, online_dim=online_dim, target_dim=target_dim)
    energy = Term(pipeline.energy.name, _make(pipeline.energy, z_ctx, pipeline, "energy"), pipeline.energy.weight
                  ) if pipeline.energy else None
    functionals = [Term(s.name, _make(s, z_ctx, pipeline, f"functionals.{i}"), s.weight)
                   for i, s in enumerate(pipeline.functionals)]
    _check_target_maker(pipeline, energy, functionals)
    if masker is not None:
        if towers:
            raise ConfigError("a masked pipeline (masker:) with named encoders (encoders:) is not supported: the "
                              "masked path encodes every view with the online backbone; drop one of them",
                              path="encoders", source=pipeline.source)
        check_masked(pipeline, backbone, masker, predictor, target, functionals)
    else:
        check_unmasked(pipeline, projector, predictor, functionals)
    _check_widths(pipeline, energy, functionals, online_dim, target_dim, target.projected)
    objective = Objective(energy, functionals)
    n_global = sum(1 for i in online_views if i < augmenter.n_global)
    model = JointEmbedding(backbone, projector, predictor, objective, target, n_global, masker, towers,
                           backbone_calls=pipeline.model.backbone_calls)
    if pipeline.train.sync_bn and ctx.world_size > 1:
        _sync_batch_norm(model)
    monitors = [_make(s, ctx, pipeline, f"monitors.{i}") for i, s in enumerate(pipeline.monitors)]
    # The target last: a run registers its objects in this order, and pluggy calls the newest first, so the
    # EMA target moves at a step's end before the other components' and the monitors' jef_step_end.
    components = {"augmenter": augmenter, "backbone": backbone, "masker": masker, "projector": projector,
                  "predictor": predictor,
                  "energy": energy.module if energy else None,
                  **{f"functionals.{i}": term.module for i, term in enumerate(functionals)},
                  **{f"encoders.{name}.{part}": getattr(tower, part) for name, tower in towers.items()
                     for part in ("tokenizer", "backbone", "projector")}, "target": target}
    return z_ctx, augmenter, model, monitors, components


def _start_backbone(pipeline: Pipeline, backbone: nn.Module, ctx: RunContext, slot: Slot | None = None) -> None:
    """Load ``backbone.weights`` (or a named encoder's) into the new backbone; a dry run (``jef config show``) only
    checks it is there."""
    slot = slot if slot is not None else pipeline.backbone
    if slot.weights is None:
        return
    if ctx.dry_run:
        find_weights(slot.weights, source=pipeline.source)
        return
    report = load_weights(backbone, slot.weights, strict=slot.weights_strict, source=pipeline.source)
    if ctx.rank == 0:  # one line per run, not one per process
        if report.missing:  # only without weights_strict: with it, missing keys were an error
            warnings.warn(report.line(), stacklevel=2)
        else:
            print(report.line(), file=sys.stderr)


def _sync_batch_norm(model: JointEmbedding) -> None:
    """Make the model's BatchNorms compute statistics over the global batch (``train.sync_bn``).

    With MoCo's shuffling BN the key encoder is left alone: its BatchNorm statistics must come from one
    shuffled group of samples, and each process *is* a group; synchronising them would give every key the
    statistics of the whole batch, its query's samples included, the leak shuffling BN exists to prevent.
    """
    for name, child in list(model.named_children()):
        if not (model.shuffle_bn and name in ("target_backbone", "target_projector")):
            setattr(model, name, convert_sync_batchnorm(child))


def _check_multi_crop(pipeline: Pipeline, augmenter: nn.Module) -> None:
    """Local views only with a method that declares multi-crop support (or with no method)."""
    method = pipeline.method
    n_local = augmenter.n_views - augmenter.n_global
    if n_local and method is not None and not method.extra.get("multi_crop", False):
        raise ConfigError(
            f"method {method.name!r} ({method.provenance}) does not declare multi-crop support, but the augmenter "
            f"makes {n_local} local view(s); set augmenter.n_local: 0, or drop `method:` and name every slot "
            f"yourself if you know the objective handles local views", path="augmenter", source=pipeline.source)


def _check_target_maker(pipeline: Pipeline, energy: Term | None, functionals: list[Term]) -> None:
    """An energy that compares with made targets (distributions) needs a functional that makes them."""
    if energy is None or not getattr(energy.module, "needs_target_maker", False):
        return
    if not any(callable(getattr(term.module, "targets", None)) for term in functionals):
        raise ConfigError(
            f"energy {energy.name!r} compares the online outputs with target distributions, but no functional makes "
            f"targets (a functional with a `targets` method, e.g. Sinkhorn codes or centred teacher "
            f"probabilities); add one under `functionals:`", path="energy", source=pipeline.source)


def _check_widths(pipeline: Pipeline, energy: Term | None, functionals: list[Term], online_dim: int,
                  target_dim: int, projected: bool) -> None:
    """The energy compares online outputs with target embeddings: when their widths differ, ask it now.

    One call on two random rows of each width (CPU, no gradient): an energy that compares embeddings of different
    widths on purpose passes; one that cannot fails here, naming both YAML paths, rather than at the first step.
    Skipped when a functional makes the targets (it changes what the energy compares).
    """
    if energy is None or online_dim == target_dim or any(callable(getattr(term.module, "targets", None))
                                                         for term in functionals):
        return
    generator = torch.Generator().manual_seed(0)  # not the global RNG: checking must not change the run
    a, b = torch.randn(2, online_dim, generator=generator), torch.randn(2, target_dim, generator=generator)
    try:
        with torch.no_grad():
            energy.module(a, b)
    except Exception as error:
        (slot, online), (_, target) = (_width_path(pipeline, online=True, projected=projected),
                                       _width_path(pipeline, online=False, projected=projected))
        detail = (str(error).strip().splitlines() or [""])[0]
        advice = f"set {online} to {target_dim}" if online != slot else f"make {slot}'s output {target_dim} wide"
        raise ConfigError(
            f"the online output is {online_dim} wide ({online}) but the target embedding is {target_dim} wide "
            f"({target}), and energy {energy.name!r} cannot compare them ({type(error).__name__}: {detail}); "
            f"{advice}, the width of {target}", path=slot, source=pipeline.source) from error


def _width_path(pipeline: Pipeline, *, online: bool, projected: bool) -> tuple[str, str]:
    """The slot, and the YAML path in it, that set the width of the online output or of the target embedding."""
    if online and pipeline.predictor is not None:
        path, slot = "predictor", pipeline.predictor
    elif pipeline.projector is not None and (online or projected):
        path, slot = "projector", pipeline.projector
    else:
        path, slot = "backbone", pipeline.backbone
    fields = {field.name for field in attrs.fields(type(slot.options))} if attrs.has(type(slot.options)) else set()
    if "dims" in fields:
        return path, f"{path}.dims[-1]"
    return path, f"{path}.out_dim" if "out_dim" in fields else path
