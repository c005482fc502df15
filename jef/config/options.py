"""Options of the parts of a pipeline that are not plugin components: the model's calls, training and evaluation."""

from typing import Literal

import attrs
from attrs import validators as v

#: The largest float32: the optimiser's rates and decays become float32 tensor arguments.
FLOAT32_MAX = 3.4028234663852886e38


#: The largest width, depth or count a component's option may ask for (2^24): larger ones are typos, and the
#: weights they shape would overflow torch's storage size when the model is built.
MAX_SIZE = 2**24
#: attrs validator of a size option: at most :data:`MAX_SIZE`.
size_limit = v.le(MAX_SIZE)


def doc(text: str) -> dict[str, str]:
    """Field metadata holding the one-line description ``jef list`` shows."""
    return {"doc": text}


def float32(instance: object, attribute: "attrs.Attribute", value: float) -> None:
    """attrs validator: ``value`` fits in float32 (``1.0e+300`` passes YAML and Python, then overflows torch)."""
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"'{attribute.name}' must be at most {FLOAT32_MAX:.4g}, the largest float32 (torch "
                         "computes with it in float32)", attribute, FLOAT32_MAX, value)


@attrs.frozen(kw_only=True)
class OptimizerOptions:
    """The optimiser. ``lr`` is the base rate for a global batch of 256 when ``scale_lr`` is ``linear``.

    ``fixed_lr_predictor`` puts the predictor's parameters in their own
    parameter groups (tagged ``fixed_lr``) whose rate stays at the (scaled)
    base rate for the whole run, while the rest follow ``train.scheduler``:
    SimSiam's predictor works best without decay (Chen & He, 2021,
    arXiv:2011.10566, Sec. 4.1 and Table 1, "lr with cosine decay" vs "fixed").

    ``final_weight_decay`` puts the weight decay on a cosine schedule, from ``weight_decay`` at the first step to
    ``final_weight_decay`` at the last, in the groups that decay (norms and biases excluded by
    ``exclude_norm_and_bias`` stay at 0): DINO's 0.04 -> 0.4 (Caron et al., 2021, arXiv:2104.14294, Sec. 4.1).
    ``None`` keeps it constant. See :func:`jef.run.optim.weight_decay_at`.
    """

    name: Literal["sgd", "lars", "adamw"] = attrs.field(default="sgd", metadata=doc("sgd | lars | adamw"))
    lr: float = attrs.field(default=0.3, validator=[v.gt(0.0), float32], metadata=doc("base learning rate"))
    scale_lr: Literal["linear", "sqrt", "none"] = attrs.field(
        default="linear", metadata=doc("lr × (global batch / 256), its sqrt, or as is")
    )
    momentum: float = attrs.field(default=0.9, validator=[v.ge(0.0), v.lt(1.0)], metadata=doc("SGD/LARS momentum"))
    weight_decay: float = attrs.field(default=1e-6, validator=[v.ge(0.0), float32],
                                      metadata=doc("weight decay (at the first step, with final_weight_decay)"))
    final_weight_decay: float | None = attrs.field(
        default=None, validator=v.optional([v.ge(0.0), float32]),
        metadata=doc("weight decay at the last step, reached on a cosine from weight_decay (DINO: 0.04 -> 0.4); "
                     "null: constant"))
    betas: tuple[float, float] = attrs.field(
        default=(0.9, 0.999), validator=v.deep_iterable(member_validator=[v.ge(0.0), v.lt(1.0)]),
        metadata=doc("AdamW betas"))
    trust_coefficient: float = attrs.field(default=0.001, validator=[v.gt(0.0), float32],
                                           metadata=doc("LARS trust coefficient η"))
    exclude_norm_and_bias: bool = attrs.field(
        default=True, metadata=doc("no weight decay or LARS adaptation on norms and biases")
    )
    fixed_lr_predictor: bool = attrs.field(
        default=False,
        metadata=doc("keep the predictor at the base lr throughout, no warm-up or decay "
                     "(SimSiam, Chen & He 2021, arXiv:2011.10566, Sec. 4.1)"),
    )


