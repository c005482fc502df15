"""Pretext-task baselines as jef methods: ``rotation``, ``jigsaw``, ``relative_patch``, ``denoising_ae``.

Before joint-embedding methods, self-supervised learning meant solving a *pretext task* whose labels come free
with the image: which rotation was applied [1], how the tiles of a puzzle were shuffled [2], where one patch sits
relative to another [3], what the image looked like before it was corrupted [4]. In jef's terms each is an
augmenter that makes the views *and the answer* (a fact of :class:`jef.components.Views`), one online branch
(``target: shared``, no projector, no energy D) and a functional that owns the head solving the task:

=================  ========================  =========================================================
method             augmenter (fact)          functional
=================  ========================  =========================================================
``rotation``       ``rotation_views``        ``pretext_classifier`` (fact rotation, 4 classes)
``jigsaw``         ``jigsaw_views``          ``pretext_classifier`` (fact permutation, P classes)
``relative_patch`` ``relative_patch_views``  ``pretext_classifier`` (fact position, 8 classes)
``denoising_ae``   ``denoise_views``         ``reconstruction`` (fact clean)
=================  ========================  =========================================================

References:
    [1] Gidaris, Singh, Komodakis. Unsupervised Representation Learning by Predicting Image Rotations.
        ICLR 2018. arXiv:1803.07728.
    [2] Noroozi, Favaro. Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles. ECCV 2016.
        arXiv:1603.09246.
    [3] Doersch, Gupta, Efros. Unsupervised Visual Representation Learning by Context Prediction. ICCV 2015.
        arXiv:1505.05192.
    [4] Vincent, Larochelle, Bengio, Manzagol. Extracting and Composing Robust Features with Denoising
        Autoencoders. ICML 2008.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl
from jef_plugin_pretext.denoise import DenoiseOptions, DenoiseViews, build_denoise_views
from jef_plugin_pretext.heads import (PretextClassifier, PretextClassifierOptions, Reconstruction,
                                      ReconstructionOptions, build_pretext_classifier, build_reconstruction)
from jef_plugin_pretext.jigsaw import JigsawOptions, JigsawViews, build_jigsaw_views, permutation_set
from jef_plugin_pretext.relative_patch import RelativePatchOptions, RelativePatchViews, build_relative_patch_views
from jef_plugin_pretext.rotation import RotationOptions, RotationViews, build_rotation_views

__all__ = ["DenoiseOptions", "DenoiseViews", "JigsawOptions", "JigsawViews", "PretextClassifier",
           "PretextClassifierOptions", "RECIPES", "Reconstruction", "ReconstructionOptions", "RelativePatchOptions",
           "RelativePatchViews", "RotationOptions", "RotationViews", "permutation_set"]
__version__ = "0.1.0"

_HERE = Path(__file__).parent
#: Method name -> its recipe file.
RECIPES = {name: _HERE / f"{name}.yaml" for name in ("rotation", "jigsaw", "relative_patch", "denoising_ae")}
PAPERS = {
    "rotation": "Gidaris, Singh, Komodakis, Predicting Image Rotations (RotNet), ICLR 2018, arXiv:1803.07728",
    "jigsaw": "Noroozi, Favaro, Solving Jigsaw Puzzles, ECCV 2016, arXiv:1603.09246",
    "relative_patch": "Doersch, Gupta, Efros, Context Prediction, ICCV 2015, arXiv:1505.05192",
    "denoising_ae": "Vincent, Larochelle, Bengio, Manzagol, Denoising Autoencoders, ICML 2008",
}


@hookimpl
def jef_register_methods(register):
    """Register the four pretext recipes."""
    register("rotation", RECIPES["rotation"], paper=PAPERS["rotation"],
             description="RotNet: predict which of 4 rotations (0/90/180/270°) was applied to the image")
    register("jigsaw", RECIPES["jigsaw"], paper=PAPERS["jigsaw"],
             description="Jigsaw puzzles: predict which of P permutations (max-min Hamming set) shuffled 3x3 tiles")
    register("relative_patch", RECIPES["relative_patch"], paper=PAPERS["relative_patch"],
             description="Context prediction: predict where one of 8 neighbour patches sits relative to the centre")
    register("denoising_ae", RECIPES["denoising_ae"], paper=PAPERS["denoising_ae"],
             description="Denoising autoencoder: reconstruct the clean image from a masking-noise-corrupted one")


@hookimpl
def jef_register_augmenters(register):
    """Register the four pretext augmenters."""
    register("rotation_views", build_rotation_views, options=RotationOptions, paper=PAPERS["rotation"],
             description="a crop rotated by k·90°, k uniform in 0..3 (all_rotations: 4 views); fact rotation")
    register("jigsaw_views", build_jigsaw_views, options=JigsawOptions, paper=PAPERS["jigsaw"],
             description="9 tiles of a 3x3 grid (gap, jitter) shuffled by one of P permutations; fact permutation")
    register("relative_patch_views", build_relative_patch_views, options=RelativePatchOptions,
             paper=PAPERS["relative_patch"],
             description="the centre patch and one of its 8 neighbours (gap, jitter); fact position")
    register("denoise_views", build_denoise_views, options=DenoiseOptions, paper=PAPERS["denoising_ae"],
             description="the image corrupted by masking or Gaussian noise; facts clean, corrupted")


@hookimpl
def jef_register_functionals(register):
    """Register ``pretext_classifier`` and ``reconstruction``."""
    register("pretext_classifier", build_pretext_classifier, options=PretextClassifierOptions,
             paper="; ".join(PAPERS[m] for m in ("rotation", "jigsaw", "relative_patch")),
             description="cross-entropy of an MLP head (trained with the model) predicting a fact of the views "
                         "from the concatenated per-view outputs (or each view's, per_view)")
    register("reconstruction", build_reconstruction, options=ReconstructionOptions, paper=PAPERS["denoising_ae"],
             description="MSE of an MLP decoder's image from the corrupted view's output against facts['clean'] "
                         "(corrupted/clean weights: the emphasised DAE)")
