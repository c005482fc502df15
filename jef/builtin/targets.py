"""Built-in target makers (the ``target`` kind): ``shared``, ``stopgrad``, ``ema`` and ``tower``.

What each one does is in :mod:`jef.model.targets` (``tower``: :mod:`jef.model.towers`); here are their options and their registration, the same
hook a third-party plugin would implement to add a target maker.
"""

from __future__ import annotations

from typing import Literal

import attrs
from attrs import validators as v

from jef.components import NoOptions, RunContext
from jef.config.options import doc
from jef.hookspecs import Register, hookimpl
from jef.model.targets import EmaTarget, SharedTarget, StopGradTarget
from jef.model.towers import TowerTarget


@attrs.frozen(kw_only=True)
class EmaTargetOptions:
    """The momentum target: ϑ ← mϑ + (1−m)θ after each step, m following ``schedule``.

    ``shuffle_bn`` is MoCo's shuffling BN (He et al., 2020, arXiv:1911.05722, Sec. 3.3): the keys of each
    global view are computed on a randomly permuted batch in at least two groups (across processes when
    distributed) and put back in order, so that a key's BatchNorm statistics come from other samples than
    its query's and the model cannot use them to find the positive.
    """

    momentum: float = attrs.field(default=0.996, validator=[v.ge(0.0), v.le(1.0)],
                                  metadata=doc("EMA momentum m at step 0"))
    final_momentum: float = attrs.field(default=1.0, validator=[v.ge(0.0), v.le(1.0)],
                                        metadata=doc("m at the last step (cosine)"))
    schedule: Literal["constant", "cosine"] = attrs.field(default="cosine", metadata=doc("momentum schedule"))
    projector: bool = attrs.field(default=True, metadata=doc("the target has its own projector copy"))
    shuffle_bn: bool = attrs.field(default=False, metadata=doc(
        "compute keys on a shuffled batch in groups so that BatchNorm statistics cannot leak the positive "
        "(MoCo's shuffling BN)"))


@attrs.frozen(kw_only=True)
class TowerTargetOptions:
    """The target branch is one of the pipeline's named encoders (``encoders:``), trained with the online one."""

    encoder: str = attrs.field(validator=[v.instance_of(str), v.min_len(1)],
                               metadata=doc("the encoder's name under `encoders:`, e.g. text"))


def build_shared(options: NoOptions, ctx: RunContext) -> SharedTarget:
    """The ``shared`` target."""
    return SharedTarget()


def build_stopgrad(options: NoOptions, ctx: RunContext) -> StopGradTarget:
    """The ``stopgrad`` target."""
    return StopGradTarget()


def build_ema(options: EmaTargetOptions, ctx: RunContext) -> EmaTarget:
    """The ``ema`` target; its momentum schedule spans the run's ``total_steps``."""
    return EmaTarget(options, ctx.total_steps)


def build_tower(options: TowerTargetOptions, ctx: RunContext) -> TowerTarget:
    """The ``tower`` target."""
    return TowerTarget(options.encoder)


@hookimpl
def jef_register_targets(register: Register) -> None:
    """Register ``shared``, ``stopgrad``, ``ema`` and ``tower``."""
    register("shared", build_shared, options=NoOptions,
             description="the online branch itself; gradients flow through both sides (SimCLR, VICReg)")
    register("stopgrad", build_stopgrad, options=NoOptions,
             description="the online outputs, detached (SimSiam)",
             paper="Chen & He, Exploring Simple Siamese Representation Learning, arXiv:2011.10566")
    register("ema", build_ema, options=EmaTargetOptions,
             description="a momentum copy of backbone (and projector) moved after every step (BYOL, MoCo, DINO)",
             paper="Grill et al., BYOL, arXiv:2006.07733; He et al., MoCo, arXiv:1911.05722")
    register("tower", build_tower, options=TowerTargetOptions,
             description="a separate named encoder (encoders:), with its gradients: CLIP's text tower, CMC's "
                         "second view's encoder",
             paper="Radford et al., CLIP, arXiv:2103.00020; Tian et al., CMC, arXiv:1906.05849")
