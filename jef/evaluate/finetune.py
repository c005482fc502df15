"""Fine-tuning: the backbone and a linear head trained together on the labels.

The semi-supervised protocol of SimCLR (Chen et al., 2020, arXiv:2002.05709,
appendix on fine-tuning) and BYOL (Grill et al., 2020, arXiv:2006.07733,
appendix on semi-supervised training), in a light form that fits any image
size: SGD with momentum 0.9, a cosine schedule, the backbone at a smaller
rate than the new head, and as the only augmentation a random horizontal flip
of the deterministic ``eval_view`` (those papers use random resized crops and
flips; jef's augmenters differ per pipeline, and the eval view is the one
transform every pipeline has).

The loop has the shape of Accelerate's ``cv_example.py``: build, one
``prepare``, a plain loop, ``gather_for_metrics`` for the test accuracy.

With ``layer_decay`` a ViT is fine-tuned as BEiT and MAE do, with layer-wise
rate decay (:func:`finetune_param_groups`).

References:
    [1] Bao et al., BEiT: BERT Pre-Training of Image Transformers, 2021, arXiv:2106.08254: layer-wise decay.
    [2] He et al., Masked Autoencoders Are Scalable Vision Learners (MAE), 2021, arXiv:2111.06377;
        ``util/lr_decay.py`` (``param_groups_lrd``, ``get_layer_id_for_vit``) of facebookresearch/mae.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from torch import Tensor, nn
from torch.utils.data import DataLoader

from jef.components import DataSplits
from jef.config.validate import ConfigError
from jef.data.fields import as_fields
from jef.evaluate.linear import MOMENTUM, cosine_lambda, topk_accuracy
from jef.config.options import FinetuneOptions
from jef.evaluate.progress import progress_bar

__all__ = ["FinetuneResult", "finetune", "finetune_optimizer", "finetune_param_groups", "vit_layer"]

#: ``blocks.N.`` anywhere in a parameter's name: jef's ``vit``, and timm's ViTs (``model.blocks.N.`` in
#: jef-plugin-timm's wrapper).
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
#: Name parts of what comes before the first block: layer 0.
_EMBEDDINGS = frozenset({"patch_embed", "pos_embed", "cls_token", "mask_token", "reg_token", "dist_token"})
#: Parameters without weight decay besides the 1-D ones (MAE's ``no_weight_decay_list``, with the mask token).
_NO_WEIGHT_DECAY = frozenset({"pos_embed", "cls_token", "mask_token", "reg_token", "dist_token"})


@attrs.frozen
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        top1: Test accuracy of the fine-tuned classifier, in ``[0, 1]``.
        top5: Fraction of test images whose class is among its 5 highest logits.
        backbone: The fine-tuned backbone: a copy, or the one passed in with ``in_place=True``.
        head: The trained ``nn.Linear`` head.
    """

    top1: float
    top5: float
    backbone: nn.Module
    head: nn.Module


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


@contextlib.contextmanager
def _accelerator(device: torch.device) -> Iterator[Accelerator]:
    """An Accelerator on ``device``'s type, in full precision, that leaves the process's Accelerate state as it was.

    Accelerate keeps one state per process. In one process (``jef eval``, or
    the end of a one-process ``jef train``) fine-tuning gets a fresh state and
    the caller's is put back afterwards. Under ``accelerate launch`` every
    process must call :func:`finetune`; the launcher's state (processes,
    precision) is used, and the data are sharded across the processes.
    """
    distributed = PartialState._shared_state != {} and PartialState().num_processes > 1
    if distributed:
        yield Accelerator()
        return
    states = (PartialState, AcceleratorState, GradientState)
    saved = [dict(state._shared_state) for state in states]
    # One process: resetting the device state too is safe (no process group) and lets a CPU evaluation follow a
    # GPU run in the same process. ``_reset_state`` is private, but Accelerate offers no public reset of its
    # process-wide singletons (its own test utilities call it); the saved state is put back below.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        yield Accelerator(cpu=device.type == "cpu", mixed_precision="no")
    finally:
        for state, shared in zip(states, saved, strict=True):
            state._shared_state.clear()
            state._shared_state.update(shared)


def vit_layer(name: str, depth: int) -> int:
    """The layer of a ViT parameter, as MAE's ``get_layer_id_for_vit`` [2] and BEiT [1] count them.

    0: the patch embedding, position embedding, CLS, mask, register and distillation tokens; ``i + 1``: block
    ``i`` (``blocks.i.``, anywhere in the name); ``depth + 1``: everything else (the final norm, a head).
    """
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if _EMBEDDINGS.intersection(name.split(".")) else depth + 1


