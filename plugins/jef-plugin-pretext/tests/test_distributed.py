"""``jigsaw`` trains on 2 processes as on 1 process with the global batch (as jef's tests/test_method_matrix.py).

Both runs see the same images cut into the same tiles in the same permutations (drawn for the global batch and
sharded), log the same losses and end with the same weights: backbone, BatchNorm statistics (SyncBN on) and the
classifier head the functional owns (DDP averages its gradients like the backbone's). Not bit-exact: sums over
the global batch run in another order.
"""

from __future__ import annotations

import pytest
import torch

from jef.config import merge
from jef.testing import record_runs

STEPS, GLOBAL_BATCH, WORLD = 2, 16, 2
RTOL, ATOL = 1e-4, 1e-5


def _pipeline(world_size: int) -> dict:
    return merge({"method": "jigsaw", "augmenter": {"tile": 4, "gap": 1, "jitter": 1, "permutations": 10},
                  "functionals": [{"name": "pretext_classifier", "fact": "permutation", "classes": 10,
                                   "hidden": [16]}],
                  "eval": {"knn": {"enabled": False}}, "monitors": []},
                 {"train": {"sync_bn": True, "batch_size": GLOBAL_BATCH // world_size}})


def test_two_processes_train_as_one_process_on_the_global_batch(tmp_path):
    many = record_runs({"jigsaw": _pipeline(WORLD)}, steps=STEPS, run_dir=tmp_path / "two", world_size=WORLD)
    one = record_runs({"jigsaw": _pipeline(1)}, steps=STEPS, run_dir=tmp_path / "one")[0]["jigsaw"]
    ranks = [rank["jigsaw"] for rank in many]
    for record in (one, *ranks):
        if "error" in record:
            pytest.fail(record["error"])
    for step, want in enumerate(one["steps"]):
        got = [i for rank in ranks for i in rank["steps"][step]["indices"]]
        assert got == want["indices"], f"step {step + 1}: the processes' samples differ from the global batch's"
    losses = torch.tensor([s["loss"] for s in one["steps"]], dtype=torch.float64)
    heads = [key for key in one["final"] if ".classifier." in key]
    assert heads, list(one["final"])
    for r, rank in enumerate(ranks):
        torch.testing.assert_close(torch.tensor([s["loss"] for s in rank["steps"]], dtype=torch.float64), losses,
                                   rtol=RTOL, atol=ATOL)
        for key, want in one["final"].items():
            got = rank["final"][key]
            if not want.is_floating_point():  # BatchNorm's batch counts
                assert torch.equal(got, want), f"{key} on rank {r}: {got}, one process has {want}"
                continue
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m, k=key, r=r: f"{k}, rank {r}: {m}")
    for key in heads:  # the head trained
        assert not torch.equal(one["final"][key], one["initial"][key]), key
