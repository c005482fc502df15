"""The sinkhorn functional's state: frozen then normalised prototypes, the queue, checkpoints, several processes."""

from __future__ import annotations

import attrs
import pytest
import torch
from jef_plugin_swav import SinkhornAssignment

from jef import hookimpl
from jef.run.checkpoint import load_checkpoint
from jef.components import Branch, StepOutputs
from jef.config import merge
from jef.functional import sinkhorn_knopp
from jef.plugins import load_plugins
from jef.testing import InterruptAt, run_in_processes, tiny_run

#: 64 images in batches of 16: 4 steps an epoch, 3 epochs. 2 global + 2 local views, 16 prototypes.
TINY = {"method": "swav", "augmenter": {"n_local": 2, "local_size": 8, "blur_p": 0.0}, "train": {"epochs": 3},
        "eval": {"knn": {"enabled": False}}}


def tiny(**sinkhorn):
    return merge(TINY, {"functionals": [{"name": "sinkhorn", "n_prototypes": 16, **sinkhorn}]})


class Recorder:
    """The prototypes at the start and after every step (last among the jef_step_end hooks), the queue's fill level
    and the epoch."""

    def __init__(self):
        self.initial, self.prototypes, self.filled, self.epochs = None, [], [], []

    @hookimpl
    def jef_run_start(self, run):
        self.initial = run.unwrapped_model.objective.functionals[0].prototypes.weight.detach().clone()

    @hookimpl(trylast=True)
    def jef_step_end(self, run, outputs, terms):
        functional = run.unwrapped_model.objective.functionals[0]
        self.prototypes.append(functional.prototypes.weight.detach().clone())
        self.filled.append(int(functional.queue_filled) if functional.queue is not None else None)
        self.epochs.append(run.epoch)


@pytest.fixture()
def recorded():
    recorder = Recorder()
    plugins = load_plugins(extra=(("recorder", recorder),))
    if plugins.infos.get("swav") is None:
        pytest.skip("jef-plugin-swav is not installed")
    return plugins, recorder


def test_prototypes_are_frozen_for_the_first_steps_then_move_and_stay_unit_vectors(recorded):
    plugins, recorder = recorded
    result = tiny_run(tiny(freeze_prototypes_steps=3), steps=6, plugins=plugins)
    assert result.hooks_called.count("jef_after_backward") == 6
    after = recorder.prototypes
    # Steps 1-3 leave them bit for bit; steps 4-6 each move them.
    assert all(torch.equal(recorder.initial, p) for p in after[:3])
    assert all(not torch.equal(a, b) for a, b in zip(after[2:5], after[3:6], strict=True))
    for p in [recorder.initial, *after]:
        torch.testing.assert_close(p.norm(dim=1), torch.ones(16), rtol=0, atol=1e-6)


def test_frozen_prototypes_equal_their_initial_unit_vectors():
    torch.manual_seed(0)
    functional = SinkhornAssignment(8, 5, freeze_prototypes_steps=2)
    torch.testing.assert_close(functional.prototypes.weight.norm(dim=1), torch.ones(5), rtol=0, atol=1e-6)
    before = functional.prototypes.weight.detach().clone()
    z = [torch.randn(4, 8) for _ in range(3)]
    made = functional.targets(StepOutputs(online=Branch(h=z, z=z), target=Branch(h=z[:2], z=z[:2]), n_global=2))
    torch.stack([s.sum() for s in made.online.out]).sum().backward()
    run = attrs.make_class("Run", ["step", "epoch"])(step=1, epoch=0)
    functional.jef_after_backward(run=run)
    assert functional.prototypes.weight.grad is None  # step index 1 < 2: dropped
    run.step = 2
    made = functional.targets(StepOutputs(online=Branch(h=z, z=z), target=Branch(h=z[:2], z=z[:2]), n_global=2))
    torch.stack([s.sum() for s in made.online.out]).sum().backward()
    functional.jef_after_backward(run=run)
    assert functional.prototypes.weight.grad is not None  # step index 2: the first one that trains them
    assert torch.equal(functional.prototypes.weight, before)


# -- checkpoints and resume -------------------------------------------------------------------------

#: The queue (32 = 2 batches) starts filling in epoch 1 (step 5) and is in use from step 7; the prototypes thaw
#: after step 3. The interruption at step 6 falls mid-epoch with a half-full queue.
RESUMABLE = {"freeze_prototypes_steps": 3, "queue_length": 32, "queue_start_epoch": 1}


