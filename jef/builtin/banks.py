"""Built-in functionals with a per-sample memory bank indexed by dataset position (InstDisc-style).

``memory_bank`` is the objective of instance discrimination (InstDisc): each training
image is its own class, represented by a unit vector ``v_i`` kept in a bank of
``n`` rows (one per image, indexed by the sample's position in the training
split). The feature ``v = normalise(z)`` of image ``i`` is trained to pick out
its own row, with NCE against ``m`` uniformly drawn noise rows
(``loss: nce``) or with the full softmax over all ``n`` rows
(``loss: softmax``). After each optimiser step the rows of the step's images
move towards their new features, ``v_i ← normalise(μ·v_i + (1 − μ)·v)``.

The maths, and the papers' references, are in :mod:`jef.functional.nce`.
Choices, and where they differ from InstDisc's code:

* ``Z`` (NCE's normaliser) is estimated once, on the first batch, as
  ``n · mean exp(v_j·v/τ)`` over that batch's noise similarities (averaged
  over processes so that every process uses the same constant), then fixed;
  InstDisc's code does the same (it also includes the data column in the mean,
  which makes no difference for large ``m``). ``Z`` is a buffer, so it is
  checkpointed and a resumed run uses the same value.
* The ``m`` noise rows are drawn once per step and shared by the batch's
  samples (an ``[N, m]`` similarity matrix instead of gathering an
  ``[N, m, d]`` block; the estimate is unbiased either way). The draw is seeded
  by (seed, step counter), the counter being a buffer: the forward pass is
  deterministic given the module's state, a resumed run draws the same noise
  as one that never stopped, and every process draws the same rows, so ``W``
  processes compute what one process computes on the global batch.
* With several processes the step's indices and features are gathered before
  the update, so every process holds the same bank.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef import dist
from jef.components import RunContext, StepOutputs
from jef.config.options import size_limit
from jef.functional._checks import full_precision, indices_out_of_range, normalize
from jef.functional.nce import full_softmax_loss, momentum_update, nce_loss, nce_normaliser
from jef.hookspecs import Register, hookimpl

__all__ = ["MemoryBank", "MemoryBankOptions", "build_memory_bank", "jef_register_functionals"]

PAPER = ("Wu et al., InstDisc, CVPR 2018, arXiv:1805.01978; "
         "Gutmann & Hyvärinen, NCE, AISTATS 2010")


@attrs.frozen(kw_only=True)
class MemoryBankOptions:
    """Options of the ``memory_bank`` functional (defaults: InstDisc's ImageNet setting)."""

    size: int | None = attrs.field(
        default=None, validator=v.optional([v.ge(1), size_limit]),
        metadata={"doc": "bank rows n = training images; default: the training split's size"})
    dim: int = attrs.field(default=128, validator=[v.ge(1), size_limit],
                           metadata={"doc": "width of the stored features (the projector's output width)"})
    temperature: float = attrs.field(default=0.07, validator=v.gt(0.0), metadata={"doc": "τ in exp(v_i·v/τ)"})
    loss: Literal["nce", "softmax"] = attrs.field(
        default="nce", metadata={"doc": "nce (m noise rows) | softmax (cross-entropy over every row)"})
    noise_samples: int = attrs.field(default=4096, validator=[v.ge(1), size_limit],
                                     metadata={"doc": "m, noise rows per step for nce"})
    momentum: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)],
                                  metadata={"doc": "bank update v_i ← normalise(μ·v_i + (1−μ)·v)"})
    proximal: float = attrs.field(default=0.0, validator=v.ge(0.0),
                                  metadata={"doc": "λ of the proximal term λ‖v − v_i‖² (0 = off; 30 in the paper)"})


