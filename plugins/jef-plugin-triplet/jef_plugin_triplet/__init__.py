"""FaceNet's triplet loss as a jef method: two views of an image are anchor and positive, other images negatives.

FaceNet [1] learns an embedding on the unit sphere in which the squared distance between two faces of one
person is smaller, by a margin α, than to any face of another person::

    L = Σ_{(a, p, n)} max(‖f(a) − f(p)‖² − ‖f(a) − f(n)‖² + α, 0)        α = 0.2

Self-supervised, each image is its own identity: its two augmented views are the anchor and the positive, the
other images of the global batch (both their views) the negatives, chosen by semi-hard mining [1] or batch-hard
mining [2]. The maths is in :mod:`jef_plugin_triplet.mining`, the functional in :mod:`jef_plugin_triplet.terms`.

In jef's terms there is no energy D (``energy: null``: the positive's distance enters the hinge together with
the mined negative's, so it cannot be a separate per-sample term); the functional A/B is this plugin's
``triplet`` on the projector outputs ``z`` of the two global views (local crops, if any, are extra anchors);
the target is ``shared``.

References:
    [1] Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition and Clustering.
        CVPR 2015. arXiv:1503.03832.
    [2] Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person Re-Identification. 2017.
        arXiv:1703.07737.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl
from jef_plugin_triplet.mining import MINING, select_triplets, squared_distances, triplet_loss
from jef_plugin_triplet.terms import Triplet, TripletOptions, build_triplet, two_view_triplet_loss

__all__ = ["MINING", "Triplet", "TripletOptions", "build_triplet", "select_triplets", "squared_distances",
           "triplet_loss", "two_view_triplet_loss"]
__version__ = "0.1.0"
#: ``method: triplet``: ResNet-18, two views, SGD.
RECIPE = Path(__file__).with_name("triplet.yaml")
PAPER = ("[1] Schroff et al., FaceNet, CVPR 2015, arXiv:1503.03832; "
         "[2] Hermans et al., In Defense of the Triplet Loss, 2017, arXiv:1703.07737")


@hookimpl
def jef_register_methods(register):
    """Register ``triplet``; local crops, when the augmenter makes them, are extra anchors."""
    register("triplet", RECIPE, description="FaceNet's triplet loss: the two views of an image as anchor and "
             "positive, both views of the global batch's other images as negatives, semi-hard mining, margin "
             "0.2 on squared distances of unit vectors; ResNet-18, SGD", paper=PAPER, multi_crop=True)


@hookimpl
def jef_register_functionals(register):
    """Register ``triplet``."""
    register("triplet", build_triplet, options=TripletOptions,
             description="FaceNet triplet loss max(d(a,p) − d(a,n) + margin, 0) on squared distances of the "
                         "l2-normalised z: view 0 against view 1 (and back), negatives both views of every other "
                         "image of the gathered global batch; semi_hard or batch_hard mining", paper=PAPER)
