"""The functionals: the classifier's cross-entropy and the decoder's error against float64 references."""

from __future__ import annotations

import pytest
import torch
from jef_plugin_pretext.heads import (PretextClassifier, PretextClassifierOptions, Reconstruction,
                                      ReconstructionOptions)

from jef.components import Branch, RunContext, StepOutputs
from jef.testing import build_component


def _outputs(views: list[torch.Tensor], facts: dict | None) -> StepOutputs:
    branch = Branch(h=views, z=views)
    return StepOutputs(online=branch, target=branch, n_global=len(views), facts=facts)


def _reference_cross_entropy(mlp: torch.nn.Sequential, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log-sum-exp minus the target logit, averaged, with every weight in float64."""
    h = x.double()
    layers = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(layers):
        h = h @ layer.weight.double().t() + layer.bias.double()
        if i < len(layers) - 1:
            h = h.clamp(min=0)
    return (torch.logsumexp(h, dim=1) - h.gather(1, target[:, None]).squeeze(1)).mean()


def test_the_classifier_loss_is_the_cross_entropy_of_the_concatenated_views():
    torch.manual_seed(0)
    views = [torch.randn(6, 5) for _ in range(9)]
    target = torch.randint(0, 100, (6,))
    head = PretextClassifier(PretextClassifierOptions(fact="permutation", hidden=[7]), dim=5, n_views=9)
    assert head.classifier[0].in_features == 45 and head.classifier[-1].out_features == 100
    loss = head(_outputs(views, {"permutation": target}))
    want = _reference_cross_entropy(head.classifier, torch.cat(views, dim=1), target)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())
    accuracy = (head.classifier(torch.cat(views, dim=1)).argmax(1) == target).float().mean()
    assert torch.equal(head.accuracy, accuracy)


def test_per_view_classifies_each_view_on_its_own():
    torch.manual_seed(1)
    views = [torch.randn(4, 3) for _ in range(4)]
    target = torch.arange(4).expand(4, 4)
    head = PretextClassifier(PretextClassifierOptions(fact="rotation", hidden=[], per_view=True), dim=3, n_views=4)
    loss = head(_outputs(views, {"rotation": target}))
    want = _reference_cross_entropy(head.classifier, torch.cat(views), target.t().reshape(-1))
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)


def test_clear_errors_name_what_to_fix():
    head = PretextClassifier(PretextClassifierOptions(fact="rotation"), dim=3, n_views=1)
    view = [torch.randn(2, 3)]
    with pytest.raises(ValueError, match=r"needs the fact 'rotation'.*gave none.*augmenter: \{name: rotation_views\}"):
        head(_outputs(view, None))
    with pytest.raises(ValueError, match="one class per view; set per_view: true"):
        head(_outputs(view, {"rotation": torch.zeros(2, 1, dtype=torch.long)}))
    with pytest.raises(ValueError, match="holds class 5 but the classifier has 4 classes"):
        head(_outputs(view, {"rotation": torch.tensor([0, 5])}))
    with pytest.raises(ValueError, match="built for 1 views, the online branch has 2"):
        head(_outputs(view * 2, {"rotation": torch.tensor([0, 1])}))
    with pytest.raises(ValueError, match="no default number of classes for fact 'colour'; set classes"):
        PretextClassifierOptions(fact="colour")
    decoder = Reconstruction(ReconstructionOptions(), dim=3, channels=1, side=4)
    with pytest.raises(ValueError, match=r"needs the fact 'clean'.*denoise_views"):
        decoder(_outputs(view, {"rotation": torch.tensor([0, 1])}))


def test_the_reconstruction_is_the_weighted_squared_error():
    torch.manual_seed(2)
    view, clean = torch.randn(3, 6), torch.randn(3, 1, 4, 4)
    corrupted = torch.rand(3, 1, 4, 4) < 0.3
    facts = {"clean": clean, "corrupted": corrupted}
    plain = Reconstruction(ReconstructionOptions(hidden=[8]), dim=6, channels=1, side=4)
    recon = plain.decoder(view).view(3, 1, 4, 4).double()
    error = (recon - clean.double()).square()
    torch.testing.assert_close(plain(_outputs([view], facts)).double(), error.mean(), rtol=1e-5, atol=1e-7)
    emphasised = Reconstruction(ReconstructionOptions(hidden=[8], corrupted_weight=2.0, clean_weight=0.5), dim=6,
                                channels=1, side=4)
    emphasised.load_state_dict(plain.state_dict())
    want = torch.where(corrupted, 2.0, 0.5).double() * error
    torch.testing.assert_close(emphasised(_outputs([view], facts)).double(), want.mean(), rtol=1e-5, atol=1e-7)


def test_the_factories_read_the_widths_from_the_run_context(plugins):
    ctx = RunContext(online_dim=16, n_views=9, in_channels=3, image_size=8)
    head = build_component(plugins, "functional", "pretext_classifier",
                           {"fact": "permutation", "classes": 30, "hidden": []}, ctx)
    assert (head.classifier[0].in_features, head.classifier[0].out_features) == (144, 30)
    decoder = build_component(plugins, "functional", "reconstruction", {"hidden": [32]}, ctx)
    assert decoder.decoder[-1].out_features == 3 * 8 * 8 and decoder.decoder[0].in_features == 16
