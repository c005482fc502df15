"""Build the joint-embedding model and its objective from a :class:`~jef.config.Pipeline`.

The objective of a step (see the architecture page)::

    L = w_D · mean_(a,b) mean_n D(p_a^n, t_b^n)  +  Σ_k w_k · F_k(outputs)

with ``p_a`` the online output of view ``a``, ``t_b`` the target embedding of
global view ``b`` and (a, b) every ordered pair of distinct views. The energy
term is averaged (not summed) over pairs so that its scale does not depend on
the number of views.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from jef.components import Branch, DataSplits, RunContext, StepOutputs
from jef.config.options import TargetOptions
from jef.config.pipeline import Pipeline, Slot
from jef.config.validate import ConfigError
from jef.hookspecs import hookimpl
from jef.model.shuffle_bn import shuffled_encode
from jef.model.sync_bn import convert_sync_batchnorm
from jef.registry import BuildError


class Objective(nn.Module):
    """``w_D · mean over pairs of D`` plus the weighted functionals, with every term reported."""

    def __init__(self, energy: tuple[str, nn.Module, float] | None,
                 functionals: list[tuple[str, nn.Module, float]]) -> None:
        super().__init__()
        self.energy = energy[1] if energy else None
        self.energy_name, self.energy_weight = (energy[0], energy[2]) if energy else ("", 0.0)
        self.functionals = nn.ModuleList(module for _, module, _ in functionals)
        self.functional_names = _unique([name for name, _, _ in functionals])
        self.functional_weights = [weight for _, _, weight in functionals]

    def forward(self, out: StepOutputs) -> tuple[Tensor, dict[str, Tensor], StepOutputs]:
        """The loss, its named terms (unweighted, for logging) and the outputs with the made targets."""
        for functional in self.functionals:
            if callable(getattr(functional, "targets", None)):
                out = functional.targets(out)
        terms: dict[str, Tensor] = {}
        loss: Tensor | None = None
        if self.energy is not None:
            pairs = [(a, b) for a in range(len(out.online.out)) for b in range(len(out.target.z)) if a != b]
            if not pairs:
                raise ValueError("energy: no view pairs; the augmenter must make at least 2 views")
            value = torch.stack([self.energy(out.online.out[a], out.target.z[b]).mean() for a, b in pairs]).mean()
            terms[f"energy/{self.energy_name}"] = value
            loss = self.energy_weight * value
        for name, functional, weight in zip(self.functional_names, self.functionals, self.functional_weights,
                                            strict=True):
            result = functional(out)
            parts = result if isinstance(result, dict) else {"": result}
            for key, value in parts.items():
                terms[f"{name}/{key}" if key else name] = value
                loss = weight * value if loss is None else loss + weight * value
        if loss is None:
            raise ValueError("the objective has no term: the energy is missing and every functional returned "
                             "an empty dict; add an energy or a functional that returns a loss")
        return loss, terms, out


class JointEmbedding(nn.Module):
    """Online branch (backbone → projector → optional predictor), target branch and objective.

    Views of equal size go through the backbone in one call per resolution.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module | None, predictor: nn.Module | None,
                 objective: Objective, target: TargetOptions, n_global: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector if projector is not None else nn.Identity()
        self.predictor = predictor
        self.objective = objective
        self.target_mode = target.name
        self.n_global = n_global
        self.shuffle_bn = target.name == "ema" and target.shuffle_bn
        if target.name == "ema":
            self.target_backbone = _frozen_copy(backbone)
            self.target_projector = _frozen_copy(self.projector) if target.projector else None

    def encode(self, views: list[Tensor], backbone: nn.Module, projector: nn.Module | None) -> Branch:
        """Run views through a backbone (one call per resolution) and a projector."""
        h: list[Tensor | None] = [None] * len(views)
        for shape in dict.fromkeys(v.shape[-2:] for v in views):
            chosen = [i for i, v in enumerate(views) if v.shape[-2:] == shape]
            outputs = backbone(torch.cat([views[i] for i in chosen])).chunk(len(chosen))
            for i, out in zip(chosen, outputs, strict=True):
                h[i] = out
        hs = [x for x in h if x is not None]
        z = [projector(x) for x in hs] if projector is not None else hs
        return Branch(h=hs, z=z)

    def forward(self, views: list[Tensor], indices: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor],
                                                                                    StepOutputs]:
        """Both branches and the objective; returns ``(loss, terms, outputs)``."""
        online = self.encode(views, self.backbone, self.projector)
        if self.predictor is not None:
            online = attrs.evolve(online, p=[self.predictor(z) for z in online.z])
        g = self.n_global
        if self.target_mode == "shared":
            target = Branch(h=online.h[:g], z=online.z[:g])
        elif self.target_mode == "stopgrad":
            target = Branch(h=[x.detach() for x in online.h[:g]], z=[x.detach() for x in online.z[:g]])
        elif self.shuffle_bn:
            target = shuffled_encode(views[:g], self.target_backbone, self.target_projector)
        else:
            with torch.no_grad():
                target = self.encode(views[:g], self.target_backbone, self.target_projector)
        outputs = StepOutputs(online=online, target=target, n_global=g, indices=indices)
        return self.objective(outputs)


