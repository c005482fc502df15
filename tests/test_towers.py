"""Named encoders (``encoders:``), the ``tower`` target, samples with named fields and their collate."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch

from jef.builtin.commands import describe_pipeline
from jef.components import DataSplits
from jef.config import ConfigError, resolve
from jef.data.fields import as_fields, batch_size, extra_fields
from jef.data.synthetic import SYNTHETIC_CLASSES, generate
from jef.hookspecs import hookimpl
from jef.model.build import build, check
from jef.model.towers import FieldCollate, field_collate
from jef.testing import fresh_plugins, temporary_plugin, tiny_run
from jef.tools.report.model import model_figures


class CaptionedTextures(torch.utils.data.Dataset):
    """Synthetic textures with a caption naming the class: the smallest image-text data."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.labels = torch.as_tensor(np.arange(n) % 4)
        self.images = torch.from_numpy(generate(self.labels.numpy(), 16, 1, rng, 0.05))
        words = ["thin", "bold", "faint", "sharp"]
        self.texts = [f"a {words[int(rng.integers(4))]} image of {SYNTHETIC_CLASSES[int(c)]}" for c in self.labels]
        self.classes = list(SYNTHETIC_CLASSES[:4])

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "text": self.texts[i], "label": int(self.labels[i]), "index": i}


@hookimpl
def jef_register_datasets(register):
    register("captioned_textures",
             lambda options, ctx: DataSplits(CaptionedTextures(64, 0), CaptionedTextures(32, 1), 4, 1, 16,
                                             "captioned", fields=("image", "text", "label", "index"),
                                             class_names=tuple(SYNTHETIC_CLASSES[:4])))


@pytest.fixture(scope="module")
def plugins():
    loaded = fresh_plugins(entry_points=True)
    module = types.ModuleType("captioned_textures_plugin")
    module.jef_register_datasets = jef_register_datasets
    with temporary_plugin(loaded, module):
        yield loaded


TEXT = {"field": "text", "tokenizer": {"name": "words", "context_length": 12},
        "backbone": {"name": "text_transformer", "width": 16, "depth": 1, "heads": 2},
        "projector": {"name": "mlp", "dims": [8], "batch_norm": False}}
CLIP = {"method": "clip", "data": {"name": "captioned_textures"},
        "augmenter": {"size": 16}, "backbone": {"name": "small_cnn", "width": 4},
        "projector": {"name": "mlp", "dims": [8], "batch_norm": False},
        "encoders": {"text": TEXT}, "train": {"batch_size": 16, "optimizer": {"lr": 1e-3}}}


def test_a_tuple_and_a_mapping_read_the_same():
    image = torch.zeros(2, 1, 4, 4)
    assert as_fields((image, 3, 7)) == {"image": image, "label": 3, "index": 7}
    fields = as_fields({"image": image, "text": ["a", "b"]})
    assert fields["label"] is None and fields["index"] is None and extra_fields(fields) == {"text": ["a", "b"]}
    assert batch_size((image, None, None)) == 2
    with pytest.raises(TypeError, match="needs an 'image' field"):
        as_fields({"text": "a"})
    with pytest.raises(TypeError, match="got a tuple of 2"):
        as_fields((image, 1))


def test_field_collate_tokenizes_text_and_batches_the_rest(plugins):
    pipeline = resolve(CLIP, registry=plugins.registry)
    built = build(pipeline, _ctx(pipeline))
    collate = field_collate(built.model)
    assert isinstance(collate, FieldCollate)
    samples = [built.splits.train[i] for i in range(3)]
    batch = collate(samples)
    assert batch["image"].shape == (3, 1, 16, 16) and batch["index"].tolist() == [0, 1, 2]
    tokenizer = built.model.towers["text"].tokenizer
    assert torch.equal(batch["text"], tokenizer.encode([s["text"] for s in samples]))
    # An image-only model keeps the DataLoader's default collate.
    assert field_collate(build(resolve({"method": "simclr", "data": {"name": "synthetic"}},
                                       registry=plugins.registry), _ctx(pipeline)).model) is None


