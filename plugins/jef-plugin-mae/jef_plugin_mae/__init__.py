"""MAE as a jef method: the modern denoising autoencoder, the generative baseline of joint embeddings.

MAE [1] hides 75 % of an image's patches at random; a ViT encoder sees only the visible 25 %, and a light
decoder (a narrow ViT over the visible tokens, the CLS token and a mask token at each hidden position) predicts
the pixels of every hidden patch. The target of a patch is its pixels normalised by their own mean and
standard deviation; the loss is their mean squared error, averaged over the hidden patches::

    t_i = (x_i − mean(x_i)) / sqrt(var(x_i) + 1e-6)         x_i the p·p·C pixels of patch i
    L   = mean over hidden i of  mean_j (d(z)_ij − t_ij)²

Unlike the joint-embedding methods it predicts the input, not a representation: the seeds' denoising
autoencoder, with masking as the noise. In jef's terms: the masker is ``random`` (ratio 0.75, ``mode: drop``),
the token head (predictor slot) ``vit_predictor`` with ``queries: hidden, out: pixels, cls: true`` (the
decoder), the target maker ``patch_pixels`` (normalised), the energy D ``mse`` at the hidden patches; no target
encoder (``target: shared``), no functional term A/B.

References:
    [1] He, Chen, Xie, Li, Dollár, Girshick. Masked Autoencoders Are Scalable Vision Learners. CVPR 2022.
        arXiv:2111.06377.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl

__version__ = "0.1.0"
RECIPE = Path(__file__).with_name("mae.yaml")
PAPER = "[1] He et al., MAE, CVPR 2022, arXiv:2111.06377"


@hookimpl
def jef_register_methods(register):
    """Register the ``mae`` recipe (ViT-B/16)."""
    register("mae", RECIPE, description="MAE (ViT-B/16): an encoder on 25 % of the patches and a light decoder "
             "reconstruct the normalised pixels of the other 75 % (MSE); the generative baseline", paper=PAPER)
