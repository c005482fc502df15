"""``jef export`` of a ViT: the README's code loads it from backbone.py, timm and torchvision without jef, with the
same features."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from jef.cli import main
from jef.components import RunContext
from jef.config.validate import build_options
from jef.plugins import load_plugins
from jef.testing import tiny_run
from jef.tools.export import load_exported, open_run
from jef.tools.rebuild import backbone_recipes

timm = pytest.importorskip("timm")  # installed with plugins/jef-plugin-timm, as `make test` does

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
TINY_VIT = {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4}
NO_KNN = {"eval": {"knn": {"enabled": False}}}
# A fresh interpreter in which `import jef` fails: each snippet, run in the export directory, must build `model`.
WITHOUT_JEF = textwrap.dedent("""
    import sys
    sys.modules["jef"] = None
    import torch
    images = torch.load(sys.argv[1], weights_only=True)
    out = []
    for path in sys.argv[3:]:
        namespace = {}
        exec(open(path).read(), namespace)
        with torch.no_grad():
            out.append(namespace["model"](images))
    torch.save(out, sys.argv[2])
""")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def export(plugins, tmp_path_factory, backbone, data=None, fmt="safetensors"):
    pipeline = {"backbone": {**TINY_VIT, **backbone}, **NO_KNN}
    if data:
        pipeline["data"] = data
    run_dir = tiny_run(pipeline, steps=1, plugins=plugins, run_dir=tmp_path_factory.mktemp("vit_run")).run_dir
    out = tmp_path_factory.mktemp("vit_export") / "exported"
    assert main(["export", str(run_dir), "--output", str(out), "--format", fmt]) == 0
    return open_run(run_dir, plugins=plugins), out


@pytest.fixture(scope="module")
def cls_export(plugins, tmp_path_factory):
    """CLS pooling, learned positions and a mask token: torchvision and timm can both load it."""
    return export(plugins, tmp_path_factory, {"mask_token": True})


@pytest.fixture(scope="module")
def mean_export(plugins, tmp_path_factory):
    """Mean pooling, layer scale and sin-cos positions on 1-channel images, as a torch file: timm only."""
    return export(plugins, tmp_path_factory, {"pool": "mean", "layer_scale": 0.1, "pos_embed": "sincos"},
                  data={"channels": 1}, fmt="torch")


def readme_blocks(directory: Path) -> list[str]:
    readme = (directory / "README.md").read_text()
    section = readme.split("## Load it without jef\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def features_without_jef(directory: Path, snippets: list[str], images: torch.Tensor, tmp_path: Path) -> list:
    paths = []
    for i, code in enumerate(snippets):
        paths.append(tmp_path / f"snippet{i}.py")
        paths[-1].write_text(code)
    torch.save(images, tmp_path / "images.pt")
    done = subprocess.run([sys.executable, "-c", WITHOUT_JEF, str(tmp_path / "images.pt"), str(tmp_path / "out.pt"),
                           *map(str, paths)], cwd=directory, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return torch.load(tmp_path / "out.pt", weights_only=True)


def test_the_readme_loads_a_cls_vit_into_timm_and_torchvision_with_the_same_features(cls_export, tmp_path):
    run, out = cls_export
    blocks = readme_blocks(out)  # backbone.py (torch alone), timm, torchvision
    assert len(blocks) == 3 and "model = backbone.ViT(image_size=16, patch_size=4" in blocks[0]
    assert "VisionTransformer(img_size=16" in blocks[1]
    assert "torchvision.models.VisionTransformer(image_size=16, patch_size=4" in blocks[2]
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = run.backbone(images)
    for features in features_without_jef(out, blocks, images, tmp_path):
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_a_mean_pooled_layer_scaled_vit_loads_into_timm_and_the_readme_says_why_not_torchvision(mean_export,
                                                                                                 tmp_path):
    run, out = mean_export
    info = json.loads((out / "backbone.json").read_text())
    assert info["torchvision"] is None
    assert info["timm"]["kwargs"] | {"mlp_ratio": 4.0} == {
        "img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 0, "global_pool": "avg", "fc_norm": False,
        "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0, "init_values": 0.1}
    assert "neither mean pooling nor layer scale" in (out / "README.md").read_text()
    blocks = readme_blocks(out)  # backbone.py (torch alone), timm
    assert len(blocks) == 2 and all('torch.load("backbone.pt", weights_only=True)' in block for block in blocks)
    assert "layer_scale=0.1, pos_embed='sincos'" in blocks[0]
    images = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        expected = run.backbone(images)
    for features in features_without_jef(out, blocks, images, tmp_path):
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_a_paper_sized_vit_names_timms_model_and_create_model_builds_the_same_network(plugins):
    slot = plugins.registry.get("backbone", "vit")
    options = build_options(slot.options, {"preset": "small", "patch_size": 16}, "backbone")
    module = slot.factory(options, RunContext(in_channels=3, image_size=224))
    fake_slot = type("Slot", (), {"entry": slot, "options": options})()
    recipe = backbone_recipes(fake_slot, module, 3)["timm"]
    assert recipe["model_name"] == "vit_small_patch16_224"
    made = timm.create_model(recipe["model_name"], pretrained=False, **recipe["create_model_kwargs"])
    made.load_state_dict(module.state_dict())  # strict: the named model has the same keys and shapes
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(made.eval()(images), module.eval()(images), rtol=1e-5, atol=1e-5)


def test_load_exported_rebuilds_the_vit_with_jef(cls_export, plugins):
    run, out = cls_export
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out, plugins=plugins)(images), run.backbone(images))


def test_the_docs_load_vit_function_loads_the_export_without_jef(cls_export, tmp_path):
    run, out = cls_export
    match = re.search(r'```python title="load_vit.py"\n(.*?)```', DOCS.read_text(encoding="utf-8"), re.S)
    assert match, "docs/export.md lost its load_vit.py example"
    calls = ['\nmodel = load_vit(".")\n', '\nmodel = load_vit(".", library="torchvision")\n']
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = run.backbone(images)
    for features in features_without_jef(out, [match.group(1) + call for call in calls], images, tmp_path):
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_renaming_to_torchvision_and_back_is_the_identity_on_every_vit_key(plugins):
    # The two tables (jef -> torchvision here, torchvision -> jef in jef.builtin.vit) are written
    # separately; a rule missing from either would make this round trip lose or rename a key.
    from jef.builtin.vit import ViT, convert_torchvision_state_dict
    from jef.tools.rebuild import TO_TORCHVISION_VIT

    state = ViT(32, patch_size=8, width=48, depth=2, heads=3).state_dict()

    def to_torchvision(key):
        for pattern, replacement in TO_TORCHVISION_VIT:
            if re.fullmatch(pattern, key):
                return re.sub(pattern, replacement, key)
        raise AssertionError(f"no torchvision name for {key}")

    renamed = {to_torchvision(k): v for k, v in state.items()}
    assert all(k.startswith(("class_token", "conv_proj", "encoder.")) for k in renamed)
    assert convert_torchvision_state_dict(renamed).keys() == state.keys()
