"""The built-in text components: the ``bytes``, ``words`` and ``hf`` tokenizers and the ``text_transformer``."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from jef.builtin import BUILTIN_PLUGINS
from jef.builtin.text import (ByteOptions, ByteTokenizer, HFOptions, TextOptions, TextTransformer, WordOptions,
                              WordTokenizer, build_bytes, build_hf, build_text_transformer, build_words,
                              jef_register_backbones, jef_register_tokenizers)
from jef.components import RunContext
from jef.plugins import load_plugins
from jef.testing import build_component

CTX = RunContext(vocab_size=40, context_length=12)


def transformer(**options) -> TextTransformer:
    torch.manual_seed(0)
    return build_text_transformer(TextOptions(**{"width": 32, "depth": 2, "heads": 2, **options}), CTX).eval()


def random_ids(n: int = 3, length: int = 12, seed: int = 1) -> torch.Tensor:
    """Rows ``[SOT, tokens, EOT, 0...]`` of different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, length, dtype=torch.long)
    for row in range(n):
        size = 1 + row * 2
        ids[row, 0] = 1
        ids[row, 1:1 + size] = torch.randint(4, 40, (size,), generator=g)
        ids[row, 1 + size] = 2
    return ids


def test_bytes_encodes_known_ids():
    tokenizer = build_bytes(ByteOptions(context_length=8), RunContext())
    assert tokenizer.vocab_size == 259 and tokenizer.pad_id == 0 and not list(tokenizer.parameters())
    ids = tokenizer.encode(["hi", "é"])
    assert ids.dtype == torch.long
    assert ids.tolist() == [[1, 104 + 3, 105 + 3, 2, 0, 0, 0, 0], [1, 0xC3 + 3, 0xA9 + 3, 2, 0, 0, 0, 0]]
    assert torch.equal(tokenizer(["hi"]), ids[:1])


def test_truncation_keeps_eot_last():
    tokenizer = ByteTokenizer(context_length=5)
    assert tokenizer.encode(["abcdefgh"]).tolist() == [[1, 100, 101, 102, 2]]
    words = WordTokenizer(context_length=4).fit(["a b c d e"])
    assert words.encode(["a b c d e"])[0, -1].item() == 2


def test_words_fit_orders_by_count_then_word_and_maps_unknowns():
    texts = ["The cat sat.", "the dog sat", "A cat!"]
    tokenizer = build_words(WordOptions(context_length=10), RunContext()).fit(texts)
    assert tokenizer.words == ["cat", "sat", "the", "!", ".", "a", "dog"]
    assert tokenizer.vocab_size == 4 + 10000
    assert tokenizer.encode(["The CAT, zebra"]).tolist() == [[1, 6, 4, 3, 3, 2, 0, 0, 0, 0]]
    again = WordTokenizer(context_length=10).fit(list(texts))
    assert again.words == tokenizer.words
    small = WordTokenizer(context_length=10, max_vocab=2, min_count=2).fit(texts)
    assert small.words == ["cat", "sat"]
    assert WordTokenizer(max_vocab=5, min_count=3).fit(texts).words == []


def test_words_before_fit_is_a_value_error():
    with pytest.raises(ValueError, match="no vocabulary yet"):
        WordTokenizer().encode(["hello"])


def test_words_vocabulary_travels_in_state_dict():
    source = nn.Module()
    source.tokenizer = WordTokenizer(context_length=8).fit(["b a a", "c c c d"])
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target = nn.Module()
    target.tokenizer = WordTokenizer(context_length=8)
    target.load_state_dict(torch.load(buffer, weights_only=True))
    assert target.tokenizer.words == source.tokenizer.words == ["c", "a", "b", "d"]
    texts = ["a b c d e", "D c"]
    assert torch.equal(target.tokenizer.encode(texts), source.tokenizer.encode(texts))
    with pytest.raises(ValueError, match="max_vocab"):
        WordTokenizer(max_vocab=2).set_extra_state({"words": ["a", "b", "c"]})


def test_tokenizer_options_are_validated():
    for bad in ({"context_length": 1}, {"context_length": 5000}, {"max_vocab": 0}, {"min_count": 0}):
        with pytest.raises(ValueError):
            WordOptions(**bad)


def test_hf_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="nothing.json"):
        build_hf(HFOptions(file=str(tmp_path / "nothing.json")), RunContext())
    with pytest.raises(ValueError, match="set file"):
        build_hf(HFOptions(), RunContext())


