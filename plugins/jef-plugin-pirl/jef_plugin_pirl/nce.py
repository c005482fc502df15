"""The ``pirl`` functional: PIRL's jigsaw head and its NCE loss against a memory bank of image features.

PIRL [1] scores pairs with ``s(a, b) = cos(a, b) / τ`` and models the probability that a pair comes from the
data with the noise-contrastive estimator [2] of Eq. (2)::

    h(a, b) = exp(s(a, b)) / (exp(s(a, b)) + N / |D|)

``N`` negatives drawn uniformly from the data ``D``. With a memory bank ``M`` of one feature ``m_I`` per
training image (an exponential moving average of ``f(v_I)``), Eqs. (4)–(5) are::

    L_NCE(m_I, x) = −log h(x, m_I) − Σ_{I' ∈ D_N} log(1 − h(x, m_I'))
    L(I, I^t)     = λ · L_NCE(m_I, g(v_{I^t})) + (1 − λ) · L_NCE(m_I, f(v_I)),        λ = 0.5

``f(v_I)`` is the pipeline's projector (a linear map to 128) on view 0's backbone features, ``g(v_{I^t})``
the jigsaw head: the projector on each tile's backbone features, the 9 concatenated in the (random) order of
the views, then this functional's linear map ``9·d → d`` (so ``g`` is blind to the permutation). Both terms
are returned weighted, as ``pirl/jigsaw`` (``λ·L_NCE(m_I, g)``) and ``pirl/image`` (``(1 − λ)·L_NCE(m_I, f)``):
their sum is Eq. (5). After each optimiser step the batch's rows move towards the image features,
``m_I ← normalise(μ·m_I + (1 − μ)·f(v_I))``, ``μ = 0.5``.

``exp(s)`` in ``h`` is divided by a normaliser ``Z`` (``normaliser: first_batch``, the default): as in
InstDisc [3] and the official VISSL code (``norm_constant: -1``), ``Z = n · mean exp(s)`` over the first
batch's noise pairs, one per term, averaged over processes, then fixed. ``normaliser: none`` takes ``Z = 1``,
Eq. (2) as printed. The maths is jef's (:mod:`jef.functional.nce`); the structure mirrors ``memory_bank``
(:mod:`jef.builtin.banks`): ``m`` noise rows per step seeded by (seed, step counter), shared by the batch and
both terms, so ``W`` processes compute what one process computes on the global batch.

References:
    [1] Misra, van der Maaten. Self-Supervised Learning of Pretext-Invariant Representations. CVPR 2020.
        arXiv:1912.01991.
    [2] Gutmann, Hyvärinen. Noise-contrastive estimation. AISTATS 2010.
    [3] Wu, Xiong, Yu, Lin. Unsupervised Feature Learning via Non-Parametric Instance Discrimination. CVPR 2018.
        arXiv:1805.01978.
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
from jef.functional import l2_normalize, momentum_update, nce_loss, nce_normaliser
from jef.functional._checks import full_precision, indices_out_of_range
from jef.hookspecs import hookimpl
from jef_plugin_pirl.views import TILES

__all__ = ["PIRL", "PIRLOptions", "TERMS", "build_pirl"]

#: The two terms of Eq. (5), in order: the jigsaw head's g(v_{I^t}) and the image head's f(v_I).
TERMS = ("jigsaw", "image")


@attrs.frozen(kw_only=True)
class PIRLOptions:
    """Options of the ``pirl`` functional (defaults: the paper's, except ``noise_samples``)."""

    size: int | None = attrs.field(default=None, validator=v.optional([v.ge(1), size_limit]),
                                   metadata={"doc": "bank rows n = training images; default: the training split's"})
    dim: int | None = attrs.field(default=None, validator=v.optional([v.ge(1), size_limit]),
                                  metadata={"doc": "width d of f, g and the bank; default: the projector's output"})
    temperature: float = attrs.field(default=0.07, validator=v.gt(0.0), metadata={"doc": "τ of s(a, b) = cos/τ"})
    lam: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)],
                             metadata={"doc": "λ of Eq. (5): weight of the jigsaw term, 1 − λ of the image term"})
    momentum: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)],
                                  metadata={"doc": "bank update m_I ← normalise(μ·m_I + (1−μ)·f(v_I))"})
    noise_samples: int = attrs.field(default=4096, validator=[v.ge(1), size_limit],
                                     metadata={"doc": "N negatives per step (the paper: 32000); at most n − 1"})
    normaliser: Literal["first_batch", "none"] = attrs.field(
        default="first_batch", validator=v.in_(("first_batch", "none")),
        metadata={"doc": "first_batch: exp(s)/Z, Z fixed on the first batch (VISSL, InstDisc) | none: Z = 1, "
                         "Eq. (2) as printed"})


