"""Built-in heads: the MLP used as projector or predictor, and the identity.

A head maps ``[B, ctx.in_dim]`` to ``[B, out_dim]``. The pipeline sets
``ctx.in_dim`` (backbone width for a projector, projector width for a
predictor) before calling the factory.
"""

import attrs
from torch import Tensor, nn

from jef.components import NoOptions, RunContext
from jef.hookspecs import Register, hookimpl

__all__ = ["IdentityHead", "MLPHead", "MLPOptions", "build_identity", "build_mlp", "jef_register_heads"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _require_in_dim(name: str, ctx: RunContext) -> int:
    """Return ``ctx.in_dim`` or explain why a head cannot be built without it."""
    if ctx.in_dim is None:
        raise ValueError(
            f"head '{name}' needs ctx.in_dim (the width of its input), but it is None; "
            "build heads with attrs.evolve(ctx, in_dim=<backbone or projector out_dim>)"
        )
    if ctx.in_dim < 1:
        raise ValueError(f"head '{name}': ctx.in_dim must be >= 1, got {ctx.in_dim}")
    return ctx.in_dim


@attrs.frozen(kw_only=True)
class MLPOptions:
    """Options of the MLP head."""

    dims: list[int] = attrs.field(
        factory=lambda: [2048, 128],
        validator=attrs.validators.deep_iterable(
            member_validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)],
            iterable_validator=attrs.validators.min_len(1),
        ),
        metadata={"doc": "widths of the hidden layers then the output, e.g. [2048, 128]"},
    )
    batch_norm: bool = attrs.field(default=True, metadata={"doc": "BatchNorm after each hidden linear layer"})
    last_batch_norm: bool = attrs.field(
        default=False, metadata={"doc": "affine-free BatchNorm on the output (SimCLR v2, Barlow Twins)"}
    )
    activation: str = attrs.field(
        default="relu",
        validator=attrs.validators.in_(sorted(_ACTIVATIONS)),
        metadata={"doc": "hidden-layer non-linearity: relu or gelu"},
    )
    bias: bool = attrs.field(
        default=True,
        metadata={"doc": "bias in linear layers (dropped where a BatchNorm follows, which cancels it)"},
    )


class MLPHead(nn.Module):
    """Multi-layer perceptron: ``(Linear -> [BN] -> act) x hidden, Linear -> [BN]``.

    The non-linear projector of SimCLR (Chen et al., arXiv:2002.05709, sec. 4.2)
    and the projector/predictor of BYOL, SimSiam, Barlow Twins and VICReg.

    Args:
        in_dim: Input width.
        dims: Hidden widths followed by the output width.
        batch_norm: BatchNorm on hidden layers.
        last_batch_norm: Affine-free BatchNorm on the output layer; it
            standardises each output dimension, as in SimCLR v2 and Barlow Twins.
        activation: ``"relu"`` or ``"gelu"``.
        bias: Bias on linear layers not followed by a BatchNorm.

    Attributes:
        out_dim: ``dims[-1]``.
    """

    def __init__(self, in_dim: int, dims: list[int], *, batch_norm: bool = True,
                 last_batch_norm: bool = False, activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in dims[:-1]:
            layers.append(nn.Linear(width, hidden, bias=bias and not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(_ACTIVATIONS[activation]())
            width = hidden
        layers.append(nn.Linear(width, dims[-1], bias=bias and not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(dims[-1], affine=False))
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[B, in_dim]`` to ``[B, out_dim]``."""
        return self.layers(x)


def build_mlp(options: MLPOptions, ctx: RunContext) -> MLPHead:
    """MLP head on ``ctx.in_dim`` inputs."""
    return MLPHead(_require_in_dim("mlp", ctx), list(options.dims), batch_norm=options.batch_norm,
                   last_batch_norm=options.last_batch_norm, activation=options.activation,
                   bias=options.bias)


class IdentityHead(nn.Identity):
    """A head that returns its input (e.g. no projector); ``out_dim == in_dim``."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = in_dim


def build_identity(options: NoOptions, ctx: RunContext) -> IdentityHead:
    """Identity head; passes ``ctx.in_dim`` through."""
    return IdentityHead(_require_in_dim("identity", ctx))


@hookimpl
def jef_register_heads(register: Register) -> None:
    """Register ``mlp`` and ``identity``."""
    register("mlp", build_mlp, options=MLPOptions,
             description="MLP projector/predictor with optional BatchNorm",
             paper="Chen et al., A Simple Framework for Contrastive Learning (SimCLR), arXiv:2002.05709")
    register("identity", build_identity, options=NoOptions, description="no head: z = h")
