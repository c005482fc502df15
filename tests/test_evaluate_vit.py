"""Evaluation with ViTs: DINO's linear-probe features, layer-wise lr decay in fine-tuning, kNN (issue 18, item 7)."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from jef.components import DataSplits
from jef.config import merge, resolve
from jef.config.options import EvalOptions, FinetuneOptions, KnnOptions, LinearProbeOptions
from jef.config.validate import ConfigError, build_options
from jef.evaluate import protocols
from jef.evaluate.features import extract_features, probe_features
from jef.evaluate.finetune import finetune, finetune_optimizer
from jef.evaluate.knn import knn_evaluate, knn_top1
from jef.evaluate.protocols import evaluate_backbone
from jef.plugins import load_plugins
from jef.testing import TINY_PIPELINE, build_component, tiny_run

DEPTH = 2


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def tiny_vit(plugins, seed=0, **options):
    torch.manual_seed(seed)
    settings = {"width": 32, "depth": DEPTH, "heads": 2, "patch_size": 4, "image_size": 16, **options}
    return build_component(plugins, "backbone", "vit", settings)


class Quadrants(Dataset):
    """uint8 3x16x16 images whose class is the brightest quadrant."""

    def __init__(self, n, seed):
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 4
        self.images = torch.randint(0, 60, (n, 3, 16, 16), generator=gen, dtype=torch.uint8)
        for i, label in enumerate(self.labels.tolist()):
            row, col = divmod(label, 2)
            self.images[i, :, 8 * row:8 * row + 8, 8 * col:8 * col + 8] += 150

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), i


def quadrants(n_train=48, n_test=24):
    return DataSplits(Quadrants(n_train, 0), Quadrants(n_test, 1), num_classes=4, channels=3, image_size=16,
                      name="quadrants")


def view(images):
    return images.float() / 255


def dino_features(vit, images, last_blocks, avgpool):
    """DINO's eval_linear features, computed block by block from the ViT's parts (not through forward_tokens)."""
    x, _ = vit._embed(images)
    outputs = []
    for block in vit.blocks:
        x = block(x)
        outputs.append(x)
    parts = [vit.norm(out[:, 0]) for out in outputs[-last_blocks:]]
    if avgpool:
        parts.append(vit.norm(outputs[-1][:, 1:]).mean(dim=1))
    return torch.cat(parts, dim=1)


# -- the linear probe's features -------------------------------------------------------------


@pytest.mark.parametrize(("last_blocks", "avgpool"), [(1, True), (2, False), (2, True)])
def test_probe_features_are_the_normed_cls_of_the_last_blocks_and_the_patch_mean(plugins, last_blocks, avgpool):
    vit = tiny_vit(plugins).eval()
    images = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        features = probe_features(vit, last_blocks, avgpool)(images)
        expected = dino_features(vit, images, last_blocks, avgpool)
        h = vit(images)
    assert features.shape == (5, 32 * (last_blocks + avgpool))
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(features[:, 32 * (last_blocks - 1):32 * last_blocks], h, rtol=0, atol=1e-6)


def test_by_default_the_probe_reads_h_of_any_backbone(plugins):
    vit, cnn = tiny_vit(plugins), nn.Sequential(nn.Flatten())
    assert probe_features(vit) is vit and probe_features(cnn) is cnn


def test_the_protocol_probes_dino_features_and_knn_reads_h_in_one_pass(plugins, monkeypatch):
    vit, splits = tiny_vit(plugins), quadrants()
    seen = {}

    def recording(key, function):
        def record(*args, **kwargs):
            seen[key] = args
            return function(*args, **kwargs)
        return record

    monkeypatch.setattr(protocols, "linear_probe", recording("linear", protocols.linear_probe))
    monkeypatch.setattr(protocols, "knn_accuracy", recording("knn", protocols.knn_accuracy))
    calls = []
    vit.register_forward_hook(lambda module, args, out: calls.append(module.training))  # h: the pooled forward
    options = EvalOptions(knn=KnnOptions(k=5, batch_size=16),
                          linear=LinearProbeOptions(epochs=2, batch_size=16, last_blocks=2, avgpool_patches=True))
    results = evaluate_backbone(vit, splits, view, options, "cpu", seed=0, protocols=["knn", "linear"])
    assert [r.key for r in results] == ["knn_top1", "knn_top5", "linear_top1", "linear_top5"]
    assert len(calls) == 3 + 2 and not any(calls)  # one pass per split of 48 and 24 images, in eval mode
    assert all(module.training for module in vit.modules())
    images = torch.stack([splits.train[i][0] for i in range(48)])
    test_images = torch.stack([splits.test[i][0] for i in range(24)])
    with torch.no_grad():
        vit.eval()
        torch.testing.assert_close(seen["linear"][0], dino_features(vit, view(images), 2, True), rtol=0, atol=1e-5)
        torch.testing.assert_close(seen["linear"][2], dino_features(vit, view(test_images), 2, True),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(seen["knn"][0], vit(view(images)), rtol=0, atol=1e-5)
    assert ("offline linear probe on frozen backbone features (the CLS tokens of the last 2 blocks after the final "
            "norm, concatenated + the mean patch token, as DINO arXiv:2104.14294)") in results[2].protocol
    assert "frozen backbone features: k=5" in results[0].protocol


def test_dino_features_on_a_backbone_without_tokens_are_refused_with_the_option_and_what_to_do(plugins):
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    cnn.out_dim = 4
    message = ("eval.linear.last_blocks: the linear probe's ViT features (last_blocks: 4) need a token backbone, "
               "with forward_tokens(images, blocks=...) and a final norm `norm`, such as jef's `vit`; this backbone "
               "(Sequential) is not one: set eval.linear.last_blocks: 1 and eval.linear.avgpool_patches: false")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        probe_features(cnn, 4)
    options = EvalOptions(linear=LinearProbeOptions(avgpool_patches=True))
    with pytest.raises(ConfigError, match=r"\(last_blocks: 1, avgpool_patches: true\)"):
        evaluate_backbone(cnn, quadrants(), view, options, "cpu", protocols=["linear"])
    with pytest.raises(ConfigError, match="eval.linear.last_blocks: 3 blocks asked for, but the backbone "
                                          r"\(ViT\) has 2; set eval.linear.last_blocks to at most 2"):
        probe_features(tiny_vit(plugins), 3)


def test_a_run_with_probe_options_its_backbone_cannot_serve_fails_before_training(plugins, tmp_path):
    with pytest.raises(ConfigError, match=r"^<tiny_run>: eval\.linear\.last_blocks: .* this backbone"):
        tiny_run({"eval": {"linear": {"enabled": True, "last_blocks": 4}}}, run_dir=tmp_path, plugins=plugins)
    assert not (tmp_path / "checkpoint.pt").exists()
    from docs_text import assert_documented  # here: it reads every docs page when imported
    from jef.run.loop import train

    settings = merge(TINY_PIPELINE, {"backbone": {"name": "resnet18", "small_images": True},
                                     "eval": {"linear": {"enabled": True, "last_blocks": 4}}})
    pipeline = resolve(settings, source="pipeline.yaml", registry=plugins.registry)
    with pytest.raises(ConfigError) as error:
        train(pipeline, cpu=True, plugins=plugins)
    assert_documented("evaluation.md", "eval.linear.last_blocks: the linear probe", f"jef: error: {error.value}")


# -- fine-tuning with layer-wise lr decay ----------------------------------------------------


def expected_lr(name, base, decay):
    """BEiT/MAE: block i at decay^(depth - i), embeddings at decay^(depth + 1), final norm and head at 1."""
    name = name.removeprefix("model.")
    if name.startswith("blocks."):
        return base * decay ** (DEPTH - int(name.split(".")[1]))
    if name.split(".")[0] in ("patch_embed", "pos_embed", "cls_token", "mask_token"):
        return base * decay ** (DEPTH + 1)
    assert name.startswith(("norm.", "head.")), name
    return base


def rates(backbone, head, options):
    """``{name: (lr, weight_decay)}`` of every parameter in the fine-tuning optimiser's groups."""
    names = {id(p): n for n, p in backbone.named_parameters()}
    names |= {id(p): f"head.{n}" for n, p in head.named_parameters()}
    optimizer = finetune_optimizer(backbone, head, options)
    found = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            assert names[id(parameter)] not in found  # each parameter in one group
            found[names[id(parameter)]] = (group["lr"], group["weight_decay"])
    return found


