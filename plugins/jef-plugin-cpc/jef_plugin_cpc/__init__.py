"""Contrastive Predictive Coding (CPC) on images as a jef method: a patch grid, a causal context, InfoNCE.

CPC [1, Sec. 3.3] cuts each image into a G×G grid of overlapping patches, embeds every patch with one encoder
(``z_{i,j}``), summarises the rows above each position with a context network that only looks up
(``c_{i,j}`` from rows ``≤ i``), and predicts the embeddings ``k`` rows below linearly, ``ẑ_{i+k,j} = W_k
c_{i,j}``; InfoNCE asks each prediction to pick out the true embedding among the patches of the batch. CPC v2 [2]
keeps the objective and changes the parts: a masked-convolution (PixelCNN-style) context network, layer
normalisation, patch augmentations, larger encoders.

In jef's terms: the augmenter ``patch_grid`` makes the ``G²`` patches as views (row-major; the grid side as a
fact), the backbone embeds them all in one call (``z = h``, no projector), the target is the shared online
branch, there is no energy D, and the functional ``cpc`` owns the context network and the ``W_k`` and is the
whole objective, one term per offset (``cpc/k1``, ``cpc/k2``, …).

References:
    [1] van den Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding. 2018.
        arXiv:1807.03748.
    [2] Hénaff, Srinivas, De Fauw, Razavi, Doersch, Eslami, van den Oord. Data-Efficient Image Recognition with
        Contrastive Predictive Coding. ICML 2020. arXiv:1905.09272.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl
from jef_plugin_cpc.context import GRUContext, MaskedConvContext
from jef_plugin_cpc.loss import CPC, CPCOptions, build_cpc, cpc_info_nce, patch_grid_of
from jef_plugin_cpc.patches import PatchGrid, PatchGridOptions, build_patch_grid

__all__ = ["CPC", "CPCOptions", "GRUContext", "MaskedConvContext", "PatchGrid", "PatchGridOptions", "build_cpc",
           "build_patch_grid", "cpc_info_nce", "patch_grid_of"]
__version__ = "0.1.0"
#: ``method: cpc``: a 6×6 grid of 8 px patches (28 px images), ResNet-18 on patches, masked-conv context, K = 2.
RECIPE = Path(__file__).with_name("cpc.yaml")
PAPER = ("[1] van den Oord, Li, Vinyals, Representation Learning with Contrastive Predictive Coding, 2018, "
         "arXiv:1807.03748; [2] Hénaff et al., Data-Efficient Image Recognition with CPC, ICML 2020, "
         "arXiv:1905.09272")


@hookimpl
def jef_register_methods(register):
    """Register the ``cpc`` recipe."""
    register("cpc", RECIPE, description="CPC: a G×G grid of patches embedded by one encoder, a causal (rows above) "
             "context network and linear predictions of the rows below, InfoNCE against every patch of the global "
             "batch", paper=PAPER)


@hookimpl
def jef_register_augmenters(register):
    """Register ``patch_grid``."""
    register("patch_grid", build_patch_grid, options=PatchGridOptions,
             description="CPC's views: one random square crop + flip per image cut into a G×G grid of overlapping "
                         "patches (row-major, G² views); optional CPC v2 per-patch colour drop and jitter",
             paper=PAPER)


@hookimpl
def jef_register_functionals(register):
    """Register ``cpc``."""
    register("cpc", build_cpc, options=CPCOptions,
             description="CPC's InfoNCE: context c_ij (masked conv or GRU, rows <= i) predicts z_{i+k,j} = W_k c_ij, "
                         "k = 1..K, against every patch embedding of the global batch (autograd gather)",
             paper=PAPER)
