"""The MoCo queue: FIFO maths, the loss against a written-out reference, checkpoints, several processes."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch

from jef.builtin.energies import ScaledCosineEnergy
from jef.builtin.queues import QueueInfoNCE
from jef.run.checkpoint import load_checkpoint
from jef.components import Branch, StepOutputs
from jef.functional.queue import enqueue
from jef.model.joint import Objective
from jef.plugins import load_plugins
from jef.testing import (
    InterruptAt,
    build_component,
    check_functional,
    check_functional_under_gather,
    run_in_processes,
    tiny_run,
)


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def fake_run(logged=None):
    """What jef_step_end needs from a run: somewhere to log."""
    return SimpleNamespace(log=(logged if logged is not None else {}).update)


# -- FIFO -----------------------------------------------------------------------------


def test_enqueue_is_fifo_with_wrap_around():
    queue = torch.zeros(5, 1)
    pointer = enqueue(queue, 0, torch.tensor([[1.0], [2.0], [3.0]]))
    assert pointer == 3 and queue.flatten().tolist() == [1, 2, 3, 0, 0]
    pointer = enqueue(queue, pointer, torch.tensor([[4.0], [5.0], [6.0]]))  # 5 does not divide 3: wraps
    assert pointer == 1 and queue.flatten().tolist() == [6, 2, 3, 4, 5]
    pointer = enqueue(queue, pointer, torch.arange(10.0, 17.0)[:, None])  # more keys than rows: the last 5 stay
    assert pointer == 3 and sorted(queue.flatten().tolist()) == [12, 13, 14, 15, 16]
    assert queue.flatten().tolist() == [14, 15, 16, 12, 13]  # as if written one by one: 12, the oldest, at 3


def test_enqueue_rejects_a_width_mismatch():
    with pytest.raises(ValueError, match=r"keys must be \[M, 4\] to fit the \[K, d\]=\[3, 4\] queue, got \[2, 5\]"):
        enqueue(torch.zeros(3, 4), 0, torch.zeros(2, 5))


def _outputs(online, target, n_global=2):
    return StepOutputs(online=Branch(h=online, z=online), target=Branch(h=target, z=target), n_global=n_global)


def test_only_the_key_branch_is_enqueued_normalised_view_by_view():
    functional = QueueInfoNCE(0.2, size=10, dim=3)
    g = torch.Generator().manual_seed(1)
    queries = [torch.randn(4, 3, generator=g) for _ in range(2)]
    keys = [torch.randn(4, 3, generator=g) for _ in range(2)]
    logged = {}
    functional.jef_step_end(run=fake_run(logged), outputs=_outputs(queries, keys), terms={})
    expected = torch.cat([k / k.norm(dim=1, keepdim=True) for k in keys])
    assert torch.allclose(functional.queue[:8], expected)
    assert int(functional.pointer) == 8 and int(functional.filled) == 8 and logged == {"queue/filled": 8}
    functional.jef_step_end(run=fake_run(), outputs=_outputs(queries, keys), terms={})
    assert int(functional.pointer) == 6 and int(functional.filled) == 10
    assert torch.allclose(functional.queue[:6], expected[2:])


def test_a_queue_of_the_wrong_width_names_both_widths_and_the_option():
    functional = QueueInfoNCE(0.2, size=10, dim=3)
    x = [torch.randn(4, 5) for _ in range(2)]
    with pytest.raises(
        ValueError,
        match="holds 3-dimensional keys but the embeddings are 5-dimensional; set the functional's `dim` option to 5",
    ):
        functional(_outputs(x, x))


# -- the loss ---------------------------------------------------------------------------


def moco_reference(queries, keys, queue, temperature):
    """MoCo's InfoNCE (He et al. 2020, eq. 1) with explicit loops in float64, averaged over pairs and samples."""

    def cos(x, y):
        return float(x @ y) / (float(x.norm()) * float(y.norm()))

    losses = []
    for a, q_view in enumerate(queries):
        for b, k_view in enumerate(keys):
            if a == b:
                continue
            for i in range(q_view.shape[0]):
                positive = math.exp(cos(q_view[i], k_view[i]) / temperature)
                negatives = sum(math.exp(cos(q_view[i], n) / temperature) for n in queue)
                losses.append(-math.log(positive / (positive + negatives)))
    return sum(losses) / len(losses)


