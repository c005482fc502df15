"""The built-in ``vit`` backbone: torchvision's forward, position embeddings, tokens and masks, options (issue 18).

Every model here is tiny (16 px images, 4 px patches, 2 blocks of width 32 with 2 heads) and runs on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jef.builtin.vit import ViT, ViTOptions, build_vit, convert_torchvision_state_dict, sincos_position_embedding
from jef.components import RunContext, Tokens
from jef.config import resolve
from jef.config.validate import ConfigError
from jef.plugins import load_plugins
from jef.registry import BuildError
from jef.testing import build_component, build_pipeline, check_backbone, tiny_pipeline, tiny_run

TINY = {"preset": "tiny", "width": 32, "depth": 2, "heads": 2, "patch_size": 4}
CTX = RunContext(in_channels=3, image_size=16)


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def vit(**options) -> ViT:
    torch.manual_seed(0)
    return build_vit(ViTOptions(**{**TINY, **options}), CTX)


def images(n: int = 3, size: int = 16, width: int | None = None, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, width or size, generator=torch.Generator().manual_seed(seed))


def encode(model: ViT, tokens: torch.Tensor) -> torch.Tensor:
    """The blocks and the final norm on ``[N, 1 + T, d]`` tokens (CLS first), written out."""
    for block in model.blocks:
        tokens = block(tokens)
    return model.norm(tokens)


def with_cls(model: ViT, patches: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """CLS (plus its position) before patch tokens that already carry theirs."""
    return torch.cat([(model.cls_token + pos[:, :1]).expand(patches.shape[0], -1, -1), patches], dim=1)


# -- the forward against torchvision's VisionTransformer --------------------------------------------------------


def torchvision_vit():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    reference = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32,
                                  mlp_dim=128, num_classes=10)
    with torch.no_grad():  # every weight random (LayerNorms and biases included), so a wrong mapping shows
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    return reference.eval()


def test_the_torchvision_mapping_names_every_parameter_and_leaves_out_the_classifier():
    state = torchvision_vit().state_dict()
    converted = convert_torchvision_state_dict(state)
    assert set(converted) == set(vit().state_dict())
    assert converted["blocks.1.attn.qkv.weight"] is state["encoder.layers.encoder_layer_1.self_attention.in_proj_weight"]
    assert not any(key.startswith("heads") for key in converted)
    # torchvision's older MLP names (linear_1, linear_2) map too; a key no rule knows keeps its name.
    legacy = convert_torchvision_state_dict({"encoder.layers.encoder_layer_0.mlp.linear_2.bias": 1, "extra.w": 2})
    assert legacy == {"blocks.0.mlp.fc2.bias": 1, "extra.w": 2}
    result = vit().load_state_dict({**converted, "extra.w": torch.zeros(1)}, strict=False)
    assert result.unexpected_keys == ["extra.w"] and result.missing_keys == []


@pytest.mark.parametrize("n", [1, 4])
def test_the_forward_equals_torchvision_vision_transformer_with_the_same_weights(n):
    reference = torchvision_vit()
    model = vit().eval()
    model.load_state_dict(convert_torchvision_state_dict(reference.state_dict()))
    x = images(n)
    with torch.no_grad():
        tokens = torch.cat([reference.class_token.expand(n, -1, -1), reference._process_input(x)], dim=1)
        expected = reference.encoder(tokens)  # after torchvision's final LayerNorm
        h = model(x)
        got = model.forward_tokens(x)
    torch.testing.assert_close(h, expected[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got.cls, expected[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got.patches, expected[:, 1:], rtol=0, atol=1e-5)


# -- position embeddings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(8, 8), (24, 24), (16, 8)])
def test_views_of_another_size_get_the_position_embedding_resized_bicubically(height, width):
    model = vit().eval()
    grid = (height // 4, width // 4)
    pos = model.pos_embed
    patches = pos[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    resized = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    expected_pos = torch.cat([pos[:, :1], resized.flatten(2).transpose(1, 2)], dim=1)
    assert expected_pos.shape == (1, 1 + grid[0] * grid[1], 32)
    torch.testing.assert_close(model.position_embedding(grid), expected_pos, rtol=0, atol=0)

    x = images(2, height, width)
    with torch.no_grad():
        embedded = model.patch_embed.proj(x).flatten(2).transpose(1, 2) + expected_pos[:, 1:]
        expected = encode(model, with_cls(model, embedded, expected_pos))
        torch.testing.assert_close(model(x), expected[:, 0], rtol=0, atol=1e-6)
        assert model.forward_tokens(x).grid == grid


def test_the_built_grid_uses_the_position_embedding_as_is():
    model = vit()
    assert model.grid == (4, 4) and model.pos_embed.shape == (1, 17, 32)
    assert model.position_embedding((4, 4)) is model.pos_embed
    assert build_vit(ViTOptions(**TINY, image_size=32), CTX).grid == (8, 8)  # image_size overrides ctx's


def test_views_that_the_patches_do_not_tile_are_refused():
    with pytest.raises(ValueError, match=r"H and W multiples of patch_size 4, got \[2, 3, 10, 10\]"):
        vit()(images(2, 10))


def test_the_sincos_embedding_is_moco_v3s_formula():
    rows, cols, width = 3, 2, 16
    pe = sincos_position_embedding((rows, cols), width)
    assert pe.shape == (1, 1 + rows * cols, width) and not pe[0, 0].any()
    quarter = width // 4
    for r in range(rows):
        for c in range(cols):
            token = pe[0, 1 + r * cols + c]
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / quarter)
                expected = [math.sin(r * omega), math.cos(r * omega), math.sin(c * omega), math.cos(c * omega)]
                assert token[k::quarter].tolist() == pytest.approx(expected, abs=1e-6)
    # MoCo v3 builds it from meshgrid(w, h) with "ij" indexing on a square grid: the same tensor.
    g = 4
    grid_a, grid_b = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32),
                                    indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    a, b = grid_a.flatten()[:, None] * omega, grid_b.flatten()[:, None] * omega
    moco = torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=1)
    torch.testing.assert_close(sincos_position_embedding((g, g), width)[0, 1:], moco)


def test_a_sincos_backbone_keeps_its_embedding_fixed():
    model = vit(pos_embed="sincos")
    assert "pos_embed" in dict(model.named_buffers()) and "pos_embed" not in dict(model.named_parameters())
    torch.testing.assert_close(model.pos_embed, sincos_position_embedding((4, 4), 32))
    assert "pos_embed" in model.state_dict()


# -- tokens, masks and block outputs ---------------------------------------------------------------------------


def test_forward_tokens_returns_normed_tokens_and_the_asked_blocks_before_the_norm():
    model = vit().eval()
    x = images()
    with torch.no_grad():
        tokens = model.forward_tokens(x, blocks=(0, -1, 1))
    assert isinstance(tokens, Tokens) and tokens.grid == (4, 4) and tokens.mask is None
    assert tokens.patches.shape == (3, 16, 32) and tokens.cls.shape == (3, 32)
    assert set(tokens.blocks) == {0, -1, 1} and tokens.blocks[0].shape == (3, 17, 32)
    assert tokens.blocks[-1] is tokens.blocks[1]
    last = model.norm(tokens.blocks[-1])
    torch.testing.assert_close(last[:, 1:], tokens.patches, rtol=0, atol=0)
    torch.testing.assert_close(last[:, 0], tokens.cls, rtol=0, atol=0)
    torch.testing.assert_close(model.blocks[1](tokens.blocks[0]), tokens.blocks[1], rtol=0, atol=0)
    torch.testing.assert_close(model(x), tokens.cls, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"block 2 does not exist: the backbone has 2 blocks \(0 to 1, or -2 to"):
        model.forward_tokens(x, blocks=(2,))


def test_mean_pooling_is_the_mean_of_the_patch_tokens():
    model = vit(pool="mean").eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_tokens(x).patches.mean(dim=1), rtol=0, atol=1e-6)


def random_mask(n: int, masked: int | list[int], tokens: int = 16, seed: int = 0) -> torch.Tensor:
    """``[n, tokens]``, ``masked`` (per sample, or for all) positions True, drawn at random."""
    gen = torch.Generator().manual_seed(seed)
    counts = masked if isinstance(masked, list) else [masked] * n
    mask = torch.zeros(n, tokens, dtype=torch.bool)
    for row, count in enumerate(counts):
        mask[row, torch.randperm(tokens, generator=gen)[:count]] = True
    return mask


def test_replace_with_nothing_masked_equals_no_mask():
    model = vit(mask_token=True).eval()
    x = images()
    with torch.no_grad():
        plain, unmasked = model.forward_tokens(x), model.forward_tokens(x, torch.zeros(3, 16, dtype=torch.bool))
    assert torch.equal(plain.patches, unmasked.patches) and torch.equal(plain.cls, unmasked.cls)


def test_replace_puts_the_mask_token_at_masked_positions_before_their_position_embedding():
    model = vit(mask_token=True).eval()
    assert model.mask_token.shape == (1, 1, 32) and model.mask_token.abs().max() < 0.1  # trunc-normal, std 0.02
    x, mask = images(), random_mask(3, 5)
    seen = {}
    model.blocks[0].register_forward_hook(lambda module, args, out: seen.update(tokens=args[0]))
    with torch.no_grad():
        tokens = model.forward_tokens(x, mask)
        patches = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        expected = torch.where(mask[..., None], model.mask_token, patches) + model.pos_embed[:, 1:]
    torch.testing.assert_close(seen["tokens"][:, 1:], expected, rtol=0, atol=0)
    assert tokens.patches.shape == (3, 16, 32) and tokens.mask is mask
    # What the masked patches showed cannot reach the output: only the mask token stands there.
    pixels = mask.reshape(3, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(x)
    with torch.no_grad():
        changed = model.forward_tokens(torch.where(pixels, torch.randn_like(x), x), mask)
    assert torch.equal(changed.patches, tokens.patches)


def test_replace_without_a_mask_token_says_which_option_makes_one():
    model = vit()
    assert not hasattr(model, "mask_token")
    with pytest.raises(ValueError, match=r"needs a learned mask token: set backbone\.mask_token: true"):
        model.forward_tokens(images(), random_mask(3, 2))


@pytest.mark.parametrize("mask", [torch.zeros(3, 15, dtype=torch.bool), torch.zeros(3, 16)])
def test_a_mask_of_the_wrong_shape_or_dtype_is_refused(mask):
    with pytest.raises(ValueError, match=r"mask must be a bool tensor \[N, T\] = \[3, 16\]"):
        vit(mask_token=True).forward_tokens(images(), mask)


def test_drop_keeps_the_unmasked_tokens_with_their_own_positions():
    # float64: the batch of 3 and the one-row recomputation take other matmul kernels (and thread splits), whose
    # float32 sums differ by a few ulps (1.07e-6 was seen on 2 threads); in float64 that is 1e-15.
    model = vit().eval().double()
    x, mask = images().double(), random_mask(3, 12)
    with torch.no_grad():
        tokens = model.forward_tokens(x, mask, blocks=(-1,), mask_mode="drop")
        embedded = model.patch_embed.proj(x).flatten(2).transpose(1, 2) + model.pos_embed[:, 1:]
        for row in range(3):
            kept = (~mask[row]).nonzero().flatten()
            expected = encode(model, with_cls(model, embedded[row:row + 1, kept], model.pos_embed))
            torch.testing.assert_close(tokens.patches[row], expected[0, 1:], rtol=0, atol=1e-6)
            torch.testing.assert_close(tokens.cls[row], expected[0, 0], rtol=0, atol=1e-6)
    assert tokens.patches.shape == (3, 4, 32) and tokens.blocks[-1].shape == (3, 5, 32)
    assert tokens.grid == (4, 4) and tokens.mask is mask


def test_drop_with_unequal_keep_counts_names_the_counts():
    with pytest.raises(ValueError, match=r"same number of tokens, got kept counts \[12, 11, 12\] \(min 11, max 12\)"):
        vit().forward_tokens(images(), random_mask(3, [4, 5, 4]), mask_mode="drop")


def test_an_unknown_mask_mode_is_refused():
    with pytest.raises(ValueError, match=r"mask_mode must be 'replace' or 'drop', got 'zero'"):
        vit().forward_tokens(images(), random_mask(3, 2), mask_mode="zero")


def test_gradients_reach_the_mask_token():
    model = vit(mask_token=True)
    model.forward_tokens(images(), random_mask(3, 6)).patches.sum().backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


# -- frozen patch projection, stochastic depth, layer scale ------------------------------------------------------


def test_a_frozen_patch_projection_gets_no_gradient_and_the_rest_does():
    model = vit(frozen_patch_embed=True)
    model(images()).pow(2).sum().backward()
    frozen = {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    for name, param in model.named_parameters():
        if name in frozen:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert vit().patch_embed.proj.weight.requires_grad


def test_drop_path_is_the_identity_in_eval_mode_and_random_per_sample_in_training():
    dropping, plain = vit(drop_path=0.5), vit()
    plain.load_state_dict(dropping.state_dict())
    # Rising linearly from 0 (no drop, an identity) at the first block to the rate at the last.
    assert isinstance(dropping.blocks[0].drop_path1, nn.Identity) and dropping.blocks[1].drop_path2.p == 0.5
    assert [block.drop_path1.p for block in vit(drop_path=0.3, depth=4).blocks[1:]] == pytest.approx([0.1, 0.2, 0.3])
    assert all(isinstance(block.drop_path1, nn.Identity) for block in plain.blocks)
    x = images(8)
    dropping.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(dropping(x), plain(x))
        dropping.train()
        torch.manual_seed(1)
        first = dropping(x)
        second = dropping(x)
        torch.manual_seed(1)
        again = dropping(x)
    assert not torch.equal(first, second) and torch.equal(first, again)
    branch = dropping.blocks[1].drop_path1
    ones = torch.ones(64, 5, 3)
    out = branch(ones)
    scaled = out[:, 0, 0]  # each sample's branch dropped (0) or kept and scaled by 1 / (1 - p), as a whole
    assert set(scaled.tolist()) == {0.0, 2.0} and torch.equal(out, scaled[:, None, None].expand(-1, 5, 3))


@pytest.mark.parametrize("init", [1e-5, 0.1])
def test_layer_scale_starts_at_its_init_value(init):
    model = vit(layer_scale=init)
    for block in model.blocks:
        for scale in (block.ls1, block.ls2):
            assert isinstance(scale.gamma, nn.Parameter) and torch.equal(scale.gamma, torch.full((32,), init))
    assert all(isinstance(block.ls1, nn.Identity) for block in vit().blocks)


# -- options, building, registration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"width": 32, "heads": 5}, "backbone.heads: 5 heads do not divide the width 32 (each head takes width / heads "
                                "channels); set heads to a divisor of 32 such as [2, 4, 8], or change width"),
    ({"width": 32}, "backbone.heads: 6 heads (the 'small' preset's) do not divide the width 32"),
    ({"image_size": 18, "patch_size": 4}, "backbone.image_size: image_size 18 is not a multiple of patch_size 4 "
                                          "(the patch grid must tile the image); use an image_size such as 16"),
    ({"width": 18, "heads": 2, "pos_embed": "sincos"}, "backbone.pos_embed: pos_embed 'sincos' needs a width divisible by 4"),
    ({"pool": "max"}, "backbone.pool: expected one of 'cls', 'mean', got 'max'"),
    ({"preset": "huge"}, "backbone.preset: expected one of 'tiny', 'small', 'base', 'large', got 'huge'"),
    ({"drop_path": 1.0}, "backbone.drop_path: must be < 1.0, got 1.0"),
    ({"layer_scale": 0.0}, "backbone.layer_scale: must be > 0.0, got 0.0"),
    ({"pach_size": 8}, "backbone.pach_size: unknown key 'pach_size'; did you mean 'patch_size'?"),
], ids=["heads", "preset-heads", "image_size", "sincos", "pool", "preset", "drop_path", "layer_scale", "typo"])
def test_bad_options_are_config_errors_naming_the_yaml_path(plugins, options, message):
    with pytest.raises(ConfigError) as caught:
        resolve({"backbone": {"name": "vit", **options}}, source="pipeline.yaml", registry=plugins.registry)
    assert str(caught.value).startswith(f"pipeline.yaml: {message}"), str(caught.value)


def test_views_the_patches_do_not_tile_fail_when_the_pipeline_is_built(plugins):
    pipeline = tiny_pipeline({"backbone": {"name": "vit", **TINY, "patch_size": 5}}, registry=plugins.registry)
    with pytest.raises(BuildError, match=r"backbone: building backbone 'vit' from plugin builtin\.vit \(jef .*\) failed: "
                                         r"ValueError: vit: the global views are 16 px .* not a multiple of "
                                         r"backbone\.patch_size 5"):
        build_pipeline(plugins, pipeline)


def test_the_registered_backbone_reads_channels_and_size_from_the_run(plugins):
    entry = plugins.registry.get("backbone", "vit")
    assert entry.options is ViTOptions and str(entry.provenance).startswith("builtin.vit")
    model = build_component(plugins, "backbone", "vit", TINY, RunContext(in_channels=1, image_size=24))
    assert model.patch_embed.proj.in_channels == 1 and model.grid == (6, 6) and model.out_dim == 32
    assert model(torch.randn(2, 1, 24, 24)).shape == (2, 32)
    small = build_component(plugins, "backbone", "vit", {"patch_size": 16}, RunContext(image_size=32))
    assert (small.out_dim, len(small.blocks), small.blocks[0].attn.heads) == (384, 12, 6)  # the default: ViT-S
    assert small.blocks[0].mlp.fc1.out_features == 4 * 384


@pytest.mark.parametrize("options", [{}, {"pool": "mean", "pos_embed": "sincos"},
                                     {"drop_path": 0.2, "layer_scale": 1e-5, "frozen_patch_embed": True}],
                         ids=["default", "mean-sincos", "drop_path-layer_scale-frozen"])
def test_the_vit_meets_the_backbone_contract(plugins, options):
    check_backbone(build_component(plugins, "backbone", "vit", {**TINY, **options}), name="vit", size=16)


def test_a_tiny_vit_trains(plugins):
    result = tiny_run({"backbone": {"name": "vit", **TINY}}, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])


def test_a_tiny_vit_trains_with_local_views_of_another_size(plugins, monkeypatch):
    grids = []
    resize = ViT.position_embedding
    monkeypatch.setattr(ViT, "position_embedding", lambda self, grid: grids.append(grid) or resize(self, grid))
    result = tiny_run({"backbone": {"name": "vit", **TINY}, "augmenter": {"n_local": 2, "local_size": 8}},
                      plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
    assert {(4, 4), (2, 2)} <= set(grids)  # the 16 px global views and the 8 px local ones