class PIRL(nn.Module):
    """PIRL's objective (Eq. 5): the jigsaw head's final linear map, the memory bank and the NCE of both terms.

    The input :class:`StepOutputs` holds the projector's output of every view in ``out.online.z``: view 0 (the
    image, ``f(v_I)``) and views 1..9 (the shuffled tiles), ``[B, d]`` each, and the dataset indices ``[B]``.

    Parameters: ``head`` (``Linear(9·d, d)``). Buffers (checkpointed): ``bank [n, d]``, ``normaliser_jigsaw``,
    ``normaliser_image`` (the two ``Z``), ``normaliser_set`` and ``steps`` (updates done; seeds the noise).

    Args:
        size: ``n = |D|``, the number of training images.
        dim: ``d``.
        temperature: ``τ``.
        lam: ``λ``.
        momentum: ``μ`` of the bank update.
        noise_samples: ``N``; capped at ``n − 1`` and at least 1.
        normaliser: ``"first_batch"`` or ``"none"`` (``Z = 1``).
        seed: Seeds the head's initial weights, the bank's initial rows and the noise (the same on every
            process).
    """

    def __init__(self, size: int, dim: int = 128, temperature: float = 0.07, lam: float = 0.5, momentum: float = 0.5,
                 noise_samples: int = 4096, normaliser: str = "first_batch", *, seed: int = 0) -> None:
        super().__init__()
        self.size, self.dim, self.temperature = int(size), int(dim), float(temperature)
        self.lam, self.momentum, self.normaliser = float(lam), float(momentum), normaliser
        self.noise_samples = max(1, min(int(noise_samples), self.size - 1))
        self.seed = int(seed)
        # g's final linear map, initialised from the seed (PyTorch's default init) so that every process starts
        # from the same head without the global RNG, whose state the rest of the model's build depends on.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.head = nn.Linear(TILES * self.dim, self.dim)
        # Seeded from the run's seed only, so every process starts from the same bank.
        start = torch.randn(self.size, self.dim, generator=torch.Generator().manual_seed(self.seed))
        self.register_buffer("bank", l2_normalize(start))
        for term in TERMS:
            self.register_buffer(f"normaliser_{term}", torch.tensor(1.0))
        self.register_buffer("normaliser_set", torch.tensor(normaliser == "none"))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self._pending: list[tuple[Tensor, Tensor]] = []
        # Host copies of `steps` and `normaliser_set` (read again after a checkpoint is loaded): reading a buffer at
        # every step would make the host wait for the device.
        self._host: dict[str, Any] | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_host", None))

    def _mirror(self) -> dict[str, Any]:
        if self._host is None:
            self._host = {"steps": int(self.steps), "normaliser_set": bool(self.normaliser_set)}
        return self._host

    def jigsaw(self, tiles: list[Tensor]) -> Tensor:
        """``g(v_{I^t})`` before normalisation: the 9 tile embeddings concatenated in view order, then ``head``."""
        return self.head(torch.cat(tiles, dim=1))

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        """``{"jigsaw": λ·L_NCE(m_I, g(v_{I^t})), "image": (1 − λ)·L_NCE(m_I, f(v_I))}``, batch means."""
        indices = self._indices(out)
        z = self._views(out.online.z, indices)
        features = {"jigsaw": l2_normalize(self.jigsaw(z[1:])), "image": l2_normalize(z[0])}
        noise_rows = self.noise_rows()
        # In float32 also under autocast: τ = 0.07 turns a bfloat16 rounding of ~4e-3 into ~0.06 in the logit, and
        # Z, estimated from these on the first batch, is kept for the run.
        with full_precision(features["image"]):
            own, noise = self.bank[indices], self.bank[noise_rows]
            similarities = {term: ((x * own.to(x.dtype)).sum(dim=1), x @ noise.to(x.dtype).T)
                            for term, x in features.items()}
        if not self._mirror()["normaliser_set"]:
            self._set_normalisers({term: s[1] for term, s in similarities.items()})
        weights = {"jigsaw": self.lam, "image": 1.0 - self.lam}
        terms = {term: weights[term] * nce_loss(data, noise_s, self.temperature, getattr(self, f"normaliser_{term}"),
                                                self.size, self.noise_samples)
                 for term, (data, noise_s) in similarities.items()}
        if self.training and torch.is_grad_enabled():
            # Kept for jef_step_end: the bank stores f(v_I) only (§3.3); every micro-batch's rows get updated.
            self._pending.append((indices, features["image"].detach()))
        return terms

    def _indices(self, out: StepOutputs) -> Tensor:
        if out.indices is None:
            raise ValueError("pirl: the batch carries no dataset indices (StepOutputs.indices is None); PIRL's "
                             "memory bank stores one row per training image and needs each sample's position in "
                             "the training split: use a dataset that yields (image, label, index), as jef's do")
        indices = out.indices.to(self.bank.device).long()
        if indices.dim() != 1:
            raise ValueError(f"pirl: indices must be 1-D [N], got shape {tuple(indices.shape)}")
        bad = indices_out_of_range(indices, self.size)
        if bad is not None:
            raise ValueError(f"pirl: dataset index {bad[1] if bad[1] >= self.size else bad[0]} is outside the bank's "
                             f"{self.size} rows; set pirl's size to the number of training images")
        return indices

    def _views(self, z: list[Tensor], indices: Tensor) -> list[Tensor]:
        if len(z) != 1 + TILES:
            raise ValueError(f"pirl: expected {1 + TILES} online embeddings (view 0, the image, then its 9 jigsaw "
                             f"tiles), got {len(z)}; use the pirl_views augmenter")
        for i, x in enumerate(z):
            if x.dim() != 2 or x.shape != (indices.shape[0], self.dim):
                raise ValueError(f"pirl: the embedding of view {i} has shape {tuple(x.shape)}, expected "
                                 f"[{indices.shape[0]}, {self.dim}] (one row per index, dim={self.dim}); give the "
                                 f"projector the output width {self.dim} (or leave pirl's dim unset)")
        return list(z)

    def noise_rows(self) -> Tensor:
        """``N`` rows drawn uniformly with replacement (``p_N = 1/|D|``), seeded by (seed, step)."""
        seed = (self.seed * 1_000_003 + self._mirror()["steps"]) % (2**63)
        # Drawn on the bank's device: a host-made tensor copied to a GPU would make the host wait at every step.
        generator = torch.Generator(device=self.bank.device).manual_seed(seed)
        return torch.randint(self.size, (self.noise_samples,), generator=generator, device=self.bank.device)

    @torch.no_grad()
    def _set_normalisers(self, noise_similarities: dict[str, Tensor]) -> None:
        """Fix each term's ``Z`` from the first batch, the mean over processes so that all agree."""
        z = torch.stack([nce_normaliser(noise_similarities[term], self.temperature, self.size) for term in TERMS])
        z = dist.all_reduce_mean(z)
        for i, term in enumerate(TERMS):
            getattr(self, f"normaliser_{term}").copy_(z[i])
        self.normaliser_set.fill_(True)
        self._mirror()["normaliser_set"] = True

    @torch.no_grad()
    def update(self) -> None:
        """Move the bank rows of the batches since the last update towards their ``f(v_I)`` (gathered)."""
        pending, self._pending = self._pending, []
        for indices, features in pending:
            momentum_update(self.bank, dist.gather(indices), dist.gather(features), self.momentum)
        if pending:
            self._mirror()["steps"] += 1
            self.steps += 1

    @hookimpl
    def jef_step_end(self, run: Any, outputs: StepOutputs | None, terms: dict[str, Any]) -> None:
        """After the optimiser step: the momentum update of the step's bank rows (PIRL §3.3)."""
        self.update()

    def extra_repr(self) -> str:
        return (f"size={self.size}, dim={self.dim}, temperature={self.temperature}, lam={self.lam}, "
                f"momentum={self.momentum}, noise_samples={self.noise_samples}, normaliser={self.normaliser!r}")


