"""Per-process sharding: of the data (each epoch's samples) and of the views' random parameters.

The data: 70 images, 8 per process on 2 processes (a global batch of 16), 2 epochs through the real training
loop (Accelerate shards the batches of jef's EpochSampler). Each epoch must cover 64 distinct images, none on
both processes, in the order one process with the global batch sees them; the 6 left over (fewer than a
global batch) are dropped, other ones each epoch.
"""

from __future__ import annotations

import pytest
import torch

from jef.augment import ViewsAugmenter, ViewsOptions
from jef.run.sampler import EpochSampler
from jef.testing import record_runs

SIZE, GLOBAL_BATCH, EPOCHS, SEED = 70, 16, 2, 5
STEPS_PER_EPOCH = SIZE // GLOBAL_BATCH


def _pipeline(world_size: int) -> dict:
    return {"seed": SEED, "data": {"train_size": SIZE},
            "train": {"epochs": EPOCHS, "batch_size": GLOBAL_BATCH // world_size},
            "eval": {"knn": {"enabled": False}}}


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    """Per world size, per rank, per epoch: the dataset indices of each step."""
    root = tmp_path_factory.mktemp("sharding")
    steps = STEPS_PER_EPOCH * EPOCHS
    result = {}
    for world in (1, 2):
        records = record_runs({"run": _pipeline(world)}, steps=steps, run_dir=root / str(world), world_size=world)
        result[world] = []
        for rank, record in enumerate(records):
            if "error" in record["run"]:
                pytest.fail(record["run"]["error"])
            by_epoch = [[s["indices"] for s in record["run"]["steps"] if s["epoch"] == e] for e in range(EPOCHS)]
            assert [len(steps) for steps in by_epoch] == [STEPS_PER_EPOCH] * EPOCHS, f"rank {rank}: {by_epoch}"
            result[world].append(by_epoch)
    return result


def test_each_epoch_covers_the_data_once_without_a_sample_on_two_processes(seen):
    dropped = []
    for epoch in range(EPOCHS):
        per_rank = [[i for step in rank[epoch] for i in step] for rank in seen[2]]
        assert all(len(samples) == len(set(samples)) for samples in per_rank), "a sample came twice in an epoch"
        assert not set(per_rank[0]) & set(per_rank[1]), "a sample was on both processes"
        covered = set(per_rank[0]) | set(per_rank[1])
        assert len(covered) == STEPS_PER_EPOCH * GLOBAL_BATCH and covered <= set(range(SIZE))
        dropped.append(set(range(SIZE)) - covered)
    assert all(len(d) == SIZE % GLOBAL_BATCH for d in dropped)  # only the remainder, fewer than a global batch
    assert dropped[0] != dropped[1], "the same images are dropped every epoch"


def test_the_order_is_the_same_whatever_the_number_of_processes(seen):
    for epoch in range(EPOCHS):
        sampler = EpochSampler(SIZE, seed=SEED)
        sampler.set_epoch(epoch)
        order = list(sampler)
        one = [i for step in seen[1][0][epoch] for i in step]
        assert one == order[:STEPS_PER_EPOCH * GLOBAL_BATCH]
        for step in range(STEPS_PER_EPOCH):  # rank r holds rows [r*8, (r+1)*8) of one process's global batch
            two = seen[2][0][epoch][step] + seen[2][1][epoch][step]
            assert two == seen[1][0][epoch][step], f"epoch {epoch} step {step}"


@pytest.mark.parametrize("n_local", [0, 2])
def test_each_process_makes_its_rows_of_the_global_batch_views(n_local):
    # Every random transform on, so that any parameter taken from the wrong row would change a view.
    options = ViewsOptions(size=12, n_local=n_local, local_size=6, flip_p=0.5, jitter_p=0.8, grayscale_p=0.3,
                           blur_p=0.5, solarize_p=0.3)
    images = torch.randint(0, 256, (8, 3, 14, 14), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    want = ViewsAugmenter(options)(images, generator=torch.Generator().manual_seed(7))
    for world in (2, 4):
        b = images.shape[0] // world
        parts = [ViewsAugmenter(options, rank=r, world_size=world)(images[r * b:(r + 1) * b],
                                                                   generator=torch.Generator().manual_seed(7))
                 for r in range(world)]
        for v, view in enumerate(want):
            torch.testing.assert_close(torch.cat([p[v] for p in parts]), view, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, v=v, w=world: f"view {v}, {w} processes: {m}")


def test_a_standalone_augmenter_draws_as_before_and_bad_ranks_are_named():
    # World size 1 draws the parameters of its own batch only: the stream of a standalone augmenter is unchanged.
    options = ViewsOptions(size=12, flip_p=0.5, jitter_p=0.8)
    images = torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(3)
    ViewsAugmenter(options)(images, generator=generator)
    expected = torch.Generator().manual_seed(3)
    torch.rand(2 * 4, 36, generator=expected)  # one draw of 36 uniforms per view and image (jef.augment.params)
    assert torch.equal(generator.get_state(), expected.get_state())
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\)"):
        ViewsAugmenter(options, rank=2, world_size=2)
