"""The data types that flow between jef's parts.

Every component a plugin registers is built by a *factory*
``factory(options, ctx) -> component`` where ``options`` is an instance of the
component's attrs options class and ``ctx`` is the read-only
:class:`RunContext`. What each kind of component must look like:

* **augmenter** -- ``nn.Module``; ``forward(images, generator=None) -> list[Tensor]``
  takes a batch ``[B, C, H, W]`` (uint8 or float in [0, 1]) on any device and
  returns the views (float, normalised), global views first. Attributes
  ``n_views`` and ``n_global``; ``eval_view(images) -> Tensor`` is the
  deterministic test-time transform used by evaluation. Views that carry
  facts (a pretext task's rotation class, a jigsaw's permutation) come back
  as :class:`Views`, a list with a ``facts`` mapping of per-sample tensors,
  drawn for the global batch and sharded like the views; they reach the
  objective as ``StepOutputs.facts``.
* **backbone** -- ``nn.Module`` mapping ``[B, C, H, W]`` to ``[B, out_dim]``;
  ``out_dim`` is known without a forward pass. A token backbone (the built-in
  ``vit``) also has ``forward_tokens(images, mask=None, blocks=(), mask_mode="replace")``
  returning :class:`Tokens`.
* **masker** -- ``nn.Module``; ``forward(view, generator=None) -> Masks`` draws per-sample token masks
  (:class:`Masks`) for one view ``[B, C, H, W]`` on the patch grid of ``ctx.patch_size``. Like an
  augmenter it draws for the global batch (``ctx.world_size × B`` samples) and keeps rows
  ``ctx.rank × B`` onwards, so W processes draw what one draws. A pipeline with a masker runs the
  model's masked path (:mod:`jef.model.masked`, ``docs/masks.md``).
* **token head** -- a head (the ``predictor`` slot of a masked pipeline) with
  ``predict_tokens(tokens: Tokens, masks: Masks) -> list[Tensor]``: the online predictions at each
  predicted set's positions, ``[R_k, out_dim]`` rows in (sample, position) row-major order.
* **tokenizer** -- ``nn.Module`` without parameters for a text encoder: ``encode(texts) -> LongTensor
  [B, context_length]``, each row ``[SOT, ids..., EOT]`` then padding ``0``; attributes ``vocab_size``,
  ``context_length``, ``pad_id`` (0); optionally ``fit(texts)`` learns its state (a vocabulary) from the
  training texts, kept in ``get_extra_state`` so that checkpoints hold it. The text backbone built after it
  reads ``ctx.vocab_size`` and ``ctx.context_length``.
* **head** (projector or predictor) -- ``nn.Module`` mapping ``[B, ctx.in_dim]``
  to ``[B, out_dim]``; attribute ``out_dim``.
* **energy** (D) -- ``nn.Module``; ``forward(a, b) -> Tensor[N]``, one
  distance per sample, ``a`` an online output ``[N, ctx.online_dim]`` and ``b``
  a target embedding ``[N, ctx.target_dim]``.
  When the two widths differ (and no functional makes targets), the pipeline
  calls the energy once on two rows of each width when it is built: an energy
  that cannot compare them fails there, naming the YAML paths of both widths,
  not at the first step.
* **functional** (A/B) -- ``nn.Module``; ``forward(out: StepOutputs)`` returns
  a scalar tensor or a dict of named scalar tensors (summed into the loss; an
  empty dict adds nothing); its factory reads the widths it sees from
  ``ctx.online_dim`` and ``ctx.target_dim``. A functional may also *make the targets* the
  energy compares: ``targets(out: StepOutputs) -> StepOutputs`` runs before
  the energy and returns the outputs with new target embeddings (and, if it
  scores the online outputs, new online outputs), e.g. SwAV's Sinkhorn codes
  or DINO's centred teacher probabilities. Target makers run in pipeline
  order; every functional's ``forward`` then sees the made targets.
* **dataset** -- a :class:`DataSplits`.
* **target** -- a :class:`Target`: makes the target branch from the online
  network (``shared``, ``stopgrad``, ``ema`` are built in, :mod:`jef.model.targets`).
* **monitor** -- any object whose methods are ``@jef.hookimpl`` run hooks; it
  is registered with the plugin manager for the duration of a run.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import attrs
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset


@attrs.frozen
class NoOptions:
    """Options class for components that take no options."""


@attrs.frozen
class RunContext:
    """Read-only facts about the run that factories may read.

    Built once per run (and refined with :func:`attrs.evolve` as the pipeline
    learns more, e.g. ``in_dim`` for heads); nothing mutates it.

    Attributes:
        seed: The run's seed.
        device: Device the model trains on (``"cpu"``, ``"cuda:0"``).
        world_size: Number of processes.
        rank: This process's index.
        batch_size: Images per process per step.
        global_batch_size: ``batch_size * world_size``.
        epochs: Planned number of epochs.
        steps_per_epoch: Optimiser steps per epoch.
        total_steps: ``epochs * steps_per_epoch``.
        precision: ``"no"``, ``"bf16"`` or ``"fp16"``.
        in_channels: Channels of the images the backbone receives.
        image_size: Side of the global views.
        n_views: Views per image made by the augmenter.
        n_global: Of those, how many are global (they come first).
        in_dim: Width of the input a head receives (set when building heads); for energies and
            functionals, the width of the target embeddings (``target_dim``), as before
            ``online_dim`` and ``target_dim`` existed.
        run_dir: Directory of the run (checkpoints, logs), if any.
        train_size: Images in the training split (set once the data is built;
            memory banks hold one row per training image).
        online_dim: For energies and functionals: the width of the online output ``p_a``
            (the predictor's output, else the projector's, else the backbone's); None for the
            components built before the heads.
        target_dim: For energies and functionals: the width of the target embedding ``t_b``
            (the target projector's output, else the backbone's); None before the heads are built.
        dry_run: True when the pipeline is built only to be checked (``jef config show``): the data
            is not loaded, so ``in_channels`` and ``image_size`` come from the data's options when
            it declares them (``channels``, ``image_size``) and are stand-ins otherwise, and
            ``train_size`` is the data's ``subset_train`` or ``train_size``, else None. A factory should still check its
            options, and may skip what needs the real data (a bank sized by the training split).
        patch_size: For the components built after the backbone: its patch side when it makes tokens (a ViT's
            ``patch_size``), else None. A masker draws on the patch grid of a view of side ``S``,
            ``S // patch_size``.
        vocab_size: For a text encoder's backbone: the size of its tokenizer's vocabulary (token ids are
            ``0 .. vocab_size - 1``, 0 the padding), else None.
        context_length: For a text encoder's backbone: the tokens per text its tokenizer makes, else None.
    """

    seed: int = 0
    device: str = "cpu"
    world_size: int = 1
    rank: int = 0
    batch_size: int = 32
    global_batch_size: int = 32
    epochs: int = 1
    steps_per_epoch: int = 1
    total_steps: int = 1
    precision: str = "no"
    in_channels: int = 3
    image_size: int = 32
    n_views: int = 2
    n_global: int = 2
    in_dim: int | None = None
    run_dir: Path | None = None
    train_size: int | None = None
    online_dim: int | None = None
    target_dim: int | None = None
    dry_run: bool = False
    patch_size: int | None = None
    vocab_size: int | None = None
    context_length: int | None = None


class Views(list):
    """An augmenter's views (a plain list of ``[B, C, h, w]`` tensors) and the facts they carry.

    A list, so that code reading views reads these the same way; ``facts`` maps a name to a ``[B, ...]`` tensor of
    this process's rows (``rotation``: the class of the rotation applied to each sample), for the objective
    (``StepOutputs.facts``).

    Args:
        views: The views, global views first.
        facts: Per-sample facts of the views, by name.
    """

    def __init__(self, views: Any, facts: dict[str, Tensor] | None = None) -> None:
        super().__init__(views)
        self.facts = dict(facts or {})


@attrs.frozen
class Branch:
    """One branch of the joint-embedding network, for every view.

    Attributes:
        h: Backbone representations, one ``[N, d_h]`` tensor per view.
        z: Projector outputs, one ``[N, d_z]`` tensor per view.
        p: Predictor outputs (online branch of asymmetric methods) or None.
    """

    h: list[Tensor]
    z: list[Tensor]
    p: list[Tensor] | None = None

    @property
    def out(self) -> list[Tensor]:
        """The branch's final output per view: ``p`` when present, else ``z``."""
        return self.p if self.p is not None else self.z


@attrs.frozen
class StepOutputs:
    """What the model produced for one batch; the input of energies and functionals.

    Attributes:
        online: The online (gradient-carrying) branch.
        target: The target branch: the online branch itself (``shared``),
            a detached copy (``stopgrad``) or the EMA network's outputs (``ema``).
            Target views exist only for the global views.
        n_global: Views ``[0, n_global)`` are global crops.
        indices: Dataset positions of the batch's samples (memory banks), or None.
        labels: The batch's class labels (``-1`` for unlabelled images), or None. Only
            monitors may read them (online probes); an SSL objective must not.
        assignments: Soft assignments ``[N, K]`` of each global view's samples to
            ``K`` classes (SwAV's codes over prototypes, DINO's teacher
            probabilities), set by a functional that makes targets; the collapse
            monitor reports their entropy and class usage. None otherwise.
        masked: The token outputs of a masked pipeline (a masker is set), or None.
        towers: The branch of each named encoder of the pipeline (``encoders:``; CLIP's text tower), by name,
            or None without encoders. A ``tower`` target is one of them.
        facts: What the augmenter's views carry (:class:`Views`: a rotation class, a tile permutation), by name,
            ``[N, ...]`` local rows; None when it returned a plain list.
    """

    online: Branch
    target: Branch
    n_global: int
    indices: Tensor | None = None
    assignments: list[Tensor] | None = None
    labels: Tensor | None = None
    masked: MaskedOutputs | None = None
    towers: dict[str, Branch] | None = None
    facts: dict[str, Tensor] | None = None


class Target(Protocol):
    """What a target maker (the ``target`` kind) provides.

    A target object may also implement run hooks: it is registered for the run like any component
    (the ``ema`` target moves its momentum copy in ``jef_step_end``).

    Attributes:
        projected: True when the target embeddings are projector outputs ``z``; False when they are
            backbone features (an EMA target without its own projector copy). Sets ``ctx.target_dim``.
    """

    projected: bool

    def attach(self, model: nn.Module) -> None:
        """Called once, when the model (a ``jef.model.joint.JointEmbedding``) is made, before any step."""

    def embed(self, model: nn.Module, views: list[Tensor], online: Branch) -> Branch:
        """The target branch of the global views ``views[:model.n_global]``, given the online branch.

        A target that embeds with one of the pipeline's named encoders implements ``embed_towers(model, views,
        online, towers) -> Branch`` as well; the model calls it instead, with every encoder's branch of the step
        (the built-in ``tower`` target).
        """


class Term(NamedTuple):
    """One weighted term of the objective: the energy D or a functional, with the name its terms are logged under.

    Attributes:
        name: The log name (``energy/<name>`` for the energy; ``<name>`` or ``<name>/<key>`` for a functional).
        module: The energy or functional module.
        weight: Its weight in the loss.
    """

    name: str
    module: nn.Module
    weight: float = 1.0


class StepResult(NamedTuple):
    """What the objective, the model and a ``jef_train_step`` hook return for one batch.

    A named tuple, so ``loss, terms, outputs = model(views)`` reads as before.

    Attributes:
        loss: The scalar loss the loop back-propagates.
        terms: The named terms, unweighted, for logging (``energy/<name>``, ``<functional>[/<key>]``).
        outputs: The branches' outputs (with the made targets), for the step-end hooks (EMA update,
            queue enqueue, monitors); None from a step that has none to share.
    """

    loss: Tensor
    terms: dict[str, Tensor]
    outputs: StepOutputs | None = None


@attrs.frozen
class DataSplits:
    """What a dataset factory returns.

    Each split yields ``(image, label, index)``: ``image`` a uint8 tensor
    ``[C, H, W]``, ``label`` an int (``-1`` when unlabelled), ``index`` the
    sample's position in the split. A split with more fields than these (a
    caption) yields a mapping of named fields instead, ``{"image": ...,
    "text": str, "label": int, "index": int}`` (:mod:`jef.data.fields`); such
    a split also has a ``texts`` attribute, the list of every sample's text,
    so that a tokenizer can be fitted without decoding any image.

    Attributes:
        train: The split trained on (and the kNN feature bank).
        test: Held-out split for evaluation, or None.
        num_classes: Number of classes when labelled, else None.
        channels: Image channels.
        image_size: Image side (images are square after loading).
        name: Human-readable name for logs.
        fields: The fields of a sample (``image``, ``label`` and ``index`` for a tuple; ``text`` too for
            image-text data). A pipeline's encoder of a field checks it is here.
        class_names: Readable class names indexed by label (zero-shot prompts), or None.
        prompt_templates: Zero-shot prompt templates with one ``{}`` for the class name (``"a photo of a
            {}."``); empty: the zero-shot protocol's defaults.
    """

    train: Dataset
    test: Dataset | None
    num_classes: int | None
    channels: int
    image_size: int
    name: str = ""
    fields: tuple[str, ...] = ("image", "label", "index")
    class_names: tuple[str, ...] | None = None
    prompt_templates: tuple[str, ...] = ()

    @property
    def labelled(self) -> bool:
        """True when the splits carry labels."""
        return self.num_classes is not None


def describe_options(options_cls: type) -> list[dict[str, Any]]:
    """List an attrs options class's fields as ``{name, type, default, doc}`` rows."""
    rows = []
    for field in attrs.fields(options_cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()  # type: ignore[union-attr]
        elif default is attrs.NOTHING:
            default = None
        if isinstance(field.type, type) and not typing.get_args(field.type):
            type_name = field.type.__name__
        else:
            type_name = str(field.type).replace("typing.", "")
        rows.append({"name": field.name, "type": type_name, "default": default,
                     "doc": field.metadata.get("doc", "")})
    return rows


@attrs.frozen(kw_only=True)
class Tokens:
    """What a token backbone's ``forward_tokens`` returns: its tokens, besides the pooled ``h`` (ARCHITECTURE §8).

    The base of masked methods (data2vec's targets from the teacher's top blocks, I-JEPA's and MAE's kept
    tokens); see ``docs/vit.md``.

    Attributes:
        patches: Patch tokens after the final norm, ``[N, T, d]`` (``T`` the kept tokens when masked tokens
            were dropped), in row-major grid order.
        cls: The CLS token after the final norm, ``[N, d]``, or None for a backbone without one.
        blocks: The outputs of the blocks asked for, ``[N, 1 + T, d]`` (CLS first, before the final norm),
            keyed by the index as asked for (``-1`` is the last block).
        mask: The ``[N, T]`` bool mask the backbone was given (True = masked), or None.
        grid: The patch grid ``(rows, cols)`` of the images: ``T = rows * cols`` before any drop.
    """

    patches: Tensor
    cls: Tensor | None
    grid: tuple[int, int]
    blocks: dict[int, Tensor] = attrs.field(factory=dict)
    mask: Tensor | None = None


@attrs.frozen(kw_only=True)
class Masks:
    """The token masks of one view, drawn by a masker for the global batch (ARCHITECTURE §8, ``docs/masks.md``).

    Attributes:
        hidden: ``[N, T]`` bool, True where the online encoder does not see a patch (replaced by the mask token
            or dropped, as ``mode`` says). No row is all True.
        predict: One ``[N, T]`` bool per predicted set: the positions the loss is computed at (the hidden
            patches for data2vec and MAE; each of I-JEPA's target blocks).
        mode: ``"replace"`` (a learned mask token takes a hidden patch's place) or ``"drop"`` (hidden patches
            are removed; every row keeps the same number).
        grid: The patch grid ``(rows, cols)``, ``T = rows * cols``.
        counts: For each predicted set, its positions over the *global* batch. A loss over the predicted
            positions divides by ``count / world_size`` on every process, so that W processes average the
            gradient of one process's global-batch mean even when rows predict different numbers.
        world_size: The number of processes the masks were drawn for.
    """

    hidden: Tensor
    predict: tuple[Tensor, ...]
    mode: str
    grid: tuple[int, int]
    counts: tuple[int, ...]
    world_size: int = 1

    def to(self, device: torch.device | str) -> Masks:
        """The masks on ``device``; a predicted set that is the hidden mask itself stays that one tensor."""
        hidden = self.hidden.to(device)
        return attrs.evolve(self, hidden=hidden,
                            predict=tuple(hidden if p is self.hidden else p.to(device) for p in self.predict))


@attrs.frozen(kw_only=True)
class MaskedOutputs:
    """What the masked path of the model produced for one batch (``StepOutputs.masked``).

    Every list has one entry per view; ``predictions[v]`` and ``targets[v]`` one ``[R_k, d]`` tensor per
    predicted set ``k`` of ``masks[v]``, rows in (sample, position) row-major order: the energy D compares
    them row by row.

    Attributes:
        views: The views the masks apply to (a target maker may read pixels from them, as MAE's).
        masks: Each view's :class:`Masks`.
        online: The online encoder's :class:`Tokens` of each masked view.
        predictions: The token head's predictions.
        target: The target encoder's :class:`Tokens` of each whole view (with the blocks the target makers
            asked for), or None when no target maker reads them.
        targets: What the predictions are compared with, made by a functional's ``targets``; None until then.
    """

    views: list[Tensor]
    masks: list[Masks]
    online: list[Tokens]
    predictions: list[list[Tensor]]
    target: list[Tokens] | None = None
    targets: list[list[Tensor]] | None = None
