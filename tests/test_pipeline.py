"""The model and objective built from a pipeline: branches, pairs, targets, EMA."""

from __future__ import annotations

import torch
from torch import nn

from jef.components import Branch, StepOutputs
from jef.builtin.targets import EmaTargetOptions
from jef.model.joint import JointEmbedding, Objective
from jef.model.targets import EmaTarget, SharedTarget, StopGradTarget


class Squared(nn.Module):
    def forward(self, a, b):
        return (a - b).pow(2).sum(dim=1)


class MeanOfZ(nn.Module):
    def forward(self, out):
        return {"a": out.online.z[0].mean(), "b": out.online.z[1].mean() * 0 + 2.0}


def _model(target="shared", predictor=None, functionals=()):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    projector = nn.Linear(6, 4)
    objective = Objective(("sq", Squared(), 2.0), [(name, f, w) for name, f, w in functionals])
    made = {"shared": SharedTarget, "stopgrad": StopGradTarget,
            "ema": lambda: EmaTarget(EmaTargetOptions(), total_steps=10)}[target]()
    return JointEmbedding(backbone, projector, predictor, objective, made, n_global=2)


def test_objective_averages_energy_over_ordered_pairs_with_global_targets():
    z = [torch.randn(5, 3) for _ in range(3)]  # 2 global views + 1 local view
    out = StepOutputs(online=Branch(h=z, z=z), target=Branch(h=z[:2], z=z[:2]), n_global=2)
    loss, terms, _ = Objective(("sq", Squared(), 2.0), [("m", MeanOfZ(), 0.5)])(out)
    pairs = [(0, 1), (1, 0), (2, 0), (2, 1)]  # targets only from global views, never a view with itself
    expected_energy = torch.stack([(z[a] - z[b]).pow(2).sum(1).mean() for a, b in pairs]).mean()
    torch.testing.assert_close(terms["energy/sq"], expected_energy)
    torch.testing.assert_close(terms["m/a"], z[0].mean())
    torch.testing.assert_close(loss, 2.0 * expected_energy + 0.5 * (z[0].mean() + 2.0))


def test_views_of_one_size_share_a_backbone_call_and_sizes_are_grouped():
    calls = []
    model = _model()
    model.backbone.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    big = [torch.randn(3, 1, 2, 6) for _ in range(2)]
    model.encode(big, model.backbone, model.projector)
    assert calls == [6]


def test_stopgrad_target_receives_no_gradient():
    model = _model("stopgrad")
    views = [torch.randn(4, 1, 2, 6, requires_grad=True) for _ in range(2)]
    _, _, out = model(views)
    assert all(not t.requires_grad for t in out.target.z)
    shared_model = _model("shared")
    _, _, shared = shared_model(views)
    assert all(t.requires_grad for t in shared.target.z)


def test_ema_target_is_a_frozen_copy_moved_only_by_the_update():
    model = _model("ema", predictor=nn.Linear(4, 4))
    assert all(not p.requires_grad for p in model.target_backbone.parameters())
    loss, _, out = model([torch.randn(4, 1, 2, 6) for _ in range(2)])
    loss.backward()
    assert all(p.grad is None for p in model.target_backbone.parameters())
    assert out.online.p is not None and out.target.p is None

    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    online = [p.clone() for p in model.backbone.parameters()]
    before = [p.clone() for p in model.target_backbone.parameters()]
    updater = model.target  # the EmaTarget the model attached: update() moves its copies
    updater.update(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.target_backbone.parameters(), strict=True))
    updater.update(0.5)
    for b, o, t in zip(before, online, model.target_backbone.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * o)
    updater.update(0.0)
    assert all(torch.equal(o, t) for o, t in zip(online, model.target_backbone.parameters(), strict=True))


def test_ema_momentum_follows_a_cosine_schedule():
    updater = EmaTarget(EmaTargetOptions(momentum=0.996, final_momentum=1.0), total_steps=100)
    assert updater.momentum(0) == 0.996
    assert abs(updater.momentum(50) - 0.998) < 1e-9
    assert updater.momentum(100) == 1.0
