"""Training in two gloo processes with DistributedDataParallel (jef.testing.train_in_processes)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.multiprocessing.spawn import ProcessRaisedException

from jef.checkpoint import load_checkpoint
from jef.testing import train_in_processes, train_killed_at


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


# -- killed and resumed on several processes ---------------------------------------------------------------------

#: 128 images, 16 per process and step: 4 steps an epoch on 2 processes; the checkpoint of step 5 is mid-epoch 1.
RESUMED = {"data": {"train_size": 128}, "train": {"epochs": 2, "checkpoint_every_steps": 5},
           "eval": {"knn": {"enabled": False}}}


@pytest.fixture(scope="module")
def straight_two_processes(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    train_in_processes(RESUMED, steps=8, run_dir=run_dir)
    return run_dir


def test_a_two_process_run_killed_mid_epoch_resumes_to_the_same_weights(straight_two_processes, tmp_path):
    # Both processes are killed with SIGKILL at the start of step 7; the checkpoint is step 5's (epoch 1, batch 1).
    train_killed_at(RESUMED, steps=8, kill_at=7, run_dir=tmp_path, world_size=2)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"], saved["world_size"]) == (5, 1, 1, 2)
    train_in_processes(RESUMED, steps=8, run_dir=tmp_path, resume=True)  # rank 1 restores its own RNG stream
    expected = load_checkpoint(straight_two_processes / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "checkpoint.pt")
    assert resumed["step"] == expected["step"] == 8
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in expected["rng"].items():  # every process's generators, rank 1's included
        assert torch.equal(value, resumed["rng"][key]), key


def test_resuming_on_another_number_of_processes_is_refused(straight_two_processes, tmp_path):
    import shutil
    import warnings

    from jef.checkpoint import CheckpointError
    from jef.testing import tiny_run

    run_dir = tmp_path / "two"
    shutil.copytree(straight_two_processes, run_dir)
    before = (run_dir / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError) as caught:  # 2 -> 1
        tiny_run({**RESUMED, "train": {**RESUMED["train"], "epochs": 3}}, steps=9, run_dir=run_dir, resume=True)
    message = str(caught.value)
    assert message.startswith(f"{run_dir / 'checkpoint.pt'}: was written by a run on 2 processes and this run has "
                              f"1: a run resumes exactly only on as many processes as wrote its checkpoint")
    assert "resume it on 2 processes" in message and "with train.batch_size=32 the global batch of 32 stays" in message
    assert (run_dir / "checkpoint.pt").read_bytes() == before  # nothing touched

    one = tmp_path / "one"  # 1 -> 2
    tiny_run(RESUMED, steps=2, run_dir=one)
    with pytest.raises(ProcessRaisedException, match="was written by a run on 1 process and this run has 2"):
        train_in_processes(RESUMED, steps=4, run_dir=one, resume=True)

    with warnings.catch_warnings(record=True) as seen:  # forced: goes on, saying it is not the same run
        warnings.simplefilter("always")
        tiny_run({**RESUMED, "train": {**RESUMED["train"], "epochs": 3}}, steps=9, run_dir=run_dir, resume="force")
    assert any("resuming anyway (forced) from step 8" in str(w.message) for w in seen)
    assert load_checkpoint(run_dir / "checkpoint.pt")["world_size"] == 1
