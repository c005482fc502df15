"""``jef embed``: features of every image of a dataset or folder, from a trained run, to a file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from jef.cli import main
from jef.tools.embed import Embeddings, embed, load_embeddings, save_embeddings
from jef.evaluate import extract_features
from jef.tools.export import ExportError, open_run
from jef.plugins import load_plugins
from jef.testing import tiny_run

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


@pytest.fixture(scope="module")
def run_dir(plugins, tmp_path_factory):
    return tiny_run({"eval": {"knn": {"enabled": False}}}, steps=1, plugins=plugins,
                    run_dir=tmp_path_factory.mktemp("run")).run_dir


@pytest.fixture(scope="module")
def run(run_dir, plugins):
    return open_run(run_dir, plugins=plugins)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two classes of three PNGs of various sizes and modes (grey, RGBA, palette are converted)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, sizes in (("cat", [(20, 24), (16, 16), (30, 18)]), ("dog", [(17, 17), (40, 32), (16, 20)])):
        (root / name).mkdir()
        for i, (w, h) in enumerate(sizes):
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            image.convert(["RGB", "L", "RGBA"][i]).save(root / name / f"{i}.png")
    return root


def assert_documented(actual: str) -> None:
    """docs/export.md shows this message (``...`` stands for what varies)."""
    for text in re.findall(r"```text\n(.*?)\n```", DOCS.read_text(encoding="utf-8"), re.S):
        pattern = r"[\s\S]*?".join(r"\s+".join(map(re.escape, part.split())) for part in text.split("..."))
        if re.search(pattern, actual):
            return
    pytest.fail(f"docs/export.md does not show this message:\n{actual}")


def test_features_are_extract_features_of_the_eval_view(run, plugins):
    result = embed(run, "synthetic", split="all", registry=plugins.registry, progress=False)
    splits, eval_view = run.built.splits, run.built.augmenter.eval_view
    train, train_labels = extract_features(run.backbone, splits.train, eval_view)
    test, test_labels = extract_features(run.backbone, splits.test, eval_view)
    # The run's own dataset with the run's options: 64 training and 32 test images, not synthetic's defaults.
    assert result.features.shape == (96, run.backbone.out_dim)
    torch.testing.assert_close(result.features, torch.cat([train, test]))
    assert torch.equal(result.labels, torch.cat([train_labels, test_labels]))
    assert torch.equal(result.indices, torch.cat([torch.arange(64), torch.arange(32)]))
    assert torch.equal(result.split, torch.cat([torch.zeros(64), torch.ones(32)]).to(torch.uint8))
    assert result.file_names is None
    meta = result.metadata
    assert (meta["step"], meta["layer"], meta["split"], meta["splits"]) == (1, "backbone", "all", ["train", "test"])
    assert meta["dataset"]["slot"]["name"] == "synthetic" and meta["dataset"]["slot"]["train_size"] == 64
    assert meta["classes"][:2] == ["horizontal stripes", "vertical stripes"]


def test_the_projector_layer_gives_the_embeddings_z(run, plugins):
    result = embed(run, "synthetic", split="test", layer="projector", registry=plugins.registry, progress=False)
    features, _ = extract_features(run.backbone, run.built.splits.test, run.built.augmenter.eval_view)
    with torch.no_grad():
        torch.testing.assert_close(result.features, run.built.model.projector(features))
    assert result.split is None and result.metadata["layer"] == "projector"


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt"])
def test_every_format_holds_tensors_file_names_and_metadata(suffix, tmp_path):
    names = ["a/0.png", "b/1.png", "b/2.png"]
    written = Embeddings(torch.randn(3, 4), torch.tensor([0, 1, -1]), torch.tensor([0, 1, 2]),
                         torch.tensor([0, 0, 1], dtype=torch.uint8), names, {"step": 7, "layer": "backbone"})
    path = save_embeddings(written, tmp_path / f"features{suffix}")
    # Each format read by its own library, without jef and without pickle.
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
            header = {key: json.loads(value) for key, value in handle.metadata().items()}
        assert header["file_names"] == names and header["step"] == 7
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            raw = {key: torch.from_numpy(arrays[key]) for key in ("features", "labels", "indices", "split")}
            assert arrays["file_names"].tolist() == names and json.loads(arrays["metadata"].item())["step"] == 7
    else:
        payload = torch.load(path, weights_only=True)
        raw = {key: payload[key] for key in ("features", "labels", "indices", "split")}
        assert payload["file_names"] == names and payload["metadata"]["step"] == 7
    assert all(torch.equal(raw[key], value) for key, value in written.tensors().items())
    read = load_embeddings(path)
    assert read.file_names == names and read.metadata == written.metadata
    assert all(torch.equal(getattr(read, key), value) for key, value in written.tensors().items())


def test_an_image_folder_keeps_file_names_and_folder_labels(run_dir, run, photos, plugins, tmp_path, capsys):
    from jef.components import RunContext
    from jef.data.folder import FolderOptions, build_image_folder

    out = tmp_path / "photos.safetensors"
    assert main(["embed", str(run_dir), str(photos), "--output", str(out), "--batch-size", "4"]) == 0
    wrote = f"wrote 6 x {run.backbone.out_dim} backbone features (labels, indices, file names)"
    assert wrote in capsys.readouterr().out
    result = load_embeddings(out)
    assert result.file_names == [str(photos / c / f"{i}.png") for c in ("cat", "dog") for i in range(3)]
    assert result.labels.tolist() == [0, 0, 0, 1, 1, 1] and result.metadata["classes"] == ["cat", "dog"]
    # The folder is loaded at the run's channels and image size, and goes through the same eval view.
    folder = build_image_folder(FolderOptions(root=str(photos), image_size=16, channels=3), RunContext()).train
    expected, _ = extract_features(run.backbone, folder, run.built.augmenter.eval_view)
    torch.testing.assert_close(result.features, expected)


def test_a_flat_folder_is_unlabelled_and_a_yaml_data_slot_is_used_as_written(run, photos, plugins, tmp_path):
    flat = embed(run, str(photos / "dog"), registry=plugins.registry, progress=False)
    assert flat.labels.tolist() == [-1, -1, -1] and flat.file_names[0].endswith("dog/0.png")
    (tmp_path / "data.yaml").write_text("data: {name: synthetic, train_size: 8, test_size: 4, image_size: 16}\n")
    result = embed(run, str(tmp_path / "data.yaml"), split="test", registry=plugins.registry, progress=False)
    assert result.features.shape[0] == 4 and result.metadata["dataset"]["slot"]["test_size"] == 4


def test_messages_a_user_reads(run_dir, run, photos, plugins, tmp_path, capsys):
    def fails(*argv):
        assert main(["embed", *argv]) == 2
        return capsys.readouterr().err

    err = fails(str(run_dir), "synthetic", "--output", "features.csv")
    assert "unknown format '.csv'" in err
    assert_documented(err)
    (tmp_path / "features.safetensors").write_bytes(b"keep me")
    err = fails(str(run_dir), "synthetic", "--output", str(tmp_path / "features.safetensors"))
    assert_documented(err.replace(str(tmp_path) + "/", ""))
    assert (tmp_path / "features.safetensors").read_bytes() == b"keep me"
    assert "no such run directory" in fails(str(tmp_path / "nowhere"), "synthetic", "-o", str(tmp_path / "a.pt"))
    (tmp_path / "empty").mkdir()
    err = fails(str(run_dir), str(tmp_path / "empty"), "-o", str(tmp_path / "a.pt"))
    assert_documented(err.replace(str(tmp_path / "empty"), "photos"))
    err = fails(str(run_dir), str(photos), "--split", "test", "-o", str(tmp_path / "a.pt"))
    assert_documented(err.replace(str(photos), "photos"))
    assert "unknown dataset 'synthetik'; did you mean 'synthetic'?" in fails(str(run_dir), "synthetik", "-o", "a.pt")
    (tmp_path / "nodata.yaml").write_text("backbone: {name: small_cnn}\n")
    assert "no `data:` slot" in fails(str(run_dir), str(tmp_path / "nodata.yaml"), "-o", str(tmp_path / "a.pt"))
    with pytest.raises(ExportError) as error:
        embed(run, "fashion_mnist_mini", registry=plugins.registry)
    assert_documented(f"jef: error: {error.value}")
    assert not (tmp_path / "a.pt").exists()