def test_the_tokenizer_is_fitted_on_the_training_captions_before_the_text_backbone(plugins):
    pipeline = resolve(CLIP, registry=plugins.registry)
    built = build(pipeline, _ctx(pipeline))
    tower = built.model.towers["text"]
    words = tower.tokenizer.get_extra_state()["words"]
    assert "stripes" in words and "checkerboard" in words
    assert tower.backbone.vocab_size == tower.tokenizer.vocab_size
    assert tower.backbone.context_length == 12
    assert built.ctx.target_dim == 8  # the text tower's projector


def test_config_shows_both_towers(plugins):
    pipeline = resolve(CLIP, registry=plugins.registry)
    shown = pipeline.to_dict()
    assert shown["encoders"]["text"]["backbone"]["name"] == "text_transformer"
    assert shown["encoders"]["text"]["tokenizer"]["name"] == "words"
    assert shown["target"] == {"name": "tower", "encoder": "text"}
    assert resolve(shown, registry=plugins.registry).to_dict() == shown  # what a run saves reads back the same
    paths = [path for path, _ in pipeline.slots()]
    assert {"encoders.text.tokenizer", "encoders.text.backbone", "encoders.text.projector"} <= set(paths)
    assert "encoders" not in resolve({"method": "simclr"}, registry=plugins.registry).to_dict()
    check(pipeline)  # the dry run builds both towers without the data
    header = describe_pipeline(pipeline)
    assert "# online   reads every view: small_cnn -> mlp" in header
    assert "# text     reads field 'text': words -> text_transformer -> mlp (the target)" in header


@pytest.mark.parametrize(("change", "path", "message"), [
    ({"encoders": {"text": {**TEXT, "field": None}}}, "encoders.text", "exactly one of `field`"),
    ({"encoders": {"text": {**TEXT, "field": "label"}}}, "encoders.text.field", "bookkeeping"),
    ({"encoders": {"text": {**TEXT, "colour": 1}}}, "encoders.text.colour", "unknown key"),
    ({"encoders": {"text": {**TEXT, "backbone": None}}}, "encoders.text.backbone", "needs a backbone"),
    # field: null drops the recipe's field (encoders merge key by key).
    ({"encoders": {"text": {**TEXT, "field": None, "views": [1]}}}, "encoders.text.tokenizer", "drop the tokenizer"),
    ({"encoders": {"text": {"field": None, "views": [1, 1], "tokenizer": None}}}, "encoders.text.views", "repeat"),
    ({"target": {"name": "tower", "encoder": "txet"}}, "target.encoder", "did you mean 'text'"),
    ({"encoders": ["text"]}, "encoders", "mapping of named encoders"),
])
def test_malformed_encoders_are_named(plugins, change, path, message):
    with pytest.raises(ConfigError, match=message) as caught:
        resolve({**CLIP, **change}, registry=plugins.registry)
    assert caught.value.path == path


def test_checks_that_need_the_data_or_the_augmenter(plugins):
    no_text = {**CLIP, "data": {"name": "synthetic", "channels": 1, "image_size": 16}}
    with pytest.raises(ConfigError, match="yields the fields image, label, index, not 'text'"):
        build(resolve(no_text, registry=plugins.registry), _ctx(None))
    untokenized = {**CLIP, "encoders": {"text": {**TEXT, "tokenizer": None}}}
    with pytest.raises(ConfigError, match="holds text; add a tokenizer"):
        build(resolve(untokenized, registry=plugins.registry), _ctx(None))
    views = {**CLIP, "encoders": {"text": {"field": None, "tokenizer": None, "views": [3],
                                           "backbone": {"name": "small_cnn", "width": 4}}}}
    with pytest.raises(ConfigError, match="makes 1 views .* no view 3"):
        build(resolve(views, registry=plugins.registry), _ctx(None))
    every = {**CLIP, "encoders": {"text": {"field": None, "tokenizer": None, "views": [0],
                                           "backbone": {"name": "small_cnn", "width": 4}}}}
    with pytest.raises(ConfigError, match="the online backbone has none"):
        build(resolve(every, registry=plugins.registry), _ctx(None))


