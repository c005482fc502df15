"""The triplet loss against a float64 reference written anchor by anchor, its mining, gradients, and 2 processes.

The reference follows FaceNet (Schroff et al., arXiv:1503.03832, eq. 1-4 and Sec. 3.2) and Hermans et al.
(arXiv:1703.07737): loops over anchors and candidates, FaceNet's semi-hard band searched explicitly.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

from jef import dist
from jef.components import Branch, StepOutputs
from jef.testing import run_in_processes
from jef_plugin_triplet import Triplet, select_triplets, squared_distances, triplet_loss, two_view_triplet_loss

N, D, WORLD = 8, 5, 2  # N: the global batch of the two-process tests (4 images per rank)
def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm()


def reference_triplet(z0, z1, margin=0.2, mining="semi_hard", symmetric=True, local=()):
    """``(loss, choices)``: the mean loss over triplets, and per triplet ``(view, row, negative, case)``.

    Anchors are view 0's rows (against view 1's positive), view 1's (with ``symmetric``) and every local view's
    (against both global views). ``negative`` is ``(view, image)`` of the chosen negative, always a global view of
    another image; ``case`` is ``"band"`` (a semi-hard negative, d(a,p) < d(a,n) < d(a,p) + α), ``"beyond"`` (none
    in the band: the nearest farther one, ℓ = 0), ``"inside"`` (no negative farther than the positive: the
    farthest one) or ``"hard"`` (batch_hard).
    """
    views = [[_unit(row) for row in z.double()] for z in (z0, z1, *local)]
    g = len(views[0])
    anchors = [(0, [1]), (1, [0])][: 2 if symmetric else 1] + [(v, [0, 1]) for v in range(2, len(views))]
    total, choices = 0, []
    for a, positive_views in anchors:
        for i in range(g):
            anchor = views[a][i]
            negatives = [((v, j), ((anchor - views[v][j]) ** 2).sum()) for v in (0, 1) for j in range(g) if j != i]
            positives = [((anchor - views[b][i]) ** 2).sum() for b in positive_views]
            if mining == "batch_hard":  # the farthest positive, the nearest negative
                d_ap = max(positives, key=lambda d: float(d.detach()))
                triplets = [(d_ap, "hard", min(negatives, key=lambda item: float(item[1].detach())))]
            else:  # one triplet per positive
                triplets = []
                for d_ap in positives:
                    band = [(c, d) for c, d in negatives if d_ap < d < d_ap + margin]
                    farther = [(c, d) for c, d in negatives if d > d_ap]
                    if band:
                        triplets.append((d_ap, "band", min(band, key=lambda item: float(item[1].detach()))))
                    elif farther:
                        triplets.append((d_ap, "beyond", min(farther, key=lambda item: float(item[1].detach()))))
                    else:
                        triplets.append((d_ap, "inside", max(negatives, key=lambda item: float(item[1].detach()))))
            for d_ap, case, (chosen, d_an) in triplets:
                total = total + torch.clamp(d_ap - d_an + margin, min=0)
                choices.append((a, i, chosen, case))
    return total / len(choices), choices


def _views(seed, n=N, d=D, dtype=torch.float64):
    """Two views whose positives are near (easy), farther (semi-hard) and antipodal (harder than every negative)."""
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g, dtype=dtype)
    spread = torch.linspace(0.05, 1.5, n, dtype=dtype)[:, None]
    z1 = z0 + spread * torch.randn(n, d, generator=g, dtype=dtype)
    z1[-1] = -z0[-1]  # d(a, p) = 4, the largest possible: no negative is farther
    return z0, z1


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _loss(*views, **options):
    """The functional on the views (2 global, then local ones), through a step's outputs."""
    views = list(views)
    return Triplet(**options)(StepOutputs(online=Branch(h=views, z=views), target=Branch(h=views[:2], z=views[:2]),
                                          n_global=2))


MODES = [("semi_hard", True), ("semi_hard", False), ("batch_hard", True), ("batch_hard", False)]