class EmaTarget:
    """Run plugin that moves the EMA target after every optimiser step.

    ϑ ← mϑ + (1−m)θ with m on a cosine schedule from ``momentum`` to
    ``final_momentum`` (Grill et al., BYOL, 2020, arXiv:2006.07733), using
    ``torch._foreach_*`` ops: one kernel per group, not one per parameter.
    """

    def __init__(self, model: JointEmbedding, options: TargetOptions, total_steps: int) -> None:
        self.model, self.options, self.total_steps = model, options, max(total_steps, 1)

    def momentum(self, step: int) -> float:
        """m after ``step`` optimiser steps."""
        start, end = self.options.momentum, self.options.final_momentum
        if self.options.schedule == "constant":
            return start
        return end - (end - start) * (math.cos(math.pi * min(step, self.total_steps) / self.total_steps) + 1) / 2

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """One EMA step for every target parameter; buffers (BN statistics) are copied."""
        pairs = [(self.model.backbone, self.model.target_backbone)]
        if self.model.target_projector is not None:
            pairs.append((self.model.projector, self.model.target_projector))
        for online, target in pairs:
            t_params = list(target.parameters())
            o_params = [p.detach() for p in online.parameters()]
            torch._foreach_mul_(t_params, momentum)
            torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)
            t_buffers, o_buffers = list(target.buffers()), list(online.buffers())
            if t_buffers:
                torch._foreach_copy_(t_buffers, o_buffers)

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        momentum = self.momentum(run.step)
        self.update(momentum)
        run.log({"target/momentum": momentum})


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


def build(pipeline: Pipeline, ctx: RunContext, splits: DataSplits | None = None) -> Built:
    """Build data (unless given), augmenter, model (with objective) and monitors in dependency order.

    ``ctx`` is refined as facts become known: channels and image size from the
    data, view counts from the augmenter, ``in_dim`` for each head, the widths
    of the online output and the target embedding for energies and functionals.

    Raises:
        ConfigError: The components do not fit together (local views for a method without multi-crop, an energy
            without the target maker it needs, an online output whose width the energy cannot compare with the
            target's); the message names the YAML paths.
        BuildError: A component's factory failed.
    """
    splits = splits if splits is not None else build_data(pipeline, ctx)
    ctx = attrs.evolve(ctx, in_channels=splits.channels, image_size=splits.image_size, train_size=len(splits.train))
    ctx, augmenter, model, monitors, components = _build_model(pipeline, ctx)
    return Built(ctx, splits, augmenter, model, monitors, components)