@attrs.frozen(kw_only=True)
class ScheduleOptions:
    """Learning-rate schedule: linear warm-up, then cosine decay (Loshchilov & Hutter, SGDR, arXiv:1608.03983)."""

    name: Literal["cosine", "constant"] = attrs.field(default="cosine", metadata=doc("cosine | constant after warm-up"))
    # The upper bound only catches typos (1.0e+300) before the schedule turns them into an overflow.
    warmup_epochs: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.le(1e6)],
                                       metadata=doc("linear warm-up length"))
    final_lr_ratio: float = attrs.field(
        default=0.0, validator=[v.ge(0.0), v.le(1.0)], metadata=doc("final lr / peak lr")
    )


@attrs.frozen(kw_only=True)
class ModelOptions:
    """How the joint model calls its networks; the slots (``backbone:``, ``projector:``...) say what they are.

    ``backbone_calls`` decides how many images a backbone sees at once, and so, in training mode, the batch a
    BatchNorm layer takes its statistics from. ``per_resolution`` (the default) concatenates the views of one size
    into one call: SimCLR's two views of B images are one batch of 2B, normalised with the statistics of both
    views together, as SimCLR's implementation does (Chen et al., 2020, arXiv:2002.05709). ``per_view`` calls the
    backbone once per view (B images), so each view is normalised with its own statistics, as BYOL's
    implementation and lightly's examples do (Grill et al., 2020, arXiv:2006.07733). The choice holds for every
    branch that encodes whole views: the online backbone, an EMA target's copy (unless it shuffles BN, which
    already encodes each view on its own) and named encoders. A backbone without batch statistics (a ViT's
    LayerNorm, GroupNorm) computes the same either way; only the speed differs (docs/speed.md).
    """

    backbone_calls: Literal["per_resolution", "per_view"] = attrs.field(default="per_resolution", metadata=doc(
        "per_resolution: the views of one size in one backbone call (BatchNorm statistics over all of them) | "
        "per_view: one call per view (each view's own statistics)"))


@attrs.frozen(kw_only=True)
class TrainOptions:
    """The training loop."""

    epochs: int = attrs.field(default=10, validator=v.ge(1), metadata=doc("epochs"))
    batch_size: int = attrs.field(default=256, validator=v.ge(2), metadata=doc("images per process per step"))
    max_steps: int | None = attrs.field(
        default=None, validator=v.optional(v.ge(1)), metadata=doc("stop after this many steps (quick runs)")
    )
    optimizer: OptimizerOptions = attrs.field(factory=OptimizerOptions, metadata=doc("optimiser"))
    scheduler: ScheduleOptions = attrs.field(factory=ScheduleOptions, metadata=doc("learning-rate schedule"))
    precision: Literal["no", "bf16", "fp16"] = attrs.field(default="no", metadata=doc("mixed precision"))
    grad_accum: int = attrs.field(default=1, validator=v.ge(1), metadata=doc("gradient accumulation steps"))
    clip_grad_norm: float | None = attrs.field(
        default=None, validator=v.optional([v.gt(0.0), float32]), metadata=doc("clip the gradient norm")
    )
    num_workers: int = attrs.field(default=0, validator=v.ge(0), metadata=doc("data-loader workers"))
    log_every: int = attrs.field(default=10, validator=v.ge(1), metadata=doc("steps between metric lines"))
    checkpoint_every: int = attrs.field(default=1, validator=v.ge(1), metadata=doc("epochs between checkpoints"))
    checkpoint_every_steps: int | None = attrs.field(
        default=None, validator=v.optional(v.ge(1)),
        metadata=doc("also checkpoint every this many steps (long epochs on preemptible machines)"))
    sync_bn: bool = attrs.field(
        default=False, metadata=doc("BatchNorm statistics over the global batch, across processes (SyncBN; "
                                    "not in a shuffle_bn key encoder, whose groups are the processes)"))
    on_nonfinite: Literal["stop", "skip"] = attrs.field(
        default="stop", metadata=doc("a NaN/inf loss: stop keeping the last good checkpoint | skip the step"))
    tensorboard: bool = attrs.field(default=True, metadata=doc("write TensorBoard events"))
    progress: bool = attrs.field(default=True, metadata=doc("show a progress bar"))
    compile: bool = attrs.field(default=False, metadata=doc(
        "torch.compile the backbone and heads of both branches; the objective, the optimiser and the hooks stay "
        "eager. The first steps (and the first evaluation) take longer while it compiles"))
    channels_last: bool = attrs.field(default=False, metadata=doc(
        "keep the model's 4-D weights, and so its convolutions' activations, in channels-last memory layout"))
    cpu_malloc: Literal["reuse", "system"] = attrs.field(default="reuse", metadata=doc(
        "a CPU run on Linux (glibc): reuse keeps freed memory in the process for the next step, where glibc maps "
        "fresh pages for each large tensor (faster steps with tensors over 32 MiB, a higher peak) | system: "
        "glibc's defaults"))


