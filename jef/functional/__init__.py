"""Pure tensor functions: similarities, energies and the batch-level losses built from them.

No state: the registered components of :mod:`jef.builtin` (and of method
plugins) wrap these and add the state (queues, memory banks). Communication
over processes is the caller's too (Sinkhorn and SIGReg take the collective
they use as an argument), except in :mod:`jef.functional.crossmodal`, whose
losses gather the other side themselves unless called with ``gather=False``. Inputs are ``[N, d]``
embeddings; shapes are checked with messages that name the function and the
argument. Each module's docstring holds the paper references of its maths;
the wrappers point here instead of repeating them:

* :mod:`jef.functional.energies` -- per-sample energies D (cosine, MSE, smooth L1, scaled cosine, soft
  cross-entropy);
* :mod:`jef.functional.tokens` -- targets from token sets: the average of normalised block outputs
  (data2vec), normalised patch pixels (MAE);
* :mod:`jef.functional.contrastive` -- InfoNCE, its log-sum-exp denominator, NT-Xent;
* :mod:`jef.functional.queue` -- MoCo's queue of negatives: the denominator over it and the enqueue;
* :mod:`jef.functional.nce` -- noise-contrastive estimation over a memory bank, and its momentum update;
* :mod:`jef.functional.decorrelation` -- VICReg's variance and covariance, Barlow Twins' cross-correlation loss;
* :mod:`jef.functional.sinkhorn` -- Sinkhorn-Knopp codes (SwAV);
* :mod:`jef.functional.crossmodal` -- image-text contrastive losses: CLIP's symmetric cross-entropy, SigLIP's
  pairwise sigmoid loss (each rank's rows against the global batch's, through :func:`jef.dist.gather`);
* :mod:`jef.functional.sigreg` -- LeJEPA's SIGReg (a sliced Epps-Pulley test against N(0, I)) and its prediction
  term.

Precision: every function here computes in at least float32, with autocast
disabled, and returns float32 for float16/bfloat16 inputs (normalisation,
log-sum-exp, softmax and batch statistics lose too much or overflow in half
precision); see the documentation's "Mixed precision" page.
"""

from jef.functional._checks import normalize as l2_normalize
from jef.functional.contrastive import cosine_similarity_matrix, info_nce, info_nce_denominator, nt_xent
from jef.functional.crossmodal import clip_loss, siglip_loss
from jef.functional.decorrelation import (
    barlow_twins_loss,
    covariance_penalty,
    cross_correlation,
    cross_correlation_loss,
    off_diagonal,
    variance_hinge,
)
from jef.functional.energies import (
    cosine_distance,
    cosine_similarity,
    mse,
    scaled_cosine,
    smooth_l1,
    soft_cross_entropy,
)
from jef.functional.nce import full_softmax_loss, momentum_update, nce_loss, nce_normaliser, nce_posterior
from jef.functional.queue import enqueue, queue_info_nce_denominator, random_unit_queue
from jef.functional.sigreg import epps_pulley, lejepa_prediction, sliced_epps_pulley
from jef.functional.sinkhorn import sinkhorn_knopp
from jef.functional.tokens import block_average, normalize_tokens, patch_pixels

__all__ = [
    "barlow_twins_loss",
    "block_average",
    "clip_loss",
    "cosine_distance",
    "cosine_similarity",
    "cosine_similarity_matrix",
    "covariance_penalty",
    "cross_correlation",
    "cross_correlation_loss",
    "enqueue",
    "epps_pulley",
    "full_softmax_loss",
    "info_nce",
    "info_nce_denominator",
    "l2_normalize",
    "lejepa_prediction",
    "momentum_update",
    "mse",
    "nce_loss",
    "nce_normaliser",
    "nce_posterior",
    "normalize_tokens",
    "nt_xent",
    "off_diagonal",
    "patch_pixels",
    "queue_info_nce_denominator",
    "random_unit_queue",
    "scaled_cosine",
    "siglip_loss",
    "sinkhorn_knopp",
    "sliced_epps_pulley",
    "smooth_l1",
    "soft_cross_entropy",
    "variance_hinge",
]
