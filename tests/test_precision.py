"""Mixed precision: every energy and functional in bfloat16 and float16, every method trained in reduced precision.

* The maths: each registered energy and functional (built-in and the installed plugins') under CPU autocast, with
  float32 and with half-precision inputs (a projector's output under autocast), matches float32 within the
  dtype's rounding, returns float32, and stays finite on zero, identical and large embeddings.
* State: queues, memory banks, centres and prototypes stay float32 when half-precision tensors are written into
  them, in the model and in the checkpoint.
* Every method's recipe, shrunk to tiny, trains with ``train.precision: bf16`` (Accelerate's CPU autocast) and
  under float16 autocast on the CPU (which Accelerate refuses there: a training step that autocasts itself, without
  loss scaling), with the float32 run's first loss up to rounding.
* On a GPU only: every method in bf16 and fp16 through Accelerate (fp16 with its loss scaling); this is what the
  GPU precision matrix in docs/benchmarks.md runs.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from jef import hookimpl
from jef.run.checkpoint import CHECKPOINT_NAME, load_checkpoint
from jef.components import RunContext, StepResult
from jef.config import merge
from jef.data.fields import as_fields, extra_fields
from jef.functional import l2_normalize, momentum_update
from jef.functional.queue import enqueue
from jef.model.joint import Objective
from jef.plugins import load_plugins
from jef.testing import build_component, temporary_plugin, tiny_run
from jef.testing.contracts import step_outputs
from shrunk_methods import CAPTIONS, CMC, CPC, PIRL, PRETEXT

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = load_plugins()
HALF = (torch.bfloat16, torch.float16)
#: Rounding to expect from a half-precision computation: two to three times the dtype's epsilon (2^-7 for
#: bfloat16, 2^-10 for float16), relative and absolute.
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 3e-3}


# -- the maths of every energy and functional ----------------------------------------------------------------

N, D = 16, 32
CTX = RunContext(batch_size=N, global_batch_size=N, image_size=16, in_channels=3, in_dim=D, train_size=N, n_global=2)
#: Sizes for the stateful components, and the smallest temperatures the recipes use (the largest logits).
OPTIONS: dict[str, dict[str, Any]] = {
    "scaled_cosine": {"temperature": 0.07},
    "info_nce": {"temperature": 0.07},
    "queue_info_nce": {"temperature": 0.07, "size": 64},
    "moco_v3_info_nce": {"temperature": 0.2},
    "memory_bank": {"dim": D, "noise_samples": 32, "temperature": 0.07},
    "sinkhorn": {"n_prototypes": 24},
}
#: Components with a layer of their own that autocast runs in half precision, as their papers' code does.
AUTOCAST_INSIDE = {"sinkhorn"}


#: Functionals built only for their own view layout (PIRL's image + 9 tiles), with why: their factories refuse this
#: file's 2-view context, so the generic embedding checks below leave them to their methods' runs.
LAYOUT_BOUND: dict[str, str] = {}


def _needs_masks_or_facts(name: str) -> bool:
    """A functional that reads a masked pipeline's tokens or the views' facts, which plain embeddings lack, or that
    is built for one view layout only (recorded in :data:`LAYOUT_BOUND`)."""
    try:
        built = build_component(PLUGINS, "functional", name, OPTIONS.get(name), CTX)
    except Exception as error:  # noqa: BLE001 - recorded, and the set is checked by a test below
        LAYOUT_BOUND[name] = str(error)
        return True
    return any(getattr(built, need, False) for need in ("needs_masks", "needs_facts", "needs_patch_grid"))


#: Every energy and functional but the target makers of masked pipelines and the pretext heads: they read an
#: encoder's tokens or the views' facts, not embeddings alone, and their methods' runs in bf16 (below) cover them.
COMPONENTS = [("energy", name) for name in PLUGINS.registry.names("energy")] + \
             [("functional", name) for name in PLUGINS.registry.names("functional")
              if not _needs_masks_or_facts(name)]
#: (input dtype, autocast dtype): float32 embeddings under autocast, and half-precision ones (a projector's output).
MODES = {f"{'bf16' if dt is torch.bfloat16 else 'fp16'}-{inputs}": (dt if inputs == "inputs" else torch.float32, dt)
         for dt in HALF for inputs in ("autocast", "inputs")}


def component(kind: str, name: str) -> Any:
    torch.manual_seed(0)  # SwAV's prototypes draw from the global generator
    return build_component(PLUGINS, kind, name, OPTIONS.get(name), CTX)


def embeddings(case: str) -> list[torch.Tensor]:
    """Three float32 ``[N, D]`` views: random, all-zero, one embedding for every sample, or rows of norm 1000."""
    gen = torch.Generator().manual_seed(0)
    if case == "zeros":
        return [torch.zeros(N, D) for _ in range(3)]
    if case == "identical":
        return [torch.randn(1, D, generator=gen).expand(N, D).clone() for _ in range(3)]
    views = [torch.randn(N, D, generator=gen) for _ in range(3)]
    return [1e3 * l2_normalize(v) for v in views] if case == "large" else views


def loss_and_grads(kind: str, name: str, views: list[torch.Tensor], dtype: torch.dtype,
                   autocast: torch.dtype | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The component's value on ``views`` cast to ``dtype`` (a functional's through the objective, with the
    cross_entropy energy when it makes targets), and the gradients with respect to the cast views."""
    built = component(kind, name)
    # A functional that pairs one view of each branch (CLIP's image and caption) refuses more; give it one.
    views = views[:1] if getattr(built, "single_view", False) else views
    leaves = [v.to(dtype, copy=True).requires_grad_() for v in views]
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        if kind == "energy":
            # cross_entropy compares logits with distributions (rounded to bfloat16, so that every dtype holds
            # the same ones); the others compare two embeddings.
            b = torch.softmax(views[1], dim=-1).bfloat16().to(dtype) if name == "cross_entropy" else leaves[1]
            loss = built(leaves[0], b).mean()
        else:
            energy = ("cross_entropy", component("energy", "cross_entropy"), 1.0) \
                if callable(getattr(built, "targets", None)) else None
            out = step_outputs({"h": leaves, "z": leaves, "p": leaves}, min(2, len(leaves)), torch.arange(N))
            loss = Objective(energy, [(name, built, 1.0)])(out)[0]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss, [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads, strict=True)]


