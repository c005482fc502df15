"""model.backbone_calls: one backbone call per view resolution or one per view, and what each does to BatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from jef.config import merge
from jef.config.validate import ConfigError
from jef.plugins import load_plugins
from jef.run.checkpoint import CheckpointError, pipeline_differences
from jef.testing import TINY_PIPELINE, build_pipeline, tiny_pipeline, tiny_run


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def built(plugins, calls, extra=None):
    torch.manual_seed(0)
    return build_pipeline(plugins, merge(TINY_PIPELINE, merge({"model": {"backbone_calls": calls}}, extra or {})))


def views_of(*sizes, n=4):
    generator = torch.Generator().manual_seed(1)
    # Different means per view: BatchNorm's statistics of one view then differ from those of the views together.
    return [torch.randn(n, 3, size, size, generator=generator) + i for i, size in enumerate(sizes)]


def batches_seen(model, views):
    seen = []
    handle = model.backbone.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    try:
        model.encode(views, model.backbone, model.projector)
    finally:
        handle.remove()
    return seen


def test_the_default_calls_the_backbone_once_per_resolution(plugins):
    model = built(plugins, "per_resolution").model
    assert batches_seen(model, views_of(16, 16, 8, 8, 16)) == [(12, 3, 16, 16), (8, 3, 8, 8)]
    assert tiny_pipeline(registry=plugins.registry).model.backbone_calls == "per_resolution"


def test_per_view_calls_the_backbone_once_per_view(plugins):
    model = built(plugins, "per_view").model
    assert batches_seen(model, views_of(16, 16, 8, 8, 16)) == [(4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 8, 8),
                                                               (4, 3, 8, 8), (4, 3, 16, 16)]


def test_batchnorm_takes_its_statistics_from_what_each_call_holds(plugins):
    per_resolution, per_view = built(plugins, "per_resolution").model, built(plugins, "per_view").model
    reference = copy.deepcopy(per_resolution.backbone).train()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules())
    views = views_of(16, 16)
    together = per_resolution.encode(views, per_resolution.backbone, per_resolution.projector)
    apart = per_view.encode(views, per_view.backbone, per_view.projector)
    joint = copy.deepcopy(reference)(torch.cat(views)).chunk(2)
    for i, view in enumerate(views):
        assert torch.allclose(together.h[i], joint[i], atol=1e-6)
        assert torch.allclose(apart.h[i], copy.deepcopy(reference)(view), atol=1e-6)
        assert torch.allclose(apart.z[i], per_view.projector(apart.h[i]), atol=1e-6)
    assert not torch.allclose(together.h[0], apart.h[0], atol=1e-3)  # the choice changes the method's statistics


def test_an_ema_target_encodes_per_view_too(plugins):
    model = built(plugins, "per_view", {"target": {"name": "ema"}}).model
    views = views_of(16, 16)
    seen = []
    handle = model.target_backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        target = model.target.embed(model, views, model.encode(views, model.backbone, model.projector))
    finally:
        handle.remove()
    assert seen == [4, 4]
    reference = copy.deepcopy(model.target_backbone).train()
    assert torch.allclose(target.h[1], reference(views[1]), atol=1e-6)


def test_without_batch_statistics_both_compute_the_same(plugins):
    vit = {"backbone": {"name": "vit", "preset": "tiny", "depth": 1, "patch_size": 8}}
    views = views_of(16, 16, 8)
    branches = [model.encode(views, model.backbone, model.projector)
                for model in (built(plugins, calls, vit).model for calls in ("per_resolution", "per_view"))]
    for a, b in zip(branches[0].z, branches[1].z, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_misspelt_choice_names_the_yaml_path_and_the_choices(plugins):
    with pytest.raises(ConfigError) as error:
        tiny_pipeline({"model": {"backbone_calls": "per_views"}}, registry=plugins.registry)
    assert "model.backbone_calls" in str(error.value)
    assert "per_resolution" in str(error.value) and "per_view" in str(error.value)
    with pytest.raises(ConfigError, match="backbone_calls"):
        tiny_pipeline({"model": {"backbone_call": "per_view"}}, registry=plugins.registry)


def test_a_run_keeps_its_choice_and_resumes_only_with_it(tmp_path):
    run_dir = tmp_path / "run"
    tiny_run({"model": {"backbone_calls": "per_view"}}, steps=2, run_dir=run_dir)
    saved = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
    assert saved["model"] == {"backbone_calls": "per_view"}
    with pytest.raises(CheckpointError, match="model.backbone_calls: 'per_view' -> 'per_resolution'"):
        tiny_run(steps=3, run_dir=run_dir, resume=True)
    tiny_run({"model": {"backbone_calls": "per_view"}}, steps=3, run_dir=run_dir, resume=True)


def test_a_pipeline_saved_before_the_setting_existed_resumes_as_per_resolution(plugins):
    current = tiny_pipeline(registry=plugins.registry).to_dict()
    saved = {key: value for key, value in current.items() if key != "model"}
    assert pipeline_differences(saved, current) == []
    per_view = tiny_pipeline({"model": {"backbone_calls": "per_view"}}, registry=plugins.registry).to_dict()
    assert pipeline_differences(saved, per_view) == ["model.backbone_calls: 'per_resolution' -> 'per_view'"]