def test_scaled_cosine_plus_queue_info_nce_is_mocos_info_nce():
    g = torch.Generator().manual_seed(0)
    queries = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)]  # 2 global + 1 local view
    keys = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    functional = QueueInfoNCE(0.07, size=7, dim=4).double()
    objective = Objective(("scaled_cosine", ScaledCosineEnergy(0.07), 1.0), [("queue_info_nce", functional, 1.0)])
    loss, terms, _ = objective(_outputs(queries, keys))
    assert set(terms) == {"energy/scaled_cosine", "queue_info_nce"}
    assert float(loss) == pytest.approx(moco_reference(queries, keys, functional.queue, 0.07), rel=1e-10)


def test_queue_info_nce_passes_the_functional_contract(plugins):
    check_functional(build_component(plugins, "functional", "queue_info_nce", {"dim": 8}), name="queue_info_nce")
    check_functional(
        build_component(plugins, "functional", "queue_info_nce", {"dim": 8}), n_views=3, n_global=2, predictor=True
    )


# -- checkpoints and resume ----------------------------------------------------------------

MOCO_TINY = {
    "target": {"name": "ema", "momentum": 0.99},
    "energy": {"name": "scaled_cosine", "temperature": 0.2},
    "functionals": [{"name": "queue_info_nce", "temperature": 0.2, "size": 50}],
    "train": {"epochs": 2},
    "eval": {"knn": {"enabled": False}},
}


def _queue_state(run_dir):
    model = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    return {k: v for k, v in model.items() if k.startswith("objective.functionals.0.")}


def test_the_queue_is_checkpointed_and_resumes_exactly(tmp_path, plugins):
    tiny_run(MOCO_TINY, steps=8, run_dir=tmp_path / "straight", plugins=plugins)
    stopper = InterruptAt(6)
    plugins.manager.register(stopper, name="stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            tiny_run(MOCO_TINY, steps=8, run_dir=tmp_path / "resumed", plugins=plugins)
    finally:
        plugins.manager.unregister(name="stopper")
    at_6 = _queue_state(tmp_path / "resumed")
    assert int(at_6["objective.functionals.0.pointer"]) == (6 * 32) % 50  # 16 images x 2 global views per step
    tiny_run(MOCO_TINY, steps=8, run_dir=tmp_path / "resumed", plugins=plugins, resume=True)
    straight, resumed = _queue_state(tmp_path / "straight"), _queue_state(tmp_path / "resumed")
    assert set(straight) == {f"objective.functionals.0.{k}" for k in ("queue", "pointer", "filled")}
    assert straight["objective.functionals.0.queue"].shape == (50, 16)  # the width came from the projector
    assert int(straight["objective.functionals.0.pointer"]) == (8 * 32) % 50
    assert int(straight["objective.functionals.0.filled"]) == 50
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


# -- several processes ---------------------------------------------------------------------


def test_two_processes_give_the_loss_and_gradients_of_one():
    check_functional_under_gather(functools.partial(QueueInfoNCE, 0.2, 16, 8), name="queue_info_nce", n_views=3)


def _step_keys(step, rows):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(6, 4, generator=g, dtype=torch.float64)[rows] for _ in range(2)]


def _enqueue_two_steps(rows):
    functional = QueueInfoNCE(0.2, size=20, dim=4).double()
    for step in range(2):
        keys = _step_keys(step, rows)
        functional.jef_step_end(run=fake_run(), outputs=_outputs([k * 2 for k in keys], keys), terms={})
    return {k: v.clone() for k, v in functional.state_dict().items()}


def _enqueue_job(rank):
    return _enqueue_two_steps(slice(rank * 3, rank * 3 + 3))


def test_two_processes_enqueue_the_global_batch_like_one(tmp_path):
    results = run_in_processes(_enqueue_job)
    want = _enqueue_two_steps(slice(0, 6))  # 2 steps x 2 views x 6 keys = 24 > 20: wrapped
    assert int(want["pointer"]) == 4
    for rank, got in enumerate(results):
        for key in want:
            assert torch.equal(got[key], want[key]), (rank, key)