@attrs.frozen(kw_only=True)
class KnnOptions:
    """Weighted kNN (Wu et al., InstDisc, 2018, arXiv:1805.01978)."""

    enabled: bool = attrs.field(default=True, metadata=doc("run kNN at the end when the data has labels"))
    k: int = attrs.field(default=200, validator=v.ge(1), metadata=doc("neighbours"))
    temperature: float = attrs.field(default=0.1, validator=v.gt(0.0), metadata=doc("weights exp(sim / T)"))
    batch_size: int = attrs.field(
        default=256, validator=v.ge(1), metadata=doc("feature extraction batch (shared with the linear probe)"))
    baseline: bool = attrs.field(default=False, metadata=doc("also evaluate the randomly initialised backbone"))


@attrs.frozen(kw_only=True)
class LinearProbeOptions:
    """Linear probe on frozen features (Zhang et al., 2016, arXiv:1603.08511; protocol of SimCLR, arXiv:2002.05709).

    Features of the train and test splits are computed once by the backbone in
    eval mode on the augmenter's ``eval_view``; a linear head (after a
    BatchNorm without affine parameters, as in MAE, arXiv:2111.06377, appendix "Linear probing")
    is trained with SGD (momentum 0.9) and a cosine schedule. See
    ``docs/evaluation.md``.

    ``last_blocks`` and ``avgpool_patches`` choose the features of a token backbone (jef's ``vit``) as DINO's
    linear evaluation does (Caron et al., 2021, arXiv:2104.14294, ``eval_linear.py``): the CLS tokens of the last
    ``last_blocks`` blocks, each after the final norm, concatenated (4 for ViT-S), and with ``avgpool_patches`` the
    mean of the last block's patch tokens after it (ViT-B). The defaults probe ``h``, as for every backbone.
    """

    enabled: bool = attrs.field(default=False, metadata=doc("run the linear probe at the end when the data has labels"))
    epochs: int = attrs.field(default=100, validator=v.ge(1), metadata=doc("epochs over the training features"))
    lr: float = attrs.field(default=0.1, validator=[v.gt(0.0), float32],
                            metadata=doc("peak learning rate (cosine decay to 0)"))
    batch_size: int = attrs.field(default=256, validator=v.ge(2), metadata=doc("features per SGD step"))
    weight_decay: float = attrs.field(default=0.0, validator=[v.ge(0.0), float32],
                                      metadata=doc("weight decay of the head"))
    normalize: Literal["batchnorm", "none"] = attrs.field(
        default="batchnorm", metadata=doc("batchnorm: BatchNorm without affine before the linear layer | none"))
    last_blocks: int = attrs.field(
        default=1, validator=v.ge(1),
        metadata=doc("1: the backbone's h | n > 1: the CLS tokens of the last n blocks after the final norm, "
                     "concatenated (DINO: 4 for ViT-S; needs forward_tokens, e.g. vit)"))
    avgpool_patches: bool = attrs.field(
        default=False, metadata=doc("also concatenate the mean of the last block's patch tokens after the final "
                                    "norm (DINO's avgpool, ViT-B; needs forward_tokens)"))


