"""Built-in text components: the tokenizers ``bytes``, ``words`` and ``hf``, and the ``text_transformer`` backbone.

A tokenizer maps texts to ``[B, context_length]`` token ids, each row ``[SOT, tokens..., EOT, 0, ...]`` (ids: 0
padding, 1 SOT, 2 EOT, 3 an unknown word), truncated so that EOT stays last. The ``text_transformer`` encodes
such ids as CLIP's text tower does [1]: token and learned position embeddings, pre-norm blocks (causal by
default), a final LayerNorm, and the EOT token's output (or the mean of the non-padding tokens).

References:
    [1] Radford et al., Learning Transferable Visual Models From Natural Language Supervision (CLIP), 2021,
        arXiv:2103.00020, sec. 2.4.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn

from jef.builtin.vit import Block
from jef.components import RunContext
from jef.config.options import doc, size_limit
from jef.hookspecs import Register, hookimpl

__all__ = ["ByteTokenizer", "HFTokenizer", "TextTransformer", "WordTokenizer", "jef_register_backbones",
           "jef_register_tokenizers"]

PAD, SOT, EOT, UNKNOWN = 0, 1, 2, 3
_WORD = re.compile(r"\w+|[^\w\s]")
_PAPER = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, arXiv:2103.00020"


def _context() -> Any:
    return attrs.field(default=32, validator=[v.instance_of(int), v.ge(2), v.le(4096)],
                       metadata=doc("tokens per text, SOT and EOT included (longer texts are truncated)"))


@attrs.frozen(kw_only=True)
class ByteOptions:
    """Options of the ``bytes`` tokenizer."""

    context_length: int = _context()


@attrs.frozen(kw_only=True)
class WordOptions:
    """Options of the ``words`` tokenizer."""

    context_length: int = _context()
    max_vocab: int = attrs.field(default=10000, validator=[v.instance_of(int), v.ge(1), size_limit],
                                 metadata=doc("most words kept by fit(), the most frequent first"))
    min_count: int = attrs.field(default=1, validator=[v.instance_of(int), v.ge(1)],
                                 metadata=doc("fewest occurrences in the training texts for a word to be kept"))


@attrs.frozen(kw_only=True)
class HFOptions:
    """Options of the ``hf`` tokenizer."""

    context_length: int = _context()
    file: str | None = attrs.field(default=None, validator=v.optional(v.instance_of(str)),
                                   metadata=doc("path of a HuggingFace tokenizers tokenizer.json (required)"))


class _Tokenizer(nn.Module):
    """Rows ``[SOT, ids..., EOT, 0...]`` of ``context_length`` from per-text id lists (``_ids``)."""

    pad_id = PAD

    def __init__(self, context_length: int, vocab_size: int) -> None:
        super().__init__()
        self.context_length, self.vocab_size = context_length, vocab_size

    def _ids(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode(self, texts: list[str]) -> Tensor:
        """``[B, context_length]`` int64 token ids of ``texts``."""
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise ValueError(f"{type(self).__name__}.encode takes a list of str, got {type(texts).__name__}")
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, ids in enumerate(self._ids(list(texts))):
            ids = [SOT, *ids[:self.context_length - 2], EOT]
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    forward = encode


class ByteTokenizer(_Tokenizer):
    """UTF-8 bytes, byte ``b`` as id ``b + 3``; no state."""

    def __init__(self, context_length: int = 32) -> None:
        super().__init__(context_length, 3 + 256)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [[b + 3 for b in text.encode("utf-8")] for text in texts]


class WordTokenizer(_Tokenizer):
    """Lower-cased words and punctuation; word ``i`` of the vocabulary learned by :meth:`fit` is id ``4 + i``.

    ``vocab_size`` is ``4 + max_vocab`` whatever ``fit`` finds, so that a model's shape does not depend on the
    data. The vocabulary is the module's extra state: it travels in ``state_dict``.
    """

    def __init__(self, context_length: int = 32, max_vocab: int = 10000, min_count: int = 1) -> None:
        super().__init__(context_length, 4 + max_vocab)
        self.max_vocab, self.min_count = max_vocab, min_count
        self.words: list[str] | None = None
        self._index: dict[str, int] = {}

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def fit(self, texts: list[str]) -> WordTokenizer:
        """Learn the vocabulary: the words of ``texts`` seen ``min_count`` times or more, sorted by
        ``(-count, word)``, at most ``max_vocab``."""
        counts = Counter(word for text in texts for word in self.split(text))
        ranked = sorted((word for word, n in counts.items() if n >= self.min_count), key=lambda w: (-counts[w], w))
        self._set_words(ranked[:self.max_vocab])
        return self

    def _set_words(self, words: list[str] | None) -> None:
        if words is not None and (len(words) > self.max_vocab or len(set(words)) != len(words)):
            raise ValueError(f"words tokenizer: a vocabulary of {len(words)} words (distinct: {len(set(words))}) "
                             f"does not fit max_vocab {self.max_vocab}")
        self.words = None if words is None else list(words)
        self._index = {word: 4 + i for i, word in enumerate(words or ())}

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if self.words is None:
            raise ValueError("the words tokenizer has no vocabulary yet: call fit(texts) with the training texts, "
                             "or load a state_dict that holds one")
        return [[self._index.get(word, UNKNOWN) for word in self.split(text)] for text in texts]

    def get_extra_state(self) -> dict[str, Any]:
        return {"words": self.words}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "words" not in state:
            raise ValueError(f"words tokenizer: the saved state must be a dict with 'words', got {type(state)}")
        self._set_words(state["words"])


class HFTokenizer(_Tokenizer):
    """A HuggingFace ``tokenizers`` tokenizer from ``tokenizer.json``; its id ``i`` is id ``i + 3`` here."""

    def __init__(self, file: str | Path, context_length: int = 32) -> None:
        try:
            import tokenizers
        except ImportError as error:
            raise ImportError("the hf tokenizer needs the tokenizers library: pip install 'jef[text]'") from error
        tokenizer = tokenizers.Tokenizer.from_file(str(file))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        super().__init__(context_length, tokenizer.get_vocab_size(with_added_tokens=True) + 3)
        self.file, self.tokenizer = str(file), tokenizer

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [[i + 3 for i in e.ids] for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def build_bytes(options: ByteOptions, ctx: RunContext) -> ByteTokenizer:
    return ByteTokenizer(options.context_length)


def build_words(options: WordOptions, ctx: RunContext) -> WordTokenizer:
    return WordTokenizer(options.context_length, options.max_vocab, options.min_count)


def build_hf(options: HFOptions, ctx: RunContext) -> HFTokenizer:
    if options.file is None:
        raise ValueError("hf tokenizer: set file to the path of a tokenizer.json")
    if not Path(options.file).is_file():
        raise ValueError(f"hf tokenizer: file {options.file!r} does not exist (or is not a file)")
    return HFTokenizer(options.file, options.context_length)


def _heads_divide_width(instance: TextOptions, attribute: attrs.Attribute, value: int) -> None:
    if instance.width % value:
        raise ValueError(f"{value} heads do not divide the width {instance.width} (each head takes width / heads "
                         "channels)", attribute, value)


@attrs.frozen(kw_only=True)
class TextOptions:
    """Options of the ``text_transformer`` backbone."""

    vocab_size: int | None = attrs.field(default=None, validator=v.optional([v.ge(4), size_limit]),
                                         metadata=doc("token ids it embeds; null: the tokenizer's vocab_size"))
    context_length: int | None = attrs.field(default=None, validator=v.optional([v.ge(2), v.le(4096)]),
                                             metadata=doc("positions it embeds; null: the tokenizer's (else 32)"))
    width: int = attrs.field(default=128, validator=[v.ge(1), size_limit], metadata=doc("token width (= out_dim)"))
    depth: int = attrs.field(default=4, validator=[v.ge(1), v.le(1024)], metadata=doc("transformer blocks"))
    heads: int = attrs.field(default=4, validator=[v.ge(1), _heads_divide_width],
                             metadata=doc("attention heads, a divisor of width"))
    mlp_ratio: float = attrs.field(default=4.0, validator=[v.gt(0.0), v.le(64.0)],
                                   metadata=doc("hidden width of each block's MLP / width"))
    causal: bool = attrs.field(default=True, metadata=doc("token i attends to tokens <= i only (CLIP's)"))
    pool: Literal["eot", "mean"] = attrs.field(
        default="eot", validator=v.in_(("eot", "mean")),
        metadata=doc("h is the last non-padding token (EOT, CLIP's) | the mean of the non-padding tokens"))


class TextTransformer(nn.Module):
    """``forward(ids [B, L]) -> [B, width]``: a CLIP-style text encoder; ``L <= context_length``, 0 is padding.

    Padding is never attended to by the other tokens (causal attention looks back only; bidirectional attention
    gets a key mask), so appending padding does not change the output.
    """

    def __init__(self, vocab_size: int, context_length: int, width: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, causal: bool = True, pool: str = "eot") -> None:
        super().__init__()
        self.vocab_size, self.context_length, self.pool, self.out_dim = vocab_size, context_length, pool, width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, width))
        self.blocks = nn.ModuleList(Block(width, heads, int(width * mlp_ratio), 0.0, None, causal)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        nn.init.normal_(self.token_embedding.weight, std=0.02)  # CLIP's initialisation
        nn.init.normal_(self.pos_embed, std=0.01)

    def _check(self, ids: Tensor) -> None:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.ndim != 2:
            got = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"text_transformer: expects token ids, an int64 tensor [B, L], got {got}")
        if not 1 <= ids.shape[1] <= self.context_length:
            raise ValueError(f"text_transformer: {ids.shape[1]} tokens per text, but the position embedding has "
                             f"{self.context_length}; set backbone.context_length or the tokenizer's")
        if ids.numel() and bool(((ids < 0) | (ids >= self.vocab_size)).any()):
            raise ValueError(f"text_transformer: token ids must be in 0..{self.vocab_size - 1} (vocab_size "
                             f"{self.vocab_size}), got {int(ids.min())}..{int(ids.max())}")

    def forward_tokens(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(x [B, L, width], keep [B, L] bool)``: every position's output after the final norm, and which
        positions are not padding."""
        self._check(ids)
        ids = ids.long()
        keep = ids != PAD
        x = self.token_embedding(ids) + self.pos_embed[:, :ids.shape[1]]
        # Position 0 may always be attended to, so that a row of padding only has no query without keys.
        mask = keep.clone()
        mask[:, 0] = True
        for block in self.blocks:
            x = block(x, None if block.attn.causal else mask)
        return self.norm(x), keep

    def forward(self, ids: Tensor) -> Tensor:
        x, keep = self.forward_tokens(ids)
        if self.pool == "mean":
            weights = keep.to(x.dtype)[..., None]
            return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        last = keep.long().cumsum(dim=1).argmax(dim=1)  # the first maximum: the last non-padding position
        return x[torch.arange(x.shape[0], device=x.device), last]


