"""SimSiam as a jef method: a recipe over jef's shared parts.

SimSiam [1] embeds two views with one network f (backbone and projector),
maps each with a predictor h, and minimises the symmetrised negative cosine
with a stop-gradient on the other view's projection::

    L = ½ D(p1, stopgrad(z2)) + ½ D(p2, stopgrad(z1)),   D(p, z) = −cos(p, z)

In jef's terms: the energy D is ``cosine`` (1 − cos per sample; the constant
1 changes no gradient), averaged over the two ordered view pairs, which *is*
the ½ + ½ symmetrisation; there is no functional A/B; the target is
``stopgrad`` (the online projections, detached). The predictor keeps its
base learning rate (``train.optimizer.fixed_lr_predictor``, [1] Sec. 4.1).

References:
    [1] Chen, He. Exploring Simple Siamese Representation Learning. CVPR 2021.
        arXiv:2011.10566.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl

__version__ = "0.1.0"
RECIPE = Path(__file__).with_name("recipe.yaml")
PAPER = "[1] Chen & He, SimSiam, CVPR 2021, arXiv:2011.10566"


@hookimpl
def jef_register_methods(register):
    """Register the ``simsiam`` recipe."""
    register("simsiam", RECIPE, description="SimSiam: predictor + stop-gradient, negative cosine, no negatives",
             paper=PAPER)
