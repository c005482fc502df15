"""SwAV as a jef method: the ``swav`` recipe and the ``sinkhorn`` functional that makes its targets.

SwAV [1] learns ``K`` prototypes ``c_k`` with the network. For a global view
``b`` it computes *codes* ``q_b`` — a soft assignment of the batch's
embeddings to the prototypes, constrained to spread the batch equally over
them (Sinkhorn–Knopp) — and asks every other view ``a``, including the small
multi-crop views, to predict them from its own embedding ``z_a``::

    ℓ(z_a, q_b) = − Σ_k q_b,k · log softmax(c_kᵀ z_a / τ)
    L = 1/2 Σ_b 1/(V − 1) Σ_(a ≠ b) ℓ(z_a, q_b)    (b over the two global views, a over all V)

In jef's terms: the functional A/B ``sinkhorn`` makes the targets (the codes
``q``, and the prototype scores of the online outputs), and the energy D is
the core ``cross_entropy`` with τ = 0.1. The objective averages D over the
ordered pairs (a, b), a ≠ b, b global: exactly ``L``.

References:
    [1] Caron, Misra, Mairal, Goyal, Bojanowski, Joulin. Unsupervised Learning
        of Visual Features by Contrasting Cluster Assignments. NeurIPS 2020.
        arXiv:2006.09882.
"""

from __future__ import annotations

from pathlib import Path

from jef import hookimpl
from jef_plugin_swav.sinkhorn import SinkhornAssignment, SinkhornOptions, build_sinkhorn

__all__ = ["PAPER", "RECIPE", "SinkhornAssignment", "SinkhornOptions", "build_sinkhorn"]

__version__ = "0.1.0"
RECIPE = Path(__file__).with_name("recipe.yaml")
PAPER = "[1] Caron et al., SwAV, NeurIPS 2020, arXiv:2006.09882"


@hookimpl
def jef_register_methods(register):
    """Register the ``swav`` recipe (multi-crop: its objective is meant for local views)."""
    register("swav", RECIPE, description="SwAV: predict the other views' Sinkhorn codes over learned prototypes, "
                                         "with multi-crop", paper=PAPER, multi_crop=True)


@hookimpl
def jef_register_functionals(register):
    """Register ``sinkhorn``."""
    register("sinkhorn", build_sinkhorn, options=SinkhornOptions,
             description="SwAV's prototypes and Sinkhorn-Knopp codes: makes the targets of the cross_entropy energy "
                         "(equipartitioned soft assignments; optional queue)",
             paper=PAPER)
