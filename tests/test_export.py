"""``jef export``: a trained backbone as a plain state_dict that torchvision loads without jef."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

from jef.cli import main
from jef.tools.export import ExportError, export_backbone, load_exported, open_run
from jef.plugins import load_plugins
from jef.testing import tiny_run

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
NO_KNN = {"eval": {"knn": {"enabled": False}}}


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


@pytest.fixture(scope="module")
def resnet_run(plugins, tmp_path_factory):
    """One step of a ResNet-18 with the small-image stem (the stem torchvision users must rebuild)."""
    return tiny_run({"backbone": {"name": "resnet18", "small_images": True}, **NO_KNN}, steps=1, plugins=plugins,
                    run_dir=tmp_path_factory.mktemp("resnet_run")).run_dir


@pytest.fixture(scope="module")
def opened(resnet_run, plugins):
    return open_run(resnet_run, plugins=plugins)


@pytest.fixture(scope="module")
def exported(resnet_run, plugins, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "exported"
    assert main(["export", str(resnet_run), "--output", str(out), "--format", "both"]) == 0
    return out


@pytest.fixture(scope="module")
def ema_run(plugins, tmp_path_factory):
    """A small_cnn run with an EMA target (BYOL/MoCo-style), for --target and non-torchvision backbones."""
    return tiny_run({"target": {"name": "ema", "momentum": 0.5}, **NO_KNN}, steps=2, plugins=plugins,
                    run_dir=tmp_path_factory.mktemp("ema_run")).run_dir


def docs_snippet() -> str:
    """The ``load_backbone.py`` block of docs/export.md."""
    match = re.search(r'```python title="load_backbone.py"\n(.*?)```', DOCS.read_text(encoding="utf-8"), re.S)
    assert match, "docs/export.md lost its load_backbone.py example"
    return match.group(1)


def readme_snippet(directory: Path) -> str:
    match = re.search(r"## Load it without jef\n\n```python\n(.*?)```", (directory / "README.md").read_text(), re.S)
    assert match, "the export's README.md has no torchvision snippet"
    return match.group(1)


def assert_documented(actual: str) -> None:
    """docs/export.md shows this message (``...`` stands for what varies)."""
    shown = re.findall(r"```text\n(.*?)\n```", DOCS.read_text(encoding="utf-8"), re.S)
    for text in shown:
        pattern = r"[\s\S]*?".join(r"\s+".join(map(re.escape, part.split())) for part in text.split("..."))
        if re.search(pattern, actual):
            return
    pytest.fail(f"docs/export.md does not show this message:\n{actual}")


def test_keys_are_torchvisions_without_fc(exported):
    from safetensors.torch import load_file

    state = load_file(str(exported / "backbone.safetensors"))
    expected = {key for key in torchvision.models.resnet18().state_dict() if not key.startswith("fc.")}
    assert set(state) == expected
    pt = torch.load(exported / "backbone.pt", weights_only=True)  # tensors only: no pickle needed
    assert set(pt) == expected and all(torch.equal(pt[key], state[key]) for key in state)


def test_the_export_loads_into_torchvision_without_jef_and_gives_the_same_features(opened, exported, tmp_path):
    run = opened
    images = torch.rand(4, 3, 16, 16)
    torch.save(images, tmp_path / "images.pt")
    # A fresh interpreter in which `import jef` fails: the README's and the docs' code must do without it.
    code = textwrap.dedent("""
        import sys
        sys.modules["jef"] = None
        import torch
        namespace = {}
        exec(open(sys.argv[1]).read(), namespace)   # the README snippet, run in the export directory
        exec(open(sys.argv[2]).read(), namespace)   # docs/export.md's load_backbone
        images = torch.load(sys.argv[3], weights_only=True)
        with torch.no_grad():
            out = [namespace["model"](images), namespace["load_backbone"](".")(images)]
        assert not [name for name in sys.modules if name.split(".")[0] == "jef" and sys.modules[name] is not None]
        torch.save(out, sys.argv[4])
    """)
    (tmp_path / "readme.py").write_text(readme_snippet(exported))
    (tmp_path / "docs.py").write_text(docs_snippet())
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "readme.py"), str(tmp_path / "docs.py"),
                           str(tmp_path / "images.pt"), str(tmp_path / "out.pt")],
                          cwd=exported, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        expected = run.backbone(images)
    for features in torch.load(tmp_path / "out.pt", weights_only=True):
        assert features.shape == (4, 512)
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_backbone_json_says_what_the_weights_are_and_how_to_rebuild_them(exported, resnet_run):
    info = json.loads((exported / "backbone.json").read_text())
    assert info["weights"] == "online backbone" and info["step"] == 1 and info["run"] == str(resnet_run)
    assert info["backbone"]["name"] == "resnet18" and info["backbone"]["options"]["small_images"] is True
    assert (info["in_channels"], info["out_dim"], info["files"]) == (3, 512, ["backbone.safetensors", "backbone.pt"])
    assert info["torchvision"]["constructor"] == "torchvision.models.resnet18"
    assert "maxpool = torch.nn.Identity()" in info["torchvision"]["changes"]
    assert info["input"]["size"] == 16 and len(info["input"]["normalize"]["mean"]) == 3
    assert any("EMA target" in item for item in info["not_exported"])
    readme = (exported / "README.md").read_text()
    assert "Load it without jef" in readme and "Not exported: projector" in readme


def test_other_backbones_need_jef_and_the_ema_target_can_be_exported(ema_run, plugins, tmp_path, capsys):
    run = open_run(ema_run, plugins=plugins)
    online, target = run.backbone, run.built.model.target_backbone
    assert main(["export", str(ema_run), "--output", str(tmp_path / "teacher"), "--target"]) == 0
    assert "wrote the EMA target backbone 'small_cnn'" in capsys.readouterr().out
    info = json.loads((tmp_path / "teacher" / "backbone.json").read_text())
    assert info["torchvision"] is None and info["weights"].startswith("EMA target")
    readme = (tmp_path / "teacher" / "README.md").read_text()
    assert "needs jef and the plugin" in readme and "Load it without jef" not in readme
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        rebuilt = load_exported(tmp_path / "teacher", plugins=plugins)(images)
        torch.testing.assert_close(rebuilt, target(images))
        assert not torch.allclose(rebuilt, online(images))  # two steps at momentum 0.5: the teacher differs


def test_target_without_an_ema_target_is_refused(resnet_run, tmp_path, capsys):
    assert main(["export", str(resnet_run), "--output", str(tmp_path), "--target"]) == 2
    err = capsys.readouterr().err
    assert "this run's target is 'shared'" in err and "drop --target" in err
    assert_documented(err)
    assert not list(tmp_path.iterdir())


def test_existing_files_are_kept_unless_forced(resnet_run, exported, plugins, capsys):
    from safetensors.torch import load_file

    before = load_file(str(exported / "backbone.safetensors"))
    assert main(["export", str(resnet_run), "--output", str(exported)]) == 2
    assert "already exist(s); pass --force to overwrite" in capsys.readouterr().err
    assert main(["export", str(resnet_run), "--output", str(exported), "--format", "both", "--force"]) == 0
    after = load_file(str(exported / "backbone.safetensors"))  # same run, same weights
    assert set(after) == set(before) and all(torch.equal(after[key], before[key]) for key in before)
    assert not [p for p in exported.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_missing_runs_and_bad_formats_are_explained(opened, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no such run directory or checkpoint" in err
    assert_documented(err.replace(str(tmp_path / "nowhere"), "runs/nowhere"))
    with pytest.raises(ExportError, match="unknown export format 'onnx'; choose one of safetensors, torch, both"):
        export_backbone(opened, tmp_path, fmt="onnx")


@pytest.mark.parametrize("small_images,channels", [(False, 1), (True, 1), (False, 3)])
def test_the_documented_stem_changes_rebuild_every_resnet_stem(small_images, channels):
    from jef.builtin.backbones import ResNetOptions, build_resnet18
    from jef.components import RunContext
    from jef.tools.export import resnet_changes

    backbone = build_resnet18(ResNetOptions(small_images=small_images), RunContext(in_channels=channels)).eval()
    model = torchvision.models.resnet18(weights=None)
    for change in resnet_changes(small_images, channels):  # what backbone.json and the README tell users to do
        exec(f"model.{change}", {"torch": torch, "model": model})
    model.load_state_dict(backbone.state_dict())  # strict
    images = torch.rand(2, channels, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), backbone(images))


def test_a_torch_only_export_loads_with_weights_only(opened, tmp_path, monkeypatch):
    run = opened
    export_backbone(run, tmp_path, fmt="both")
    export_backbone(run, tmp_path, fmt="torch", force=True)  # replaces the export: no stale safetensors left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "backbone.json", "backbone.pt"]
    snippet = readme_snippet(tmp_path)
    assert 'torch.load("backbone.pt", weights_only=True)' in snippet and "safetensors" not in snippet
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(snippet, namespace)
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"](images), run.backbone(images))
