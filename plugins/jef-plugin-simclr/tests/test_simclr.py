"""SimCLR through jef: discovery, recipe, objective == NT-Xent, a tiny run."""

from __future__ import annotations

import math

import pytest
import torch

from jef.components import Branch, StepOutputs
from jef.config import resolve
from jef.testing import assert_discovered, build_objective, installed_plugins, tiny_run


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("simclr")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "simclr", provides={"method": ["simclr"]})


def test_recipe_resolves_to_the_paper_parts(plugins):
    pipeline = resolve({"method": "simclr"}, registry=plugins.registry)
    assert pipeline.energy.name == "scaled_cosine"
    assert [f.name for f in pipeline.functionals] == ["info_nce"]
    assert pipeline.energy.options.temperature == pipeline.functionals[0].options.temperature
    assert pipeline.target.name == "shared"
    assert pipeline.predictor is None
    assert pipeline.train.optimizer.name == "lars"
    assert pipeline.train.optimizer.exclude_norm_and_bias
    assert pipeline.projector.options.dims == [2048, 128]


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """NT-Xent written out anchor by anchor, in float64 (Chen et al. 2020, eq. 1)."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = math.exp(float(z[i] @ z[positive]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


def test_simclr_objective_equals_nt_xent(plugins):
    objective = build_objective(plugins, {"method": "simclr", "energy": {"temperature": 0.3},
                                          "functionals": [{"name": "info_nce", "temperature": 0.3}]})
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    branch = Branch(h=[z1, z2], z=[z1, z2])
    loss, _, _ = objective(StepOutputs(online=branch, target=branch, n_global=2))
    assert float(loss) == pytest.approx(nt_xent_reference(z1, z2, 0.3), rel=1e-5)


def test_tiny_simclr_run(plugins):
    result = tiny_run({"method": "simclr"}, steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
    assert "jef_train_step" in result.hooks_called


def test_multi_crop_simclr_contrasts_local_views_with_the_global_candidates(plugins):
    local = {"method": "simclr", "augmenter": {"n_local": 2, "local_size": 8}, "eval": {"knn": {"enabled": False}}}
    result = tiny_run(local, steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
    objective = build_objective(plugins, {"method": "simclr", "energy": {"temperature": 0.5},
                                          "functionals": [{"name": "info_nce", "temperature": 0.5}]})
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 3, generator=generator, dtype=torch.float64) for _ in range(3)]  # 2 global, 1 local
    branch = Branch(h=views, z=views)
    loss, _, _ = objective(
        StepOutputs(online=branch, target=Branch(h=views[:2], z=views[:2]), n_global=2))
    cos = torch.nn.functional.cosine_similarity
    # Energy: pairs (0,1), (1,0), (2,0), (2,1); the local view is an anchor, never a target.
    pairs = [(0, 1), (1, 0), (2, 0), (2, 1)]
    energy_ref = sum(-cos(views[a], views[b]).mean() / 0.5 for a, b in pairs) / len(pairs)
    candidates = torch.cat(views[:2])
    denominators = []
    for a in range(3):
        sims = cos(views[a][:, None, :], candidates[None, :, :], dim=-1) / 0.5
        if a < 2:  # a global anchor leaves out its own entry; the local one has none
            sims[torch.arange(4), a * 4 + torch.arange(4)] = -torch.inf
        denominators.append(torch.logsumexp(sims, dim=1))
    assert float(loss) == pytest.approx(float(energy_ref + torch.cat(denominators).mean()), rel=1e-10)
