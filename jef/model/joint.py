"""The joint-embedding model and its objective.

The objective of a step (see the concepts page)::

    L = w_D · mean_(a,b) mean_n D(p_a^n, t_b^n)  +  Σ_k w_k · F_k(outputs)

with ``p_a`` the online output of view ``a``, ``t_b`` the target embedding of
global view ``b`` and (a, b) every ordered pair of distinct views. The energy
term is averaged (not summed) over pairs so that its scale does not depend on
the number of views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from jef.components import Branch, Masks, StepOutputs, StepResult, Target, Term
from jef.model.masked import masked_energy, masked_outputs
from jef.model.targets import SharedTarget

__all__ = ["JointEmbedding", "Objective"]


class Objective(nn.Module):
    """``w_D · mean over pairs of D`` plus the weighted functionals, with every term reported.

    Args:
        energy: The energy term, or None for an objective made of functionals only.
        functionals: The functional terms, in pipeline order (target makers run in this order). Two
            functionals of one name are logged as ``name`` and ``name.1``.
    """

    def __init__(self, energy: Term | tuple[str, nn.Module, float] | None,
                 functionals: Sequence[Term | tuple[str, nn.Module, float]]) -> None:
        super().__init__()
        energy = Term(*energy) if energy is not None else None
        terms = [Term(*term) for term in functionals]
        self.energy = energy.module if energy else None
        self.energy_name, self.energy_weight = (energy.name, energy.weight) if energy else ("", 0.0)
        self.functionals = nn.ModuleList(term.module for term in terms)
        self.functional_names = _unique([term.name for term in terms])
        self.functional_weights = [term.weight for term in terms]

    def forward(self, out: StepOutputs) -> StepResult:
        """The loss, its named terms (unweighted, for logging) and the outputs with the made targets."""
        for functional in self.functionals:
            if callable(getattr(functional, "targets", None)):
                out = functional.targets(out)
        terms: dict[str, Tensor] = {}
        loss: Tensor | None = None
        if self.energy is not None:
            value = self.energy_term(out)
            terms[f"energy/{self.energy_name}"] = value
            loss = self.energy_weight * value
        for name, functional, weight in zip(self.functional_names, self.functionals, self.functional_weights,
                                            strict=True):
            result = functional(out)
            parts = result if isinstance(result, dict) else {"": result}
            for key, value in parts.items():
                terms[f"{name}/{key}" if key else name] = value
                loss = weight * value if loss is None else loss + weight * value
        if loss is None:
            raise ValueError("the objective has no term: the energy is missing and every functional returned "
                             "an empty dict; add an energy or a functional that returns a loss")
        return StepResult(loss, terms, out)

    def energy_term(self, out: StepOutputs) -> Tensor:
        """The energy's mean over every ordered pair (a, b) of distinct views, b a global view (every pair when the
        target is a named encoder's branch of other views).

        Every pair is evaluated, mirrored ones too: with a shared target D(z_1, z_2) and D(z_2, z_1) are
        equal in exact arithmetic for a symmetric D, but their gradients differ in the last bits, and
        reusing one for the other would change every trained figure for a saving the backbone dwarfs.
        """
        if out.masked is not None:
            return masked_energy(self.energy, out.masked)
        online, target = out.online.out, out.target.z
        # A target that is a named encoder's branch encoded other inputs (CMC's second view): its entry b is not
        # the online entry b's input, so every pair counts.
        separate = out.towers is not None and any(out.target is branch for branch in out.towers.values())
        pairs = [(a, b) for a in range(len(online)) for b in range(len(target)) if a != b or separate]
        if not pairs:
            raise ValueError("energy: no view pairs; the augmenter must make at least 2 views")
        return torch.stack([self.energy(online[a], target[b]).mean() for a, b in pairs]).mean()


class JointEmbedding(nn.Module):
    """Online branch (backbone → projector → optional predictor), target branch and objective.

    Views of equal size go through the backbone in one call per resolution, or one call per view with
    ``backbone_calls="per_view"`` (``model.backbone_calls``: :class:`jef.config.options.ModelOptions` says what each
    does to BatchNorm's statistics).

    Args:
        backbone: Maps images to representations ``h``.
        projector: Maps ``h`` to embeddings ``z`` (None: ``z = h``).
        predictor: Maps ``z`` to the online output ``p`` (asymmetric methods), or None.
        objective: The loss of a step.
        target: The target maker (``target:`` in the pipeline; default: the shared online branch). It is
            attached here: an EMA target adds ``target_backbone`` and ``target_projector``.
        n_global: Views ``[0, n_global)`` are global; targets are made from them only.
        masker: The pipeline's masker, or None. With one, the step draws masks for every view and the model
            takes its masked path (:mod:`jef.model.masked`); it holds no parameters.
        towers: The pipeline's named encoders (:mod:`jef.model.towers`), run at every step; the online branch
            sees the views none of them claims, and ``n_global`` counts the global views among those.
        backbone_calls: ``per_resolution`` (one backbone call per view size) or ``per_view``.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module | None, predictor: nn.Module | None,
                 objective: Objective, target: Target | None = None, n_global: int = 2,
                 masker: nn.Module | None = None, towers: Mapping[str, nn.Module] | None = None,
                 backbone_calls: str = "per_resolution") -> None:
        super().__init__()
        if backbone_calls not in ("per_resolution", "per_view"):
            raise ValueError(f"backbone_calls must be 'per_resolution' or 'per_view', got {backbone_calls!r}")
        self.backbone_calls = backbone_calls
        self.backbone = backbone
        self.projector = projector if projector is not None else nn.Identity()
        self.predictor = predictor
        self.objective = objective
        self.n_global = n_global
        self.masker = masker
        self.towers = nn.ModuleDict(towers) if towers else None
        # The view positions the towers encode: the online branch gets the others.
        self.claimed = frozenset(i for tower in (towers or {}).values() for i in (tower.views or ()))
        self.target = target if target is not None else SharedTarget()
        self.shuffle_bn = bool(getattr(self.target, "shuffle_bn", False))
        self.target.attach(self)

    def draw_masks(self, views: list[Tensor], generator: torch.Generator | None = None) -> list[Masks] | None:
        """One :class:`~jef.components.Masks` per view from the pipeline's masker, or None without one.

        A step calls it after the augmenter, with the same generator (``model(views, indices, masks=...)``), so
        that W processes draw the masks one process draws for the global batch.
        """
        if self.masker is None:
            return None
        return [self.masker(view, generator=generator) for view in views]

    def encode(self, views: list[Tensor], backbone: nn.Module, projector: nn.Module | None) -> Branch:
        """Run views through a backbone (one call per resolution, or per view) and a projector."""
        if self.backbone_calls == "per_view":
            hs = [backbone(view) for view in views]
            return Branch(h=hs, z=[projector(x) for x in hs] if projector is not None else hs)
        h: list[Tensor | None] = [None] * len(views)
        for shape in dict.fromkeys(v.shape[-2:] for v in views):
            chosen = [i for i, v in enumerate(views) if v.shape[-2:] == shape]
            outputs = backbone(torch.cat([views[i] for i in chosen])).chunk(len(chosen))
            for i, out in zip(chosen, outputs, strict=True):
                h[i] = out
        hs = [x for x in h if x is not None]
        z = [projector(x) for x in hs] if projector is not None else hs
        return Branch(h=hs, z=z)

    def forward(self, views: list[Tensor], indices: Tensor | None = None, masks: list[Masks] | None = None,
                mask_generator: torch.Generator | None = None,
                fields: Mapping[str, Any] | None = None, facts: Mapping[str, Tensor] | None = None) -> StepResult:
        """Both branches and the objective; with masks (one per view) the masked path.

        A step hands the run's generator as ``mask_generator`` (used after the augmenter's draws): with a
        masker and no ``masks`` given, :meth:`draw_masks` draws them from it. ``fields`` are the batch's fields
        beyond image, label and index (token ids of a caption), for the towers that encode them; ``facts`` what the
        views carry (:class:`~jef.components.Views`), handed to the objective as ``StepOutputs.facts``.
        """
        if masks is None and mask_generator is not None:
            masks = self.draw_masks(views, mask_generator)
        if masks is not None:
            return self.objective(masked_outputs(self, views, masks, indices))
        online_views = [v for i, v in enumerate(views) if i not in self.claimed] if self.claimed else views
        online = self.encode(online_views, self.backbone, self.projector)
        if self.predictor is not None:
            online = attrs.evolve(online, p=[self.predictor(z) for z in online.z])
        towers = None
        if self.towers is not None:
            towers = {name: tower.encode(self, views, fields) for name, tower in self.towers.items()}
        embed_towers = getattr(self.target, "embed_towers", None)
        if towers is not None and callable(embed_towers):
            target = embed_towers(self, online_views, online, towers)
        else:
            target = self.target.embed(self, online_views, online)
        return self.objective(StepOutputs(online=online, target=target, n_global=self.n_global, indices=indices,
                                          towers=towers, facts=dict(facts) if facts else None))


def _unique(names: list[str]) -> list[str]:
    """``['variance', 'variance']`` -> ``['variance', 'variance.1']`` so log keys never collide."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name, 0)
        result.append(name if count == 0 else f"{name}.{count}")
        seen[name] = count + 1
    return result
