"""Determinism on the CPU: the same pipeline and seed give bit-identical runs, in float32 and in bfloat16.

* Every shipped method's recipe, shrunk to tiny, trained twice in one process with the same seed: every step's
  loss terms and every tensor of the final checkpoint (weights, buffers, optimiser state) are bit-identical, in
  float32 and with ``train.precision: bf16``, on one thread and (multi-crop SwAV, whose augmenter uses its thread
  pool) on two.
* The cause of the bf16 non-determinism, reproduced directly: oneDNN's bfloat16 weight gradient of a strided
  convolution of a map smaller than the stride leaves the taps that only see padding unwritten
  (:mod:`jef.builtin.cpu_bf16_conv`); the guarded convolution writes them, equals the plain one, and every run's
  model is guarded.

docs/precision.md ("Determinism") states what is deterministic and why.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from jef import hookimpl
from jef.builtin.cpu_bf16_conv import StrideSafeConv2d, guard_strided_convs, takes_unit_stride
from jef.run.checkpoint import CHECKPOINT_NAME, load_checkpoint
from jef.config import merge
from jef.plugins import load_plugins
from jef.components import RunContext
from jef.testing import build_component, temporary_plugin, tiny_run
from shrunk_methods import CAPTIONS, CMC, CPC, PIRL, PRETEXT

PLUGINS = load_plugins()
METHODS = PLUGINS.registry.names("method")
NO_EVAL = {"eval": {"knn": {"enabled": False}}, "monitors": []}
MULTI_CROP = {"n_local": 2, "local_size": 8, "blur_p": 0.0}
#: Each recipe shrunk as in tests/test_precision.py: heads and state sized for the tiny 16-wide projector, 8-pixel
#: local crops (whose last convolutions see 1x1 maps: the case the oneDNN bug hits), SwAV's queue in use from the
#: second step, and the prototypes moving from the second step.
SHRUNK: dict[str, dict[str, Any]] = {
    "byol": {"predictor": {"dims": [32, 16]}},
    "simsiam": {"predictor": {"dims": [8, 16]}},
    "moco_v1": {"functionals": [{"name": "queue_info_nce", "temperature": 0.07, "size": 64}]},
    "moco_v2": {"functionals": [{"name": "queue_info_nce", "temperature": 0.2, "size": 64}]},
    "moco_v3": {"predictor": {"dims": [32, 16]}},
    "moco_v3_resnet": {"predictor": {"dims": [32, 16]}},
    "instdisc": {"projector": {"name": "mlp", "dims": [16], "batch_norm": False},
                 "functionals": [{"name": "memory_bank", "dim": 16, "noise_samples": 64}]},
    "swav": {"augmenter": MULTI_CROP,
             "functionals": [{"name": "sinkhorn", "n_prototypes": 16, "freeze_prototypes_steps": 1,
                              "queue_length": 16, "queue_start_epoch": 0}]},
    "dino_resnet": {"augmenter": {**MULTI_CROP, "solarize_p": 0.0},
                    "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}},
    # The ViT recipe on a tiny ViT (its stochastic depth draws from the global generator), no warm-up of the
    # teacher temperature (the recipe's 30 epochs are longer than the run).
    "dino": {"augmenter": {**MULTI_CROP, "size": 16, "solarize_p": 0.0},
             "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4},
             "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8},
             "functionals": [{"name": "centering", "teacher_temperature": 0.07}]},
    # The masked recipes on a tiny ViT: masks drawn from the run's generator, a 4 x 4 patch grid.
    "data2vec": {"augmenter": {"size": 16}, "masker": {"min_block": 2},
                 "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
                 "functionals": [{"name": "token_targets", "blocks": 2}]},
    "ijepa": {"augmenter": {"size": 16},
              "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
              "masker": {"n_targets": 2, "min_keep": 2}, "predictor": {"width": 16, "depth": 1, "heads": 2}},
    "mae": {"augmenter": {"size": 16},
            "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
            "predictor": {"width": 16, "depth": 1, "heads": 2}},
    # LeJEPA on a tiny ViT (its stochastic depth draws from the global generator), SIGReg's seeded directions.
    "lejepa": {"augmenter": {**MULTI_CROP, "size": 16, "solarize_p": 0.0},
               "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4}},
    "clip": CAPTIONS,
    "siglip": CAPTIONS,
    "cmc": CMC,
    "pirl": PIRL,
    **PRETEXT,
    "cpc": CPC,
}
STEPS = 3


class StepLosses:
    """Every step's loss terms, as Python floats."""

    def __init__(self) -> None:
        self.terms: list[dict[str, float]] = []

    @hookimpl
    def jef_step_end(self, run, outputs, terms):
        self.terms.append({name: float(value) for name, value in terms.items()})