def build_pirl(options: PIRLOptions, ctx: RunContext) -> PIRL:
    """The ``pirl`` functional: ``size`` from the training split, ``dim`` from ``ctx.online_dim``."""
    size = options.size if options.size is not None else ctx.train_size
    if size is None and ctx.dry_run:  # `jef config show` loads no data: a stand-in size checks everything else
        size = ctx.global_batch_size
    if size is None:
        raise ValueError("pirl: the memory bank needs one row per training image, but its size is unknown: set "
                         "pirl's size to the number of training images (jef's pipeline passes it as "
                         "RunContext.train_size)")
    if options.size is not None and ctx.train_size is not None and options.size != ctx.train_size:
        raise ValueError(f"pirl: size={options.size} but the training split has {ctx.train_size} images; the bank "
                         "needs exactly one row per training image (leave size unset)")
    dim = next((w for w in (options.dim, ctx.online_dim, ctx.in_dim) if w is not None), None)
    if dim is None:
        raise ValueError("pirl: the feature width is unknown; set pirl's dim to the projector's output width")
    if ctx.online_dim is not None and ctx.online_dim != dim:
        raise ValueError(f"pirl: the online embeddings are {ctx.online_dim} wide but dim={dim}; the bank stores "
                         "f(v_I) itself: leave dim unset or give the projector that width")
    if ctx.n_views != 1 + TILES and not ctx.dry_run:
        raise ValueError(f"pirl: the augmenter makes {ctx.n_views} views, PIRL needs {1 + TILES} (the image, then "
                         "its 9 jigsaw tiles): use augmenter pirl_views")
    return PIRL(size, dim, options.temperature, options.lam, options.momentum, options.noise_samples,
                options.normaliser, seed=ctx.seed)
