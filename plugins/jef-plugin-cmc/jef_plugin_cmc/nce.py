"""The ``cmc_nce`` functional: CMC's two-view NCE against one memory bank per view.

CMC [1] (§3.2–3.3) keeps a memory bank of one unit vector per training image *for each view*: ``V_L`` holds
the L encoder's features and ``V_ab`` the ab encoder's. The L feature ``v_L`` of image ``i`` is trained to pick
out row ``i`` of the *ab* bank against ``m`` noise rows of it, and the ab feature ``v_ab`` row ``i`` of the *L*
bank, each with NCE as in InstDisc (:mod:`jef.functional.nce`); the objective is their sum, Eq. (8)::

    L(V1, V2) = L_{V1}^{V2} + L_{V2}^{V1}        (here: l_to_ab + ab_to_l)

After each optimiser step the batch's rows of each bank move towards that view's new features,
``v_i ← normalise(μ·v_i + (1 − μ)·v)`` with ``μ = 0.5``.

Structure and choices mirror jef's ``memory_bank`` (:mod:`jef.builtin.banks`); where they differ from the
official code:

* The ``m`` noise rows are drawn once per step, seeded by (seed, step counter), and shared by the batch's
  samples and by both directions (the official code draws ``K`` rows per sample, also shared by both
  directions). Every process draws the same rows, so ``W`` processes compute what one process computes on the
  global batch.
* ``Z`` of each direction is estimated once, on the first batch, as ``n · mean exp(v_j·v/τ)`` over that
  direction's noise similarities, averaged over processes, then fixed (the official code: the same, with the
  data column in the mean).
* The banks start as normalised Gaussian rows (the official code: uniform rows, unnormalised).
* The step's indices and features are gathered over processes before the update, so that every process holds
  the same banks.

References:
    [1] Tian, Krishnan, Isola. Contrastive Multiview Coding. ECCV 2020. arXiv:1906.05849.
    [2] Wu, Xiong, Yu, Lin. Unsupervised Feature Learning via Non-Parametric Instance Discrimination (InstDisc).
        CVPR 2018. arXiv:1805.01978.
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
from jef.functional import full_softmax_loss, l2_normalize, momentum_update, nce_loss, nce_normaliser
from jef.functional._checks import full_precision, indices_out_of_range
from jef.hookspecs import hookimpl

__all__ = ["CMCNCE", "CMCNCEOptions", "build_cmc_nce"]

#: The two directions: (term, which branch's feature, which bank it is scored against).
DIRECTIONS = (("l_to_ab", "online", "bank_ab"), ("ab_to_l", "target", "bank_l"))


@attrs.frozen(kw_only=True)
class CMCNCEOptions:
    """Options of the ``cmc_nce`` functional (defaults: the official code's ImageNet flags)."""

    size: int | None = attrs.field(default=None, validator=v.optional([v.ge(1), size_limit]),
                                   metadata={"doc": "rows n of each bank = training images; default: the "
                                                    "training split's size"})
    dim: int | None = attrs.field(default=None, validator=v.optional([v.ge(1), size_limit]),
                                  metadata={"doc": "width of the stored features; default: the online output's "
                                                   "(ctx.online_dim, else ctx.target_dim)"})
    temperature: float = attrs.field(default=0.07, validator=v.gt(0.0), metadata={"doc": "τ (--nce_t)"})
    momentum: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)],
                                  metadata={"doc": "bank update v_i ← normalise(μ·v_i + (1−μ)·v) (--nce_m)"})
    noise_samples: int = attrs.field(default=4096, validator=[v.ge(1), size_limit],
                                     metadata={"doc": "m, noise rows per step (--nce_k); at most n − 1 are used"})
    loss: Literal["nce", "softmax"] = attrs.field(default="nce", validator=v.in_(("nce", "softmax")), metadata={
        "doc": "nce: NCE against m noise rows (the paper's) | softmax: cross-entropy over every row of the other "
               "view's bank (exact; the official code's --softmax samples m rows instead)"})


