"""jef.model.sync_bn: BatchNorm over the global batch in gloo processes equals BatchNorm on that batch in one process."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from jef.model.sync_bn import SyncBatchNorm, convert_sync_batchnorm, global_moments
from jef.testing import run_in_processes

#: (name, BatchNorm class, kwargs, input shape of the global batch). Rank 0 takes the first 3 samples, rank 1 the
#: other 5: the statistics are weighted by count, not averaged over processes.
CASES = [
    ("2d", nn.BatchNorm2d, {}, (8, 3, 4, 5)),
    ("1d", nn.BatchNorm1d, {}, (8, 6)),
    ("1d-sequence", nn.BatchNorm1d, {"momentum": None}, (8, 4, 7)),  # cumulative running average
    ("no-affine", nn.BatchNorm1d, {"affine": False}, (8, 6)),
    ("no-running-stats", nn.BatchNorm2d, {"track_running_stats": False}, (8, 2, 3, 3)),
]
SPLIT = (3, 5)


def _inputs(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * 0.5 + 3.0
    weights = torch.randn(shape, generator=generator)  # the loss Σ w·y, a sum over samples
    return x, weights


def _layer(cls, kwargs, features):
    torch.manual_seed(0)
    layer = cls(features, **kwargs)
    if layer.affine:
        with torch.no_grad():  # not the identity, so that wrong gradients through the scale would show
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-0.5, 0.5)
    return layer


def _steps(layer, shape, part):
    """Two training steps and an eval forward; returns outputs, gradients and buffers."""
    record = {}
    for step in range(2):
        x, weights = _inputs(shape, seed=step)
        x, weights = x[part].requires_grad_(), weights[part]
        layer.zero_grad()
        out = layer(x)
        (out * weights).sum().backward()
        record[f"out{step}"], record[f"grad_x{step}"] = out.detach(), x.grad
        record.update({f"grad_{name}{step}": p.grad.clone() for name, p in layer.named_parameters()})
    layer.eval()
    record["eval"] = layer(_inputs(shape, seed=9)[0][part]).detach()
    record.update({name: b.clone() for name, b in layer.named_buffers()})
    return record


def _sync_job(rank: int) -> dict:
    start = sum(SPLIT[:rank])
    part = slice(start, start + SPLIT[rank])
    results = {}
    for name, cls, kwargs, shape in CASES:
        results[name] = _steps(convert_sync_batchnorm(_layer(cls, kwargs, shape[1])), shape, part)
    mean, var, count = global_moments(_far_from_zero()[part])
    results["moments"] = {"mean": mean, "var": var, "count": count}
    x, weights = _inputs((8, 3, 4, 5), seed=0)
    x = x[part].bfloat16().requires_grad_()  # mixed precision: bf16 activations
    out = convert_sync_batchnorm(_layer(nn.BatchNorm2d, {}, 3))(x)
    (out.float() * weights[part]).sum().backward()
    results["bf16"] = {"out": out.detach(), "grad_x": x.grad}
    return results


def _far_from_zero():
    # Mean 1000, standard deviation 0.5: a variance from E[x²] − E[x]² would keep no correct digit in float32.
    return (torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.5
            + 1000.0).float()


def test_global_moments_are_exact_far_from_zero(ranks):
    x = _far_from_zero()
    for rank in ranks:
        got = rank["moments"]
        assert got["count"].item() == 8 * 5
        torch.testing.assert_close(got["mean"], x.double().mean(dim=(0, 2)).float(), rtol=1e-6, atol=0)
        torch.testing.assert_close(got["var"], x.double().var(dim=(0, 2), correction=0).float(),
                                   rtol=1e-4, atol=0)


@pytest.fixture(scope="module")
def ranks():
    return run_in_processes(_sync_job, world_size=2)


@pytest.mark.parametrize(("name", "cls", "kwargs", "shape"), CASES, ids=[c[0] for c in CASES])
def test_two_processes_equal_batchnorm_on_the_global_batch(ranks, name, cls, kwargs, shape):
    want = _steps(_layer(cls, kwargs, shape[1]), shape, slice(None))
    # Reduction order differs (per-process sums, then the combination), hence not bit-exact.
    close = functools.partial(torch.testing.assert_close, rtol=1e-4, atol=1e-5)
    for step in range(2):
        for key in (f"out{step}", f"grad_x{step}"):  # each process holds its samples' rows
            close(torch.cat([r[name][key] for r in ranks]), want[key], msg=f"{name} {key}")
        for key in (k for k in want if k.startswith("grad_") and not k.startswith("grad_x")):
            # Without DDP each process's parameter gradient is its own loss's; they add up to the global one.
            close(ranks[0][name][key] + ranks[1][name][key], want[key], msg=f"{name} {key}")
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        if key in want:
            for rank in ranks:
                close(rank[name][key], want[key], msg=f"{name} {key}")
    # Eval mode: running statistics (the same everywhere), or this process's batch when there are none.
    if kwargs.get("track_running_stats", True):
        close(torch.cat([r[name]["eval"] for r in ranks]), want["eval"])
    else:
        x = _inputs(shape, seed=9)[0]
        local = _layer(cls, kwargs, shape[1]).eval()
        close(ranks[0][name]["eval"], local(x[:SPLIT[0]]).detach())


def test_in_one_process_it_is_batchnorm_bit_for_bit():
    plain = _layer(nn.BatchNorm2d, {}, 3)
    synced = convert_sync_batchnorm(_layer(nn.BatchNorm2d, {}, 3))
    assert isinstance(synced, SyncBatchNorm)
    a, b = _steps(plain, (8, 3, 4, 5), slice(None)), _steps(synced, (8, 3, 4, 5), slice(None))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_conversion_keeps_parameters_buffers_mode_and_place():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(16)))
    target = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False))
    online(torch.randn(5, 3, 4, 4))  # running statistics that are not the initial ones
    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    before = {"online": dict(online.state_dict()), "target": dict(target.state_dict())}
    weight, nested = online[1].weight, online[2][1].running_mean
    model = nn.ModuleDict({"online": online, "target": target})
    assert convert_sync_batchnorm(model) is model
    assert [type(m).__name__ for m in model.modules()].count("SyncBatchNorm") == 3
    assert isinstance(online[2][1], SyncBatchNorm) and isinstance(target[1], SyncBatchNorm)
    assert online[1].weight is weight and online[2][1].running_mean is nested  # the same tensors, not copies
    assert online[1].training and not target[1].training
    assert target[1].weight is None and not target[0].weight.requires_grad
    for branch in ("online", "target"):  # same keys and values: checkpoints load both ways
        after = model[branch].state_dict()
        assert after.keys() == before[branch].keys()
        assert all(torch.equal(after[k], before[branch][k]) for k in after)


def test_a_batchnorm_itself_is_returned_converted_and_bad_input_is_named():
    converted = convert_sync_batchnorm(nn.BatchNorm1d(4, eps=1e-3, momentum=0.3))
    assert isinstance(converted, SyncBatchNorm) and (converted.eps, converted.momentum) == (1e-3, 0.3)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        converted(torch.randn(4))


def test_bf16_activations_stay_bf16_with_float32_statistics(ranks):
    x, weights = _inputs((8, 3, 4, 5), seed=0)
    x = x.bfloat16().float().requires_grad_()
    want = _layer(nn.BatchNorm2d, {}, 3)(x)
    (want * weights).sum().backward()
    for key, reference in (("out", want.detach()), ("grad_x", x.grad)):
        got = torch.cat([r["bf16"][key] for r in ranks])
        assert got.dtype == torch.bfloat16, key
        torch.testing.assert_close(got.float(), reference, rtol=2e-2, atol=2e-2, msg=lambda m, k=key: f"{k}: {m}")


def _built_norms(overrides, world_size):
    from jef.components import RunContext
    from jef.model.build import build
    from jef.plugins import load_plugins
    from jef.testing import tiny_pipeline

    pipeline = tiny_pipeline(overrides, registry=load_plugins().registry)
    model = build(pipeline, RunContext(world_size=world_size, batch_size=8, global_batch_size=8 * world_size)).model
    return {name: type(module).__name__ for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)}


def test_sync_bn_converts_both_branches_with_several_processes_only():
    byol = {"target": {"name": "ema"}, "predictor": {"name": "mlp", "dims": [32, 16]}, "train": {"sync_bn": True}}
    norms = _built_norms(byol, world_size=2)
    assert {n.split(".")[0] for n in norms} == {"backbone", "projector", "predictor", "target_backbone",
                                               "target_projector"}
    assert set(norms.values()) == {"SyncBatchNorm"}
    assert set(_built_norms(byol, world_size=1).values()) == {"BatchNorm2d", "BatchNorm1d"}  # nothing to sync
    assert set(_built_norms({**byol, "train": {"sync_bn": False}}, world_size=2).values()) == {"BatchNorm2d",
                                                                                              "BatchNorm1d"}


def test_with_shuffling_bn_the_key_encoder_keeps_per_process_statistics():
    moco = {"target": {"name": "ema", "shuffle_bn": True}, "train": {"sync_bn": True}}
    norms = _built_norms(moco, world_size=2)
    key = {t for n, t in norms.items() if n.startswith("target_")}
    query = {t for n, t in norms.items() if not n.startswith("target_")}
    assert key == {"BatchNorm2d", "BatchNorm1d"} and query == {"SyncBatchNorm"}, norms
