"""``jef export``: a trained backbone as a plain state_dict and its architecture, loadable without jef."""

from __future__ import annotations

import ast
import importlib.util
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
from jef.hookspecs import hookimpl
from jef.tools.export import ExportError, export_backbone, load_exported, open_run
from jef.tools.standalone import architecture
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
    """The first code block of the export README's "Load it without jef" (the `architecture`'s)."""
    match = re.search(r"## Load it without jef\n\n(?:[^#`][^\n]*\n\n)?```python\n(.*?)```",
                      (directory / "README.md").read_text(), re.S)
    assert match, "the export's README.md has no code that loads it without jef"
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


#: A fresh interpreter in which jef and its plugins cannot be imported: for each export, the README's first
#: snippet (run in the export directory) and docs/export.md's load_backbone must build the network.
WITHOUT_JEF = textwrap.dedent("""
    import importlib.abc
    import json
    import os
    import sys


    class NoJef(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "jef" or name.startswith("jef_plugin_"):
                raise ImportError(f"{name} cannot be imported: an export must load without jef")
            return None


    sys.meta_path.insert(0, NoJef())
    import torch

    jobs, docs = json.load(open(sys.argv[1])), open(sys.argv[2]).read()
    out = {}
    for job in jobs:
        os.chdir(job["directory"])
        readme, library = {}, {}
        exec(job["readme"], readme)
        exec(docs, library)
        inputs = torch.load(job["inputs"], weights_only=True)
        with torch.no_grad():
            out[job["name"]] = [readme["model"](inputs), library["load_backbone"](".")(inputs)]
    assert not [name for name in sys.modules if name.split(".")[0] == "jef" or name.startswith("jef_plugin_")]
    torch.save(out, sys.argv[3])
""")
#: What backbone.py may import: torch and the standard library's typing helpers, never jef.
STANDALONE_IMPORTS = {"__future__", "math", "collections.abc", "typing", "torch", "torch.nn.functional"}
TINY_VIT = {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4}
TINY_TIMM = {"name": "timm", "model": "vit_tiny_patch16_224", "image_size": 16,
             "kwargs": {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}}


def _exported_run(plugins, tmp_path, name, pipeline, *args):
    run_dir = tiny_run({**pipeline, **NO_KNN}, steps=1, plugins=plugins, run_dir=tmp_path / f"{name}_run").run_dir
    assert main(["export", str(run_dir), "--output", str(tmp_path / name), *args]) == 0
    return open_run(run_dir, plugins=plugins).backbone, tmp_path / name


def _text_export(directory: Path):
    """A bidirectional, mean-pooled text_transformer (an encoder's backbone, which `jef export` does not reach),
    written as export_backbone writes its files."""
    from safetensors.torch import save_file

    from jef.builtin.text import TextOptions, build_text_transformer
    from jef.components import RunContext

    torch.manual_seed(0)
    module = build_text_transformer(TextOptions(vocab_size=40, context_length=8, width=16, depth=2, heads=2,
                                                causal=False, pool="mean"), RunContext(in_channels=3)).eval()
    arch, source = architecture(module)
    directory.mkdir()
    (directory / "backbone.py").write_text(source)
    save_file({key: value.contiguous() for key, value in module.state_dict().items()},
              str(directory / "backbone.safetensors"))
    info = {"architecture": arch, "files": ["backbone.safetensors"]}
    (directory / "backbone.json").write_text(json.dumps(info))
    from jef.tools.standalone import architecture_snippet

    (directory / "README.md").write_text(f"## Load it without jef\n\n```python\n{architecture_snippet(info)}```\n")
    return module, directory


