"""MoCo's shuffling BN for the key encoder (jef.model.shuffle_bn): which samples share a key's BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jef.builtin.energies import ScaledCosineEnergy
from jef.builtin.targets import EmaTargetOptions
from jef.model.joint import JointEmbedding, Objective
from jef.model.targets import EmaTarget
from jef.plugins import load_plugins
from jef.testing import run_in_processes, tiny_run
from jef.config.validate import ConfigError

# -- shuffling BN -----------------------------------------------------------------------------


class RecordingBN(nn.Module):
    """A backbone of one BatchNorm: input ``[B, 1, 1, 3]`` = (sample id, 2 features); records each call's ids."""

    out_dim = 3

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(2, affine=False)
        self.calls = []

    def forward(self, x):
        flat = x.flatten(1)
        self.calls.append(sorted(int(i) for i in flat[:, 0]))
        return torch.cat([flat[:, :1], self.bn(flat[:, 1:])], dim=1)


def _shuffle_model(shuffle_bn):
    objective = Objective(("scaled_cosine", ScaledCosineEnergy(0.2), 1.0), [])
    target = EmaTarget(EmaTargetOptions(shuffle_bn=shuffle_bn), total_steps=1)
    return JointEmbedding(RecordingBN(), None, None, objective, target, n_global=2)


def _id_views(n=8):
    g = torch.Generator().manual_seed(3)
    return [torch.cat([torch.full((n, 1), 100.0 * b) + torch.arange(n.__float__())[:, None],
                       torch.randn(n, 2, generator=g)], dim=1).view(n, 1, 1, 3) for b in range(2)]


def _batch_norm(flat, i, group, view):
    """Sample i's features normalised with the batch statistics of the samples (ids) in ``group``."""
    rows = flat[[j - 100 * view for j in group], 1:]
    return (flat[i, 1:] - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + 1e-5)


def test_shuffle_bn_normalises_each_key_with_a_different_subset_than_its_query():
    torch.manual_seed(0)
    model, views = _shuffle_model(True), _id_views()
    _, _, out = model(views)
    assert model.backbone.calls == [sorted(100 * b + i for b in range(2) for i in range(8))]  # queries: one call
    calls = model.target_backbone.calls
    assert len(calls) == 4 and all(len(c) == 4 for c in calls)  # 2 views x 2 groups
    assert any(c != [100 * b + i for i in range(4)] and c != [100 * b + i for i in range(4, 8)]
               for b, c in zip([0, 0, 1, 1], calls, strict=True))  # shuffled, not the halves in order
    for b, view in enumerate(views):
        flat = view.flatten(1)
        keys = out.target.z[b]
        assert keys[:, 0].tolist() == flat[:, 0].tolist()  # back in the batch order
        for i in range(8):
            group = next(c for c in calls if 100 * b + i in c)
            assert group != model.backbone.calls[0]  # not the statistics of the query's batch
            assert torch.allclose(keys[i, 1:], _batch_norm(flat, i, group, b), atol=1e-5)
    assert not out.target.z[0].requires_grad


def test_without_shuffle_bn_the_keys_share_one_call():
    model = _shuffle_model(False)
    model(_id_views())
    assert model.target_backbone.calls == model.backbone.calls


def test_shuffle_bn_needs_the_ema_target():
    with pytest.raises(ConfigError, match="shuffle_bn.*applies only to the ema target"):
        tiny_run({"target": {"name": "shared", "shuffle_bn": True}}, steps=1, plugins=load_plugins(entry_points=False))


def _shuffle_job(rank):
    torch.manual_seed(rank)  # different on each process: the permutation must come from rank 0
    model = _shuffle_model(True)
    _, _, out = model([view[rank * 4:rank * 4 + 4] for view in _id_views()])
    return {"z": out.target.z, "calls": model.target_backbone.calls}


def test_shuffle_bn_across_two_processes_mixes_their_samples_and_restores_each_ones_order(tmp_path):
    results = run_in_processes(_shuffle_job)
    views = _id_views()
    # Keys are computed on a shard of the *global* batch: some of rank 0's keys come from rank 1's images.
    assert any(results[0]["calls"][b] != [100 * b + i for i in range(4)] for b in range(2))
    for b, view in enumerate(views):
        flat = view.flatten(1)
        groups = [r["calls"][b] for r in results]  # one call per process and view: the processes are the groups
        assert sorted(groups[0] + groups[1]) == [100 * b + i for i in range(8)]
        for rank, result in enumerate(results):
            keys = result["z"][b]
            assert keys[:, 0].tolist() == flat[rank * 4:rank * 4 + 4, 0].tolist()
            for row, i in enumerate(range(rank * 4, rank * 4 + 4)):
                group = next(g for g in groups if 100 * b + i in g)
                assert torch.allclose(keys[row, 1:], _batch_norm(flat, i, group, b), atol=1e-5)