def test_only_the_expected_functionals_are_left_to_their_methods():
    expected = {name for name in ("pirl", "cpc") if name in PLUGINS.registry.names("functional")}
    assert set(LAYOUT_BOUND) <= expected, LAYOUT_BOUND  # another functional that fails to build is a bug


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,name", COMPONENTS)
def test_reduced_precision_matches_float32(kind, name, mode):
    dtype, autocast = MODES[mode]
    views = [v.to(dtype).float() for v in embeddings("random")]  # values that both precisions hold exactly
    reference, reference_grads = loss_and_grads(kind, name, views, torch.float32, None)
    loss, grads = loss_and_grads(kind, name, views, dtype, autocast)
    assert loss.dtype == torch.float32, f"{kind} {name} returned {loss.dtype} in {mode}; losses must be float32"
    # Computed in float32 from the same values, the loss is float32's up to summation order; only a layer of the
    # component's own under autocast (SwAV's prototype scores) adds the autocast dtype's rounding.
    tol = TOLERANCE[autocast] if name in AUTOCAST_INSIDE else 1e-5
    torch.testing.assert_close(loss, reference, rtol=tol, atol=tol, msg=lambda m: f"{kind} {name} in {mode}: {m}")
    # Gradients with respect to half-precision inputs are rounded to that precision.
    tol = TOLERANCE[autocast] if name in AUTOCAST_INSIDE or dtype != torch.float32 else 1e-5
    for i, (grad, want) in enumerate(zip(grads, reference_grads, strict=True)):
        # float16 keeps gradients below 6e-5 as subnormals, in steps of 6e-8.
        atol = tol * want.abs().max().item() + 4 * torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
        torch.testing.assert_close(grad.float(), want, rtol=tol, atol=atol,
                                   msg=lambda m, i=i: f"{kind} {name} in {mode}, gradient of view {i}: {m}")


