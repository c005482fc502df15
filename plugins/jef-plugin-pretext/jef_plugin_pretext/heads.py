"""The pretext objectives: a classifier of what the views carry, and a decoder that undoes the corruption.

Both are functionals that own parameters (a classifier head, a decoder): they are part of the model, so the
optimiser trains them and checkpoints keep them (as CLIP's learnable scale, :mod:`jef.model.learnable`). Both
read the online branch's output of each view (``out.online.out``: the backbone's features with
``projector: null``) and a fact of the views (``out.facts``, :class:`jef.components.Views`).

* ``pretext_classifier``: an MLP over the concatenation of the views' outputs, in view order (the context-free
  network of the jigsaw [3], the late fusion of the relative-position net [2]) or, with ``per_view``, over each
  view on its own (RotNet's all-four-rotations batches [1]); cross-entropy against the fact. The classifier's
  accuracy is logged as ``<fact>_accuracy`` from a ``jef_step_end`` hook (a device tensor: no host wait).
* ``reconstruction``: an MLP decoder from the corrupted view's output to the clean image [4], mean squared
  error; ``corrupted_weight`` and ``clean_weight`` weigh the errors where the noise struck and elsewhere, the
  "emphasised" denoising autoencoder of Vincent et al. 2010 [5] (α and β of their Sec. 4.3).

References:
    [1] Gidaris, Singh, Komodakis. ICLR 2018. arXiv:1803.07728.
    [2] Doersch, Gupta, Efros. ICCV 2015. arXiv:1505.05192.
    [3] Noroozi, Favaro. ECCV 2016. arXiv:1603.09246.
    [4] Vincent, Larochelle, Bengio, Manzagol. ICML 2008.
    [5] Vincent, Larochelle, Lajoie, Bengio, Manzagol. Stacked Denoising Autoencoders. JMLR 11, 2010.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor, nn

from jef import hookimpl
from jef.components import RunContext, StepOutputs

__all__ = ["AUGMENTER_OF", "PretextClassifier", "PretextClassifierOptions", "Reconstruction",
           "ReconstructionOptions", "build_pretext_classifier", "build_reconstruction", "fact"]

#: The augmenter that makes each fact, for error messages; and each fact's default number of classes.
AUGMENTER_OF = {"rotation": "rotation_views", "permutation": "jigsaw_views", "position": "relative_patch_views",
                "clean": "denoise_views", "corrupted": "denoise_views"}
CLASSES = {"rotation": 4, "position": 8, "permutation": 100}


def fact(out: StepOutputs, name: str, who: str) -> Tensor:
    """``out.facts[name]``, or an error naming the augmenter that makes it."""
    if not out.facts or name not in out.facts:
        have = sorted(out.facts) if out.facts else "none"
        maker = AUGMENTER_OF.get(name, "an augmenter that returns jef.components.Views with this fact")
        raise ValueError(f"{who}: needs the fact {name!r} of the views, and the augmenter gave {have}; use "
                         f"`augmenter: {{name: {maker}}}` (a plain views augmenter carries no facts)")
    return out.facts[name]


def mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers of ``widths`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _widths(instance: object, attribute: attrs.Attribute, value: list[int]) -> None:
    if any(not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= 65536 for w in value):
        raise ValueError(f"{attribute.name} must be a list of widths in [1, 65536], got {value}")


@attrs.frozen(kw_only=True)
class PretextClassifierOptions:
    """Options of ``pretext_classifier``."""

    fact: str = attrs.field(default="rotation", validator=v.instance_of(str),
                            metadata={"doc": "the fact predicted: rotation | permutation | position (or any "
                                             "integer fact an augmenter makes)"})
    classes: int | None = attrs.field(default=None, validator=v.optional([v.instance_of(int), v.ge(2)]),
                                      metadata={"doc": "number of classes; null: 4 for rotation, 8 for position, "
                                                       "100 for permutation (set it to jigsaw_views' "
                                                       "permutations)"})
    hidden: list[int] = attrs.field(factory=lambda: [512], converter=list, validator=_widths,
                                    metadata={"doc": "hidden widths of the classifier MLP ([]: a linear "
                                                     "classifier)"})
    per_view: bool = attrs.field(default=False, metadata={
        "doc": "classify each view on its own (fact [B, V]: rotation_views' all_rotations); false: one "
               "prediction from all views concatenated in view order (fact [B])"})

    def __attrs_post_init__(self) -> None:
        if self.classes is None and self.fact not in CLASSES:
            raise ValueError(f"pretext_classifier: no default number of classes for fact {self.fact!r}; set "
                             f"classes")


class PretextClassifier(nn.Module):
    """Cross-entropy of an MLP's prediction of ``out.facts[fact]`` from the online outputs of the views.

    Args:
        options: The options.
        dim: Width of the online output of one view (``ctx.online_dim``).
        n_views: Views per image (``ctx.n_views``).

    Attributes:
        classifier: The MLP ``[in, *hidden, classes]``, ``in = dim`` (``per_view``) or ``n_views · dim``.
    """

    def __init__(self, options: PretextClassifierOptions, dim: int, n_views: int) -> None:
        super().__init__()
        self.options, self.dim, self.n_views = options, dim, n_views
        self.classes = options.classes if options.classes is not None else CLASSES[options.fact]
        width = dim if options.per_view else dim * n_views
        self.classifier = mlp([width, *options.hidden, self.classes])
        self.accuracy: Tensor | None = None
        #: The facts of the views it reads: a generic check without them (jef's contract tests) cannot call it.
        self.needs_facts: tuple[str, ...] = (options.fact,)

    def extra_repr(self) -> str:
        return f"fact={self.options.fact!r}, classes={self.classes}, per_view={self.options.per_view}"

    def logits_and_targets(self, out: StepOutputs) -> tuple[Tensor, Tensor]:
        """The classifier's logits ``[N, classes]`` and the class of each row ``[N]``."""
        who, name = "pretext_classifier", self.options.fact
        target = fact(out, name, who)
        views = out.online.out
        if len(views) != self.n_views:
            raise ValueError(f"{who}: built for {self.n_views} views, the online branch has {len(views)}")
        if self.options.per_view:
            if target.shape != (views[0].shape[0], len(views)):
                raise ValueError(f"{who}: per_view: true classifies each view, so facts[{name!r}] must be [B, "
                                 f"{len(views)}], got {list(target.shape)}; set per_view: false")
            return self.classifier(torch.cat(views)), target.t().reshape(-1)  # view-major rows
        if target.dim() != 1:
            raise ValueError(f"{who}: facts[{name!r}] is {list(target.shape)}, one class per view; set per_view: "
                             f"true (each view classified on its own)")
        return self.classifier(torch.cat(views, dim=1)), target

    def forward(self, out: StepOutputs) -> Tensor:
        logits, target = self.logits_and_targets(out)
        if target.device.type == "cpu" and target.numel() and int(target.max()) >= self.classes:
            # Free on the CPU (no device to wait for); on an accelerator cross_entropy itself asserts.
            raise ValueError(f"pretext_classifier: facts[{self.options.fact!r}] holds class {int(target.max())} "
                             f"but the classifier has {self.classes} classes; set classes to the augmenter's "
                             f"(jigsaw_views: its permutations)")
        logits = logits.float()  # the loss in float32 under autocast
        self.accuracy = (logits.detach().argmax(dim=1) == target).float().mean()
        return F.cross_entropy(logits, target)

    @hookimpl
    def jef_step_end(self, run: Any, outputs: Any, terms: dict[str, Any]) -> None:
        """Log the last step's accuracy (a device tensor, read at the next log step)."""
        if self.accuracy is not None:
            run.log({f"{self.options.fact}_accuracy": self.accuracy})