class Wrapped(nn.Module):
    """A ViT under ``model.``, as jef-plugin-timm wraps a timm model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.out_dim = model, model.out_dim


@pytest.mark.parametrize("wrap", [False, True])
def test_layer_decay_gives_each_parameter_the_rate_of_its_layer(plugins, wrap):
    vit = tiny_vit(plugins, mask_token=True)
    backbone, head = (Wrapped(vit) if wrap else vit), nn.Linear(32, 4)
    options = FinetuneOptions(lr=0.4, layer_decay=0.5, weight_decay=0.05)
    found = rates(backbone, head, options)
    assert found.keys() == {n for n, _ in backbone.named_parameters()} | {"head.weight", "head.bias"}
    parameters = dict(backbone.named_parameters()) | {f"head.{n}": p for n, p in head.named_parameters()}
    for name, (lr, weight_decay) in found.items():
        assert lr == pytest.approx(expected_lr(name, 0.4, 0.5), rel=1e-12), name
        bare = name.rpartition(".")[2]
        no_decay = parameters[name].ndim == 1 or bare in ("pos_embed", "cls_token", "mask_token")
        assert weight_decay == (0.0 if no_decay else 0.05), name
    assert found["blocks.0.attn.qkv.weight" if not wrap else "model.blocks.0.attn.qkv.weight"] == (0.4 * 0.25, 0.05)


def test_without_layer_decay_the_backbone_has_one_rate_and_frozen_parameters_stay_out(plugins):
    vit, head = tiny_vit(plugins, frozen_patch_embed=True), nn.Linear(32, 4)
    found = rates(vit, head, FinetuneOptions(lr=0.4, weight_decay=0.05))
    assert "patch_embed.proj.weight" not in found
    assert {found[n] for n in found if not n.startswith("head.")} == {(0.4 * 0.1, 0.05)}
    assert found["head.weight"] == found["head.bias"] == (0.4, 0.05)
    assert "patch_embed.proj.weight" not in rates(vit, head, FinetuneOptions(layer_decay=0.5))


def test_a_timm_vit_gets_the_same_layers(plugins):
    timm = pytest.importorskip("timm")
    pytest.importorskip("jef_plugin_timm")
    from jef_plugin_timm import TimmBackbone

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=4,
                              embed_dim=32, depth=DEPTH, num_heads=2)
    found = rates(TimmBackbone(model), nn.Linear(32, 4), FinetuneOptions(lr=0.4, layer_decay=0.5))
    assert found["model.blocks.1.mlp.fc1.weight"][0] == pytest.approx(0.4 * 0.5)
    assert found["model.cls_token"][0] == found["model.patch_embed.proj.weight"][0] == pytest.approx(0.4 * 0.5 ** 3)
    assert found["model.norm.weight"][0] == pytest.approx(0.4)


def test_layer_decay_on_a_backbone_without_blocks_is_refused():
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    cnn.out_dim = 4
    message = (r"eval\.finetune\.layer_decay: layer-wise lr decay needs a ViT whose parameters are named blocks\.N\. "
               r"\(jef's `vit`, a timm ViT\); the backbone \(Sequential\) has none; set eval\.finetune\.layer_decay: "
               r"null")
    with pytest.raises(ConfigError, match=message):
        finetune_optimizer(cnn, nn.Linear(4, 4), FinetuneOptions(layer_decay=0.75))
    options = EvalOptions(finetune=FinetuneOptions(layer_decay=0.75))
    with pytest.raises(ConfigError, match=message):  # before kNN's features are computed
        evaluate_backbone(cnn, quadrants(), view, options, "cpu", protocols=["knn", "finetune"])


def test_layer_decay_replaces_backbone_lr_scale_and_says_so():
    with pytest.raises(ConfigError, match=r"^eval\.finetune\.layer_decay: 0\.75 sets the rate of every backbone "
                                          r"layer, replacing backbone_lr_scale \(0\.5 here\); remove "
                                          r"backbone_lr_scale"):
        build_options(FinetuneOptions, {"layer_decay": 0.75, "backbone_lr_scale": 0.5}, "eval.finetune")
    with pytest.raises(ConfigError, match=r"^eval\.finetune\.layer_decay: must be <= 1\.0, got 1\.5"):
        build_options(FinetuneOptions, {"layer_decay": 1.5}, "eval.finetune")


def test_fine_tuning_a_vit_with_layer_decay_runs_end_to_end(plugins):
    vit = tiny_vit(plugins, drop_path=0.1)
    before = {key: value.clone() for key, value in vit.state_dict().items()}
    options = EvalOptions(finetune=FinetuneOptions(epochs=2, batch_size=16, lr=0.05, layer_decay=0.75))
    results = evaluate_backbone(vit, quadrants(), view, options, "cpu", seed=0, protocols=["finetune"])
    assert all(torch.equal(value, before[key]) for key, value in vit.state_dict().items())  # a copy was tuned
    assert [r.key for r in results] == ["finetune_top1", "finetune_top5"] and 0 <= results[0].value <= 1
    assert ("cosine lr from 0.05 to 0 (layer-wise decay 0.75: block i of depth at x0.75^(depth - i), embeddings at "
            "x0.75^(depth + 1), no weight decay on norms, biases, pos_embed and cls_token)") in results[0].protocol
    tuned = finetune(vit, quadrants(), view, options.finetune, seed=0)
    changed = tuned.backbone.state_dict()
    assert all(not torch.equal(changed[key], before[key]) for key in ("pos_embed", "blocks.0.attn.qkv.weight",
                                                                       "norm.weight"))
    assert (tuned.top1, tuned.top5) == (results[0].value, results[1].value)  # deterministic given the seed


# -- kNN -------------------------------------------------------------------------------------


def test_knn_of_a_vit_votes_with_its_h(plugins):
    vit, splits = tiny_vit(plugins), quadrants()
    accuracy = knn_evaluate(vit, splits, view, k=5, batch_size=16)
    train_x, train_y = extract_features(vit, splits.train, view, batch_size=16)
    test_x, test_y = extract_features(vit, splits.test, view, batch_size=16)
    assert train_x.shape == (48, 32)
    with torch.no_grad():
        torch.testing.assert_close(train_x, vit.eval()(view(splits.train.images)), rtol=0, atol=1e-5)
    assert accuracy == knn_top1(train_x, train_y, test_x, test_y, num_classes=4, k=5)
