"""``backbone.weights``: a backbone starts from a local state dict (jef.model.weights), on files the tests write."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import yaml

from jef.components import RunContext
from jef.config import resolve
from jef.config.pipeline import merge
from jef.config.validate import ConfigError
from jef.model.build import build, check
from jef.model.weights import WeightsError, load_weights, match_prefix
from jef.plugins import load_plugins
from jef.testing import TINY_PIPELINE, tiny_run
from jef.testing.building import build_pipeline

HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


@pytest.fixture
def weights(plugins):
    """A small_cnn's state dict that no fresh backbone has (every float tensor moved by 1)."""
    state = build_pipeline(plugins, TINY_PIPELINE).model.backbone.state_dict()
    return {key: value + 1 if value.is_floating_point() else value for key, value in state.items()}


def _pipeline(plugins, backbone, **more):
    return resolve(merge(TINY_PIPELINE, {"backbone": backbone, **more}), source="p.yaml", registry=plugins.registry)


def _built(plugins, backbone, **more):
    return build(_pipeline(plugins, backbone, **more), RunContext())


def _assert_loaded(module, state):
    own = module.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_a_state_dict_file_starts_the_backbone_and_the_ema_copy_made_from_it(plugins, weights, tmp_path, capsys):
    torch.save(weights, tmp_path / "small_cnn.pt")
    built = _built(plugins, {"weights": str(tmp_path / "small_cnn.pt")}, target={"name": "ema"})
    _assert_loaded(built.model.backbone, weights)
    _assert_loaded(built.model.target_backbone, weights)  # the target copies the loaded backbone
    line = capsys.readouterr().err.strip()
    assert line == (f"jef: backbone.weights: loaded {len(weights)} of the backbone's {len(weights)} tensors from "
                    f"{tmp_path / 'small_cnn.pt'} (keys as they are); missing 0; unexpected 0")


def test_wrapped_and_prefixed_keys_are_unwrapped_and_extra_keys_reported(plugins, weights, tmp_path, capsys):
    # A timm/torchvision-style training checkpoint: the state dict under `state_dict`, DDP's `module.` prefix, a
    # classifier the backbone has no place for.
    state = {f"module.{key}": value for key, value in weights.items()} | {"module.fc.weight": torch.zeros(4, 64)}
    torch.save({"state_dict": state, "epoch": 90}, tmp_path / "wrapped.pth")
    built = _built(plugins, {"weights": str(tmp_path / "wrapped.pth")})
    _assert_loaded(built.model.backbone, weights)
    err = capsys.readouterr().err
    assert "(keys under 'module.')" in err and "missing 0; unexpected 1 (fc.weight)" in err


@pytest.mark.parametrize("prefix", ["backbone.", "encoder.", "module.encoder.", "module.encoder_q."])
def test_the_prefix_under_which_keys_match_is_chosen(prefix, weights):
    keys = [prefix + key for key in weights] + ["projector.0.weight"]
    assert match_prefix(keys, set(weights)) == prefix


def test_a_jef_checkpoint_loads_its_online_backbone_and_a_run_trains_from_it(plugins, tmp_path, capsys):
    tiny_run(steps=1, run_dir=tmp_path / "first", plugins=plugins)
    saved = torch.load(tmp_path / "first" / "checkpoint.pt", weights_only=True)["model"]
    backbone = {key[len("backbone."):]: value for key, value in saved.items() if key.startswith("backbone.")}
    for path in (tmp_path / "first" / "checkpoint.pt", tmp_path / "first"):  # the file, or the run directory
        built = _built(plugins, {"weights": str(path)}, target={"name": "ema"})
        _assert_loaded(built.model.backbone, backbone)
        err = capsys.readouterr().err
        assert "(keys under 'backbone.', " in err and "other key(s) ignored" in err, err
    second = tiny_run({"backbone": {"weights": str(tmp_path / "first")}}, steps=1, run_dir=tmp_path / "second",
                      plugins=plugins)
    assert "loaded" in capsys.readouterr().err
    resolved = yaml.safe_load((second.run_dir / "pipeline.yaml").read_text())
    assert resolved["backbone"]["weights"] == str(tmp_path / "first")
    assert resolved["backbone"]["weights_strict"] is True


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_a_jef_export_loads(fmt, plugins, tmp_path):
    if fmt == "safetensors" and not HAS_SAFETENSORS:
        pytest.skip("safetensors is not installed")
    from jef.tools.export import export_backbone, open_run

    tiny_run(steps=1, run_dir=tmp_path / "run", plugins=plugins)
    run = open_run(tmp_path / "run", plugins=plugins)
    export_backbone(run, tmp_path / "export", fmt=fmt)
    exported = run.backbone.state_dict()
    name = {"torch": "backbone.pt", "safetensors": "backbone.safetensors"}[fmt]
    for path in (tmp_path / "export" / name, tmp_path / "export"):
        _assert_loaded(_built(plugins, {"weights": str(path)}).model.backbone, exported)


