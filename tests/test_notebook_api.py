"""``jef.run(...)`` from a notebook: pipelines as mappings, modules and datasets made in Python, the result."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import jef
from jef.registry import BuildError
from jef.data.wrapped import splits_from_datasets
from jef.run.checkpoint import load_checkpoint
from jef.testing import TINY_SETTINGS

SMALL = {"train": {"batch_size": 16, "max_steps": 2, "progress": False, "tensorboard": False, "log_every": 1},
         "projector": {"dims": [16, 8]}, "eval": {"knn": {"k": 5}}}
NET_SOURCE = textwrap.dedent("""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

        def forward(self, x):
            return self.features(x)
""")


@pytest.fixture
def net_module(tmp_path, monkeypatch):
    """A backbone class defined in an importable module, as a notebook user's own file would be."""
    (tmp_path / "user_nets.py").write_text(NET_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("user_nets")
    yield module
    sys.modules.pop("user_nets", None)


def _datasets(n_train=64, n_test=32, size=16):
    images = torch.rand(n_train + n_test, 1, size, size, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n_train + n_test) % 4
    return TensorDataset(images[:n_train], labels[:n_train]), TensorDataset(images[n_train:], labels[n_train:])


def test_a_mapping_trains_into_runs_method_and_the_result_reads_as_its_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = jef.run({**TINY_SETTINGS, **SMALL, "method": "simclr"}, ["train.max_steps=3"], cpu=True)
    assert result.run_dir == tmp_path / "runs" / "simclr" or result.run_dir.resolve() == (tmp_path / "runs/simclr")
    assert dict(result) == result.metrics and "knn_top1" in result and "loss" in sorted(result)
    assert result.pipeline.method.name == "simclr" and result.pipeline.train.max_steps == 3
    assert [row["step"] for row in result.history() if "loss" in row] == [1, 2, 3]
    # The backbone is the trained one: the checkpoint's weights, not a fresh initialisation.
    saved = load_checkpoint(result.run_dir / "checkpoint.pt")["model"]
    trained = {f"backbone.{key}": value for key, value in result.backbone.state_dict().items()}
    assert trained and all(torch.equal(value, saved[key]) for key, value in trained.items())
    assert not result.backbone.training


def test_a_resolved_pipeline_and_a_file_are_accepted_too(tmp_path):
    pipeline = jef.load_pipeline("examples/demo.yaml", [
        "data={name: synthetic, train_size: 64, test_size: 32, image_size: 16, num_classes: 4}",
        "backbone.width=8", "train.batch_size=16", "train.max_steps=1", "train.progress=false",
        "train.tensorboard=false", "eval.knn.k=5", "eval.linear.enabled=false", "eval.baselines=[]"])
    result = jef.run(pipeline, ["train.max_steps=2"], run_dir=tmp_path / "a", cpu=True)
    assert result.pipeline.train.max_steps == 2 and result.pipeline.source.endswith("demo.yaml")
    with pytest.raises(TypeError, match="expected a pipeline file, a mapping or a jef.config.Pipeline, got int"):
        jef.run(3)


def test_a_module_and_datasets_from_python_train_and_reopen_in_another_process(tmp_path, net_module):
    train, test = _datasets()
    net = net_module.Net()
    before = {key: value.clone() for key, value in net.state_dict().items()}
    run_dir = tmp_path / "run"
    result = jef.run({**SMALL, "method": "simclr"}, backbone=net, dataset=train, test_dataset=test, num_classes=4,
                     run_dir=run_dir, cpu=True)
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())  # jef trained a copy
    assert result.pipeline.backbone.name == "python_module" and result.pipeline.data.name == "python_dataset"
    assert isinstance(result.backbone, net_module.Net) and result.backbone.out_dim == 8  # measured: it had none
    assert 0.0 <= result["knn_top1"] <= 1.0
    assert (run_dir / "backbone_module.pt").is_file()
    images = test[0][0].unsqueeze(0)
    expected = result.backbone(images)
    # Another process, another session: the module's class imported again, the datasets passed again.
    script = textwrap.dedent(f"""
        import torch, jef
        from torch.utils.data import TensorDataset
        from jef.data.wrapped import splits_from_datasets
        images = torch.rand(96, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        labels = torch.arange(96) % 4
        splits = splits_from_datasets(TensorDataset(images[:64], labels[:64]), TensorDataset(images[64:], labels[64:]))
        run = jef.load_run({str(run_dir)!r}, splits=splits)
        torch.save(run.backbone(images[64:65]), {str(tmp_path / "out.pt")!r})
        try:
            jef.load_run({str(run_dir)!r})
        except Exception as error:
            print(type(error).__name__, error)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert torch.allclose(torch.load(tmp_path / "out.pt"), expected, atol=1e-6)
    assert "ConfigError" in done.stdout and "which are not saved with the run" in done.stdout
    assert "jef.load_run(run_dir, splits=" in done.stdout


def test_a_module_that_does_not_return_features_is_explained(tmp_path):
    train, test = _datasets()
    with pytest.raises(BuildError, match=r"building backbone 'python_module' .* must map \[B, C, H, W\] images to "
                                         r"\[B, d\] features, got \(2, 8, 8, 8\) for \[2, 1, 16, 16\]"):
        jef.run({**SMALL, "method": "simclr"}, backbone=nn.Conv2d(1, 8, 3, 2, 1), dataset=train, test_dataset=test,
                run_dir=tmp_path / "run", cpu=True)
    with pytest.raises(TypeError, match=r"jef.run\(backbone=...\): expected a torch.nn.Module, got str"):
        jef.run({**SMALL, "method": "simclr"}, backbone="resnet18")
    with pytest.raises(TypeError, match=r"test_dataset=...\) needs dataset=... too"):
        jef.run({**SMALL, "method": "simclr"}, test_dataset=test)


def test_samples_are_read_as_users_make_them():
    from PIL import Image

    square = Image.new("L", (8, 8), color=255)
    splits = splits_from_datasets([(square, 1), (square, 0)])
    image, label, index = splits.train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8) and int(image.max()) == 255
    assert (label, index, splits.num_classes, splits.channels, splits.image_size) == (1, 0, 2, 1, 8)
    floats = splits_from_datasets([(torch.full((3, 4, 4), 0.5), 2)], num_classes=5)
    assert int(floats.train[0][0][0, 0, 0]) == 128 and floats.num_classes == 5
    with pytest.raises(ValueError, match=r"sample 0: a float image must lie in \[0, 1\].*drop the Normalize"):
        splits_from_datasets([(torch.full((3, 4, 4), -1.0), 0)])
    with pytest.raises(ValueError, match=r"sample 0: jef trains on square images, got 4x6"):
        splits_from_datasets([(torch.zeros(3, 4, 6, dtype=torch.uint8), 0)])
    with pytest.raises(TypeError, match=r"expected the image as a tensor or a PIL image, got str"):
        splits_from_datasets([("cat.png", 0)])


def test_add_plugin_makes_a_notebook_component_usable_by_name(tmp_path):
    from jef.plugins import load_plugins

    plugins = load_plugins()

    class NotebookBackbones:
        @jef.hookimpl
        def jef_register_backbones(self, register):
            def build(options, ctx):
                net = nn.Sequential(nn.Conv2d(ctx.in_channels, 6, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
                net.out_dim = 6
                return net

            register("notebook_cnn", build, description="a CNN from a notebook")

    info = jef.add_plugin(NotebookBackbones(), plugins=plugins)
    assert info.name == "NotebookBackbones" and info.status == "ok"
    assert plugins.registry.get("backbone", "notebook_cnn").provenance.plugin == "NotebookBackbones"
    result = jef.run({**TINY_SETTINGS, **SMALL, "method": "simclr", "backbone": {"name": "notebook_cnn"}},
                     run_dir=tmp_path / "run", plugins=plugins, cpu=True)
    assert result.backbone.out_dim == 6
    with pytest.raises(ValueError, match="a plugin named 'NotebookBackbones' is loaded already; pass another name="):
        jef.add_plugin(NotebookBackbones(), plugins=plugins)