class CMCNCE(nn.Module):
    """CMC's L↔ab NCE against two memory banks (one per view), momentum-updated after each step.

    The input :class:`StepOutputs` holds the view-0 (L) encoder's embedding in ``out.online.z[0]`` and the
    view-1 (ab) encoder's in ``out.target.z[0]``, ``[B, dim]`` each, and the dataset indices ``[B]``; both
    embeddings carry gradients (both encoders are trained).

    Buffers (in the model's state dict, hence checkpointed): ``bank_l``, ``bank_ab`` ``[n, dim]``,
    ``normaliser_l_to_ab``, ``normaliser_ab_to_l`` (the two ``Z``), ``normaliser_set`` and ``steps``
    (updates done; seeds the noise draw).

    Args:
        size: ``n``, the number of training images.
        dim: Feature width.
        temperature: ``τ``.
        momentum: ``μ`` of the bank updates.
        noise_samples: ``m``; capped at ``n − 1`` (more rows than the bank's others would only repeat them;
            the official code needs ``K < n`` too), and at least 1.
        seed: Seeds the banks' initial rows and the noise (the same on every process).
    """

    def __init__(self, size: int, dim: int = 128, temperature: float = 0.07, momentum: float = 0.5,
                 noise_samples: int = 4096, *, seed: int = 0, loss: str = "nce") -> None:
        super().__init__()
        self.loss = loss
        self.size, self.dim, self.temperature, self.momentum = int(size), int(dim), float(temperature), float(momentum)
        self.noise_samples = max(1, min(int(noise_samples), self.size - 1))
        self.seed = int(seed)
        # Seeded from the run's seed only, so every process starts from the same banks; one stream for both.
        start = torch.randn(2, self.size, self.dim, generator=torch.Generator().manual_seed(self.seed))
        self.register_buffer("bank_l", l2_normalize(start[0]))
        self.register_buffer("bank_ab", l2_normalize(start[1]))
        for term, _, _ in DIRECTIONS:
            self.register_buffer(f"normaliser_{term}", torch.tensor(0.0))
        self.register_buffer("normaliser_set", torch.tensor(False))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []
        # Host copies of `steps` and `normaliser_set` (read again after a checkpoint is loaded): reading a buffer
        # at every step would make the host wait for the device.
        self._host: dict[str, Any] | None = {"steps": 0, "normaliser_set": False}
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_host", None))

    def _mirror(self) -> dict[str, Any]:
        if self._host is None:
            self._host = {"steps": int(self.steps), "normaliser_set": bool(self.normaliser_set)}
        return self._host

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        """``{"l_to_ab": L_L^ab, "ab_to_l": L_ab^L}``, each the NCE loss averaged over the batch."""
        indices = self._indices(out)
        features = {"online": self._feature(out.online.z, "online", "view 0 (L)", indices),
                    "target": self._feature(out.target.z, "target", "view 1 (ab)", indices)}
        if self.loss == "softmax":
            terms = {term: full_softmax_loss(features[branch], getattr(self, bank_name), indices, self.temperature)
                     for term, branch, bank_name in DIRECTIONS}
            self._keep(indices, features)
            return terms
        noise_rows = self.noise_rows()
        similarities = {}
        # In float32 also under autocast: τ = 0.07 turns a bfloat16 rounding of ~4e-3 into ~0.06 in the logit,
        # and Z, estimated from these on the first batch, is kept for the run.
        with full_precision(features["online"]):
            for term, branch, bank_name in DIRECTIONS:
                f, bank = features[branch], getattr(self, bank_name)
                own, noise = bank[indices].to(f.dtype), bank[noise_rows].to(f.dtype)
                similarities[term] = ((f * own).sum(dim=1), f @ noise.T)
        if not self._mirror()["normaliser_set"]:
            self._set_normalisers({term: s[1] for term, s in similarities.items()})
        terms = {term: nce_loss(data, noise, self.temperature, getattr(self, f"normaliser_{term}"), self.size,
                                self.noise_samples) for term, (data, noise) in similarities.items()}
        self._keep(indices, features)
        return terms

    def _keep(self, indices: Tensor, features: dict[str, Tensor]) -> None:
        if self.training and torch.is_grad_enabled():
            # Kept for jef_step_end; with gradient accumulation every micro-batch's rows get updated.
            self._pending.append((indices, features["online"].detach(), features["target"].detach()))

    def _indices(self, out: StepOutputs) -> Tensor:
        if out.indices is None:
            raise ValueError("cmc_nce: the batch carries no dataset indices (StepOutputs.indices is None); CMC's "
                             "memory banks store one row per training image and need each sample's position in "
                             "the training split: use a dataset that yields (image, label, index), as jef's "
                             "datasets do")
        indices = out.indices.to(self.bank_l.device).long()
        if indices.dim() != 1:
            raise ValueError(f"cmc_nce: indices must be 1-D [N], got shape {tuple(indices.shape)}")
        bad = indices_out_of_range(indices, self.size)
        if bad is not None:
            raise ValueError(f"cmc_nce: dataset index {bad[1] if bad[1] >= self.size else bad[0]} is outside the "
                             f"banks' {self.size} rows; set cmc_nce's size to the number of training images")
        return indices

    def _feature(self, z: list[Tensor], branch: str, view: str, indices: Tensor) -> Tensor:
        if not z:
            raise ValueError(f"cmc_nce: the {branch} branch has no embedding; CMC needs the {view} encoder's "
                             f"output there (target: {{name: tower, encoder: ab}})")
        if z[0].dim() != 2 or z[0].shape != (indices.shape[0], self.dim):
            raise ValueError(f"cmc_nce: the {branch} embedding of {view} has shape {tuple(z[0].shape)}, expected "
                             f"[{indices.shape[0]}, {self.dim}] (one row per index, dim={self.dim}); give both "
                             f"encoders' projectors the output width {self.dim}")
        return l2_normalize(z[0])

    def noise_rows(self) -> Tensor:
        """``m`` rows drawn uniformly with replacement (``P_n = 1/n``), seeded by (seed, step); both banks'."""
        seed = (self.seed * 1_000_003 + self._mirror()["steps"]) % (2**63)
        # Drawn on the banks' device: a host-made tensor copied to a GPU would make the host wait at every step.
        generator = torch.Generator(device=self.bank_l.device).manual_seed(seed)
        return torch.randint(self.size, (self.noise_samples,), generator=generator, device=self.bank_l.device)

    @torch.no_grad()
    def _set_normalisers(self, noise_similarities: dict[str, Tensor]) -> None:
        """Fix each direction's ``Z`` from the first batch, the mean over processes so that all agree."""
        z = torch.stack([nce_normaliser(noise_similarities[term], self.temperature, self.size)
                         for term, _, _ in DIRECTIONS])
        z = dist.all_reduce_mean(z)
        for i, (term, _, _) in enumerate(DIRECTIONS):
            getattr(self, f"normaliser_{term}").copy_(z[i])
        self.normaliser_set.fill_(True)
        self._mirror()["normaliser_set"] = True

    @torch.no_grad()
    def update(self) -> None:
        """Move both banks' rows of the batches since the last update towards their view's features."""
        pending, self._pending = self._pending, []
        for indices, l_features, ab_features in pending:
            everywhere = dist.gather(indices)
            momentum_update(self.bank_l, everywhere, dist.gather(l_features), self.momentum)
            momentum_update(self.bank_ab, everywhere, dist.gather(ab_features), self.momentum)
        if pending:
            self._mirror()["steps"] += 1
            self.steps += 1

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        """After the optimiser step: the momentum update of both banks' rows (CMC §3.3, InstDisc §3.3)."""
        self.update()

    def extra_repr(self) -> str:
        return (f"size={self.size}, dim={self.dim}, temperature={self.temperature}, momentum={self.momentum}, "
                f"noise_samples={self.noise_samples}, loss={self.loss}")