def _state(run_dir):
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def test_resume_is_bit_exact_for_prototypes_and_queue(tmp_path, recorded):
    plugins, recorder = recorded
    straight = tiny_run(tiny(**RESUMABLE), steps=10, run_dir=tmp_path / "straight", plugins=plugins)
    assert recorder.filled == [0, 0, 0, 0, 16, 32, 32, 32, 32, 32]
    assert recorder.epochs == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    plugins.manager.register(InterruptAt(6), name="stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            tiny_run(tiny(**RESUMABLE), steps=10, run_dir=tmp_path / "resumed", plugins=plugins)
    finally:
        plugins.manager.unregister(name="stopper")
    at_6 = _state(tmp_path / "resumed")
    assert int(at_6["objective.functionals.0.queue_filled"]) == 32
    resumed = tiny_run(tiny(**RESUMABLE), steps=10, run_dir=tmp_path / "resumed", plugins=plugins, resume=True)
    want, got = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert {"objective.functionals.0.prototypes.weight", "objective.functionals.0.queue",
            "objective.functionals.0.queue_filled"} <= set(want)
    assert want["objective.functionals.0.queue"].shape == (2, 32, 16)  # one queue per global view, projector width
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert resumed.metrics["loss"] == straight.metrics["loss"]


# -- the queue --------------------------------------------------------------------------------------


def batch(step, rows=slice(None), n=8, dim=6):
    """Global batch ``step``'s target embeddings for 2 global views (float64), or a slice of its rows."""
    g = torch.Generator().manual_seed(10 + step)
    return [torch.randn(n, dim, generator=g, dtype=torch.float64)[rows] for _ in range(2)]


def outputs(z):
    return StepOutputs(online=Branch(h=z, z=z), target=Branch(h=z, z=z), n_global=2)


def make_functional(**kwargs):
    torch.manual_seed(3)  # the same prototypes in every process
    return SinkhornAssignment(6, 5, epsilon=0.1, iterations=3, **kwargs).double()


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


def test_the_queue_is_used_only_once_full_and_then_equals_the_reference_over_queue_and_batch():
    functional = make_functional(queue_length=16, queue_start_epoch=0)
    c = functional.prototypes.weight.detach()
    for step in range(2):  # 8 then 16 of 16 rows: not used yet, the codes are the batch's own
        made = functional.targets(outputs(batch(step)))
        for b in range(2):
            torch.testing.assert_close(made.target.z[b], sinkhorn_knopp(unit(batch(step)[b]) @ c.T, 0.1, 3))
    assert int(functional.queue_filled) == 16 and functional.queue_in_use
    made = functional.targets(outputs(batch(2)))
    for b in range(2):
        stored = torch.cat([unit(batch(1)[b]), unit(batch(0)[b])])  # newest first, as enqueued
        torch.testing.assert_close(functional.queue[b], torch.cat([unit(batch(2)[b]), unit(batch(1)[b])]))
        want = sinkhorn_knopp(torch.cat([stored, unit(batch(2)[b])]) @ c.T, 0.1, 3)[-8:]
        torch.testing.assert_close(made.target.z[b], want, rtol=1e-12, atol=1e-14)
        assert not torch.allclose(want, sinkhorn_knopp(unit(batch(2)[b]) @ c.T, 0.1, 3))  # the queue mattered


def test_the_queue_starts_at_the_chosen_epoch_and_never_fills_in_eval_mode():
    functional = make_functional(queue_length=16, queue_start_epoch=2)
    run = attrs.make_class("Run", ["step", "epoch"])(step=0, epoch=1)
    functional.jef_run_start(run=run)  # a run resumed in epoch 1
    functional.targets(outputs(batch(0)))
    assert int(functional.queue_filled) == 0
    functional.jef_epoch_end(run=run, epoch=1, metrics={})  # epoch 2 begins
    functional.eval()
    functional.targets(outputs(batch(1)))
    assert int(functional.queue_filled) == 0
    functional.train()
    functional.targets(outputs(batch(1)))
    assert int(functional.queue_filled) == 8


def _queue_job(rank):
    functional = make_functional(queue_length=16, queue_start_epoch=0)
    rows = slice(rank * 4, rank * 4 + 4)
    codes = [functional.targets(outputs(batch(step, rows))).target.z for step in range(3)]
    return {"codes": codes, "state": {k: v.clone() for k, v in functional.state_dict().items()}}


def test_two_processes_fill_and_use_the_queue_of_one_process_on_the_global_batch():
    results = run_in_processes(_queue_job)
    functional = make_functional(queue_length=16, queue_start_epoch=0)
    want = [functional.targets(outputs(batch(step))).target.z for step in range(3)]  # step 2 uses the queue
    for step in range(3):
        for b in range(2):
            got = torch.cat([results[rank]["codes"][step][b] for rank in range(2)])
            torch.testing.assert_close(got, want[step][b], rtol=1e-10, atol=1e-12)
    for rank in range(2):  # the queue is the same on every process, and the same as one process's
        for key, value in functional.state_dict().items():
            assert torch.equal(results[rank]["state"][key], value), (rank, key)
