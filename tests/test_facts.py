"""Views that carry facts: an augmenter's ``Views(views, facts)`` reach the objective as ``StepOutputs.facts``."""

from __future__ import annotations

import math

import attrs
import torch
from torch import nn

from jef.components import NoOptions, Views
from jef.hookspecs import hookimpl
from jef.testing import fresh_plugins, tiny_run


class FlipViews(nn.Module):
    """One view per image, flipped horizontally or not; the fact ``flipped`` says which."""

    n_views, n_global, size = 1, 1, 16

    def __init__(self) -> None:
        super().__init__()
        self.drawn: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> Views:
        flipped = torch.randint(2, (images.shape[0],), generator=generator)
        self.drawn.append(flipped)
        view = images.float() / 255
        view = torch.where(flipped.bool()[:, None, None, None], view.flip(-1), view)
        return Views([view], {"flipped": flipped})

    def eval_view(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255


class FlipClassifier(nn.Module):
    """Predicts the fact from the view's embedding (a pretext task), and records what it was given."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.head = nn.Linear(width, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, out):
        self.seen.append(out.facts["flipped"])
        return nn.functional.cross_entropy(self.head(out.online.z[0]), out.facts["flipped"])


@attrs.define
class FlipPlugin:
    augmenter: FlipViews | None = None
    functional: FlipClassifier | None = None

    @hookimpl
    def jef_register_augmenters(self, register):
        register("flip_views", self._augmenter, options=NoOptions, description="test: flipped views + fact")

    @hookimpl
    def jef_register_functionals(self, register):
        register("flip_classifier", self._functional, options=NoOptions, description="test: predicts the flip")

    def _augmenter(self, options, ctx):
        self.augmenter = FlipViews()
        return self.augmenter

    def _functional(self, options, ctx):
        self.functional = FlipClassifier(ctx.online_dim)
        return self.functional


def test_the_facts_of_the_views_reach_the_objective():
    plugin = FlipPlugin()
    plugins = fresh_plugins(plugin)
    result = tiny_run({"augmenter": {"name": "flip_views"}, "energy": None,
                       "functionals": [{"name": "flip_classifier"}], "projector": {"name": "mlp", "dims": [8]},
                       "eval": {"knn": {"enabled": False}}}, steps=3, plugins=plugins)
    assert math.isfinite(result.metrics["loss"])
    assert len(plugin.functional.seen) == 3
    for seen, drawn in zip(plugin.functional.seen, plugin.augmenter.drawn, strict=True):
        assert torch.equal(seen, drawn)  # the same rows, in the batch's order


def test_views_are_a_list():
    view = torch.zeros(2, 1, 4, 4)
    views = Views([view, view], {"k": torch.tensor([0, 1])})
    assert isinstance(views, list) and len(views) == 2 and views[0] is view
    assert views.facts["k"].tolist() == [0, 1] and Views([view]).facts == {}
