"""Pure tensor functions: similarities, energies and contrastive losses.

No state, no distributed communication: the registered components in
:mod:`jef.builtin.energies` and :mod:`jef.builtin.functionals` wrap these and
add the gathering over processes. Inputs are ``[N, d]`` embeddings; shapes are
checked with messages that name the function and the argument.

Precision: every function here computes in at least float32, with autocast
disabled, and returns float32 for float16/bfloat16 inputs (normalisation,
log-sum-exp, softmax and batch statistics lose too much or overflow in half
precision); see the documentation's "Mixed precision" page.
"""

from jef.functional._checks import normalize as l2_normalize
from jef.functional.contrastive import cosine_similarity_matrix, info_nce, info_nce_denominator, nt_xent
from jef.functional.energies import cosine_distance, cosine_similarity, mse, scaled_cosine, soft_cross_entropy
from jef.functional.sinkhorn import sinkhorn_knopp

__all__ = [
    "cosine_distance",
    "cosine_similarity",
    "cosine_similarity_matrix",
    "info_nce",
    "info_nce_denominator",
    "l2_normalize",
    "mse",
    "nt_xent",
    "scaled_cosine",
    "sinkhorn_knopp",
    "soft_cross_entropy",
]
from jef.functional.nce import full_softmax_loss, momentum_update, nce_loss, nce_normaliser, nce_posterior

__all__ += ["full_softmax_loss", "momentum_update", "nce_loss", "nce_normaliser", "nce_posterior"]
from jef.functional.decorrelation import (  # noqa: E402 - appended after the list above
    barlow_twins_loss,
    covariance_penalty,
    cross_correlation,
    cross_correlation_loss,
    off_diagonal,
    variance_hinge,
)

__all__ += ["barlow_twins_loss", "covariance_penalty", "cross_correlation", "cross_correlation_loss", "off_diagonal",
            "variance_hinge"]