def check(pipeline: Pipeline, ctx: RunContext | None = None) -> RunContext:
    """Build every component but the data, on the CPU, to run every check :func:`build` runs (``jef config show``).

    The data is not loaded (it may be large, remote or not on this machine): its channels, image size and
    training-set size come from the data's options where it declares them (``channels``, ``image_size``,
    ``subset_train`` or ``train_size``) and are stand-ins otherwise, and ``ctx.dry_run`` tells factories so.
    Nothing is trained or written. Returns the refined context (``online_dim``, ``target_dim`` for the energy
    and functionals).

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


def _build_model(pipeline: Pipeline, ctx: RunContext) -> tuple[RunContext, nn.Module, JointEmbedding, list[Any],
                                                               dict[str, Any]]:
    """Augmenter, model (with objective), monitors and the named components, for data facts already in ``ctx``."""
    augmenter = _make(pipeline.augmenter, ctx, pipeline, "augmenter")
    ctx = attrs.evolve(ctx, n_views=augmenter.n_views, n_global=augmenter.n_global,
                       image_size=getattr(augmenter, "size", ctx.image_size))
    _check_multi_crop(pipeline, augmenter)
    backbone = _make(pipeline.backbone, ctx, pipeline, "backbone")
    h_dim = z_dim = backbone.out_dim
    projector = predictor = None
    if pipeline.projector is not None:
        projector = _make(pipeline.projector, attrs.evolve(ctx, in_dim=h_dim), pipeline, "projector")
        z_dim = _out_dim(pipeline.projector, projector, h_dim)
    online_dim = z_dim
    if pipeline.predictor is not None:
        predictor = _make(pipeline.predictor, attrs.evolve(ctx, in_dim=z_dim), pipeline, "predictor")
        online_dim = _out_dim(pipeline.predictor, predictor, z_dim)
    # An EMA target without its own projector compares backbone features.
    target_dim = h_dim if pipeline.target.name == "ema" and not pipeline.target.projector else z_dim
    # Energies and functionals see both widths; ``in_dim`` stays the target's (a queue sizes its buffer with it
    # before any batch, so that a checkpoint can be loaded into it).
    z_ctx = attrs.evolve(ctx, in_dim=target_dim, online_dim=online_dim, target_dim=target_dim)
    energy = (pipeline.energy.name, _make(pipeline.energy, z_ctx, pipeline, "energy"), pipeline.energy.weight
              ) if pipeline.energy else None
    functionals = [(s.name, _make(s, z_ctx, pipeline, f"functionals.{i}"), s.weight)
                   for i, s in enumerate(pipeline.functionals)]
    _check_target_maker(pipeline, energy, functionals)
    _check_widths(pipeline, energy, functionals, online_dim, target_dim)
    objective = Objective(energy, functionals)
    model = JointEmbedding(backbone, projector, predictor, objective, pipeline.target, augmenter.n_global)
    if pipeline.train.sync_bn and ctx.world_size > 1:
        _sync_batch_norm(model)
    monitors = [_make(s, ctx, pipeline, f"monitors.{i}") for i, s in enumerate(pipeline.monitors)]
    if pipeline.target.name == "ema":
        monitors.append(EmaTarget(model, pipeline.target, ctx.total_steps))
    components = {"augmenter": augmenter, "backbone": backbone, "projector": projector, "predictor": predictor,
                  "energy": energy[1] if energy else None,
                  **{f"functionals.{i}": f for i, (_, f, _) in enumerate(functionals)}}
    return z_ctx, augmenter, model, monitors, components


def _out_dim(slot: Slot, head: nn.Module, in_dim: int) -> int:
    """A head's output width: its ``out_dim``, or (for a head that does not declare one) a dry forward of 2 rows."""
    declared = getattr(head, "out_dim", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    training = head.training
    try:
        with torch.no_grad():
            out = head.eval()(torch.zeros(2, in_dim))
    except Exception as error:
        raise BuildError(f"{slot.kind} {slot.name!r} from plugin {slot.entry.provenance} declares no out_dim, and "
                         f"measuring it on a [2, {in_dim}] input failed: {type(error).__name__}: {error}") from error
    finally:
        head.train(training)
    return int(out.shape[-1])


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


def _check_target_maker(pipeline: Pipeline, energy: tuple[str, nn.Module, float] | None,
                        functionals: list[tuple[str, nn.Module, float]]) -> None:
    """An energy that compares with made targets (distributions) needs a functional that makes them."""
    if energy is None or not getattr(energy[1], "needs_target_maker", False):
        return
    if not any(callable(getattr(module, "targets", None)) for _, module, _ in functionals):
        raise ConfigError(
            f"energy {energy[0]!r} compares the online outputs with target distributions, but no functional makes "
            f"targets (a functional with a `targets` method, e.g. Sinkhorn codes or centred teacher "
            f"probabilities); add one under `functionals:`", path="energy", source=pipeline.source)


def _check_widths(pipeline: Pipeline, energy: tuple[str, nn.Module, float] | None,
                  functionals: list[tuple[str, nn.Module, float]], online_dim: int, target_dim: int) -> None:
    """The energy compares online outputs with target embeddings: when their widths differ, ask it now.

    One call on two random rows of each width (CPU, no gradient): an energy that compares embeddings of different
    widths on purpose passes; one that cannot fails here, naming both YAML paths, rather than at the first step.
    Skipped when a functional makes the targets (it changes what the energy compares).
    """
    if energy is None or online_dim == target_dim or any(callable(getattr(module, "targets", None))
                                                         for _, module, _ in functionals):
        return
    generator = torch.Generator().manual_seed(0)  # not the global RNG: checking must not change the run
    a, b = torch.randn(2, online_dim, generator=generator), torch.randn(2, target_dim, generator=generator)
    try:
        with torch.no_grad():
            energy[1](a, b)
    except Exception as error:
        (slot, online), (_, target) = _width_path(pipeline, online=True), _width_path(pipeline, online=False)
        detail = (str(error).strip().splitlines() or [""])[0]
        advice = f"set {online} to {target_dim}" if online != slot else f"make {slot}'s output {target_dim} wide"
        raise ConfigError(
            f"the online output is {online_dim} wide ({online}) but the target embedding is {target_dim} wide "
            f"({target}), and energy {energy[0]!r} cannot compare them ({type(error).__name__}: {detail}); "
            f"{advice}, the width of {target}", path=slot, source=pipeline.source) from error


def _width_path(pipeline: Pipeline, *, online: bool) -> tuple[str, str]:
    """The slot, and the YAML path in it, that set the width of the online output or of the target embedding."""
    if online and pipeline.predictor is not None:
        path, slot = "predictor", pipeline.predictor
    elif pipeline.projector is not None and (online or pipeline.target.name != "ema" or pipeline.target.projector):
        path, slot = "projector", pipeline.projector
    else:
        path, slot = "backbone", pipeline.backbone
    fields = {field.name for field in attrs.fields(type(slot.options))} if attrs.has(type(slot.options)) else set()
    if "dims" in fields:
        return path, f"{path}.dims[-1]"
    return path, f"{path}.out_dim" if "out_dim" in fields else path


def _make(slot: Slot, ctx: RunContext, pipeline: Pipeline, path: str) -> Any:
    """Call a slot's factory; if it fails, name the pipeline file, the slot's YAML ``path``, the component and its
    plugin."""
    try:
        return slot.entry.factory(slot.options, ctx)
    except Exception as error:
        where = ": ".join(part for part in (pipeline.source, path) if part)
        raise BuildError(f"{where}: building {slot.kind} {slot.name!r} from plugin "
                         f"{slot.entry.provenance} failed: {type(error).__name__}: {error}") from error


def _frozen_copy(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied


def _unique(names: list[str]) -> list[str]:
    """``['variance', 'variance']`` -> ``['variance', 'variance.1']`` so log keys never collide."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name, 0)
        result.append(name if count == 0 else f"{name}.{count}")
        seen[name] = count + 1
    return result
