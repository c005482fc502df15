"""Built-in heads: the MLP used as projector or predictor, the identity, and the token head ``token_linear``.

A head maps ``[B, ctx.in_dim]`` to ``[B, out_dim]``. The pipeline sets
``ctx.in_dim`` (backbone width for a projector, projector width for a
predictor) before calling the factory.
"""

import attrs
from torch import Tensor, nn

from jef.components import Masks, NoOptions, RunContext, Tokens
from jef.config.options import size_limit
from jef.hookspecs import Register, hookimpl

__all__ = ["IdentityHead", "MLPHead", "MLPOptions", "TokenLinearHead", "TokenLinearOptions", "build_identity",
           "build_mlp", "build_token_linear", "jef_register_heads"]

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
            member_validator=[attrs.validators.instance_of(int), attrs.validators.ge(1), size_limit],
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


@attrs.frozen(kw_only=True)
class TokenLinearOptions:
    """Options of the ``token_linear`` token head."""

    out_dim: int | None = attrs.field(default=None,
                                      validator=attrs.validators.optional([attrs.validators.ge(1), size_limit]),
                                      metadata={"doc": "width of the predictions (null: the backbone's width)"})


class TokenLinearHead(nn.Module):
    """A linear map of every patch token, read at the predicted positions: data2vec's regression head.

    Baevski et al., data2vec, ICML 2022, arXiv:2202.03555 (``final_proj``). The encoder saw the masked
    patches as mask tokens (``replace``), so each predicted position has a token to map.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in_dim] -> [..., out_dim]``."""
        return self.linear(x)

    def predict_tokens(self, tokens: Tokens, masks: Masks) -> list[Tensor]:
        """The map of the patch tokens at each predicted set's positions, ``[R_k, out_dim]``."""
        if tokens.patches.shape[1] != masks.hidden.shape[1]:
            raise ValueError(f"token_linear reads every patch position, but the encoder kept "
                             f"{tokens.patches.shape[1]} of {masks.hidden.shape[1]} (the masker's mode is drop); "
                             f"set the masker's mode: replace, or use a head that fills the dropped positions")
        return [self.linear(tokens.patches[positions]) for positions in masks.predict]


def build_token_linear(options: TokenLinearOptions, ctx: RunContext) -> TokenLinearHead:
    """``token_linear`` on ``ctx.in_dim``-wide tokens."""
    in_dim = _require_in_dim("token_linear", ctx)
    return TokenLinearHead(in_dim, options.out_dim or in_dim)


@hookimpl
def jef_register_heads(register: Register) -> None:
    """Register ``mlp``, ``identity`` and ``token_linear``."""
    register("mlp", build_mlp, options=MLPOptions,
             description="MLP projector/predictor with optional BatchNorm",
             paper="Chen et al., A Simple Framework for Contrastive Learning (SimCLR), arXiv:2002.05709")
    register("identity", build_identity, options=NoOptions, description="no head: z = h")
    register("token_linear", build_token_linear, options=TokenLinearOptions,
             description="token head: a linear map of each patch token at the masked positions (data2vec)",
             paper="Baevski et al., data2vec, arXiv:2202.03555")