@pytest.mark.skipif(not HAS_SAFETENSORS, reason="safetensors is not installed")
def test_a_safetensors_file_loads(plugins, weights, tmp_path):
    from safetensors.torch import save_file

    save_file(weights, str(tmp_path / "w.safetensors"))
    _assert_loaded(_built(plugins, {"weights": str(tmp_path / "w.safetensors")}).model.backbone, weights)


def test_a_safetensors_file_without_the_package_says_what_to_install(plugins, weights, tmp_path, monkeypatch):
    (tmp_path / "w.safetensors").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now fails
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(WeightsError, match="needs the safetensors package: pip install safetensors"):
        _built(plugins, {"weights": str(tmp_path / "w.safetensors")})


def test_shapes_that_differ_are_listed(plugins, tmp_path):
    wider = build_pipeline(plugins, merge(TINY_PIPELINE, {"backbone": {"width": 16}})).model.backbone
    torch.save(wider.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(WeightsError) as caught:
        _built(plugins, {"weights": str(tmp_path / "wide.pt")})
    error = caught.value
    assert error.path == "backbone.weights" and error.file == str(tmp_path / "wide.pt")
    assert str(error).startswith(f"p.yaml: backbone.weights: {tmp_path / 'wide.pt'}: ")
    assert "of the 24 matching tensors have another shape than the backbone's: " in str(error)
    assert "features.0.weight: file [16, 3, 3, 3], backbone [8, 3, 3, 3]" in str(error)


def test_a_file_of_another_network_matches_nothing(plugins, tmp_path):
    torch.save({"head.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match=r"none of the 2 keys of the file match the backbone's 24 parameters "
                                           r"and buffers.*first keys: head.weight, head.bias; the backbone's: "
                                           r"features.0.weight"):
        _built(plugins, {"weights": str(tmp_path / "other.pt")})


def test_missing_keys_are_an_error_unless_not_strict(plugins, weights, tmp_path):
    partial = {key: value for key, value in weights.items() if not key.startswith("features.0.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match=r"1 of the backbone's 24 keys are not in the file: features.0.weight; "
                                           r".*backbone.weights_strict: false"):
        _built(plugins, {"weights": str(tmp_path / "partial.pt")})
    with pytest.warns(UserWarning, match=r"loaded 23 of the backbone's 24 tensors .* missing 1 \(features.0.weight\)"):
        built = _built(plugins, {"weights": str(tmp_path / "partial.pt"), "weights_strict": False})
    own = built.model.backbone.state_dict()
    assert all(torch.equal(own[key], value) for key, value in partial.items())
    assert not torch.equal(own["features.0.weight"], weights["features.0.weight"])  # kept its initial value


class Pickled:
    """An object weights_only refuses to unpickle."""


def test_a_file_with_pickled_objects_is_refused(plugins, tmp_path):
    torch.save({"state_dict": Pickled()}, tmp_path / "pickled.pt")
    with pytest.raises(WeightsError, match="holds objects other than tensors and plain data"):
        _built(plugins, {"weights": str(tmp_path / "pickled.pt")})


def test_a_file_that_is_not_a_state_dict_is_refused(plugins, tmp_path):
    (tmp_path / "notes.pt").write_text("not a torch file")
    with pytest.raises(WeightsError, match="cannot be read as a torch file"):
        _built(plugins, {"weights": str(tmp_path / "notes.pt")})
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, tmp_path / "empty.pt")
    with pytest.raises(WeightsError, match=r"holds no tensors where a state dict should be \(found: epoch, args\)"):
        _built(plugins, {"weights": str(tmp_path / "empty.pt")})


def test_config_check_wants_the_file_but_does_not_read_it(plugins, tmp_path):
    (tmp_path / "unread.pt").write_text("check() must not read this")
    check(_pipeline(plugins, {"weights": str(tmp_path / "unread.pt")}))
    with pytest.raises(ConfigError, match=r"^p.yaml: backbone.weights: no such file: .*missing.pt .*jef downloads "
                                          r"nothing") as caught:
        check(_pipeline(plugins, {"weights": str(tmp_path / "missing.pt")}))
    assert caught.value.path == "backbone.weights"
    with pytest.raises(ConfigError, match="is a directory without backbone.safetensors, backbone.pt"):
        check(_pipeline(plugins, {"weights": str(tmp_path)}))


def test_build_without_weights_leaves_the_file_alone(plugins, tmp_path):
    # A resumed run, or a finished run opened for evaluation: the checkpoint's weights follow.
    build(_pipeline(plugins, {"weights": str(tmp_path / "gone.pt")}), RunContext(), weights=False)


@pytest.mark.parametrize(("slot", "message"), [
    ({"weights": 3}, r"backbone.weights: expected the path of a local state dict .* got int 3"),
    ({"weights": " "}, r"backbone.weights: expected the path of a local state dict"),
    ({"weights": "w.pt", "weights_strict": "yes"}, r"backbone.weights_strict: expected true .* or false"),
    ({"weights_strict": False}, r"backbone.weights_strict: applies to the weights loaded from backbone.weights, "
                                r"which is not set"),
])
def test_bad_weights_keys_name_their_yaml_path(plugins, slot, message):
    with pytest.raises(ConfigError, match=message):
        _pipeline(plugins, slot)


def test_weights_belong_to_the_backbone_slot_only(plugins):
    with pytest.raises(ConfigError, match=r"projector.weights: unknown key 'weights'"):
        resolve(merge(TINY_PIPELINE, {"projector": {"weights": "w.pt"}}), registry=plugins.registry)


def test_the_resolved_pipeline_names_the_weights_only_when_set(plugins):
    assert "weights" not in _pipeline(plugins, {}).to_dict()["backbone"]
    backbone = _pipeline(plugins, {"weights": "w.pt", "weights_strict": False}).to_dict()["backbone"]
    assert (backbone["weights"], backbone["weights_strict"]) == ("w.pt", False)


def test_load_weights_returns_what_it_loaded(plugins, weights, tmp_path):
    torch.save({"model": {f"backbone.{key}": value for key, value in weights.items()}}, tmp_path / "ckpt.pt")
    module = build_pipeline(plugins, TINY_PIPELINE).model.backbone
    report = load_weights(module, tmp_path / "ckpt.pt")
    assert (report.prefix, report.loaded, report.total, report.missing, report.unexpected, report.ignored) == (
        "backbone.", 24, 24, [], [], 0)


def test_a_resumed_run_needs_its_checkpoint_not_the_weights_file(plugins, weights, tmp_path, capsys):
    path = tmp_path / "start.pt"
    torch.save(weights, path)
    from jef.testing import InterruptAt

    plugins.manager.register(InterruptAt(2), name="stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            tiny_run({"backbone": {"weights": str(path)}}, steps=3, run_dir=tmp_path / "run", plugins=plugins)
    finally:
        plugins.manager.unregister(name="stopper")
    path.unlink()  # moved away after the run started: the checkpoint holds the trained weights
    resumed = tiny_run({"backbone": {"weights": str(path)}}, steps=3, run_dir=tmp_path / "run", plugins=plugins,
                       resume=True)
    assert resumed.hooks_called.count("jef_train_step") == 1