def build_text_transformer(options: TextOptions, ctx: RunContext) -> TextTransformer:
    """The ``text_transformer`` for the tokenizer's ``ctx.vocab_size`` and ``ctx.context_length``."""
    ctx_vocab, ctx_length = getattr(ctx, "vocab_size", None), getattr(ctx, "context_length", None)
    vocab = options.vocab_size or ctx_vocab
    if vocab is None:
        raise ValueError("text_transformer: no vocab_size: set backbone.vocab_size, or pair it with a tokenizer")
    if ctx_vocab is not None and vocab < ctx_vocab:
        raise ValueError(f"text_transformer: vocab_size {vocab} is smaller than the tokenizer's {ctx_vocab}")
    length = options.context_length or ctx_length or 32
    if ctx_length is not None and length < ctx_length:
        raise ValueError(f"text_transformer: context_length {length} is shorter than the tokenizer's {ctx_length}")
    return TextTransformer(vocab, length, options.width, options.depth, options.heads, options.mlp_ratio,
                           options.causal, options.pool)


@hookimpl
def jef_register_tokenizers(register: Register) -> None:
    """Register ``bytes``, ``words`` and ``hf``."""
    register("bytes", build_bytes, options=ByteOptions, description="UTF-8 bytes (259 ids), no state")
    register("words", build_words, options=WordOptions,
             description="lower-cased words and punctuation, vocabulary fitted on the training texts")
    register("hf", build_hf, options=HFOptions,
             description="a HuggingFace tokenizers tokenizer.json (needs pip install 'jef[text]')")


@hookimpl
def jef_register_backbones(register: Register) -> None:
    """Register ``text_transformer``."""
    register("text_transformer", build_text_transformer, options=TextOptions,
             description="CLIP-style text transformer: token ids -> EOT (or mean) token, causal or bidirectional",
             paper=_PAPER)
