"""CMC trains on 2 processes as on 1 process with the global batch (as jef's tests/test_method_matrix.py).

Both runs see the same images in the same views (the crops are drawn for the global batch and sharded), log the
same losses and end with the same state: both encoders' weights, BatchNorm statistics (SyncBN on), both memory
banks, both Z and the step counter. Not bit-exact: sums over the global batch run in another order.
"""

from __future__ import annotations

import pytest
import torch

import jef.config.pipeline
from jef.config import merge
from jef.testing import record_runs

STEPS, GLOBAL_BATCH, WORLD = 3, 16, 2
RTOL, ATOL = 1e-4, 1e-5

needs_encoders = pytest.mark.skipif("encoders" not in jef.config.pipeline.TOP_LEVEL,
                                    reason="jef's pipeline has no `encoders` (second encoder, `tower` target) yet")


def _pipeline(world_size: int) -> dict:
    head = {"name": "mlp", "dims": [16], "batch_norm": False}
    return merge({"method": "cmc", "augmenter": {"name": "cmc_views", "size": None},
                  "backbone": {"name": "small_cnn", "width": 8}, "projector": head,
                  "encoders": {"ab": {"views": [1], "backbone": {"name": "small_cnn", "width": 8}, "projector": head}},
                  "functionals": [{"name": "cmc_nce", "noise_samples": 32}],
                  "eval": {"knn": {"enabled": False}}},
                 {"train": {"sync_bn": True, "batch_size": GLOBAL_BATCH // world_size}})


@needs_encoders
def test_two_processes_train_as_one_process_on_the_global_batch(tmp_path):
    many = record_runs({"cmc": _pipeline(WORLD)}, steps=STEPS, run_dir=tmp_path / "two", world_size=WORLD)
    one = record_runs({"cmc": _pipeline(1)}, steps=STEPS, run_dir=tmp_path / "one")[0]["cmc"]
    ranks = [rank["cmc"] for rank in many]
    for record in (one, *ranks):
        if "error" in record:
            pytest.fail(record["error"])
    for step, want in enumerate(one["steps"]):
        got = [i for rank in ranks for i in rank["steps"][step]["indices"]]
        assert got == want["indices"], f"step {step + 1}: the processes' samples differ from the global batch's"
    losses = torch.tensor([s["loss"] for s in one["steps"]], dtype=torch.float64)
    banks = [key for key in one["final"] if key.endswith((".bank_l", ".bank_ab"))]
    assert len(banks) == 2, list(one["final"])
    for r, rank in enumerate(ranks):
        torch.testing.assert_close(torch.tensor([s["loss"] for s in rank["steps"]], dtype=torch.float64), losses,
                                   rtol=RTOL, atol=ATOL)
        for key, want in one["final"].items():
            got = rank["final"][key]
            if not want.is_floating_point():  # the banks' step counter, BatchNorm's batch counts
                assert torch.equal(got, want), f"{key} on rank {r}: {got}, one process has {want}"
                continue
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m, k=key, r=r: f"{k}, rank {r}: {m}")
        for key in banks:  # the banks moved, and by the same rows
            assert not torch.equal(one["final"][key], one["initial"][key]), key
