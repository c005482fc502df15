"""The lightly worker of benchmarks/compare_lightly.py: lightly's transforms, heads, losses, momentum
utilities and LARS in a plain loop, every setting read from jef's resolved pipeline."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from compare_common import _timings, compared_method, evaluate, fixed_views, make_backbone, normalisation, setup
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------------------
# lightly worker
# --------------------------------------------------------------------------------------------------------------

def lightly_transform(pipeline):  # noqa: ANN201
    """lightly's transform for the method, with jef's view parameters (colour jitter strength 1 and jef's
    factors, so brightness etc. mean the same on both sides)."""
    import lightly.transforms as T

    o, method = pipeline.augmenter.options, compared_method(pipeline)
    size = o.size or 28  # null: the data's side (Fashion-MNIST: 28)
    local = o.local_size or max(1, round(size * 96 / 224))  # jef's default local side
    mean, std = normalisation(pipeline)
    norm = {"mean": [mean], "std": [std]}
    common = dict(cj_prob=o.per_view("jitter_p")[0], cj_strength=1.0, cj_bright=o.brightness,
                  cj_contrast=o.contrast, cj_sat=o.saturation, cj_hue=o.hue, random_gray_scale=o.per_view(
                      "grayscale_p")[0], sigmas=tuple(o.blur_sigma), hf_prob=o.per_view("flip_p")[0],
                  normalize=norm)
    blur, sol = o.per_view("blur_p"), o.per_view("solarize_p")
    if method in ("swav", "dino"):
        crops = dict(hf_prob=common.pop("hf_prob"))
        if method == "swav":
            return T.SwaVTransform(crop_sizes=(size, local), crop_counts=(o.n_global, o.n_local),
                                   crop_min_scales=(o.scale[0], o.local_scale[0]),
                                   crop_max_scales=(o.scale[1], o.local_scale[1]), gaussian_blur=blur[0],
                                   **crops, **common)
        return T.DINOTransform(global_crop_size=size, global_crop_scale=tuple(o.scale),
                               local_crop_size=local, local_crop_scale=tuple(o.local_scale),
                               n_local_views=o.n_local, gaussian_blur=(blur[0], blur[1], blur[-1]),
                               solarization_prob=sol[1], **crops, **common)
    if blur[0] != blur[1] or sol[0] != sol[1]:  # BYOL's asymmetric views (also Barlow Twins', VICReg's)
        views = [T.BYOLView1Transform(input_size=size, min_scale=o.scale[0], gaussian_blur=blur[i],
                                      solarization_prob=sol[i], **common) for i in range(2)]
        return T.BYOLTransform(view_1_transform=views[0], view_2_transform=views[1])
    if sol[0]:
        raise NotImplementedError(f"{method}: symmetric solarisation has no lightly transform here")
    cls = {"simclr": T.SimCLRTransform, "moco_v2": T.MoCoV2Transform, "simsiam": T.SimSiamTransform}[method]
    return cls(input_size=size, min_scale=o.scale[0], gaussian_blur=blur[0], **common)


class _PILDataset(torch.utils.data.Dataset):
    """uint8 greyscale arrays as PIL images through a lightly transform: ``(views, label)``."""

    def __init__(self, x: Tensor, y: Tensor, transform) -> None:  # noqa: ANN001
        self.x, self.y, self.transform = x.numpy(), y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):  # noqa: ANN204
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i], mode="L")), int(self.y[i])


def _mlp(dims: list[int], d_in: int, *, batch_norm: bool = True, last_bn: bool = False):  # noqa: ANN202
    """A lightly ``ProjectionHead`` with jef's ``mlp`` layout: Linear-BN-ReLU hidden layers, a plain last layer
    (optionally followed by a BatchNorm without affine parameters)."""
    from lightly.models.modules.heads import ProjectionHead

    blocks, d = [], d_in
    for i, out in enumerate(dims):
        last = i == len(dims) - 1
        bn = nn.BatchNorm1d(out, affine=False) if last and last_bn else (
            nn.BatchNorm1d(out) if batch_norm and not last else None)
        blocks.append((d, out, bn, None if last else nn.ReLU()))
        d = out
    return ProjectionHead(blocks)


class LightlyMethod(nn.Module):
    """One method written with lightly's building blocks, as its examples write them.

    ``loss(views, step, epoch)`` is the training loss (scaled as jef's recipe scales it, so the optimiser sees
    the same gradients); ``after_backward(epoch)`` and ``after_step(step)`` do what lightly's examples do there
    (DINO's frozen last layer; momentum updates, prototype normalisation).
    """

    def __init__(self, pipeline, backbone: nn.Module, total_steps: int) -> None:  # noqa: ANN001
        super().__init__()
        from lightly import loss as L
        from lightly.models.modules import heads as H
        from lightly.models.utils import deactivate_requires_grad

        self.method, self.total_steps = compared_method(pipeline), total_steps
        m, d = self.method, backbone.out_dim
        proj = pipeline.projector.options
        self.backbone, self.target_momentum = backbone, None
        if m == "simclr":
            self.projector = H.SimCLRProjectionHead(d, proj.dims[0], proj.dims[1])
            self.criterion = L.NTXentLoss(temperature=pipeline.energy.options.temperature)
        elif m == "moco_v2":
            self.projector = H.MoCoProjectionHead(d, proj.dims[0], proj.dims[1])
            f = pipeline.functionals[0].options
            self.criterion = L.NTXentLoss(temperature=f.temperature, memory_bank_size=(f.size, proj.dims[1]))
        elif m in ("byol", "simsiam"):
            self.projector = (H.BYOLProjectionHead(d, proj.dims[0], proj.dims[1]) if m == "byol"
                              else _mlp(proj.dims, d, last_bn=True))
            pred = pipeline.predictor.options
            self.predictor = (H.BYOLPredictionHead(proj.dims[-1], pred.dims[0], pred.dims[1]) if m == "byol"
                              else H.SimSiamPredictionHead(proj.dims[-1], pred.dims[0], pred.dims[1]))
            self.criterion = L.NegativeCosineSimilarity()
        elif m == "barlowtwins":
            self.projector = H.BarlowTwinsProjectionHead(d, proj.dims[0], proj.dims[-1])
            self.criterion = L.BarlowTwinsLoss(lambda_param=pipeline.functionals[0].options.lambd)
        elif m == "vicreg":
            self.projector = H.VICRegProjectionHead(d, proj.dims[0], proj.dims[-1], num_layers=len(proj.dims))
            self.criterion = L.VICRegLoss()
        elif m == "swav":
            f = pipeline.functionals[0].options
            self.projector = H.SwaVProjectionHead(d, proj.dims[0], proj.dims[1])
            self.prototypes = H.SwaVPrototypes(proj.dims[1], f.n_prototypes, f.freeze_prototypes_steps)
            self.criterion = L.SwaVLoss(temperature=pipeline.energy.options.temperature,
                                        sinkhorn_iterations=f.iterations, sinkhorn_epsilon=f.epsilon)
        elif m == "dino":
            f = pipeline.functionals[0].options
            steps_per_epoch = max(1, total_steps // max(pipeline.train.epochs, 1))
            self.projector = H.DINOProjectionHead(d, proj.hidden_dim, proj.bottleneck_dim, proj.out_dim,
                                                  batch_norm=proj.batch_norm,
                                                  freeze_last_layer=proj.freeze_last_layer_epochs,
                                                  norm_last_layer=proj.norm_last_layer)
            self.steps_per_epoch = steps_per_epoch
            self.criterion = L.DINOLoss(output_dim=proj.out_dim, warmup_teacher_temp=f.warmup_teacher_temperature,
                                        teacher_temp=f.teacher_temperature, warmup_teacher_temp_epochs=0,
                                        student_temp=pipeline.energy.options.temperature,
                                        center_momentum=f.center_momentum)
        else:
            raise ValueError(f"compare_lightly: no lightly version of {m!r}")
        target = pipeline.target
        if target.name == "ema":
            self.target_momentum = (target.momentum, target.final_momentum, target.schedule)
            self.backbone_t = copy.deepcopy(self.backbone)
            if m == "dino":  # a weight-normalised layer cannot be deep-copied: a fresh head, the student's weights
                self.projector_t = H.DINOProjectionHead(d, proj.hidden_dim, proj.bottleneck_dim, proj.out_dim,
                                                        batch_norm=proj.batch_norm,
                                                        norm_last_layer=proj.norm_last_layer)
                self.projector_t.load_state_dict(self.projector.state_dict())
            else:
                self.projector_t = copy.deepcopy(self.projector)
            deactivate_requires_grad(self.backbone_t)
            deactivate_requires_grad(self.projector_t)

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        from lightly.models.utils import batch_shuffle, batch_unshuffle

        m = self.method
        if m in ("simclr", "barlowtwins", "vicreg"):
            z = [self.projector(self.backbone(v)) for v in views]
            return self.criterion(z[0], z[1])
        if m == "moco_v2":
            q = [self.projector(self.backbone(v)) for v in views]
            with torch.no_grad():  # keys on a shuffled batch (MoCo's shuffle BN), as jef's recipe
                k = []
                for v in views:
                    shuffled, idx = batch_shuffle(v)
                    k.append(batch_unshuffle(self.projector_t(self.backbone_t(shuffled)), idx))
            # Both pairs in one call: the memory bank's negatives are the keys of earlier steps for both, and
            # all 2B keys are enqueued after. Two calls would enqueue k1 before the second and make each
            # sample's own key a negative of its other view's query: not jef's loss, nor MoCo's.
            return self.criterion(torch.cat([q[0], q[1]]), torch.cat([k[1], k[0]]))
        if m in ("byol", "simsiam"):
            z = [self.projector(self.backbone(v)) for v in views]
            p = [self.predictor(x) for x in z]
            if m == "byol":
                with torch.no_grad():
                    t = [self.projector_t(self.backbone_t(v)) for v in views]
                # jef: 4 * mean over both orders of (1 - cos) = const - 2 cos(p0, t1) - 2 cos(p1, t0)
                return 2.0 * (self.criterion(p[0], t[1]) + self.criterion(p[1], t[0]))
            return 0.5 * (self.criterion(p[0], z[1].detach()) + self.criterion(p[1], z[0].detach()))
        if m == "swav":
            self.prototypes.normalize()
            out = [self.prototypes(F.normalize(self.projector(self.backbone(v)), dim=1), step) for v in views]
            return self.criterion(out[:2], out[2:])
        if m == "dino":
            with torch.no_grad():
                teacher = [self.projector_t(self.backbone_t(v)) for v in views[:2]]
            student = [self.projector(self.backbone(v)) for v in views]
            return self.criterion(teacher, student, epoch=epoch)
        raise AssertionError(m)

    def after_backward(self, epoch: int) -> None:
        if self.method == "dino":
            self.projector.cancel_last_layer_gradients(epoch)

    def after_step(self, step: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        if self.target_momentum is None:
            return
        start, end, schedule = self.target_momentum
        momentum = cosine_schedule(step, self.total_steps, start, end) if schedule == "cosine" else start
        update_momentum(self.backbone, self.backbone_t, m=momentum)
        update_momentum(self.projector, self.projector_t, m=momentum)


def lightly_optimizer(model: LightlyMethod, pipeline, steps_per_epoch: int, total: int):  # noqa: ANN001, ANN201
    """jef's recipe optimiser built from lightly/torch parts: ``lightly.utils.lars.LARS`` (which leaves
    parameter groups with weight decay 0 out of the layer-wise adaptation) or ``torch.optim.SGD``; norms and
    biases without weight decay where the recipe says so; the predictor at a fixed rate for SimSiam; the
    schedule is jef's warm-up + cosine multiplier (lightly's ``CosineWarmupScheduler`` has the same shape)."""
    from lightly.utils.lars import LARS

    from jef.run.optim import scaled_lr, warmup_cosine

    o = pipeline.train.optimizer
    fixed = {id(p) for p in model.predictor.parameters()} if o.fixed_lr_predictor else set()
    groups = []
    for is_fixed in (False, True):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in fixed) == is_fixed]
        decayed = [p for p in params if not (o.exclude_norm_and_bias and p.ndim <= 1)]
        plain = [p for p in params if o.exclude_norm_and_bias and p.ndim <= 1]
        for group, wd in ((decayed, o.weight_decay), (plain, 0.0)):
            if group:
                groups.append({"params": group, "weight_decay": wd, "fixed": is_fixed})
    lr = scaled_lr(o, pipeline.train.batch_size)
    opt = (LARS(groups, lr=lr, momentum=o.momentum, trust_coefficient=o.trust_coefficient) if o.name == "lars"
           else torch.optim.SGD(groups, lr=lr, momentum=o.momentum))
    cosine = warmup_cosine(pipeline.train.scheduler, steps_per_epoch, total)
    lambdas = [(lambda s: 1.0) if g["fixed"] else cosine for g in opt.param_groups]
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)


def run_lightly(cfg: dict[str, Any]) -> dict[str, Any]:
    bench, _, pipeline, device, arrays = setup(cfg)  # jef resolves every setting; of its plugin only the phases
    phases = bench.phases  # are used here
    phases.mark("setup")
    torch.manual_seed(cfg["seed"])
    steps_per_epoch = cfg["subset_train"] // cfg["batch_size"]
    total = steps_per_epoch * cfg["epochs"]
    if cfg.get("steps"):
        total = min(total, cfg["steps"])
    model = LightlyMethod(pipeline, make_backbone(cfg), total).to(device)
    optimizer, scheduler = lightly_optimizer(model, pipeline, steps_per_epoch, total)
    clip = pipeline.train.clip_grad_norm
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["precision"] == "bf16")

    def one_step(views: list[Tensor], step: int, epoch: int) -> Tensor:
        phases.mark("loop_start")  # lightly imported, the model built, the first batch drawn (by the workers)
        with autocast:
            loss = model.loss(views, step, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.after_backward(epoch)
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        model.after_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return loss.detach()

    stamps: list[float] = []
    model.train()
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))
    if cfg["mode"] == "step":
        views = fixed_views(pipeline, arrays, cfg, device)
        for step in range(total):
            loss = one_step(views, step, 0)
    else:
        dataset = _PILDataset(arrays["x_train"], arrays["y_train"], lightly_transform(pipeline))
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg["batch_size"], shuffle=True, drop_last=True, num_workers=cfg["workers"],
            persistent_workers=cfg["workers"] > 0, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg["seed"]))
        step = 0
        for epoch in range(cfg["epochs"]):
            for views, _ in loader:
                loss = one_step([v.to(device, non_blocking=True) for v in views], step, epoch)
                step += 1
                if step >= total:
                    break
            if step >= total:
                break
    wall = time.perf_counter() - t0
    phases.mark("loop_end")
    result = _timings(stamps, cfg, wall, device)
    result["memory"] = phases.marks
    result["final_loss"] = float(loss)
    if cfg["mode"] == "train":
        result.update(evaluate(model.backbone, arrays, pipeline, cfg, device))
    return result