class MemoryBank(nn.Module):
    """Instance discrimination against a memory bank of one unit vector per training image (InstDisc).

    Buffers (in the model's state dict, hence checkpointed and moved with
    ``.to()``): ``bank [n, dim]``, ``normaliser`` (``Z``), ``normaliser_set``
    and ``steps`` (updates done; seeds the noise draw).

    Args:
        size: ``n``, the number of training images.
        dim: Feature width.
        temperature: ``τ``.
        loss: ``"nce"`` or ``"softmax"``.
        noise_samples: ``m`` for NCE.
        momentum: ``μ`` of the bank update.
        proximal: ``λ`` of the proximal term (0: off).
        seed: Seeds the bank's initial rows and the noise (the same on every process).
    """

    def __init__(self, size: int, dim: int = 128, temperature: float = 0.07, loss: str = "nce",
                 noise_samples: int = 4096, momentum: float = 0.5, proximal: float = 0.0, *,
                 seed: int = 0) -> None:
        super().__init__()
        self.size, self.dim, self.temperature, self.loss = int(size), int(dim), float(temperature), loss
        self.noise_samples, self.momentum, self.proximal = int(noise_samples), float(momentum), float(proximal)
        self.seed = int(seed)
        # Seeded from the run's seed only, so every process starts from the same bank.
        start = torch.randn(self.size, self.dim, generator=torch.Generator().manual_seed(self.seed))
        self.register_buffer("bank", normalize(start))
        self.register_buffer("normaliser", torch.tensor(0.0))
        self.register_buffer("normaliser_set", torch.tensor(False))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self._pending: list[tuple[Tensor, Tensor]] = []
        # Host copies of `steps` and `normaliser_set` (read from the buffers again after a checkpoint is loaded):
        # reading a buffer at every step would make the host wait for the device.
        self._host: dict[str, Any] | None = {"steps": 0, "normaliser_set": False}
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_host", None))

    def _mirror(self) -> dict[str, Any]:
        if self._host is None:
            self._host = {"steps": int(self.steps), "normaliser_set": bool(self.normaliser_set)}
        return self._host

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        """The loss over every online view (averaged), plus the proximal term when ``λ > 0``."""
        indices = self._indices(out)
        views = out.online.z
        for i, z in enumerate(views):
            if z.dim() != 2 or z.shape != (indices.shape[0], self.dim):
                raise ValueError(f"memory_bank: online view {i} has shape {tuple(z.shape)}, expected "
                                 f"[{indices.shape[0]}, {self.dim}] (one row per index, dim={self.dim}); set "
                                 f"memory_bank's dim to the projector's output width")
        features = [normalize(z) for z in views]
        if self.loss == "softmax":
            main = torch.stack([full_softmax_loss(f, self.bank, indices, self.temperature) for f in features]).mean()
        else:
            own = self.bank[indices]
            noise = self.bank[self._noise_rows()]
            # In float32 also under autocast: a bfloat16 product rounds each similarity by up to ~4e-3, which τ = 0.07
            # turns into ~0.06 in the logit, and Z (estimated from these on the first batch) is kept for the run.
            with full_precision(features[0]):
                similarities = [((f * own.to(f.dtype)).sum(dim=1), f @ noise.to(f.dtype).T) for f in features]
            if not self._mirror()["normaliser_set"]:
                self._set_normaliser(torch.cat([s for _, s in similarities]))
            main = torch.stack([nce_loss(s, noise_s, self.temperature, self.normaliser, self.size,
                                         self.noise_samples) for s, noise_s in similarities]).mean()
        terms = {self.loss: main}
        if self.proximal > 0:
            # λ‖v_i^(t) − v_i^(t−1)‖² (InstDisc, eq. (8)): the bank row is the previous iteration's feature.
            own = self.bank[indices]
            terms["proximal"] = self.proximal * torch.stack(
                [(f - own.to(f.dtype)).pow(2).sum(dim=1).mean() for f in features]).mean()
        if self.training and torch.is_grad_enabled():
            # Kept for jef_step_end; with gradient accumulation every micro-batch's rows get updated.
            global_views = features[:max(out.n_global, 1)]
            self._pending.append((indices, torch.stack(global_views).mean(dim=0).detach()))
        return terms

    def _indices(self, out: StepOutputs) -> Tensor:
        if out.indices is None:
            raise ValueError("memory_bank: the batch carries no dataset indices (StepOutputs.indices is None); a "
                             "memory bank stores one row per training image and needs each sample's position in "
                             "the training split: use a dataset that yields (image, label, index), as jef's "
                             "datasets do, and a train step that passes the indices to the model")
        indices = out.indices.to(self.bank.device).long()
        if indices.dim() != 1:
            raise ValueError(f"memory_bank: indices must be 1-D [N], got shape {tuple(indices.shape)}")
        bad = indices_out_of_range(indices, self.size)
        if bad is not None:
            raise ValueError(f"memory_bank: dataset index {bad[1] if bad[1] >= self.size else bad[0]} is outside "
                             f"the bank's {self.size} rows; set memory_bank's size to the number of training images")
        return indices

    def _noise_rows(self) -> Tensor:
        """``m`` rows drawn uniformly with replacement (``P_n = 1/n``), seeded by (seed, step)."""
        seed = (self.seed * 1_000_003 + self._mirror()["steps"]) % (2**63)
        # Drawn on the bank's device: a host-made tensor copied to a GPU would make the host wait at every step.
        generator = torch.Generator(device=self.bank.device).manual_seed(seed)
        return torch.randint(self.size, (self.noise_samples,), generator=generator, device=self.bank.device)

    @torch.no_grad()
    def _set_normaliser(self, noise_similarities: Tensor) -> None:
        """Fix ``Z`` from the first batch, the mean over processes so that all agree (as InstDisc's code)."""
        z = nce_normaliser(noise_similarities, self.temperature, self.size).reshape(1)
        self.normaliser.copy_(dist.all_reduce_mean(z).reshape(()))
        self.normaliser_set.fill_(True)
        self._mirror()["normaliser_set"] = True

    @torch.no_grad()
    def update(self) -> None:
        """Move the rows of the batches since the last update towards their features (gathered over processes)."""
        pending, self._pending = self._pending, []
        for indices, features in pending:
            momentum_update(self.bank, dist.gather(indices), dist.gather(features), self.momentum)
        if pending:
            self._mirror()["steps"] += 1
            self.steps += 1

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        """After the optimiser step: the momentum update of the step's rows (InstDisc, §3.3)."""
        self.update()

    def extra_repr(self) -> str:
        return (f"size={self.size}, dim={self.dim}, temperature={self.temperature}, loss={self.loss!r}, "
                f"noise_samples={self.noise_samples}, momentum={self.momentum}, proximal={self.proximal}")


