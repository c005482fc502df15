"""Tests of the built-in backbones and heads."""

import attrs
import pytest
import torch
from torch import nn

from jef.builtin import backbones, heads
from jef.builtin.backbones import ResNetOptions, SmallCNNOptions, build_resnet18, build_resnet50, build_small_cnn
from jef.builtin.heads import MLPOptions, build_identity, build_mlp
from jef.components import NoOptions, RunContext


def _recorded(hook):
    """Call a registration hook with a recording register function."""
    table = {}

    def register(name, factory, *, options=NoOptions, description="", paper=""):
        assert name not in table, f"{name} registered twice"
        table[name] = (factory, options, description)

    hook(register)
    return table


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_out_dim_for_any_channels(channels):
    model = build_resnet18(ResNetOptions(small_images=True), RunContext(in_channels=channels))
    assert model.out_dim == 512
    assert isinstance(model.fc, nn.Identity)
    assert model.conv1.in_channels == channels
    out = model(torch.rand(2, channels, 16, 16))
    assert out.shape == (2, 512)


def test_resnet_small_images_stem():
    small = build_resnet18(ResNetOptions(small_images=True), RunContext())
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    imagenet = build_resnet18(ResNetOptions(), RunContext())
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_resnet_imagenet_stem_with_one_channel():
    model = build_resnet18(ResNetOptions(), RunContext(in_channels=1))
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 512)


def test_resnet50_out_dim_without_forward():
    model = build_resnet50(ResNetOptions(zero_init_residual=True), RunContext(in_channels=1))
    assert model.out_dim == 2048
    assert isinstance(model.fc, nn.Identity)
    # zero_init_residual reaches torchvision: the last BN of each bottleneck starts at 0.
    assert torch.all(model.layer1[0].bn3.weight == 0)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 12), (3, 8)])
def test_small_cnn_shapes(channels, size):
    model = build_small_cnn(SmallCNNOptions(width=8), RunContext(in_channels=channels))
    assert model.out_dim == 64
    out = model(torch.rand(4, channels, size, size))
    assert out.shape == (4, model.out_dim)
    out.sum().backward()


def test_small_cnn_width_validated():
    with pytest.raises(ValueError):
        SmallCNNOptions(width=0)


def test_backbone_registration_builds_each():
    table = _recorded(backbones.jef_register_backbones)
    assert set(table) == {"resnet18", "resnet50", "small_cnn"}
    for name, (factory, options, description) in table.items():
        assert attrs.has(options) and description
        model = factory(options(), RunContext(in_channels=1))
        assert isinstance(model, nn.Module) and model.out_dim > 0, name
    assert table["resnet18"][1] is ResNetOptions


def test_options_types_are_real_types():
    for cls in (ResNetOptions, SmallCNNOptions, MLPOptions):
        for field in attrs.fields(cls):
            assert not isinstance(field.type, str), f"{cls.__name__}.{field.name}"
            assert field.metadata.get("doc"), f"{cls.__name__}.{field.name} has no doc"


def _layer_types(head):
    return [type(layer) for layer in head.layers]


def test_mlp_structure_from_dims():
    head = build_mlp(MLPOptions(dims=[32, 16, 8]), RunContext(in_dim=10))
    assert head.out_dim == 8
    assert _layer_types(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU,
                                  nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [layer for layer in head.layers if isinstance(layer, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(10, 32), (32, 16), (16, 8)]
    # A bias before a BatchNorm is cancelled by it, so only the last linear layer has one.
    assert [lin.bias is not None for lin in linears] == [False, False, True]
    assert head(torch.rand(5, 10)).shape == (5, 8)


def test_mlp_batch_norm_options():
    head = build_mlp(MLPOptions(dims=[16, 4], batch_norm=False, last_batch_norm=True, activation="gelu",
                                bias=False), RunContext(in_dim=6))
    assert _layer_types(head) == [nn.Linear, nn.GELU, nn.Linear, nn.BatchNorm1d]
    assert not head.layers[-1].affine
    assert all(layer.bias is None for layer in head.layers if isinstance(layer, nn.Linear))
    single = build_mlp(MLPOptions(dims=[4]), RunContext(in_dim=6))
    assert _layer_types(single) == [nn.Linear]


def test_mlp_options_validated():
    with pytest.raises(ValueError):
        MLPOptions(dims=[])
    with pytest.raises(ValueError):
        MLPOptions(dims=[8, 0])
    with pytest.raises(ValueError):
        MLPOptions(activation="tanh")


@pytest.mark.parametrize("factory", [build_mlp, build_identity])
def test_heads_need_in_dim(factory):
    options = MLPOptions() if factory is build_mlp else NoOptions()
    with pytest.raises(ValueError, match=r"needs ctx\.in_dim"):
        factory(options, RunContext())


def test_identity_head_and_registration():
    table = _recorded(heads.jef_register_heads)
    assert set(table) == {"mlp", "identity", "token_linear"}
    ident = table["identity"][0](NoOptions(), RunContext(in_dim=7))
    x = torch.rand(3, 7)
    assert ident.out_dim == 7 and torch.equal(ident(x), x)
    mlp = table["mlp"][0](MLPOptions(), RunContext(in_dim=7))
    assert mlp.out_dim == 128
