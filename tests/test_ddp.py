"""Training in two gloo processes with DistributedDataParallel (jef.testing.train_in_processes)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.multiprocessing.spawn import ProcessRaisedException

from jef.checkpoint import load_checkpoint
from jef.testing import train_in_processes


def test_two_process_run_agrees_on_the_loss(tmp_path):
    results = train_in_processes({"eval": {"knn": {"enabled": False}}}, steps=2, run_dir=tmp_path)
    assert len(results) == 2 and math.isfinite(results[0]["loss"])
    assert results[0]["loss"] == results[1]["loss"]  # logged terms are reduced over processes
    rng = load_checkpoint(tmp_path / "checkpoint.pt")["rng"]  # written by rank 0, with every process's RNG
    assert rng["torch_per_rank"].shape[0] == 2 and torch.equal(rng["torch_per_rank"][0], rng["torch"])
    assert not torch.equal(rng["torch_per_rank"][0], rng["torch_per_rank"][1])  # seeded seed + rank


def test_a_parameter_without_gradient_fails_the_run_as_on_a_cluster(tmp_path):
    # A predictor no term uses: DDP (find_unused_parameters=False) stops at the next step. The method tests rely
    # on this to show that frozen parts (SwAV's prototypes, DINO's last layer) still take part in every step.
    unused_predictor = {"energy": None, "functionals": [{"name": "variance"}],
                        "predictor": {"name": "mlp", "dims": [16]}, "eval": {"knn": {"enabled": False}}}
    with pytest.raises(ProcessRaisedException, match="did not receive grad"):
        train_in_processes(unused_predictor, steps=3, run_dir=tmp_path)