def build_memory_bank(options: MemoryBankOptions, ctx: RunContext) -> MemoryBank:
    """The ``memory_bank`` functional; its size is ``options.size`` or the training split's size."""
    size = options.size if options.size is not None else ctx.train_size
    if size is None and ctx.dry_run:  # `jef config show` loads no data: a stand-in size checks everything else
        size = ctx.global_batch_size
    if size is None:
        raise ValueError("memory_bank: the bank needs one row per training image, but its size is unknown: set "
                         "memory_bank's size to the number of training images (jef's pipeline passes it as "
                         "RunContext.train_size)")
    if options.size is not None and ctx.train_size is not None and options.size != ctx.train_size:
        raise ValueError(f"memory_bank: size={options.size} but the training split has {ctx.train_size} images; "
                         "the bank needs exactly one row per training image (leave size unset)")
    return MemoryBank(size, options.dim, options.temperature, options.loss, options.noise_samples,
                      options.momentum, options.proximal, seed=ctx.seed)


@hookimpl
def jef_register_functionals(register: Register) -> None:
    """Register ``memory_bank``."""
    register("memory_bank", build_memory_bank, options=MemoryBankOptions,
             description="Instance discrimination against a memory bank of one feature per training image "
                         "(NCE or full softmax), momentum-updated after each step", paper=PAPER)
