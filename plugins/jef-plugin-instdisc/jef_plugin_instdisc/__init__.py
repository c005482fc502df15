"""Instance discrimination (InstDisc) as a jef method: a recipe over jef's ``memory_bank`` functional.

InstDisc [1] treats each of the ``n`` training images as its own class. The
ℓ2-normalised 128-d feature ``v = f(x)/‖f(x)‖`` of the network is compared to a
memory bank ``V`` holding one unit vector per image with the non-parametric
softmax ``P(i|v) = exp(v_i·v/τ) / Z``, approximated by noise-contrastive
estimation [2] against ``m`` rows drawn uniformly from the bank::

    J = −log h(i, v_i) − Σ_{j=1..m} log(1 − h(j, v_j')),   h(i, v) = P(i|v) / (P(i|v) + m/n)

After each step the rows of the batch's images move towards their new
features, ``v_i ← normalise(0.5·v_i + 0.5·v)``.

In jef's terms the energy D is absent and the whole objective is the
functional A/B ``memory_bank`` (NCE or full softmax over the bank, with
optional proximal regularisation). One view per image; the target is
``shared`` (there is no second network).

References:
    [1] Wu, Xiong, Yu, Lin. Unsupervised Feature Learning via Non-Parametric
        Instance Discrimination. CVPR 2018. arXiv:1805.01978.
    [2] Gutmann, Hyvärinen. Noise-contrastive estimation: A new estimation
        principle for unnormalized statistical models. AISTATS 2010.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl

__version__ = "0.1.0"
RECIPE = Path(__file__).with_name("recipe.yaml")
PAPER = "[1] Wu et al., Instance Discrimination (InstDisc), CVPR 2018, arXiv:1805.01978"


@hookimpl
def jef_register_methods(register):
    """Register the ``instdisc`` recipe."""
    register("instdisc", RECIPE, description="InstDisc: NCE against a memory bank of one feature per image",
             paper=PAPER)
