"""Zero-shot classification and image-text retrieval against float64 brute-force references written here."""

import math

import pytest
import torch

from jef.evaluate.crossmodal import (
    DEFAULT_TEMPLATES,
    prompts,
    retrieval_recall,
    zero_shot_accuracy,
    zero_shot_weights,
)


def _cosine(a, b):
    """Cosine similarity of two vectors, in float64, by an explicit sum."""
    a, b = a.double().tolist(), b.double().tolist()
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _order(query, candidates):
    """Candidate indices from most to least similar to the query; equal similarities by index."""
    sims = [_cosine(query, c) for c in candidates]
    return sorted(range(len(candidates)), key=lambda j: (-sims[j], j))


def reference_zero_shot(images, weights, labels, ks):
    """Top-k accuracy over the labelled images: is the true class among the min(k, C) first of the order?"""
    hits, count = dict.fromkeys(ks, 0), 0
    for image, label in zip(images, labels.tolist(), strict=True):
        if label == -1:
            continue
        count += 1
        position = _order(image, weights).index(label)
        for k in ks:
            hits[k] += position < min(k, len(weights))
    return {k: hits[k] / count for k in ks}


def reference_retrieval(images, texts, owner, ks):
    """Karpathy & Fei-Fei recall@k with explicit loops over all image-text pairs."""
    owner = owner.tolist()
    i2t = [min(p for p, j in enumerate(_order(image, texts)) if owner[j] == i) for i, image in enumerate(images)]
    t2i = [_order(text, images).index(owner[j]) for j, text in enumerate(texts)]
    result = {f"image_to_text_r@{k}": sum(p < k for p in i2t) / len(images) for k in ks}
    result.update({f"text_to_image_r@{k}": sum(p < k for p in t2i) / len(texts) for k in ks})
    return result


def _features(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- prompts and prompt ensembling ---


def test_prompts_are_class_major():
    assert prompts(["cat", "dog"], ("a {}.", "the {}!")) == ["a cat.", "the cat!", "a dog.", "the dog!"]
    assert prompts(["{x}"], ("{} {{literal}}",)) == ["{x} {{literal}}"]  # the name replaces "{}" literally
    assert len(prompts(["a", "b", "c"])) == 3 * len(DEFAULT_TEMPLATES)


def test_default_templates_have_one_slot():
    assert 3 <= len(DEFAULT_TEMPLATES) <= 20
    assert all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


@pytest.mark.parametrize("names, templates, message", [
    ([], ("a {}.",), "list of class names is empty"),
    (["cat"], (), "list of templates is empty"),
    (["cat"], ("a photo.",), r"template 'a photo\.' must contain exactly one '\{\}' .*found 0"),
    (["cat"], ("a {} and a {}.",), r"exactly one '\{\}' .*found 2"),
    ("cat", ("a {}.",), "not a single string"),
])
def test_prompts_errors(names, templates, message):
    with pytest.raises(ValueError, match=message):
        prompts(names, templates)


def test_zero_shot_weights_is_normalised_mean_of_normalised_embeddings():
    n_classes, n_templates, dim = 4, 3, 6
    text = _features(0, n_classes * n_templates, dim)
    text[1] *= 100.0  # one prompt with a large norm must not dominate its class
    weights = zero_shot_weights(text, n_classes, n_templates)
    assert weights.shape == (n_classes, dim) and weights.dtype == torch.float32
    for c in range(n_classes):
        mean = [0.0] * dim
        for t in range(n_templates):
            row = text[c * n_templates + t].double()
            mean = [m + x / row.norm().item() / n_templates for m, x in zip(mean, row.tolist(), strict=True)]
        norm = math.sqrt(sum(m * m for m in mean))
        torch.testing.assert_close(weights[c].double(), torch.tensor([m / norm for m in mean], dtype=torch.float64),
                                   atol=1e-6, rtol=0)
    # One template: the weight is the normalised embedding itself.
    torch.testing.assert_close(zero_shot_weights(text[:4], 4, 1), text[:4] / text[:4].norm(dim=1, keepdim=True))


def test_zero_shot_weights_errors():
    with pytest.raises(ValueError, match=r"expected \[3 \* 2, d\] = \[6, d\] prompt features, got \(5, 4\)"):
        zero_shot_weights(torch.randn(5, 4), 3, 2)
    with pytest.raises(ValueError, match="n_classes and n_templates must be >= 1"):
        zero_shot_weights(torch.randn(0, 4), 0, 2)


# --- zero-shot accuracy ---


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zero_shot_accuracy_matches_reference(seed):
    images, weights = _features(seed, 40, 8), _features(seed + 100, 7, 8)
    labels = torch.randint(0, 7, (40,), generator=torch.Generator().manual_seed(seed))
    labels[::5] = -1
    ks = (1, 2, 5)
    got = zero_shot_accuracy(images, weights, labels, ks)
    assert got == pytest.approx(reference_zero_shot(images, weights, labels, ks), abs=1e-12)
    assert all(type(v) is float for v in got.values())
    assert zero_shot_accuracy(images.double(), weights.double(), labels, ks) == got


def test_zero_shot_constructed_and_chance():
    gen = torch.Generator().manual_seed(3)
    weights = zero_shot_weights(torch.randn(10 * 4, 32, generator=gen), 10, 4)
    labels = torch.randint(0, 10, (500,), generator=gen)
    near = weights[labels] + 0.01 * torch.randn(500, 32, generator=gen)
    assert zero_shot_accuracy(near, weights, labels) == {1: 1.0, 5: 1.0}
    far = torch.randn(2000, 32, generator=gen)
    chance = zero_shot_accuracy(far, weights, torch.randint(0, 10, (2000,), generator=gen))
    assert abs(chance[1] - 0.1) < 0.03 and abs(chance[5] - 0.5) < 0.05


def test_zero_shot_unlabelled_ignored_and_k_clamped():
    images, weights = _features(4, 30, 5), _features(5, 3, 5)
    labels = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(4))
    masked = labels.clone()
    masked[:10] = -1
    assert zero_shot_accuracy(images, weights, masked, (1, 2)) == zero_shot_accuracy(images[10:], weights,
                                                                                      labels[10:], (1, 2))
    got = zero_shot_accuracy(images, weights, labels, (1, 3, 100))
    assert got[100] == got[3] == 1.0 and set(got) == {1, 3, 100}