@pytest.mark.parametrize("case", ["zeros", "identical", "large"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,name", COMPONENTS)
def test_degenerate_embeddings_stay_finite(kind, name, mode, case):
    dtype, autocast = MODES[mode]
    views = [v.to(dtype).float() for v in embeddings(case)]
    loss, grads = loss_and_grads(kind, name, views, dtype, autocast)
    assert loss.dtype == torch.float32 and torch.isfinite(loss), f"{kind} {name}, {case} embeddings, {mode}: {loss}"
    # A gradient may overflow only where the exact one is beyond the input dtype's range: the normalisation's
    # gradient at a zero embedding is 1/eps, and GradScaler skips such fp16 steps.
    _, float32_grads = loss_and_grads(kind, name, views, torch.float32, None)
    limit = torch.finfo(dtype).max / 4
    for i, (grad, want) in enumerate(zip(grads, float32_grads, strict=True)):
        representable = want.abs() < limit
        assert torch.isfinite(grad[representable]).all(), \
            f"{kind} {name}, {case} embeddings, {mode}: the gradient of view {i} overflows where the exact one fits"


def test_logits_beyond_float16_are_computed_in_float32():
    # cos/τ = 1/0.07 ≈ 14.3 for identical embeddings: exp(14.3) ≈ 1.6e6 is far beyond float16's 65504.
    z = torch.ones(64, 8, dtype=torch.float16)
    info_nce = component("functional", "info_nce")
    with torch.autocast("cpu", dtype=torch.float16):
        value = info_nce(step_outputs({"h": [z, z], "z": [z, z], "p": [z, z]}, 2, None))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(1 / 0.07 + math.log(2 * 64 - 1), rel=1e-6)


# -- state stays float32 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF)
def test_enqueueing_half_precision_keys_keeps_a_float32_queue(dtype):
    queue = torch.zeros(6, 4)
    keys = l2_normalize(torch.randn(4, 4)).to(dtype)
    assert enqueue(queue, 4, keys) == 2
    assert queue.dtype == torch.float32
    torch.testing.assert_close(queue[[4, 5, 0, 1]], keys.float(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", HALF)
def test_memory_bank_update_with_half_precision_features_keeps_float32_unit_rows(dtype):
    bank = l2_normalize(torch.randn(10, 8))
    features = torch.randn(3, 8).to(dtype)
    expected = l2_normalize(0.5 * bank[[1, 4, 7]] + 0.5 * l2_normalize(features))
    momentum_update(bank, torch.tensor([1, 4, 7]), features, 0.5)
    assert bank.dtype == torch.float32
    torch.testing.assert_close(bank[[1, 4, 7]], expected)
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(10))


# -- every method trains in reduced precision ---------------------------------------------------------------

NO_EVAL = {"eval": {"knn": {"enabled": False}}, "monitors": []}
#: Each method's recipe shrunk the way its plugin's tests shrink it: heads and stored state sized for the tiny
#: settings' 16-wide projector, no blur (slow on a CPU), and SwAV's queue in use from the second step.
SHRUNK: dict[str, dict[str, Any]] = {
    "byol": {"predictor": {"dims": [32, 16]}},
    "simsiam": {"predictor": {"dims": [8, 16]}},
    "vicreg": {"augmenter": {"blur_p": 0.0}},
    "barlowtwins": {"augmenter": {"blur_p": 0.0}},
    "moco_v1": {"functionals": [{"name": "queue_info_nce", "temperature": 0.07, "size": 64}]},
    "moco_v2": {"augmenter": {"blur_p": 0.0}, "functionals": [{"name": "queue_info_nce", "temperature": 0.2,
                                                               "size": 64}]},
    "moco_v3": {"augmenter": {"blur_p": 0.0}, "predictor": {"dims": [32, 16]}},
    "moco_v3_resnet": {"augmenter": {"blur_p": 0.0}, "predictor": {"dims": [32, 16]}},
    # Not a method name: MoCo v3's ViT recipe on a tiny ViT (the entry moco_v3 keeps the tiny settings' small_cnn).
    "moco_v3_vit": {"method": "moco_v3", "augmenter": {"size": 16, "blur_p": 0.0}, "predictor": {"dims": [32, 16]},
                    "backbone": {"name": "vit", "preset": "tiny", "width": 32, "depth": 2, "heads": 2,
                                 "patch_size": 4}},
    "instdisc": {"projector": {"name": "mlp", "dims": [16], "batch_norm": False},
                 "functionals": [{"name": "memory_bank", "dim": 16, "noise_samples": 64}]},
    "swav": {"augmenter": {"n_local": 2, "local_size": 8, "blur_p": 0.0},
             "functionals": [{"name": "sinkhorn", "n_prototypes": 16, "freeze_prototypes_steps": 1,
                              "queue_length": 16, "queue_start_epoch": 0}]},
    "dino_resnet": {"augmenter": {"n_local": 2, "local_size": 8, "blur_p": 0.0, "solarize_p": 0.0},
                    "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}},
    # The ViT recipe on a tiny ViT, 16 px global and 8 px local views; no teacher-temperature warm-up (the
    # recipe's 30 epochs are longer than the run).
    "dino": {"augmenter": {"size": 16, "n_local": 2, "local_size": 8, "blur_p": 0.0, "solarize_p": 0.0},
             "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4},
             "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8},
             "functionals": [{"name": "centering", "teacher_temperature": 0.07}]},
    "data2vec": {"augmenter": {"size": 16}, "masker": {"min_block": 2},
                 "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4},
                 "functionals": [{"name": "token_targets", "blocks": 2}]},
    "ijepa": {"augmenter": {"size": 16},
              "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
              "masker": {"n_targets": 2, "min_keep": 2}, "predictor": {"width": 16, "depth": 1, "heads": 2}},
    "mae": {"augmenter": {"size": 16},
            "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
            "predictor": {"width": 16, "depth": 1, "heads": 2}},
    # LeJEPA on a tiny ViT, 2 local views of 8 px: SIGReg's cosines and sines in float32 from bf16 embeddings.
    "lejepa": {"augmenter": {"size": 16, "n_local": 2, "local_size": 8, "blur_p": 0.0, "solarize_p": 0.0},
               "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4}},
    "clip": CAPTIONS,
    "siglip": CAPTIONS,
    "cmc": CMC,
    "pirl": PIRL,
    **PRETEXT,
    # Semi-hard mining jumps when rounding moves a negative across d(a, p); batch-hard's max/min are continuous.
    "triplet": {"functionals": [{"name": "triplet", "mining": "batch_hard"}]},
    "cpc": CPC,
}
#: The state each method keeps across steps (suffixes of model state_dict keys), which must stay float32.
STATE = {"moco_v1": ["queue"], "moco_v2": ["queue"], "instdisc": ["bank", "normaliser"],
         "clip": ["logit_scale"], "siglip": ["logit_scale", "bias"], "cmc": ["bank_l", "bank_ab"],
         "pirl": ["bank", "normaliser_jigsaw", "normaliser_image"], "cpc": ["predictors.0.weight"],
         "swav": ["prototypes.weight", "queue"], "dino": ["center"], "dino_resnet": ["center"]}
METHODS = PLUGINS.registry.names("method")


class Recorder:
    """Each step's loss terms, and the dtype of every floating tensor of the model's state at the end of the run."""

    def __init__(self) -> None:
        self.terms: list[dict[str, float]] = []
        self.state: dict[str, torch.dtype] = {}
        self.scaler: Any = None

    @hookimpl
    def jef_step_end(self, run, outputs, terms):
        self.terms.append(dict(terms))

    @hookimpl
    def jef_run_end(self, run, metrics):
        self.state = {k: v.dtype for k, v in run.unwrapped_model.state_dict().items()
                      if isinstance(v, torch.Tensor) and v.is_floating_point()}
        self.scaler = getattr(run.accelerator, "scaler", None)


class AutocastStep:
    """jef's default step with the model under ``torch.autocast(dtype)``, noting the dtypes of the loss terms.

    float16 autocast on the CPU, where ``train.precision: fp16`` is refused: the same forward maths as on a GPU,
    without loss scaling.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.loss_dtypes: set[torch.dtype] = set()

    @hookimpl
    def jef_train_step(self, run, batch):
        fields = as_fields(batch)
        views = run.augmenter(fields["image"], generator=run.generator)
        with torch.autocast("cpu", dtype=self.dtype):
            loss, terms, outputs = run.model(views, fields["index"], mask_generator=run.generator,
                                             fields=extra_fields(fields) or None, facts=getattr(views, "facts", None))
        self.loss_dtypes |= {loss.dtype, *(t.dtype for t in terms.values())}
        return StepResult(loss, terms, attrs.evolve(outputs, labels=fields["label"]))


def train_tiny(method: str, run_dir: Path, precision: str = "no", *,
               autocast: torch.dtype | None = None, cpu: bool = True) -> Recorder:
    """Three steps of ``method``'s shrunk recipe in ``precision`` (or under ``autocast``), recorded."""
    recorder = Recorder()
    pipeline = merge(merge({"method": method, **NO_EVAL}, SHRUNK.get(method, {})), {"train": {"precision": precision}})
    with temporary_plugin(PLUGINS, recorder, "precision-recorder"):
        if autocast is None:
            tiny_run(pipeline, steps=3, run_dir=run_dir, plugins=PLUGINS, cpu=cpu)
        else:
            step = AutocastStep(autocast)
            with temporary_plugin(PLUGINS, step, "precision-autocast-step"):
                tiny_run(pipeline, steps=3, run_dir=run_dir, plugins=PLUGINS)
            assert step.loss_dtypes == {torch.float32}, f"{method}: loss terms in {step.loss_dtypes}"
    return recorder


def assert_float32_state(method: str, recorder: Recorder, run_dir: Path, what: str) -> None:
    assert len(recorder.terms) == 3 and all(math.isfinite(v) for t in recorder.terms for v in t.values()), \
        f"{method} {what}: {recorder.terms}"
    saved = load_checkpoint(run_dir / CHECKPOINT_NAME)["model"]
    for where, dtypes in (("model", recorder.state),
                          ("checkpoint", {k: v.dtype for k, v in saved.items()
                                          if isinstance(v, torch.Tensor) and v.is_floating_point()})):
        wrong = {k: v for k, v in dtypes.items() if v != torch.float32}
        assert not wrong, f"{method} {what}: the {where} holds {wrong}; state must stay float32"
        for suffix in STATE.get(method, []):
            assert any(k.endswith(suffix) for k in dtypes), f"{method}: no {suffix!r} in the {where}"


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_in_bf16_and_under_fp16_autocast(method, tmp_path, one_thread):
    first = train_tiny(method, tmp_path / "float32").terms[0]["loss"]
    for what, precision, autocast in (("bf16", "bf16", None), ("fp16 autocast", "no", torch.float16)):
        run_dir = tmp_path / what.replace(" ", "-")
        recorder = train_tiny(method, run_dir, precision, autocast=autocast)
        assert_float32_state(method, recorder, run_dir, what)
        # Same seed, weights and views: the first step differs from float32 by the backbone's and heads' rounding
        # only (measured: up to 3e-3 relative in bf16, 7e-4 under fp16 autocast).
        tol = TOLERANCE[torch.bfloat16 if what == "bf16" else torch.float16] / 2
        assert recorder.terms[0]["loss"] == pytest.approx(first, rel=tol, abs=tol), what


@pytest.mark.parametrize("variant", ["moco_v3_vit"])
def test_a_vit_recipe_trains_in_bf16_and_under_fp16_autocast(variant, tmp_path, one_thread):
    """As the test above, for a recipe on a ViT (attention, LayerNorm, GELU in half precision)."""
    test_every_method_trains_in_bf16_and_under_fp16_autocast(variant, tmp_path, one_thread)


def test_the_precision_matrix_script_writes_its_table(tmp_path, one_thread):
    spec = importlib.util.spec_from_file_location("precision_matrix", ROOT / "benchmarks" / "precision_matrix.py")
    matrix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(matrix)
    out = tmp_path / "matrix.md"
    # float32 only: bfloat16 convolutions are emulated, and slow, on most CPUs (the method runs above cover bf16).
    rows = matrix.main(["--cpu", "--methods", "simclr", "--precisions", "no", "fp16", "--backbone", "small_cnn",
                        "--batch-size", "8", "--steps", "3", "--warmup", "1", "--out", str(out)])
    assert [(r.method, r.precision, r.finite) for r in rows] == [("simclr", "no", "yes"), ("simclr", "fp16", "")]
    assert math.isfinite(rows[0].final_loss) and rows[0].steps_per_s > 0
    assert rows[1].note == "skipped: fp16 needs a GPU"
    lines = out.read_text().splitlines()
    assert "small_cnn, batch 8, 3 steps on fashion_mnist_mini" in lines[0]
    assert lines[2].startswith("| method | precision | first loss | final loss | finite | steps/s |")
    assert lines[4].startswith(f"| simclr | no | {rows[0].first_loss:.4f} | {rows[0].final_loss:.4f} | yes |")


# -- on a GPU: the half of the matrix a CPU cannot run ------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: every method tiny in bf16 and fp16 through Accelerate "
                                       "(the GPU precision matrix of docs/benchmarks.md)")


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_a_gpu(method, precision, tmp_path):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    recorder = train_tiny(method, tmp_path, precision, cpu=False)
    assert_float32_state(method, recorder, tmp_path, f"{precision} on the GPU")
    assert (recorder.scaler is not None) == (precision == "fp16"), "fp16 runs with Accelerate's loss scaling"