@pytest.mark.parametrize("n_local", [0, 2])
@pytest.mark.parametrize("mining, symmetric", MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_loss_and_its_gradients_equal_the_reference(mining, symmetric, seed, n_local):
    g = torch.Generator().manual_seed(100 + seed)
    inputs = [*_views(seed), *(torch.randn(N, D, generator=g, dtype=torch.float64) for _ in range(n_local))]
    ours, ref = _leaves(*(t.float() for t in inputs)), _leaves(*inputs)
    loss = _loss(*ours, mining=mining, symmetric=symmetric)
    expected, _ = reference_triplet(*ref[:2], mining=mining, symmetric=symmetric, local=ref[2:])
    assert loss.dtype == torch.float32 and float(expected.detach()) > 0
    assert abs(float(loss.detach()) - float(expected.detach())) <= 1e-6
    loss.backward()
    expected.backward()
    for got, want in zip(ours, ref):
        assert float(got.grad.abs().sum()) > 0  # the gradient reaches every view
        torch.testing.assert_close(got.grad, want.grad.float(), rtol=1e-4, atol=1e-5)
    # float64 inputs: the same maths to rounding.
    exact = _loss(*(t.double() for t in inputs), mining=mining, symmetric=symmetric)
    assert abs(float(exact) - float(expected.detach())) <= 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_semi_hard_mining_picks_the_reference_negative(seed):
    z0, z1 = _views(seed)
    _, choices = reference_triplet(z0, z1, mining="semi_hard")
    candidates = torch.cat([z0, z1])
    d = squared_distances(torch.cat([z0, z1]), candidates)
    # Ties avoided: no two candidates are within 1e-6 of each other from any anchor.
    gaps = d.sort(dim=1).values.diff(dim=1)
    assert float(gaps.min()) > 1e-6
    image = torch.arange(N).repeat(2)
    got = []
    for a in (0, 1):
        rows = d[a * N:(a + 1) * N]
        positives = torch.zeros_like(rows, dtype=torch.bool)
        positives[torch.arange(N), (1 - a) * N + torch.arange(N)] = True
        negatives = image[None, :] != torch.arange(N)[:, None]
        _, _, negative = select_triplets(rows, positives, negatives, "semi_hard")
        got += [(int(c) // N, int(c) % N) for c in negative]
    assert got == [chosen for _, _, chosen, _ in choices]
    # The data exercise every branch of the rule over the seeds; the antipodal positive is always "inside".
    assert choices[N - 1][3] == "inside"
    assert {"band", "beyond"} <= {case for *_, case in choices} or seed > 2


def test_batch_hard_takes_the_farthest_positive_and_nearest_negative():
    d = torch.tensor([[0.0, 0.5, 0.9, 0.3, 0.7], [0.6, 0.0, 0.2, 0.8, 0.1]])
    positives = torch.tensor([[False, True, True, False, False], [True, False, False, False, False]])
    negatives = torch.tensor([[False, False, False, True, True], [False, False, True, True, True]])
    anchor, positive, negative = select_triplets(d, positives, negatives, "batch_hard")
    assert anchor.tolist() == [0, 1] and positive.tolist() == [2, 0] and negative.tolist() == [3, 4]
    _, positive, negative = select_triplets(d, positives, negatives, "semi_hard")  # one triplet per positive
    assert positive.tolist() == [1, 2, 0] and negative.tolist() == [4, 4, 3]  # 0.7 > 0.5; none > 0.9: 0.7; 0.8


def test_a_loss_of_zero_when_every_negative_is_beyond_the_margin():
    eye = torch.eye(4)  # d(a, p) = 0, every negative at distance 2
    assert float(two_view_triplet_loss(eye, eye, margin=0.2)) == 0.0
    assert float(two_view_triplet_loss(eye, eye, margin=2.5, mining="batch_hard")) == pytest.approx(0.5)


@pytest.mark.parametrize("call, message", [
    (lambda: _loss(torch.randn(1, 3), torch.randn(1, 3)), "global batch holds 1 image"),
    (lambda: _loss(torch.randn(4, 3), torch.randn(5, 3)), "same shape"),
    (lambda: Triplet()(StepOutputs(online=Branch(h=[torch.randn(4, 3)], z=[torch.randn(4, 3)]),
                                   target=Branch(h=[], z=[]), n_global=1)), "exactly 2 global views.*n_global: 2"),
    (lambda: Triplet()(StepOutputs(online=Branch(h=[torch.randn(4, 3)] * 3, z=[torch.randn(4, 3)] * 3),
                                   target=Branch(h=[], z=[]), n_global=3)), "3 views of which 3 global"),
    (lambda: _loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 3)), "same shape"),
    (lambda: Triplet(mining="hardest"), "mining must be one of"),
    (lambda: triplet_loss(torch.randn(2, 3), torch.randn(2, 3), torch.eye(2, dtype=torch.bool),
                          ~torch.eye(2, dtype=torch.bool), margin=-1.0), "margin must be"),
    (lambda: triplet_loss(torch.randn(2, 3), torch.randn(2, 3), torch.eye(2, dtype=torch.bool),
                          torch.zeros(2, 2, dtype=torch.bool)), "no negative"),
    (lambda: triplet_loss(torch.randn(2, 3), torch.randn(2, 3), torch.zeros(2, 2, dtype=torch.bool),
                          ~torch.eye(2, dtype=torch.bool)), "no positive"),
    (lambda: triplet_loss(torch.randn(2, 3), torch.randn(2, 3), torch.ones(2, 2, dtype=torch.bool),
                          ~torch.eye(2, dtype=torch.bool)), "both positive and negative"),
])
def test_bad_inputs_are_reported(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_half_precision_views_give_a_float32_loss():
    z0, z1 = _views(3)
    expected, _ = reference_triplet(z0, z1)
    loss = _loss(z0.bfloat16(), z1.bfloat16())
    assert loss.dtype == torch.float32 and abs(float(loss) - float(expected)) < 0.05


def _detached_gather(tensor):
    """The common bug: ``all_gather`` returns the other ranks' rows (and a copy of ours) without autograd history."""
    parts = [torch.empty_like(tensor) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts)


def _two_process_job(rank):
    views = _global_batch()  # the same global batch on every rank
    rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    out = {}
    for mining in ("semi_hard", "batch_hard"):
        for detached in (False, True):
            leaves = _leaves(*(v[rows] for v in views))
            gather = _detached_gather if detached else dist.gather
            loss = two_view_triplet_loss(*leaves[:2], local=leaves[2:], mining=mining, gather=gather)
            loss.backward()
            out[mining, detached] = {"loss": loss.detach(), "grads": [t.grad for t in leaves]}
    return out


def _global_batch():
    """Two global views and one local crop of N images."""
    g = torch.Generator().manual_seed(8)
    return [*_views(7), torch.randn(N, D, generator=g, dtype=torch.float64)]


@pytest.fixture(scope="module")
def two_processes():
    return run_in_processes(_two_process_job, world_size=WORLD)


def _ddp_view(results, key):
    """What DDP sees: the mean of the ranks' losses, each rank's embedding gradients divided by the world size."""
    loss = torch.stack([r[key]["loss"] for r in results]).mean()
    return loss, [torch.cat([r[key]["grads"][v] for r in results]) / WORLD for v in (0, 1, 2)]


@pytest.mark.parametrize("mining", ["semi_hard", "batch_hard"])
def test_two_processes_equal_one_process_on_the_global_batch(two_processes, mining):
    leaves = _leaves(*_global_batch())
    global_loss = two_view_triplet_loss(*leaves[:2], local=leaves[2:], mining=mining)
    global_loss.backward()
    loss, grads = _ddp_view(two_processes, (mining, False))
    torch.testing.assert_close(loss, global_loss.detach(), rtol=1e-12, atol=1e-12)
    for got, leaf in zip(grads, leaves):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-10, atol=1e-12)
    views = _global_batch()
    expected, _ = reference_triplet(*views[:2], mining=mining, local=views[2:])
    assert abs(float(global_loss.detach()) - float(expected.detach())) <= 1e-12
    # Without the gradient through the gather the loss is the same, the global views' gradients are not: each
    # rank misses what its samples receive as positives and negatives of the other ranks' anchors.
    loss, grads = _ddp_view(two_processes, (mining, True))
    torch.testing.assert_close(loss, global_loss.detach(), rtol=1e-12, atol=1e-12)
    for got, leaf in zip(grads[:2], leaves[:2]):
        assert not torch.allclose(got, leaf.grad, rtol=1e-3, atol=1e-4)
    # The local crop is an anchor only, never gathered: its gradient does not pass through the gather.
    torch.testing.assert_close(grads[2], leaves[2].grad, rtol=1e-10, atol=1e-12)