def build_cmc_nce(options: CMCNCEOptions, ctx: RunContext) -> CMCNCE:
    """The ``cmc_nce`` functional: ``size`` from the training split, ``dim`` from ``ctx.online_dim`` (else
    ``ctx.target_dim``, else ``ctx.in_dim``)."""
    size = options.size if options.size is not None else ctx.train_size
    if size is None and ctx.dry_run:  # `jef config show` loads no data: a stand-in size checks everything else
        size = ctx.global_batch_size
    if size is None:
        raise ValueError("cmc_nce: each bank needs one row per training image, but their size is unknown: set "
                         "cmc_nce's size to the number of training images (jef's pipeline passes it as "
                         "RunContext.train_size)")
    if options.size is not None and ctx.train_size is not None and options.size != ctx.train_size:
        raise ValueError(f"cmc_nce: size={options.size} but the training split has {ctx.train_size} images; the "
                         "banks need exactly one row per training image (leave size unset)")
    # The online width, else the target's (``in_dim`` is its older name): the two must agree anyway.
    dim = next((w for w in (options.dim, ctx.online_dim, ctx.target_dim, ctx.in_dim) if w is not None), None)
    if dim is None:
        raise ValueError("cmc_nce: the feature width is unknown; set cmc_nce's dim to the projectors' output width")
    for what, width in (("online (view 0, L)", ctx.online_dim), ("target (view 1, ab)", ctx.target_dim)):
        if width is not None and width != dim:
            raise ValueError(f"cmc_nce: the {what} embedding is {width} wide but the banks store {dim}-d features; "
                             "give both encoders' projectors the same output width (and leave dim unset)")
    return CMCNCE(size, dim, options.temperature, options.momentum, options.noise_samples, seed=ctx.seed,
                  loss=options.loss)
