"""CLIP and SigLIP losses against float64 references written from the papers, in one and two processes."""

import math

import pytest
import torch

from jef.functional.crossmodal import clip_loss, siglip_loss
from jef.testing.distributed import run_in_processes

N, D, WORLD = 6, 5, 2  # N: global batch in the two-process tests (3 rows per rank)


def _clip_reference(image, text, logit_scale):
    """Radford et al. 2021, Fig. 3 pseudocode, with explicit loops, in float64."""
    image, text = image.double(), text.double()
    x = image / image.norm(dim=1, keepdim=True)
    y = text / text.norm(dim=1, keepdim=True)
    s = logit_scale.double().exp()
    n = x.shape[0]
    loss_i = loss_t = 0
    for i in range(n):
        row_i = torch.stack([s * (x[i] * y[j]).sum() for j in range(n)])
        row_t = torch.stack([s * (y[i] * x[j]).sum() for j in range(n)])
        loss_i = loss_i - (row_i[i] - torch.log(torch.exp(row_i).sum()))
        loss_t = loss_t - (row_t[i] - torch.log(torch.exp(row_t).sum()))
    return (loss_i / n + loss_t / n) / 2


def _siglip_reference(image, text, logit_scale, bias):
    """Zhai et al. 2023, Algorithm 1, with explicit loops, in float64."""
    image, text = image.double(), text.double()
    x = image / image.norm(dim=1, keepdim=True)
    y = text / text.norm(dim=1, keepdim=True)
    t, b = logit_scale.double().exp(), bias.double()
    n = x.shape[0]
    total = 0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = t * (x[i] * y[j]).sum() + b
            total = total - torch.log(1 / (1 + torch.exp(-z * logit)))
    return total / n


def _inputs(seed, n=N, d=D):
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    logit_scale = torch.rand((), generator=g) * 3  # exp in [1, 20]
    bias = torch.randn((), generator=g) * 3
    return image, text, logit_scale, bias


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _run(name, image, text, logit_scale, bias, **kwargs):
    if name == "clip":
        return clip_loss(image, text, logit_scale, **kwargs)
    return siglip_loss(image, text, logit_scale, bias, **kwargs)


def _reference(name, image, text, logit_scale, bias):
    if name == "clip":
        return _clip_reference(image, text, logit_scale)
    return _siglip_reference(image, text, logit_scale, bias)


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_process_matches_the_paper_formula_with_its_gradients(name, seed):
    inputs = _inputs(seed)
    ours, ref = _leaves(*inputs), _leaves(*inputs)
    loss = _run(name, *ours)
    expected = _reference(name, *ref)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected.item()) <= 1e-6 * max(1.0, abs(expected.item()))
    loss.backward()
    expected.backward()
    for i, (a, b) in enumerate(zip(ours, ref)):
        if name == "clip" and i == 3:  # CLIP has no bias
            assert a.grad is None
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)  # b.grad: float64 maths, cast back


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_float64_inputs_match_the_reference_exactly_and_pass_gradcheck(name):
    inputs = [t.double() for t in _inputs(3, n=4, d=3)]
    ours, ref = _leaves(*inputs), _leaves(*inputs)
    loss, expected = _run(name, *ours), _reference(name, *ref)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss.backward()
    expected.backward()
    for a, b in zip(ours, ref):  # CLIP's bias: no gradient on either side
        assert (a.grad is None) == (b.grad is None) == (name == "clip" and a is ours[3])
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    if name == "clip":
        assert torch.autograd.gradcheck(clip_loss, _leaves(*inputs[:3]))
    else:
        assert torch.autograd.gradcheck(siglip_loss, _leaves(*inputs))


def test_half_precision_inputs_give_float32_losses():
    image, text, logit_scale, bias = _inputs(4)
    ref = _siglip_reference(image, text, logit_scale, bias)
    loss = siglip_loss(image.half(), text.half(), logit_scale, bias)
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-2)
    assert clip_loss(image.bfloat16(), text.bfloat16(), logit_scale).dtype == torch.float32


