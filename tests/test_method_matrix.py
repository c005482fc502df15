"""Every shipped method trains on 2 processes as on 1 process with the global batch.

Each recipe, shrunk (16x16 synthetic images, ``small_cnn``, narrow heads, few prototypes, a small queue), trains
3 steps on 2 gloo processes with 8 images each under DDP (``find_unused_parameters=False``: a parameter left
without gradient fails the run, so the matrix also shows that no recipe needs it), and on 1 process with the
16-image global batch, from the same seed. The two must see the same images in the same views (the data order
and the random view parameters are functions of the global batch), log the same losses and end with the same
state: online and target (EMA) weights, BatchNorm statistics, prototypes, queues, memory bank, DINO's centre.

``train.sync_bn`` is on: every model here has BatchNorm (the backbone's), and with per-process statistics 2
processes legitimately normalise differently from 1 process on the global batch. MoCo v1/v2 keep their key
encoder unsynchronised for shuffling BN; there, 1 process computes the keys in 2 shuffled groups, as 2
processes do with 1 group each, so they still agree.

Not bit-exact: sums over the global batch run in another order (per process, then across processes; SyncBN
combines per-process moments), which moves the last bits of float32. Parameters are compared by their change
over the run (the initial states are identical), so that a tolerance relative to the change, not to the
weights, catches a wrong gradient even at a small learning rate.
"""

from __future__ import annotations

import copy
from pathlib import Path

import attrs
import pytest
import torch

from jef.config import merge
from jef.config.options import OptimizerOptions
from jef.plugins import load_plugins
from jef.testing import record_runs
from shrunk_methods import CAPTIONS, CMC, CPC, PIRL, PRETEXT

STEPS = 3
GLOBAL_BATCH = 16
WORLD = 2
#: What every run shares: no evaluation, BatchNorm over the global batch.
COMMON = {"eval": {"knn": {"enabled": False}}, "train": {"sync_bn": True}}
#: Method -> overrides that shrink its recipe for jef.testing.tiny_run (whose settings shrink data, backbone and
#: the mlp projector's dims). Queues and banks are small and filled from the first step, so that the steps use
#: them; frozen parts (SwAV's prototypes, DINO's last layer) are frozen for at most one step.
METHODS = {
    "simclr": {},
    "moco_v1": {"functionals": [{"name": "queue_info_nce", "temperature": 0.07, "size": 48}]},
    "moco_v2": {"functionals": [{"name": "queue_info_nce", "temperature": 0.2, "size": 48}]},
    "moco_v3": {"predictor": {"dims": [32, 16]}},
    "moco_v3_resnet": {"predictor": {"dims": [32, 16]}},
    # The ViT recipe on a tiny ViT (the entry above keeps the tiny settings' small_cnn): 4-pixel patches of
    # 16-pixel views, sin-cos positions and the frozen patch projection, which DDP must leave without gradient.
    "moco_v3_vit": {"method": "moco_v3", "augmenter": {"size": 16},
                    "backbone": {"name": "vit", "preset": "tiny", "width": 32, "depth": 2, "heads": 2,
                                 "patch_size": 4},
                    "predictor": {"dims": [32, 16]}},
    "byol": {"predictor": {"dims": [32, 16]}},
    "simsiam": {"predictor": {"dims": [8, 16]}},
    "barlowtwins": {},
    "vicreg": {},
    "instdisc": {"projector": {"name": "mlp", "dims": [16], "batch_norm": False},
                 "functionals": [{"name": "memory_bank", "dim": 16, "noise_samples": 32}]},
    "swav": {"augmenter": {"n_local": 2, "local_size": 8},
             "functionals": [{"name": "sinkhorn", "n_prototypes": 16, "freeze_prototypes_steps": 1,
                              "queue_length": 16, "queue_start_epoch": 0}]},
    "dino_resnet": {"augmenter": {"n_local": 2, "local_size": 8},
                    "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8,
                                  "freeze_last_layer_epochs": 0}},
    # The ViT recipe on a tiny ViT: 16 px global views (4 x 4 patches) and 8 px local ones (2 x 2, the position
    # embedding resized), the teacher temperature without the recipe's 30-epoch warm-up (longer than the run), and
    # no stochastic depth: DropPath draws from each process's global generator, so 2 processes drop other
    # samples' branches than 1 process does.
    "dino": {"augmenter": {"size": 16, "n_local": 2, "local_size": 8},
             "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
             "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8,
                           "freeze_last_layer_epochs": 0},
             "functionals": [{"name": "centering", "teacher_temperature": 0.07}]},
    # A masked recipe: block masks drawn for the global batch and sharded, each process's energy divided by the
    # global batch's masked count (rows mask unequal numbers), both blocks of the tiny EMA teacher averaged.
    "data2vec": {"augmenter": {"size": 16},
                 "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
                 "masker": {"min_block": 2}, "functionals": [{"name": "token_targets", "blocks": 2}]},
    # I-JEPA's multi-block masks (one block size per global batch, contexts cut to its smallest) and predictor
    # passes per target block; MAE's random masks, dropped tokens and decoder to pixels.
    "ijepa": {"augmenter": {"size": 16},
              "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
              "masker": {"n_targets": 2, "min_keep": 2}, "predictor": {"width": 16, "depth": 1, "heads": 2}},
    "mae": {"augmenter": {"size": 16},
            "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0},
            "predictor": {"width": 16, "depth": 1, "heads": 2}},
    # LeJEPA on a tiny ViT with 2 of its 6 local views: SIGReg's cosine and sine sums gathered over the processes
    # (with gradient), its directions drawn from the run's seed and a step counter that both processes advance.
    "lejepa": {"augmenter": {"size": 16, "n_local": 2, "local_size": 8},
               "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path": 0.0}},
    # Two towers: each rank's images against the global batch's captions through the autograd gather (CLIP), or
    # every rank's caption block in turn (SigLIP); the learnt scale (and bias) and the text tower compared too.
    "clip": CAPTIONS,
    "siglip": CAPTIONS,
    # Two encoders, one per view, against two memory banks gathered over the processes.
    "cmc": CMC,
    # The batch's own view-0 features as the classifier's weights, gathered over the processes with gradient.
    "invaspread": {},
    # The image and its 9 jigsaw tiles drawn for the global batch; one memory bank gathered over the processes.
    "pirl": PIRL,
    # Facts (rotation class, permutation, neighbour position, clean image) drawn for the global batch and sharded.
    **PRETEXT,
    # FaceNet's triplet loss: each rank's anchors against both views of the global batch, gathered with gradient.
    "triplet": {},
    # A 3 x 3 grid of patches of each image, negatives from every patch of the global batch (gathered with gradient).
    "cpc": CPC,
}
#: Losses and states: float32 sums in another order (see the module docstring).
RTOL, ATOL = 1e-4, 1e-5
#: Changes of a tensor over the run, relative to its largest change.
CHANGE_RTOL = 1e-3