def finetune_param_groups(backbone: nn.Module, head: nn.Module, options: FinetuneOptions) -> list[dict[str, Any]]:
    """The optimiser's parameter groups for fine-tuning ``backbone`` with ``head`` (trainable parameters only).

    Without ``options.layer_decay``: two groups, the backbone at ``lr × backbone_lr_scale`` and the head at
    ``lr``, both with ``weight_decay``. With it (BEiT [1], MAE [2]): a parameter of layer ``l``
    (:func:`vit_layer`; the head is layer ``depth + 1``) learns at ``lr × layer_decay^(depth + 1 − l)``, so block
    ``i`` at ``lr × layer_decay^(depth − i)``, the embeddings at ``lr × layer_decay^(depth + 1)``, the final norm
    and the head at ``lr``; 1-D parameters (norms, biases, layer scales), ``pos_embed`` and ``cls_token`` (and
    the other tokens) get no weight decay, as MAE's ``param_groups_lrd``. Each group then has ``layer`` (its
    ``l``) and ``names`` (its parameters' names, the head's as ``head.*``).

    Raises:
        ConfigError: ``layer_decay`` with a backbone that has no ``blocks.N.`` parameters (not a ViT).
    """
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    if options.layer_decay is None:
        return [{"params": trainable, "lr": options.lr * options.backbone_lr_scale},
                {"params": list(head.parameters()), "lr": options.lr}]
    blocks = [int(m.group(1)) for name, _ in backbone.named_parameters() if (m := _BLOCK.search(name))]
    if not blocks:
        raise ConfigError(
            f"layer-wise lr decay needs a ViT whose parameters are named blocks.N. (jef's `vit`, a timm ViT); "
            f"the backbone ({type(backbone).__name__}) has none; set eval.finetune.layer_decay: null to train it "
            "at lr × backbone_lr_scale", path="eval.finetune.layer_decay")
    depth = max(blocks) + 1
    named = [(name, p, vit_layer(name, depth)) for name, p in backbone.named_parameters() if p.requires_grad]
    named += [(f"head.{name}", p, depth + 1) for name, p in head.named_parameters() if p.requires_grad]
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter, layer in named:
        decays = parameter.ndim > 1 and name.rpartition(".")[2] not in _NO_WEIGHT_DECAY
        group = groups.setdefault((layer, decays), {
            "params": [], "names": [], "layer": layer, "lr": options.lr * options.layer_decay ** (depth + 1 - layer),
            "weight_decay": options.weight_decay if decays else 0.0})
        group["params"].append(parameter)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def finetune_optimizer(backbone: nn.Module, head: nn.Module, options: FinetuneOptions) -> torch.optim.SGD:
    """SGD (momentum 0.9, ``options.weight_decay``) over :func:`finetune_param_groups`: what :func:`finetune` uses."""
    return torch.optim.SGD(finetune_param_groups(backbone, head, options), momentum=MOMENTUM,
                           weight_decay=options.weight_decay)