@pytest.fixture(scope="module")
def every_backbone(opened, exported, ema_run, plugins, tmp_path_factory):
    """``{name: (the backbone as jef has it, its export directory, an input)}`` for every built-in backbone."""
    tmp = tmp_path_factory.mktemp("every_backbone")
    images = torch.rand(3, 3, 16, 16)
    cases = {"resnet18 (CIFAR stem, safetensors and torch)": (opened.backbone, exported, images)}
    resnet50 = _exported_run(plugins, tmp, "resnet50", {"backbone": {"name": "resnet50"}, "data": {"channels": 1}},
                             "--format", "torch")
    cases["resnet50 (1 channel, torch file)"] = (*resnet50, torch.rand(3, 1, 32, 32))
    assert main(["export", str(ema_run), "--output", str(tmp / "small_cnn"), "--target"]) == 0
    cases["small_cnn (EMA target)"] = (open_run(ema_run, plugins=plugins).built.model.target_backbone,
                                       tmp / "small_cnn", images)
    vit = {**TINY_VIT, "pool": "mean", "layer_scale": 0.1, "pos_embed": "sincos", "mask_token": True}
    cases["vit (mean pooling, layer scale, sin-cos, mask token)"] = (
        *_exported_run(plugins, tmp, "vit", {"backbone": vit}), images)
    cases["text_transformer"] = (*_text_export(tmp / "text"), torch.tensor([[5, 9, 3, 0, 0], [7, 1, 2, 30, 4],
                                                                              [6, 0, 0, 0, 0]]))
    if importlib.util.find_spec("jef_plugin_timm") is not None:  # installed with plugins/jef-plugin-timm
        import jef_plugin_timm

        with_timm = load_plugins(entry_points=False, extra=(("timm", jef_plugin_timm),))
        cases["timm (jef-plugin-timm)"] = (*_exported_run(with_timm, tmp, "timm", {"backbone": TINY_TIMM}), images)
    return cases


def test_every_builtin_backbone_loads_without_jef_and_gives_the_same_features(every_backbone, tmp_path):
    jobs = []
    for i, (name, (module, directory, inputs)) in enumerate(every_backbone.items()):
        torch.save(inputs, tmp_path / f"inputs{i}.pt")
        jobs.append({"name": name, "directory": str(directory), "inputs": str(tmp_path / f"inputs{i}.pt"),
                     "readme": readme_snippet(directory)})
        info = json.loads((directory / "backbone.json").read_text())
        if info["architecture"]["library"] == "python":  # jef's own module: its code, importing torch only
            tree = ast.parse((directory / "backbone.py").read_text())
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
            assert imported <= STANDALONE_IMPORTS, name
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "docs.py").write_text(docs_snippet())
    done = subprocess.run([sys.executable, "-c", WITHOUT_JEF, str(tmp_path / "jobs.json"), str(tmp_path / "docs.py"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    libraries = set()
    for name, (module, directory, inputs) in every_backbone.items():
        libraries.add(json.loads((directory / "backbone.json").read_text())["architecture"]["library"])
        with torch.no_grad():
            expected = module.eval()(inputs)
        for features in out[name]:  # the README's code, then the docs' load_backbone
            torch.testing.assert_close(features, expected, rtol=0, atol=1e-6, msg=name)
    assert libraries >= {"python", "torchvision"}


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
    assert info["architecture"] == {"library": "python", "file": "backbone.py", "class": "SmallCNN",
                                    "kwargs": {"in_channels": 3, "width": 8, "first_stride": 2},
                                    "key_prefix": "", "drop_keys": []}
    readme = (tmp_path / "teacher" / "README.md").read_text()
    assert "backbone.SmallCNN(in_channels=3, width=8, first_stride=2)" in readme and "needs jef" not in readme
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


class OwnCNN(torch.nn.Module):
    """A plugin's own backbone: no library but its plugin knows it."""

    def __init__(self, channels):
        super().__init__()
        self.conv, self.out_dim = torch.nn.Conv2d(channels, 8, 3), 8

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


class OwnBackbone:
    @hookimpl
    def jef_register_backbones(self, register):
        register("own_cnn", lambda options, ctx: OwnCNN(ctx.in_channels), description="a plugin's own backbone")


def test_a_plugins_own_backbone_has_no_architecture_and_needs_jef(tmp_path):
    plugins = load_plugins(entry_points=False, extra=(("own", OwnBackbone()),))
    run_dir = tiny_run({"backbone": {"name": "own_cnn"}, **NO_KNN}, steps=1, plugins=plugins,
                       run_dir=tmp_path / "run").run_dir
    export_backbone(open_run(run_dir, plugins=plugins), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "backbone.json",
                                                                    "backbone.safetensors"]
    info = json.loads((tmp_path / "out" / "backbone.json").read_text())
    assert info["architecture"] is None and info["torchvision"] is None and info["timm"] is None
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "needs jef and the plugin" in readme and "Load it without jef" not in readme


def test_force_removes_a_backbone_py_that_no_longer_belongs_to_the_export(ema_run, resnet_run, tmp_path):
    export_backbone(open_run(ema_run), tmp_path)  # small_cnn: backbone.py
    assert (tmp_path / "backbone.py").is_file()
    with pytest.raises(ExportError, match="already exist"):
        export_backbone(open_run(resnet_run), tmp_path)
    export_backbone(open_run(resnet_run), tmp_path, force=True)  # a ResNet: torchvision builds it
    assert not (tmp_path / "backbone.py").exists()