def run_once(method: str, precision: str, run_dir: Path,
             extra: dict[str, Any] | None = None) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """``STEPS`` steps of ``method``'s shrunk recipe (with ``extra``): each step's loss terms and the checkpoint."""
    recorder = StepLosses()
    pipeline = merge(merge({"method": method, **NO_EVAL}, SHRUNK.get(method, {})), {"train": {"precision": precision}})
    pipeline = merge(pipeline, extra or {})
    with temporary_plugin(PLUGINS, recorder, "determinism-recorder"):
        tiny_run(pipeline, steps=STEPS, run_dir=run_dir, plugins=PLUGINS)
    return recorder.terms, load_checkpoint(run_dir / CHECKPOINT_NAME)


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which two nested checkpoints differ by a single bit (tensors compared bitwise, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(-1).view(torch.uint8),
                                                                           b.view(-1).view(torch.uint8))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} (keys {sorted(map(str, a.keys() ^ b.keys()))})"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where} (lengths {len(a)}, {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [where]


def assert_identical_runs(method: str, precision: str, tmp_path: Path, extra: dict[str, Any] | None = None) -> None:
    first_terms, first = run_once(method, precision, tmp_path / "first", extra)
    second_terms, second = run_once(method, precision, tmp_path / "second", extra)
    assert len(first_terms) == STEPS and all(math.isfinite(v) for t in first_terms for v in t.values()), \
        f"{method} in {precision}: {first_terms}"
    assert first_terms == second_terms, f"{method} in {precision}: two runs of one seed logged different losses"
    # The checkpoint also holds the run's wall-clock times and the paths of its run directory.
    keys = ("model", "optimizer", "scheduler", "rng", "step", "epoch", "batch_in_epoch")
    compared = {key: first[key] for key in keys if key in first}, {key: second[key] for key in keys if key in second}
    assert "model" in compared[0] and "optimizer" in compared[0], sorted(first)
    diff = differences(*compared)
    assert not diff, f"{method} in {precision}: two runs of one seed differ in {diff[:10]}"


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("method", METHODS)
def test_two_runs_of_one_seed_are_bit_identical(method, precision, tmp_path, one_thread):
    assert_identical_runs(method, precision, tmp_path)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_two_runs_on_two_threads_are_bit_identical(backend, tmp_path):
    # SwAV's multi-crop views are made on the augmenter's thread pool (numba) or by torch's intra-op threads.
    if backend == "numba":
        pytest.importorskip("numba")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert_identical_runs("swav", "bf16", tmp_path, {"augmenter": {"cpu_backend": backend}})
    finally:
        torch.set_num_threads(before)


# -- the cause, reproduced on one convolution ---------------------------------------------------------------


def weight_gradients(conv: nn.Module, x: torch.Tensor, dtype: torch.dtype | None,
                     repeats: int = 4) -> list[torch.Tensor]:
    """The weight gradient of ``sum(conv(x)^2)`` ``repeats`` times, under CPU autocast to ``dtype`` (None: off),
    each after freeing a NaN-filled block of the gradient's size (what unwritten memory then holds)."""
    grads = []
    for _ in range(repeats):
        junk = torch.full_like(conv.weight, float("nan"))
        del junk
        conv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            y = conv(x)
        y.float().pow(2).sum().backward()
        grads.append(conv.weight.grad.clone())
    return grads