def test_known_values():
    # Orthogonal, perfectly matched pairs: CLIP's loss is log(1 + (N-1) e^{-s}).
    eye = torch.eye(3)
    scale = torch.tensor(math.log(5.0))
    assert math.isclose(clip_loss(eye, eye, scale).item(), math.log(1 + 2 * math.exp(-5.0)), rel_tol=1e-6)
    # SigLIP: per row one positive with logit t+b and two negatives with logit b.
    bias = torch.tensor(-1.0)
    expected = -(math.log(1 / (1 + math.exp(-4.0))) + 2 * math.log(1 / (1 + math.exp(-1.0))))
    assert math.isclose(siglip_loss(eye, eye, scale, bias).item(), expected, rel_tol=1e-6)


def _two_process_job(rank):
    image, text, logit_scale, bias = _inputs(7)  # the same global batch on every rank
    rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    out = {}
    for name in ("clip", "siglip"):
        for gather in (True, False):
            leaves = _leaves(image[rows], text[rows], logit_scale, bias)
            loss = _run(name, *leaves, gather=gather)
            loss.backward()
            out[name, gather] = {"loss": loss.detach(),
                                 "grads": [None if t.grad is None else t.grad for t in leaves]}
    # A shape mismatch across ranks is reported on every rank, not a hang.
    try:
        clip_loss(image[: 2 + rank], text[: 2 + rank], logit_scale)
    except ValueError as error:
        out["mismatch"] = str(error)
    return out


@pytest.fixture(scope="module")
def two_processes():
    return run_in_processes(_two_process_job, world_size=WORLD)


def _global(name):
    leaves = _leaves(*_inputs(7))
    loss = _run(name, *leaves)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


def _ddp_view(results, name, gather):
    """What DDP would see: the mean of the ranks' losses, and the gradients averaged over ranks."""
    runs = [r[name, gather] for r in results]
    loss = torch.stack([run["loss"] for run in runs]).mean()
    image = torch.cat([run["grads"][0] for run in runs]) / WORLD
    text = torch.cat([run["grads"][1] for run in runs]) / WORLD
    scale = torch.stack([run["grads"][2] for run in runs]).mean()
    bias = None if name == "clip" else torch.stack([run["grads"][3] for run in runs]).mean()
    return loss, [image, text, scale, bias]


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_two_processes_equal_one_process_on_the_global_batch(two_processes, name):
    global_loss, global_grads = _global(name)
    loss, grads = _ddp_view(two_processes, name, gather=True)
    torch.testing.assert_close(loss, global_loss, rtol=1e-6, atol=1e-6)
    for got, expected in zip(grads, global_grads):
        if expected is None:
            assert got is None
        else:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # The reference itself, on the global batch, agrees.
    assert math.isclose(global_loss.item(), _reference(name, *_inputs(7)).item(), rel_tol=1e-6)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_two_processes_without_gather_do_not(two_processes, name):
    global_loss, global_grads = _global(name)
    loss, grads = _ddp_view(two_processes, name, gather=False)
    assert not torch.allclose(loss, global_loss, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(grads[0], global_grads[0], rtol=1e-3, atol=1e-4)
    assert not torch.allclose(grads[1], global_grads[1], rtol=1e-3, atol=1e-4)


def test_two_processes_report_unequal_batches(two_processes):
    for result in two_processes:
        assert "same shape" in result["mismatch"] and "drop_last" in result["mismatch"]


@pytest.mark.parametrize("call, message", [
    (lambda: clip_loss(torch.randn(4), torch.randn(4), torch.tensor(1.0)), "image must be a 2-D"),
    (lambda: clip_loss(torch.randn(4, 3), torch.randn(5, 3), torch.tensor(1.0)), "same shape"),
    (lambda: clip_loss(torch.randn(4, 3), torch.randn(4, 2), torch.tensor(1.0)), "same shape"),
    (lambda: clip_loss(torch.randn(0, 3), torch.randn(0, 3), torch.tensor(1.0)), "at least one pair"),
    (lambda: clip_loss(torch.randn(4, 3), torch.randn(4, 3), torch.ones(2)), "logit_scale must be a scalar"),
    (lambda: siglip_loss(torch.randn(4, 3), torch.randn(4, 3), torch.tensor(1.0), torch.ones(1, 2)),
     "bias must be a scalar"),
    (lambda: siglip_loss(torch.randn(4, 3, 2), torch.randn(4, 3, 2), torch.tensor(1.0), torch.tensor(0.0)),
     "image must be a 2-D"),
])
def test_bad_shapes_are_reported(call, message):
    with pytest.raises(ValueError, match=message):
        call()