def test_hf_word_level_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    json.loads(path.read_text())
    built = build_hf(HFOptions(file=str(path), context_length=6), RunContext())
    assert built.vocab_size == 3 + 3
    assert built.encode(["hello world", "world what"]).tolist() == [[1, 4, 5, 2, 0, 0], [1, 5, 3, 2, 0, 0]]


def test_text_transformer_output_shape_and_gradients():
    model = transformer().train()
    ids = random_ids()
    out = model(ids)
    assert out.shape == (3, 32) and model.out_dim == 32 and torch.isfinite(out).all()
    out.square().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert model.token_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pool", ["eot", "mean"])
@pytest.mark.parametrize("causal", [True, False])
def test_padding_does_not_change_the_output(pool, causal):
    model = transformer(pool=pool, causal=causal)
    ids = random_ids(length=12)
    with torch.no_grad():
        full, short = model(ids), model(ids[:, :8])
        alone = torch.cat([model(ids[row:row + 1, :row * 2 + 3]) for row in range(3)])
    torch.testing.assert_close(short, full)
    torch.testing.assert_close(alone, full, atol=1e-5, rtol=1e-5)


def test_causal_positions_do_not_see_later_tokens():
    ids = random_ids()
    changed = ids.clone()
    changed[:, 3] = 39
    with torch.no_grad():
        before, _ = transformer(causal=True).forward_tokens(ids)
        after, _ = transformer(causal=True).forward_tokens(changed)
        torch.testing.assert_close(after[:, :3], before[:, :3])
        assert not torch.allclose(after[:, 3:], before[:, 3:])
        bidirectional, _ = transformer(causal=False).forward_tokens(ids)
        bidirectional_changed, _ = transformer(causal=False).forward_tokens(changed)
    assert not torch.allclose(bidirectional[:, :3], bidirectional_changed[:, :3])


def test_eot_pooling_reads_the_last_non_padding_position():
    model = transformer(pool="eot")
    ids = random_ids()
    with torch.no_grad():
        x, keep = model.forward_tokens(ids)
        out = model(ids)
    for row in range(3):
        torch.testing.assert_close(out[row], x[row, int(keep[row].nonzero().max())])


def test_bad_inputs_are_value_errors():
    model = transformer()
    for bad, message in [(torch.zeros(2, 4), "int64"), (torch.zeros(4, dtype=torch.long), "int64"),
                         (torch.full((2, 4), 40), "0..39"), (torch.full((2, 4), -1), "0..39"),
                         (torch.ones(2, 13, dtype=torch.long), "13 tokens")]:
        with pytest.raises(ValueError, match=message):
            model(bad)


def test_build_errors_are_value_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        build_text_transformer(TextOptions(width=32, heads=2), RunContext())
    with pytest.raises(ValueError, match="smaller"):
        build_text_transformer(TextOptions(width=32, heads=2, vocab_size=10), CTX)
    with pytest.raises(ValueError, match="divide"):
        TextOptions(width=30, heads=4)
    with pytest.raises(ValueError):
        TextOptions(pool="cls")
    model = build_text_transformer(TextOptions(width=32, heads=2, vocab_size=300), RunContext())
    assert model.vocab_size == 300 and model.context_length == 32


def test_the_hooks_register_the_tokenizers_and_the_backbone():
    seen = {}

    def register(name, factory, *, options, description="", paper=""):
        assert description and name not in seen
        seen[name] = (factory, options)

    jef_register_tokenizers(register)
    jef_register_backbones(register)
    assert sorted(seen) == ["bytes", "hf", "text_transformer", "words"]
    assert isinstance(seen["bytes"][0](seen["bytes"][1](), RunContext()), ByteTokenizer)


def test_built_through_the_registry():
    assert "text" in BUILTIN_PLUGINS
    plugins = load_plugins(entry_points=False)
    tokenizer = build_component(plugins, "tokenizer", "words", {"context_length": 6, "max_vocab": 8})
    ids = tokenizer.fit(["a photo of a cat"]).encode(["a cat"])
    ctx = RunContext(vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length)
    model = build_component(plugins, "backbone", "text_transformer", {"width": 16, "depth": 1, "heads": 2}, ctx)
    assert model(ids).shape == (1, 16)