def test_zero_shot_ties_go_to_lower_class():
    weights = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert zero_shot_accuracy(images, weights, torch.tensor([0, 0]), (1, 2)) == {1: 1.0, 2: 1.0}
    assert zero_shot_accuracy(images, weights, torch.tensor([1, 1]), (1, 2)) == {1: 0.0, 2: 1.0}


@pytest.mark.parametrize("images, weights, labels, message", [
    (torch.randn(4, 3), torch.randn(2, 5), torch.zeros(4), r"expected \[N, d\] image features .*\(4, 3\) and \(2, 5\)"),
    (torch.randn(4, 3), torch.randn(2, 3), torch.zeros(3), r"expected 4 labels, got shape \(3,\)"),
    (torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 2]), r"labels must lie in \[0, 2\) or be -1 .*found 2"),
    (torch.randn(2, 3), torch.randn(2, 3), torch.tensor([-1, -1]), "no labelled image"),
    (torch.randn(2, 3), torch.randn(0, 3), torch.tensor([0, 0]), "no class weights"),
])
def test_zero_shot_errors(images, weights, labels, message):
    with pytest.raises(ValueError, match=message):
        zero_shot_accuracy(images, weights, labels)
    with pytest.raises(ValueError, match=r"ks must be integers >= 1, got \(0,\)"):
        zero_shot_accuracy(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), (0,))


# --- retrieval ---


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_one_caption_per_image_matches_reference(seed):
    images, texts = _features(seed, 25, 6), _features(seed + 50, 25, 6)
    texts[:10] = images[:10] + 0.5 * texts[:10]  # some signal so that recalls are neither 0 nor 1
    ks = (1, 5, 10)
    got = retrieval_recall(images, texts, ks=ks)
    assert got == pytest.approx(reference_retrieval(images, texts, torch.arange(25), ks), abs=1e-12)
    assert all(type(v) is float for v in got.values())
    assert 0 < got["image_to_text_r@1"] < 1 and 0 < got["text_to_image_r@5"] < 1


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_several_captions_matches_reference_and_chunks(seed):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(12, 6, generator=gen)
    owner = torch.cat([torch.arange(12), torch.randint(0, 12, (20,), generator=gen)])
    owner = owner[torch.randperm(len(owner), generator=gen)]
    texts = images[owner] + 1.2 * torch.randn(len(owner), 6, generator=gen)
    ks = (1, 3, 5, 50)
    expected = reference_retrieval(images, texts, owner, ks)
    assert retrieval_recall(images, texts, owner, ks) == pytest.approx(expected, abs=1e-12)
    whole = retrieval_recall(images, texts, owner, ks, chunk=4096)
    for chunk in (1, 3, 7):
        assert retrieval_recall(images, texts, owner, ks, chunk=chunk) == whole
    assert whole["image_to_text_r@50"] == whole["text_to_image_r@50"] == 1.0  # k clamped to N and M


def test_retrieval_ties_go_to_lower_index():
    # Images 0 and 1 are identical, and so are texts 1 and 2: every query meets a tie.
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    owner = torch.tensor([1, 0, 2])
    # Image 0: its text 1 is behind text 0; image 1: its text 0 is first; image 2: its text 2 ties with text 1,
    # which goes first. Text 0: image 1 ties with image 0, which goes first; text 1: image 2 is first; text 2: hit.
    expected = {"image_to_text_r@1": 1 / 3, "image_to_text_r@2": 1.0, "image_to_text_r@3": 1.0,
                "text_to_image_r@1": 1 / 3, "text_to_image_r@2": 1.0, "text_to_image_r@3": 1.0}
    assert reference_retrieval(images, texts, owner, (1, 2, 3)) == expected
    for chunk in (1, 2, 1024):
        assert retrieval_recall(images, texts, owner, (1, 2, 3), chunk=chunk) == expected
    # An image with two identical captions is found at rank 0 by the first of them.
    two = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert retrieval_recall(two[1:], two, torch.tensor([0, 0, 1]), (1,))["image_to_text_r@1"] == 1.0


def test_retrieval_errors():
    images = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"2 image\(s\) have no text: 1, 2"):
        retrieval_recall(images, torch.randn(2, 4), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="one text per image, got 3 images and 2 texts"):
        retrieval_recall(images, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"image_of_text must lie in \[0, 3\), found \[0, 3\]"):
        retrieval_recall(images, torch.randn(3, 4), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match=r"integer tensor of shape \[3\]"):
        retrieval_recall(images, torch.randn(3, 4), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"expected \[N, d\] image and \[M, d\] text features"):
        retrieval_recall(images, torch.randn(3, 5))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        retrieval_recall(images, torch.randn(3, 4), chunk=0)
