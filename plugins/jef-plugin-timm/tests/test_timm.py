"""The timm adapter: discovery, tiny timm models as backbones, weights from a local file, clear errors."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from jef.testing import (
    TINY_PIPELINE, assert_discovered, build_component, check_backbone, installed_plugins, tiny_run,
)

#: A ViT small enough for the CPU: 16 px images in 4 px patches, 2 blocks 32 wide.
TINY_VIT = {"model": "vit_tiny_patch16_224", "image_size": 16,
            "kwargs": {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}}


@pytest.fixture(scope="module")
def plugins():
    return installed_plugins("timm")


def test_plugin_is_discovered_through_its_entry_point(plugins):
    assert_discovered(plugins, "timm", {"backbone": ["timm"]})


def test_a_tiny_vit_and_a_convnet_keep_the_backbone_contract(plugins):
    vit = build_component(plugins, "backbone", "timm", TINY_VIT)
    assert vit.out_dim == 32
    check_backbone(vit, name="timm vit")
    convnet = build_component(plugins, "backbone", "timm", {"model": "test_convnext"})
    check_backbone(convnet, name="timm test_convnext", size=64)  # it downsamples 32 times
    assert convnet(torch.randn(2, 3, 64, 64)).shape == (2, convnet.out_dim)


def test_the_data_s_channels_reach_the_model(plugins):
    from jef.components import RunContext

    gray = build_component(plugins, "backbone", "timm", TINY_VIT,
                           ctx=RunContext(in_channels=1, image_size=16))
    assert gray(torch.randn(2, 1, 16, 16)).shape == (2, 32)


def test_weights_load_from_a_local_file_without_the_classifier(plugins, tmp_path):
    torch.manual_seed(0)
    # A classifier-bearing model, as a pretrained checkpoint would be saved.
    source = timm.create_model(TINY_VIT["model"], num_classes=10, img_size=16, **TINY_VIT["kwargs"])
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    loaded = build_component(plugins, "backbone", "timm", {**TINY_VIT, "pretrained_file": str(path)})
    torch.manual_seed(1)
    fresh = build_component(plugins, "backbone", "timm", TINY_VIT)
    images = torch.randn(2, 3, 16, 16)
    source.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), source(images))
        assert not torch.allclose(fresh(images), loaded(images))


def test_a_run_trains_with_a_timm_backbone(plugins):
    result = tiny_run({"backbone": {"name": "timm", **TINY_VIT}}, steps=2, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])


@pytest.mark.parametrize(("backbone", "message"), [
    ({"model": "vit_tinny_patch16_224"}, r"backbone.model: must be a timm model name \(close names "
                                         r"vit_tiny_patch16_224.*got 'vit_tinny_patch16_224'"),
    ({"kwargs": {"pretrained": True}}, r"backbone.kwargs: cannot hold pretrained .*nothing is downloaded"),
    ({"pretrained_file": "nowhere.pth"}, r"backbone.pretrained_file: must be an existing local "
                                         r".safetensors or .pth file \(nothing is downloaded\), got 'nowhere.pth'"),
])
def test_bad_options_say_what_to_do(plugins, backbone, message):
    from jef.config import ConfigError, resolve

    with pytest.raises(ConfigError, match=message):
        resolve({**TINY_PIPELINE, "backbone": {"name": "timm", **backbone}}, registry=plugins.registry)