def test_a_view_tower_encodes_its_views_and_the_online_branch_the_rest(plugins):
    """CMC's layout: view 0 through the online backbone, view 1 through the named encoder, the tower target."""
    pipeline = resolve({"data": {"name": "synthetic", "channels": 1, "image_size": 16},
                        "augmenter": {"name": "views", "size": 16}, "backbone": {"name": "small_cnn", "width": 4},
                        "projector": {"name": "mlp", "dims": [8], "batch_norm": False},
                        "encoders": {"second": {"views": [1], "backbone": {"name": "small_cnn", "width": 4},
                                                "projector": {"name": "mlp", "dims": [8], "batch_norm": False}}},
                        "target": {"name": "tower", "encoder": "second"},
                        "energy": {"name": "scaled_cosine"}, "functionals": []}, registry=plugins.registry)
    built = build(pipeline, _ctx(pipeline))
    model = built.model
    views = [torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)]
    result = model(views)
    out = result.outputs
    assert len(out.online.z) == 1 and out.n_global == 1
    assert torch.allclose(out.online.z[0], model.projector(model.backbone(views[0])))
    second = model.towers["second"]
    assert torch.allclose(out.target.z[0], second.projector(second.backbone(views[1])))
    result.loss.backward()  # the target is a network with gradients, not a copy
    for network in (second.backbone, model.backbone):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters() if p.ndim > 1)


def test_clip_trains_on_captions_and_saves_its_scale_and_vocabulary(plugins, tmp_path):
    result = tiny_run(CLIP, steps=3, plugins=plugins, run_dir=tmp_path / "run")
    assert math.isfinite(result.metrics["loss"]) and "jef_step_end" in result.hooks_called
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    scale = next(v for k, v in state["model"].items() if k.endswith("logit_scale"))
    assert 0 < abs(float(scale) - math.log(1 / 0.07)) < 0.01  # learnt, from log(1/0.07)
    vocabulary = next(v for k, v in state["model"].items() if k.startswith("towers.text.tokenizer"))
    assert "checkerboard" in vocabulary["words"]  # the fitted vocabulary is in the checkpoint
    figures = model_figures(tmp_path / "run", plugins=plugins, queries=2, top_k=3)
    assert figures.note is None and figures.pngs["captions"].startswith(b"\x89PNG")
    assert figures.details["captions"] == ("2 test images, top 3 of 32 test captions by cosine similarity of the "
                                           "image and text embeddings")
    assert "zero_shot_top1" in result.metrics and "image_to_text_r@1" in result.metrics


def _ctx(pipeline):
    from jef.components import RunContext
    return RunContext(seed=0, batch_size=16, global_batch_size=16, epochs=1)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_clip_on_a_folder_of_captioned_images_ends_with_retrieval(plugins, tmp_path):
    """An unlabelled captions CSV (the layout of examples/clip_captions_folder.yaml): no kNN or zero-shot, recall."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("test", 16)):
        rows = ["image,caption"]
        for i in range(n):
            path = tmp_path / "img" / f"{split}{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
            rows.append(f"img/{path.name},a picture number {i % 5}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    pipeline = {**CLIP, "data": {"name": "image_text", "train": str(tmp_path / "train.csv"),
                                 "test": str(tmp_path / "test.csv"), "image_size": 16},
                "train": {**CLIP["train"], "num_workers": 1}}  # tokenized in a worker process
    result = tiny_run(pipeline, steps=2, plugins=plugins, run_dir=tmp_path / "run")
    assert {"image_to_text_r@1", "text_to_image_r@10"} <= set(result.metrics)
    assert not {"knn_top1", "zero_shot_top1"} & set(result.metrics)