def _flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each image mirrored left-right with probability 0.5 (draws from a CPU generator: same on every device)."""
    mirror = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(mirror[:, None, None, None], images.flip(-1), images)


def finetune(
    backbone: nn.Module,
    splits: DataSplits,
    transform: Callable[[Tensor], Tensor],
    options: FinetuneOptions | None = None,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    in_place: bool = False,
    num_workers: int = 0,
) -> FinetuneResult:
    """Fine-tune a copy of ``backbone`` with a linear head on the train split; score it on the test split.

    Both are trained with SGD (momentum 0.9, weight decay
    ``options.weight_decay``) on the cross-entropy for ``options.epochs``
    epochs, the head at ``options.lr`` and the backbone at ``options.lr ×
    options.backbone_lr_scale``, both decaying to 0 along a cosine, step by
    step (with ``options.layer_decay``, a ViT's layers at decaying rates
    instead: :func:`finetune_param_groups`); BatchNorm layers run in
    training mode. Unlabelled training images
    (label -1) take part in the BatchNorm statistics but not in the loss. The
    test split is scored in eval mode on the ``eval_view``. On one device the
    result is deterministic given ``seed`` (order, flips, head initialisation).

    Args:
        backbone: Image -> ``[B, out_dim]`` features; must have ``out_dim``. Not modified unless ``in_place``.
        splits: Labelled splits with a test split.
        transform: The deterministic test-time view of uint8 batches (the augmenter's ``eval_view``).
        options: The protocol's settings (default: :class:`~jef.config.options.FinetuneOptions`).
        device: ``cpu`` or a GPU: selects the Accelerator's device type.
        seed: Seed of the data order, the flips and the head's initialisation.
        in_place: Train ``backbone`` itself instead of a copy.
        num_workers: DataLoader worker processes.

    Returns:
        Top-1 and top-5 test accuracy, the fine-tuned backbone (its modules'
        ``training`` flags as they were passed in) and the head.

    Raises:
        ValueError: Unlabelled data, no test split, or a backbone without ``out_dim``.
        ConfigError: ``options.layer_decay`` with a backbone that is not a ViT.
    """
    options = options or FinetuneOptions()
    if not splits.labelled or splits.test is None or len(splits.test) == 0:  # type: ignore[arg-type]
        raise ValueError(f"fine-tuning needs labelled data with a non-empty test split; {splits.name or 'this dataset'}"
                         f" has num_classes={splits.num_classes}, "
                         f"test={len(splits.test) if splits.test is not None else None} images")  # type: ignore[arg-type]
    if not isinstance(getattr(backbone, "out_dim", None), int):
        raise ValueError(f"fine-tuning: the backbone ({type(backbone).__name__}) has no integer `out_dim`, the width "
                         "of its features that the linear head needs (every jef backbone sets it)")
    modes = [module.training for module in backbone.modules()]
    model = backbone if in_place else copy.deepcopy(backbone)
    with _accelerator(torch.device(device)) as accelerator, _seeded(seed, accelerator.device):
        head = nn.Linear(model.out_dim, splits.num_classes)  # type: ignore[arg-type]
        classifier = _Classifier(model, head)
        optimizer = finetune_optimizer(model, head, options)
        order = torch.Generator().manual_seed(seed)
        train_loader = DataLoader(splits.train, batch_size=options.batch_size, shuffle=True, generator=order,
                                  num_workers=num_workers, drop_last=len(splits.train) > options.batch_size)
        test_loader = DataLoader(splits.test, batch_size=options.batch_size, num_workers=num_workers)
        classifier, optimizer, train_loader, test_loader = accelerator.prepare(
            classifier, optimizer, train_loader, test_loader)
        # Not prepared: the steps are counted on this process's shard, so the schedule is the same everywhere.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(options.epochs * len(train_loader)))
        flips = torch.Generator().manual_seed(seed + 1)
        classifier.train()
        with progress_bar(options.epochs * len(train_loader), "fine-tuning", "step") as bar:
            for _ in range(options.epochs):
                for batch in train_loader:
                    fields = as_fields(batch)  # a tuple, or a mapping of named fields (image-text data)
                    images, labels = fields["image"], fields["label"]
                    views = transform(images)
                    if options.flip:
                        views = _flip(views, flips)
                    labels = labels.long()
                    # Summed over labelled images, then averaged: a batch without labels contributes zero.
                    loss = (F.cross_entropy(classifier(views), labels, ignore_index=-1, reduction="sum")
                            / (labels >= 0).sum().clamp(min=1))
                    optimizer.zero_grad(set_to_none=True)
                    accelerator.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    bar.update(1)
        top = _score(accelerator, classifier, test_loader, transform)
    for module, was_training in zip(model.modules(), modes, strict=True):
        module.training = was_training
    return FinetuneResult(top1=top[1], top5=top[5], backbone=model, head=head)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators (head initialisation, dropout) inside, and restore them after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _score(accelerator: Accelerator, classifier: nn.Module, loader: DataLoader,
           transform: Callable[[Tensor], Tensor]) -> dict[int, float]:
    """Top-1 and top-5 accuracy on the test loader, the classifier in eval mode, gathered over processes."""
    classifier.eval()
    logits, labels = [], []
    with torch.no_grad():
        for batch in loader:
            fields = as_fields(batch)
            images, targets = fields["image"], fields["label"]
            out, targets = accelerator.gather_for_metrics((classifier(transform(images)), targets.long()))
            logits.append(out.float())
            labels.append(targets)
    return topk_accuracy(torch.cat(logits), torch.cat(labels), (1, 5))
