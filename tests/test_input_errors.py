"""Bad input met during a run reaches the user as one ``jef: error:`` line, not a traceback.

Each test runs ``jef train`` through :func:`jef.cli.main` on tiny data, as a user would.
"""

import io
import os
import re
import traceback
from pathlib import Path

import numpy as np
import pytest
from docs_text import assert_documented
import yaml
from PIL import Image

from jef.cli import main
from jef.config import merge
from jef.testing import TINY_PIPELINE


def _train(capsys, tmp_path, pipeline: dict, *overrides: str) -> tuple[int, str]:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    code = main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--cpu", *overrides])
    return code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("jef: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def photos_with_a_cut_file(tmp_path):
    """31 good images and one whose header is fine but whose pixel data stops halfway (passes the header check)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(31):
        pixels = np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(99).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    cut = folder / "cut.jpg"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return cut


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_that_fails_while_decoding_in_error_mode_is_one_line(tmp_path, capsys, one_thread,
                                                                    photos_with_a_cut_file, workers):
    pipeline = merge(TINY_PIPELINE, {
        "data": {"name": "image_folder", "root": str(photos_with_a_cut_file.parent), "image_size": 16,
                 "labels": "none", "on_bad_image": "error"},
        "train": {"num_workers": workers, "epochs": 1}})
    pipeline["data"] = {k: v for k, v in pipeline["data"].items() if k in
                        ("name", "root", "image_size", "labels", "on_bad_image")}
    code, err = _train(capsys, tmp_path, pipeline)
    line = _one_error_line(err)
    assert code == 2
    assert re.search(rf"cannot decode image {re.escape(str(photos_with_a_cut_file))}: OSError: image file is trunc",
                     line), line
    assert "data.on_bad_image: error" in line and "set on_bad_image: skip" in line
    assert ("in a DataLoader worker" in line) == (workers > 0)


@pytest.mark.parametrize(("key", "value"), [("optimizer.lr", "1.0e+300"), ("optimizer.weight_decay", "1.0e+300"),
                                            ("optimizer.trust_coefficient", "1.0e+39")])
def test_a_rate_beyond_float32_is_a_config_error_naming_its_path(tmp_path, capsys, key, value):
    code, err = _train(capsys, tmp_path, TINY_PIPELINE, f"train.{key}={value}")
    line = _one_error_line(err)
    assert code == 2 and f"train.{key}: must be at most 3.403e+38, the largest float32" in line, line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_rate_that_overflows_float32_once_scaled_names_the_rate_and_the_batch():
    from jef.run.optim import scaled_lr
    from jef.config.options import OptimizerOptions
    from jef.config.validate import ConfigError

    assert scaled_lr(OptimizerOptions(lr=3.0e38, scale_lr="none"), 512) == 3.0e38
    with pytest.raises(ConfigError, match=r"^train\.optimizer\.lr: 3e\+38 scaled \(linear\) for a global batch of "
                                          r"512 is 6e\+38, beyond the largest float32 .*set scale_lr: none"):
        scaled_lr(OptimizerOptions(lr=3.0e38), 512)


# --- the messages docs/troubleshooting.md shows ----------------------------------------------------

SPREAD = """
import torch
from jef import hookimpl

class Spread(torch.nn.Module):
    def forward(self, out):
        raise RuntimeError("the functional fails")

@hookimpl
def jef_register_functionals(register):
    register("spread", lambda options, ctx: Spread())

@hookimpl
def jef_register_monitors(register):
    register("watch", lambda options, ctx: object())  # selecting it selects the plugin: its run hooks run

@hookimpl
def jef_step_end(run, outputs, terms):
    if run.step == 2:
        1 / 0
"""



def test_the_messages_are_as_documented(tmp_path, capsys, monkeypatch, one_thread, photos_with_a_cut_file):
    from jef.components import RunContext
    from jef.data.folder import FolderOptions, build_image_folder
    from jef.run.optim import scaled_lr
    from jef.config.options import OptimizerOptions
    from jef.plugins import load_plugins
    from jef.testing import fake_distribution, tiny_run
    from jef.config.validate import ConfigError

    monkeypatch.chdir(tmp_path)
    cut = photos_with_a_cut_file.relative_to(tmp_path)
    splits = build_image_folder(FolderOptions(root="photos", image_size=16, on_bad_image="error"), RunContext())
    with pytest.raises(ConfigError) as error:
        splits.train[list(splits.train.paths).index(str(cut))]
    assert_documented("troubleshooting.md", "cannot decode image", f"jef: error: {error.value}")

    code, err = _train(capsys, tmp_path, {"method": "simclr", "data": {"name": "image_folder", "root": "gone"}})
    assert_documented("troubleshooting.md", "data.root: no such folder", _one_error_line(err).replace("gone", "photos"))

    os.symlink(tmp_path / "moved.jpg", "photos/moved.jpg")
    os.symlink(".", "photos/self")
    (tmp_path / "photos" / "cut.jpg").unlink()
    with pytest.warns(UserWarning, match="left out") as got:
        build_image_folder(FolderOptions(root="photos", image_size=16), RunContext(run_dir=Path("runs/photos")))
    assert_documented("troubleshooting.md", "left out", f"UserWarning: {got[0].message}")

    with pytest.raises(ConfigError) as error:
        scaled_lr(OptimizerOptions(lr=3.0e38), 512)
    assert_documented("troubleshooting.md", "beyond the largest float32", f"jef: error: {error.value}")

    with fake_distribution("jef-plugin-spread", SPREAD):
        plugins = load_plugins()
        with pytest.raises(ZeroDivisionError) as error:
            tiny_run({"monitors": [{"name": "watch"}]}, steps=3, plugins=plugins)
        assert_documented("troubleshooting.md", "jef: raised in hook", "".join(traceback.format_exception(error.value)))
        functionals = [{"name": "info_nce", "temperature": 0.5}, {"name": "spread"}]
        with pytest.raises(RuntimeError) as error:
            tiny_run({"functionals": functionals}, steps=2, plugins=plugins)
        assert_documented("troubleshooting.md", "jef: raised in functionals", "".join(traceback.format_exception(error.value)))
