"""One entry point for the offline evaluation protocols: weighted kNN, linear probe, fine-tuning.

Each number comes back as a :class:`Result` whose ``protocol`` names
everything that makes it comparable with another number (protocol, its
settings, the data and their sizes), and :func:`write_evaluation` keeps them
in the run directory's ``evaluation.json``. These are *offline* numbers,
measured once on the whole train and test splits; the online monitors log
theirs during training under ``online/...`` and they are not the same
measurement (see ``docs/evaluation.md``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs
import torch
from torch import Tensor, nn

from jef.files import atomic_write
from jef.components import DataSplits
from jef.evaluate.features import extract_feature_sets, probe_features
from jef.evaluate.finetune import finetune, finetune_param_groups
from jef.evaluate.knn import knn_accuracy
from jef.evaluate.linear import MOMENTUM, linear_probe
from jef.evaluate.multimodal import TOWER_PROTOCOLS, can_run, evaluate_towers
from jef.evaluate.results import Result
from jef.config.options import EvalOptions, LinearProbeOptions

__all__ = ["EVALUATION_NAME", "PROTOCOLS", "Result", "check_backbone", "evaluate_backbone", "read_evaluation",
           "require_labels", "write_evaluation"]

#: The protocols, in the order they run; the last two need a text encoder (:mod:`jef.evaluate.multimodal`).
PROTOCOLS = ("knn", "linear", "finetune", *TOWER_PROTOCOLS)
#: The protocols of the backbone alone.
BACKBONE_PROTOCOLS = ("knn", "linear", "finetune")
#: The file in a run directory that :func:`write_evaluation` writes.
EVALUATION_NAME = "evaluation.json"


def evaluate_backbone(
    backbone: nn.Module,
    splits: DataSplits,
    eval_view: Callable[[Tensor], Tensor],
    options: EvalOptions,
    device: str | torch.device = "cpu",
    *,
    seed: int = 0,
    protocols: Iterable[str] | None = None,
    num_workers: int = 0,
    model: nn.Module | None = None,
) -> list[Result]:
    """Run the offline protocols on a backbone and return their top-1 and top-5 accuracies.

    kNN and the linear probe share one pass of feature extraction: the
    backbone in eval mode on ``eval_view`` of the train and test splits, in
    batches of ``options.knn.batch_size``; unlabelled training images (label
    -1) are left out. kNN reads ``h``; the probe reads ``h`` too, or with
    ``eval.linear.last_blocks`` / ``avgpool_patches`` a ViT's DINO features
    (:func:`~jef.evaluate.features.probe_features`), computed on the same
    batches. Fine-tuning trains a copy. Every module of ``backbone`` is left
    in the mode it was in, with the same weights. What the options ask of the
    backbone is checked before any protocol runs (:func:`check_backbone`).

    Args:
        backbone: Image -> ``[B, d]`` features, already on ``device``.
        splits: Labelled splits with a test split.
        eval_view: Deterministic test-time transform of uint8 batches (the augmenter's ``eval_view``).
        options: The pipeline's ``eval`` section.
        device: Where features are computed and heads trained.
        seed: Seed of the linear probe's and fine-tuning's randomness.
        protocols: Which of :data:`PROTOCOLS` to run (default: those ``enabled`` in ``options``).
        num_workers: DataLoader worker processes.
        model: The whole model (``JointEmbedding``), for the protocols that need its text encoder (zero-shot,
            retrieval). Without ``protocols``, they run when enabled and the model and data can serve them.

    Returns:
        The results, in the order of :data:`PROTOCOLS`, top-1 before top-5.

    Raises:
        ValueError: Unlabelled data, no test split, or an unknown protocol.
        ConfigError: Options the backbone cannot serve (see :func:`check_backbone`).
    """
    chosen = _chosen(options, protocols)
    towers = chosen & set(TOWER_PROTOCOLS)
    if protocols is None:  # enabled by default, but only a model with a text encoder can serve them
        towers &= can_run(model, splits) if model is not None else set()
    elif towers and model is None:
        raise ValueError(f"{', '.join(sorted(towers))} need the whole model (its text encoder), not only a backbone")
    chosen -= set(TOWER_PROTOCOLS)
    if chosen or "zero_shot" in towers:
        require_labels(splits)
    check_backbone(backbone, options, chosen)
    results: list[Result] = []
    if "knn" in chosen or "linear" in chosen:
        features = _Features.extract(backbone, splits, eval_view, options, chosen, device, num_workers)
        if "knn" in chosen:
            results += _knn(features, options)
        if "linear" in chosen:
            results += _linear(features, options, seed)
    if "finetune" in chosen:
        results += _finetune(backbone, splits, eval_view, options, device, seed, num_workers)
    if towers:
        results += evaluate_towers(model, splits, eval_view, options, device,  # type: ignore[arg-type]
                                   [name for name in TOWER_PROTOCOLS if name in towers], num_workers=num_workers)
    return results


def check_backbone(backbone: nn.Module, options: EvalOptions, protocols: Iterable[str] | None = None) -> None:
    """Fail now, not after the features or a training run, when the ``eval`` options ask what ``backbone`` lacks.

    ``eval.linear.last_blocks`` / ``avgpool_patches`` need a token backbone (``forward_tokens``), and
    ``eval.finetune.layer_decay`` a ViT's ``blocks.N.`` parameters.

    Args:
        backbone: The backbone to evaluate.
        options: The pipeline's ``eval`` section.
        protocols: The protocols that will run (default: those ``enabled`` in ``options``).

    Raises:
        ConfigError: Naming the option and the backbone, and what to set instead.
    """
    chosen = _chosen(options, protocols)
    if "linear" in chosen:
        probe_features(backbone, options.linear.last_blocks, options.linear.avgpool_patches)
    if "finetune" in chosen and options.finetune.layer_decay is not None:
        finetune_param_groups(backbone, nn.Identity(), options.finetune)


@attrs.frozen
class _Features:
    """Labelled train and test features of the frozen backbone, and the data's description.

    ``train_x``/``test_x`` are ``h`` (kNN's), ``probe_train_x``/``probe_test_x`` the linear probe's: the same
    tensors unless ``eval.linear`` asks for a ViT's block features. A protocol that does not run gets none.
    """

    train_x: Tensor | None
    train_y: Tensor
    test_x: Tensor | None
    test_y: Tensor
    probe_train_x: Tensor | None
    probe_test_x: Tensor | None
    num_classes: int
    data: str

    @classmethod
    def extract(cls, backbone: nn.Module, splits: DataSplits, eval_view: Callable[[Tensor], Tensor],
                options: EvalOptions, chosen: set[str], device: str | torch.device, num_workers: int) -> _Features:
        # The feature functions are chosen once; one pass over each split computes all of them.
        functions: list[Callable[[Tensor], Tensor]] = [backbone] if "knn" in chosen else []
        probe = None
        if "linear" in chosen:
            probe = probe_features(backbone, options.linear.last_blocks, options.linear.avgpool_patches)
            if probe is not backbone or not functions:
                functions.append(probe)
        kwargs = dict(batch_size=options.knn.batch_size, device=device, num_workers=num_workers)
        label = " and ".join(name for name in ("kNN", "linear probe") if name.split()[0].lower() in chosen)
        train, train_y = extract_feature_sets(backbone, splits.train, functions, eval_view, **kwargs,
                                              description=f"{label}: train features")
        test, test_y = extract_feature_sets(backbone, splits.test, functions, eval_view,  # type: ignore[arg-type]
                                            **kwargs, description=f"{label}: test features")
        keep = train_y >= 0  # unlabelled training images (STL-10's unlabelled part) have no class
        train, train_y = [x[keep] for x in train], train_y[keep]
        h_train, h_test = (train[0], test[0]) if "knn" in chosen else (None, None)
        probe_train, probe_test = (train[-1], test[-1]) if probe is not None else (None, None)
        data = f"{_data(splits)} ({splits.num_classes} classes): {len(train_y)} train / {len(test_y)} test images"
        return cls(h_train, train_y, h_test, test_y, probe_train, probe_test,  # type: ignore[arg-type]
                   splits.num_classes, data)


def _knn(features: _Features, options: EvalOptions) -> list[Result]:
    knn, n_train = options.knn, len(features.train_y)
    top = knn_accuracy(features.train_x, features.train_y, features.test_x, features.test_y,  # type: ignore[arg-type]
                       num_classes=features.num_classes, k=knn.k, temperature=knn.temperature, topk=(1, 5))
    k = f"k={knn.k}" + (f" (clipped to the {n_train} train images)" if knn.k > n_train else "")
    label = (f"offline weighted kNN (InstDisc, arXiv:1805.01978) on frozen backbone features: {k}, "
             f"T={knn.temperature:g}, cosine similarity, eval view; {features.data}")
    return [Result("knn_top1", top[1], label), Result("knn_top5", top[5], label)]


def _linear(features: _Features, options: EvalOptions, seed: int) -> list[Result]:
    linear = options.linear
    probe = linear_probe(features.probe_train_x, features.train_y, features.probe_test_x,  # type: ignore[arg-type]
                         features.test_y, num_classes=features.num_classes, options=linear, seed=seed)
    head = "BatchNorm (no affine) + linear head" if linear.normalize == "batchnorm" else "linear head"
    label = (f"offline linear probe on frozen backbone features{_probe_features(linear)} (eval mode, eval view): "
             f"{head}, SGD momentum "
             f"{MOMENTUM:g}, cosine lr from {linear.lr:g} to 0, weight_decay={linear.weight_decay:g}, "
             f"batch_size={linear.batch_size}, epochs={linear.epochs}, seed={seed}; {features.data}")
    return [Result("linear_top1", probe.top1, label), Result("linear_top5", probe.top5, label)]


def _probe_features(linear: LinearProbeOptions) -> str:
    """`` (...)`` saying which ViT features the probe read, or nothing for ``h``."""
    if linear.last_blocks == 1 and not linear.avgpool_patches:
        return ""
    blocks = "the CLS token after the final norm" if linear.last_blocks == 1 else (
        f"the CLS tokens of the last {linear.last_blocks} blocks after the final norm, concatenated")
    patches = " + the mean patch token" if linear.avgpool_patches else ""
    return f" ({blocks}{patches}, as DINO arXiv:2104.14294)"


def _finetune(backbone: nn.Module, splits: DataSplits, eval_view: Callable[[Tensor], Tensor], options: EvalOptions,
              device: str | torch.device, seed: int, num_workers: int) -> list[Result]:
    tune = options.finetune
    tuned = finetune(backbone, splits, eval_view, tune, device=device, seed=seed, num_workers=num_workers)
    augment = "eval view + random horizontal flip" if tune.flip else "eval view, no augmentation"
    data = (f"{_data(splits)} ({splits.num_classes} classes): {len(splits.train)} train "  # type: ignore[arg-type]
            f"/ {len(splits.test)} test images")  # type: ignore[arg-type]
    if tune.layer_decay is None:
        rates = f"backbone x{tune.backbone_lr_scale:g}"
    else:
        rates = (f"layer-wise decay {tune.layer_decay:g}: block i of depth at x{tune.layer_decay:g}^(depth - i), "
                 f"embeddings at x{tune.layer_decay:g}^(depth + 1), no weight decay on norms, biases, pos_embed and "
                 "cls_token")
    label = (f"offline fine-tuning of a copy of the backbone + linear head: SGD momentum {MOMENTUM:g}, cosine lr "
             f"from {tune.lr:g} to 0 ({rates}), weight_decay={tune.weight_decay:g}, "
             f"batch_size={tune.batch_size}, epochs={tune.epochs}, {augment}, seed={seed}; {data}")
    return [Result("finetune_top1", tuned.top1, label), Result("finetune_top5", tuned.top5, label)]


def _chosen(options: EvalOptions, protocols: Iterable[str] | None) -> set[str]:
    if protocols is None:
        return {name for name in PROTOCOLS if getattr(options, name).enabled}
    chosen = set(protocols)
    unknown = sorted(chosen - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"unknown evaluation protocol(s) {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(PROTOCOLS)}")
    return chosen


def _data(splits: DataSplits) -> str:
    return splits.name or "the data"


def require_labels(splits: DataSplits) -> None:
    """The errors a user reads when the data cannot be evaluated, saying what to pass instead."""
    if not splits.labelled:
        raise ValueError(f"{_data(splits)}: the data has no labels; evaluation needs a labelled dataset: "
                         f"pass data.name=... (e.g. data.name=fashion_mnist_mini) or --data NAME")
    if splits.test is None or len(splits.test) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{_data(splits)}: the data has no test split; evaluation scores the test split: "
                         f"give the dataset one (e.g. data.test_size=... for synthetic, "
                         f"data.test_fraction=0.1 for an image folder)")


def write_evaluation(directory: str | Path, results: Iterable[Result], *, step: int | None = None,
                     merge: bool = True) -> Path:
    """Write ``evaluation.json`` atomically: ``{key: {"value", "protocol"[, "step"]}}``.

    Args:
        directory: The run directory.
        results: What :func:`evaluate_backbone` returned.
        step: Optimiser steps of the checkpoint evaluated, recorded with each number.
        merge: Keep the keys of an existing file that ``results`` do not replace
            (``jef eval --protocol knn`` then ``--protocol linear`` gives both).

    Returns:
        The file's path.
    """
    path = Path(directory) / EVALUATION_NAME
    entries = read_evaluation(directory) if merge else {}
    for result in results:
        entries[result.key] = {"value": result.value, "protocol": result.protocol,
                               **({"step": step} if step is not None else {})}
    text = json.dumps(entries, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def read_evaluation(directory: str | Path) -> dict[str, dict]:
    """The entries of a run directory's ``evaluation.json``, or ``{}`` when there is none."""
    path = Path(directory) / EVALUATION_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); delete it and run `jef eval` again") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of result keys, got {type(data).__name__}; delete it and run "
                         "`jef eval` again")
    return data