@attrs.frozen(kw_only=True)
class ReconstructionOptions:
    """Options of ``reconstruction``."""

    hidden: list[int] = attrs.field(factory=lambda: [1024], converter=list, validator=_widths,
                                    metadata={"doc": "hidden widths of the decoder MLP ([]: one linear layer, the "
                                                     "paper's decoder)"})
    corrupted_weight: float = attrs.field(default=1.0, validator=[v.ge(0.0), v.le(1e3)],
                                          metadata={"doc": "α: weight of the squared errors at corrupted pixels"})
    clean_weight: float = attrs.field(default=1.0, validator=[v.ge(0.0), v.le(1e3)],
                                      metadata={"doc": "β: weight at the pixels the noise left (α > β: the "
                                                       "emphasised DAE of Vincent et al. 2010)"})


class Reconstruction(nn.Module):
    """Weighted mean squared error of an MLP decoder's image from view 0's output against ``facts["clean"]``.

    Args:
        options: The options.
        dim: Width of the online output (``ctx.online_dim``).
        channels: Image channels (``ctx.in_channels``).
        side: Image side (``ctx.image_size``: the augmenter's ``size``).
    """

    def __init__(self, options: ReconstructionOptions, dim: int, channels: int, side: int) -> None:
        super().__init__()
        self.options, self.shape = options, (channels, side, side)
        self.decoder = mlp([dim, *options.hidden, channels * side * side])
        corrupted = (options.corrupted_weight, options.clean_weight) != (1.0, 1.0)
        #: The facts of the views it reads (``corrupted`` only with the α/β weights).
        self.needs_facts: tuple[str, ...] = ("clean", "corrupted") if corrupted else ("clean",)

    def extra_repr(self) -> str:
        o = self.options
        return f"shape={self.shape}, corrupted_weight={o.corrupted_weight}, clean_weight={o.clean_weight}"

    def forward(self, out: StepOutputs) -> Tensor:
        clean = fact(out, "clean", "reconstruction")
        if tuple(clean.shape[1:]) != self.shape:
            raise ValueError(f"reconstruction: the decoder makes {list(self.shape)} images and facts['clean'] is "
                             f"{list(clean.shape[1:])}; set the augmenter's size to the images' side (null)")
        recon = self.decoder(out.online.out[0]).float().view(-1, *self.shape)
        error = (recon - clean.float()).square()
        o = self.options
        if (o.corrupted_weight, o.clean_weight) == (1.0, 1.0):
            return error.mean()
        where = fact(out, "corrupted", "reconstruction")
        weight = torch.where(where, o.corrupted_weight, o.clean_weight).to(error.dtype)
        return (weight * error).mean()


def _online_dim(ctx: RunContext, who: str) -> int:
    # ctx.online_dim, else in_dim: a context made before online_dim existed (or by a test) gives only in_dim.
    dim = ctx.online_dim if ctx.online_dim is not None else ctx.in_dim
    if dim is None:
        raise ValueError(f"{who}: the online output's width is unknown (ctx.online_dim); build it as a functional")
    return dim


def build_pretext_classifier(options: PretextClassifierOptions, ctx: RunContext) -> PretextClassifier:
    """The ``pretext_classifier`` functional; reads ``ctx.online_dim`` (else ``ctx.in_dim``) and ``ctx.n_views``."""
    return PretextClassifier(options, _online_dim(ctx, "pretext_classifier"), ctx.n_views)


def build_reconstruction(options: ReconstructionOptions, ctx: RunContext) -> Reconstruction:
    """The ``reconstruction`` functional; reads ``ctx.online_dim`` (else ``ctx.in_dim``), ``ctx.in_channels`` and
    ``ctx.image_size``."""
    return Reconstruction(options, _online_dim(ctx, "reconstruction"), ctx.in_channels, ctx.image_size)