@pytest.mark.parametrize("side,stride", [(1, 2), (1, 3)])
def test_bf16_weight_gradient_of_a_map_smaller_than_the_stride_is_written_everywhere(side, stride, one_thread):
    # small_cnn's last block on an 8-pixel local crop: 3x3, stride 2, padding 1, on a 1x1 map, 64 channels.
    torch.manual_seed(0)
    conv = StrideSafeConv2d(64, 64, 3, stride=stride, padding=1, bias=False)
    x = torch.randn(16, 64, side, side)
    reference = weight_gradients(conv, x, None, repeats=1)[0]
    for grad in weight_gradients(conv, x, torch.bfloat16):
        assert torch.isfinite(grad).all(), "the bf16 weight gradient holds unwritten (NaN) memory"
        # Taps that only ever see padding have an exactly zero gradient, in float32 and in bf16.
        assert torch.equal(grad[reference == 0], reference[reference == 0])
        torch.testing.assert_close(grad, reference, rtol=2e-2, atol=2e-2 * reference.abs().max().item())


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_the_guarded_convolution_is_the_strided_convolution(dtype):
    torch.manual_seed(0)
    plain = nn.Conv2d(16, 8, 3, stride=2, padding=1)
    guarded = StrideSafeConv2d(16, 8, 3, stride=2, padding=1)
    guarded.load_state_dict(plain.state_dict())
    for shape in ((4, 16, 1, 1), (4, 16, 1, 5), (4, 16, 7, 7)):
        x = torch.randn(shape)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            want, got = plain(x), guarded(x)
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
        # Only bf16 on a map smaller than the stride takes the other path; everything else is the plain kernel.
        if not takes_unit_stride(x, plain.weight, plain.stride) and dtype is not torch.bfloat16:
            assert torch.equal(got, want)
    assert takes_unit_stride(torch.ones(1, 1, 1, 4), torch.ones(1, dtype=torch.bfloat16), (2, 2))
    assert not takes_unit_stride(torch.ones(1, 1, 2, 4), torch.ones(1, dtype=torch.bfloat16), (2, 2))
    assert not takes_unit_stride(torch.ones(1, 1, 1, 1), torch.ones(1), (2, 2))  # float32, no autocast


def test_every_run_guards_its_strided_convolutions(tmp_path, one_thread):
    seen: dict[str, type] = {}

    class Look:
        @hookimpl
        def jef_step_end(self, run, outputs, terms):
            seen.update({name: type(m) for name, m in run.unwrapped_model.named_modules() if isinstance(m, nn.Conv2d)})

    with temporary_plugin(PLUGINS, Look(), "determinism-look"):
        tiny_run({"method": "simclr", **NO_EVAL}, steps=1, run_dir=tmp_path, plugins=PLUGINS)
    # small_cnn: four 3x3 convolutions, each of stride 2 (the backbone's and the EMA-free target's are one).
    assert len(seen) == 4 and all(kind is StrideSafeConv2d for kind in seen.values()), seen
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3))
    keys = list(model.state_dict())
    assert guard_strided_convs(model) == 1 and [type(m) for m in model] == [StrideSafeConv2d, nn.Conv2d]
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("name,options", [("small_cnn", {"width": 8}), ("resnet18", {"small_images": False})])
def test_built_in_backbones_are_guarded_wherever_they_are_built(name, options, one_thread):
    # Built outside a run (a test, a custom loop): an 8-pixel crop leaves small_cnn's last block, and a 16-pixel one
    # the ImageNet-stem ResNet's layer4, a 1x1 map for a stride-2 convolution.
    torch.manual_seed(0)
    backbone = build_component(PLUGINS, "backbone", name, options, RunContext(in_channels=3, image_size=16))
    strided = [m for m in backbone.modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1]
    assert strided and all(type(m) is StrideSafeConv2d for m in strided)
    x = torch.randn(8, 3, 8 if name == "small_cnn" else 16, 8 if name == "small_cnn" else 16)
    runs = []
    for _ in range(3):
        torch.full((1 << 20,), float("nan"))  # freed at once: what unwritten memory would hold
        backbone.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = backbone(x)
        features.float().pow(2).sum().backward()
        runs.append(torch.cat([p.grad.flatten() for p in backbone.parameters()]))
    assert all(torch.isfinite(g).all() for g in runs), f"{name}: non-finite bf16 gradients"
    assert all(torch.equal(runs[0], g) for g in runs[1:]), f"{name}: bf16 gradients differ from run to run"
