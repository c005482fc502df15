"""Training in two gloo processes with DistributedDataParallel (jef.testing.train_in_processes)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch.multiprocessing.spawn import ProcessRaisedException

from jef.run.checkpoint import load_checkpoint
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

    from jef.run.checkpoint import CheckpointError
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


# -- a checkpoint that cannot be written, on several processes ------------------------------------------------

def _unwritable_checkpoints_job(rank, run_dir):
    """A full disk on process 0, then a NaN buffer on process 1 only: every process must raise (none waits)."""
    import errno

    import jef.run.checkpoint as checkpoint
    from jef import hookimpl
    from jef.plugins import load_plugins
    from jef.testing import temporary_plugin, tiny_run
    from jef.testing.distributed import _launched_as, ensure_process_group

    _launched_as(rank, 2)
    original, calls, errors = checkpoint.torch.save, [], {}

    def full_on_second_write(state, handle):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(state, handle)

    class NanBufferOnRank1:
        @hookimpl
        def jef_step_end(self, run, outputs, terms):
            if run.step == 2 and rank == 1:
                next(b for name, b in run.unwrapped_model.named_buffers() if "running_var" in name).fill_(float("nan"))

    pipeline = {"eval": {"knn": {"enabled": False}}, "train": {"checkpoint_every_steps": 1}}
    checkpoint.torch.save = full_on_second_write
    try:
        tiny_run(pipeline, steps=3, run_dir=f"{run_dir}/full")
    except checkpoint.CheckpointWriteError as error:
        errors["full"] = str(error)
    finally:
        checkpoint.torch.save = original
    ensure_process_group()
    plugins = load_plugins(entry_points=False)
    with temporary_plugin(plugins, NanBufferOnRank1()):
        try:
            tiny_run(pipeline, steps=3, run_dir=f"{run_dir}/nan", plugins=plugins)
        except FloatingPointError as error:
            errors["nan"] = str(error)
    return errors


def test_a_checkpoint_that_cannot_be_written_stops_every_process(tmp_path):
    from jef.testing import run_in_processes

    errors = run_in_processes(functools.partial(_unwritable_checkpoints_job, run_dir=str(tmp_path)), world_size=2)
    assert errors[0]["full"].startswith("no space left on ")
    assert "the previous checkpoint (step 1) is intact" in errors[0]["full"]
    assert errors[1]["full"] == ("process 0 could not write the checkpoint of step 2 (its error says why); the "
                                 "previous checkpoint (step 1) is intact")
    for rank in (0, 1):  # process 1's buffer went NaN: both refuse the checkpoint of step 2, naming it
        assert errors[rank]["nan"].startswith("step 2: the model of process 1 holds non-finite values in buffer "), \
            errors[rank]
        assert "the last checkpoint (step 1) is kept" in errors[rank]["nan"]
    assert load_checkpoint(tmp_path / "full" / "checkpoint.pt")["step"] == 1
    assert load_checkpoint(tmp_path / "nan" / "checkpoint.pt")["step"] == 1