def pipeline(method: str, world_size: int) -> dict:
    batch = {"train": {"batch_size": GLOBAL_BATCH // world_size}}
    return merge(merge({"method": method}, merge(COMMON, batch)), copy.deepcopy(METHODS[method]))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Per method: the 1-process record and the 2 processes' records (all methods in one launch of 2)."""
    root = tmp_path_factory.mktemp("matrix")
    many = record_runs({m: pipeline(m, WORLD) for m in METHODS}, steps=STEPS, run_dir=root / "two", world_size=WORLD)
    one = record_runs({m: pipeline(m, 1) for m in METHODS}, steps=STEPS, run_dir=root / "one")[0]
    return {method: (one[method], [rank[method] for rank in many]) for method in METHODS}


def _ok(record: dict) -> dict:
    if "error" in record:
        pytest.fail(record["error"])
    return record


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_train_as_one_process_on_the_global_batch(records, method):
    one, ranks = records[method]
    one, ranks = _ok(one), [_ok(r) for r in ranks]
    # The same images: rank r holds rows [r*8, (r+1)*8) of the global batch, step after step.
    for step, want in enumerate(one["steps"]):
        got = [i for rank in ranks for i in rank["steps"][step]["indices"]]
        assert got == want["indices"], f"step {step + 1}: the processes' samples differ from the global batch's"
    assert len(one["steps"]) == STEPS and all(len(r["steps"]) == STEPS for r in ranks)
    losses = torch.tensor([s["loss"] for s in one["steps"]], dtype=torch.float64)
    for rank in ranks:
        got = torch.tensor([s["loss"] for s in rank["steps"]], dtype=torch.float64)
        torch.testing.assert_close(got, losses, rtol=RTOL, atol=ATOL, msg=lambda m: f"{method} losses: {m}")
    initial, final = one["initial"], one["final"]
    for r, rank in enumerate(ranks):
        assert rank["initial"].keys() == initial.keys() == rank["final"].keys()
        for key, value in initial.items():  # rank 0 initialises as one process does; DDP broadcasts it
            same = torch.equal(rank["initial"][key], value) if isinstance(value, torch.Tensor) else (
                rank["initial"][key] == value)
            assert same, f"{method}: {key} starts differently on rank {r}"
        for key, want in final.items():
            got = rank["final"][key]
            if not isinstance(want, torch.Tensor):  # a tokenizer's vocabulary
                assert got == want, f"{method}: {key} on rank {r} differs from one process's"
                continue
            if not want.is_floating_point():  # counters, queue pointers
                assert torch.equal(got, want), f"{method}: {key} on rank {r} is {got}, one process has {want}"
                continue
            change = want - initial[key]
            # Relative to the largest change of the tensor: a frozen tensor must stay (almost) frozen.
            scale = float(change.abs().max())
            where = f"{method}, {key} on rank {r}"
            torch.testing.assert_close(got - initial[key], change, rtol=CHANGE_RTOL, atol=CHANGE_RTOL * scale + 1e-7,
                                       msg=lambda m, w=where: f"{w}, its change over the run: {m}")
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m, w=where: f"{w}: {m}")


def test_the_matrix_covers_every_shipped_method():
    shipped = set(load_plugins().registry.names("method"))
    assert shipped <= set(METHODS), f"add the new method(s) {sorted(shipped - set(METHODS))} to METHODS"


def test_the_learning_rate_table_of_the_docs_is_the_recipes():
    page = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
    rows = {}
    for line in page.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in METHODS:
            rows[cells[0]] = cells
    registry = load_plugins().registry
    assert set(rows) == set(registry.names("method")), "docs/distributed.md: one row per shipped method"
    for method, (_, name, lr, scaling, at_2048) in rows.items():
        optimizer = registry.get("method", method).factory["train"]["optimizer"]
        default = attrs.fields(OptimizerOptions).scale_lr.default
        want = (optimizer["name"], float(optimizer["lr"]), optimizer.get("scale_lr", default))
        assert (name, float(lr), scaling) == want, f"docs/distributed.md, row {method}: recipe has {want}"
        ratio = {"linear": 2048 / 256, "sqrt": (2048 / 256) ** 0.5, "none": 1.0}[scaling]
        assert float(at_2048) == pytest.approx(float(lr) * ratio), f"docs/distributed.md, row {method}"