@attrs.frozen(kw_only=True)
class FinetuneOptions:
    """Fine-tuning: backbone and a linear head trained together on the labels (SimCLR, arXiv:2002.05709).

    The backbone (a copy) learns at ``lr × backbone_lr_scale``, the head at
    ``lr``; SGD (momentum 0.9), cosine schedule, light augmentation (the
    ``eval_view``, flipped at random when ``flip``). See ``docs/evaluation.md``.

    ``layer_decay`` gives a ViT's layers rates that shrink with depth from the head (BEiT, Bao et al., 2021,
    arXiv:2106.08254; MAE, He et al., 2021, arXiv:2111.06377, ``param_groups_lrd``): block ``i`` of ``depth``
    learns at ``lr × layer_decay^(depth − i)``, the patch embedding, position embedding and CLS (and mask) token
    at ``lr × layer_decay^(depth + 1)``, the final norm and the head at ``lr``; it replaces
    ``backbone_lr_scale``, and norms, biases (every 1-D parameter), ``pos_embed`` and ``cls_token`` get no weight
    decay. See :func:`jef.evaluate.finetune.finetune_param_groups`.
    """

    enabled: bool = attrs.field(default=False, metadata=doc("fine-tune at the end when the data has labels"))
    epochs: int = attrs.field(default=10, validator=v.ge(1), metadata=doc("epochs over the training images"))
    lr: float = attrs.field(default=0.05, validator=[v.gt(0.0), float32],
                            metadata=doc("peak learning rate of the head"))
    backbone_lr_scale: float = attrs.field(
        default=0.1, validator=[v.gt(0.0), v.le(1.0)], metadata=doc("the backbone learns at lr × this"))
    batch_size: int = attrs.field(default=128, validator=v.ge(2), metadata=doc("images per step"))
    weight_decay: float = attrs.field(default=0.0, validator=[v.ge(0.0), float32], metadata=doc("weight decay"))
    flip: bool = attrs.field(default=True, metadata=doc("flip training images horizontally with probability 0.5"))
    layer_decay: float | None = attrs.field(
        default=None, validator=v.optional([v.gt(0.0), v.le(1.0)]),
        metadata=doc("layer-wise lr decay of a ViT (BEiT, MAE: 0.65 to 0.75): block i at lr × this^(depth − i), "
                     "embeddings at lr × this^(depth + 1); replaces backbone_lr_scale; null: one backbone rate"))

    @layer_decay.validator
    def _replaces_backbone_lr_scale(self, attribute: "attrs.Attribute", value: float | None) -> None:
        # Both would set the backbone's rate; a scale the user changed would silently be ignored.
        default = attrs.fields(type(self)).backbone_lr_scale.default
        if value is not None and self.backbone_lr_scale != default:
            raise ValueError(f"{value:g} sets the rate of every backbone layer, replacing backbone_lr_scale "
                             f"({self.backbone_lr_scale:g} here); remove backbone_lr_scale, or set layer_decay: "
                             "null to keep one backbone rate", attribute, value)


@attrs.frozen(kw_only=True)
class ZeroShotOptions:
    """Zero-shot classification with a text encoder (CLIP, Radford et al., 2021, arXiv:2103.00020, Sec. 3.1.4)."""

    enabled: bool = attrs.field(default=True, metadata=doc(
        "run at the end when the pipeline has a text encoder and the data labels and class names"))
    templates: list[str] | None = attrs.field(
        default=None, validator=v.optional(v.deep_iterable(v.instance_of(str), v.min_len(1))),
        metadata=doc("prompt templates with one {} for the class name; null: the data's, else CLIP-style defaults"))
    batch_size: int = attrs.field(default=256, validator=v.ge(1), metadata=doc("images or texts per forward pass"))


@attrs.frozen(kw_only=True)
class RetrievalOptions:
    """Image-text retrieval on the test split (recall@k, Karpathy & Fei-Fei, 2015, arXiv:1412.2306)."""

    enabled: bool = attrs.field(default=True, metadata=doc(
        "run at the end when the pipeline has a text encoder and the test split captions"))
    ks: list[int] = attrs.field(factory=lambda: [1, 5, 10],
                                validator=v.deep_iterable(v.and_(v.instance_of(int), v.ge(1)), v.min_len(1)),
                                metadata=doc("the k of each recall@k"))


@attrs.frozen(kw_only=True)
class EvalOptions:
    """Offline evaluation of the backbone: at the end of ``jef train`` and by ``jef eval``."""

    knn: KnnOptions = attrs.field(factory=KnnOptions, metadata=doc("weighted kNN"))
    linear: LinearProbeOptions = attrs.field(factory=LinearProbeOptions, metadata=doc("linear probe"))
    finetune: FinetuneOptions = attrs.field(factory=FinetuneOptions, metadata=doc("fine-tuning"))
    zero_shot: ZeroShotOptions = attrs.field(factory=ZeroShotOptions, metadata=doc(
        "zero-shot classification (pipelines with a text encoder)"))
    retrieval: RetrievalOptions = attrs.field(factory=RetrievalOptions, metadata=doc(
        "image-text retrieval (pipelines with a text encoder)"))
    baselines: tuple[Literal["random", "pixels"], ...] = attrs.field(default=(), metadata=doc(
        "also score these with the enabled kNN and linear probe when a run ends: random (the backbone at "
        "random initialisation) | pixels (the eval view's pixels, flattened); keys end in _random, _pixels"))
