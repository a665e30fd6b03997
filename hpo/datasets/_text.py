"""Shared text utilities for text-classification datasets: tokens, vocabulary, encodings.

A document becomes a list of lower-case word tokens (:func:`tokenize`), a
:class:`Vocabulary` built from the *training* documents alone turns tokens into integer ids,
and :func:`build_text_dataset` encodes every split the same way, either as padded id
sequences (``encoding: sequence``, for embeddings and convolutions) or as a multi-hot bag of
words (``encoding: multi_hot``, for a dense baseline).

Ids: 0 is padding, 1 stands for any word outside the vocabulary ("out of vocabulary"), and
words take 2, 3, ... in order of decreasing frequency in the training documents (ties in order
of first occurrence, so a vocabulary is deterministic). ``num_words`` counts the two reserved
ids: ``num_words: 10000`` keeps the 9,998 most frequent training words, and every id is below
``num_words`` (the ``input_dim`` of an ``Embedding``, the width of a multi-hot vector).

The options every text dataset takes (``dataset: {options: {...}}`` in a space file):

* ``num_words`` [10000]: vocabulary size, reserved ids included (at least 3);
* ``maxlen`` [200 for ``sequence``, none for ``multi_hot``]: tokens kept per document, from its
  beginning (a newswire states its topic first); shorter sequences are padded with 0 at the end;
* ``encoding`` [``sequence``]: ``sequence`` (int32, shape (n, maxlen)) or ``multi_hot``
  (uint8 0/1, shape (n, num_words); Keras casts it to float32 batch by batch, which keeps a
  10,000-word bag of 10,000 documents at 100 MB instead of 400 MB).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.datasets._base import DataError, Dataset, Split, split_indices, take_subset
from hpo.inputs import InputSpec, keras_tokenize

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec

PAD_ID = 0
OOV_ID = 1
RESERVED = ("<pad>", "<oov>")
ENCODINGS = ("sequence", "multi_hot")
TEXT_OPTIONS = ("num_words", "maxlen", "encoding")
DEFAULT_NUM_WORDS = 10_000
DEFAULT_MAXLEN = 200
VOCABULARY_ARTIFACT = "text_vocabulary.json"  # what a text-classifier trial stores
# The tokenizer of studies made before tokens followed Keras' TextVectorization: letters and
# digits of any script, an inner apostrophe kept. Still read from their text_vocabulary.json.
TOKEN_PATTERN = r"[^\W_]+(?:'[^\W_]+)*"
TOKENIZER = "keras_text_vectorization"  # lower_and_strip_punctuation, split on white space


def tokenize(text: str) -> list[str]:
    """Word tokens of ``text``, as Keras' ``TextVectorization`` makes them by default.

    Example:
        >>> tokenize("The U.S. company's profit rose 4.5 pct to 1,200 dlrs - Reuter")
        ... # doctest: +NORMALIZE_WHITESPACE
        ['the', 'us', 'companys', 'profit', 'rose', '45', 'pct', 'to', '1200', 'dlrs',
         'reuter']
    """
    return keras_tokenize(text)


@dataclass(frozen=True)
class TextOptions:
    """The validated text options of a dataset.

    Example:
        >>> TextOptions.parse({"encoding": "multi_hot", "num_words": 500}, "reuters")
        TextOptions(num_words=500, maxlen=None, encoding='multi_hot')
    """

    num_words: int = DEFAULT_NUM_WORDS
    maxlen: int | None = DEFAULT_MAXLEN
    encoding: str = "sequence"

    @classmethod
    def parse(
        cls, options: Mapping[str, Any], dataset: str, others: Sequence[str] = ()
    ) -> TextOptions:
        """Read ``num_words``, ``maxlen`` and ``encoding``; refuse unknown or bad options.

        ``others`` are the options the calling loader reads itself (``path``, ...).
        """
        known = (*TEXT_OPTIONS, *others)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise DataError(
                f"dataset {dataset!r}: unknown option {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(known)}"
            )
        encoding = options.get("encoding", "sequence")
        if encoding not in ENCODINGS:
            raise DataError(
                f"dataset {dataset!r}: option encoding must be one of "
                f"{', '.join(ENCODINGS)}, got {encoding!r}"
            )
        num_words = _int_option(options, "num_words", DEFAULT_NUM_WORDS, 3, dataset)
        default_maxlen = DEFAULT_MAXLEN if encoding == "sequence" else None
        maxlen = (
            default_maxlen
            if options.get("maxlen") is None
            else _int_option(options, "maxlen", None, 1, dataset)
        )
        return cls(num_words=num_words, maxlen=maxlen, encoding=str(encoding))


def _int_option(
    options: Mapping[str, Any], key: str, default: int | None, least: int, dataset: str
) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise DataError(
            f"dataset {dataset!r}: option {key} must be an integer of at least {least}, "
            f"got {value!r}"
        )
    return int(value)


class _Index(dict[str, int]):
    """Word -> id; an unknown word is out of vocabulary."""

    def __missing__(self, key: str) -> int:
        return OOV_ID


class Vocabulary:
    """Word <-> id mapping: ``words[i]`` has id ``i``; ids 0 and 1 are padding and unknown.

    Example:
        >>> vocab = Vocabulary.fit([["b", "a", "b"], ["c", "b", "a"]], num_words=4)
        >>> vocab.words, vocab.ids(["b", "c", "zzz"])
        (['<pad>', '<oov>', 'b', 'a'], [2, 1, 1])
    """

    def __init__(self, words: Sequence[str]) -> None:
        if tuple(words[:2]) != RESERVED:
            raise ValueError(f"a vocabulary starts with {RESERVED}, got {list(words[:2])}")
        self.words = list(words)
        self._index = _Index((w, i) for i, w in enumerate(self.words))

    @classmethod
    def fit(cls, documents: Iterable[Sequence[str]], num_words: int) -> Vocabulary:
        """The ``num_words - 2`` most frequent words of ``documents`` (ties: first seen first)."""
        counts: Counter[str] = Counter()
        for tokens in documents:
            counts.update(tokens)
        # most_common sorts stably, so equal counts keep their first-occurrence order.
        return cls([*RESERVED, *(w for w, _ in counts.most_common(max(num_words - 2, 0)))])

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        # map() over a dict's __getitem__ runs in C; only unknown words call __missing__.
        return list(map(self._index.__getitem__, tokens))

    def decode(self, ids: Iterable[int]) -> str:
        """Tokens of ``ids`` joined by spaces, padding left out (to read an encoded document)."""
        return " ".join(self.words[i] for i in ids if i != PAD_ID)


def encode_sequences(id_lists: Sequence[Sequence[int]], maxlen: int) -> np.ndarray:
    """int32 array (n, maxlen): the first ``maxlen`` ids of each list, padded with 0 at the end.

    Example:
        >>> encode_sequences([[5, 6, 7], [8]], maxlen=2).tolist()
        [[5, 6], [8, 0]]
    """
    out = np.zeros((len(id_lists), maxlen), dtype=np.int32)
    for i, ids in enumerate(id_lists):
        row = ids[:maxlen]
        out[i, : len(row)] = row
    return out


def encode_multi_hot(id_lists: Sequence[Sequence[int]], num_words: int) -> np.ndarray:
    """uint8 array (n, num_words): 1 where the document has that id (padding column always 0).

    Example:
        >>> encode_multi_hot([[2, 3, 2], [1]], num_words=4).tolist()
        [[0, 0, 1, 1], [0, 1, 0, 0]]
    """
    out = np.zeros((len(id_lists), num_words), dtype=np.uint8)
    for i, ids in enumerate(id_lists):
        out[i, np.asarray(ids, dtype=np.int64)] = 1
    out[:, PAD_ID] = 0
    return out


def encode_tokens(
    documents: Sequence[Sequence[str]], vocab: Vocabulary, encoding: str, maxlen: int | None
) -> np.ndarray:
    """Tokenized documents as model inputs: id sequences or a multi-hot bag of words.

    The first ``maxlen`` tokens of each document count (all of them when ``maxlen`` is None);
    a multi-hot vector is ``len(vocab)`` wide.

    Example:
        >>> vocab = Vocabulary([*RESERVED, "news", "good"])
        >>> encode_tokens([["good", "news", "today"]], vocab, "sequence", 4).tolist()
        [[3, 2, 1, 0]]
        >>> encode_tokens([["good", "news", "today"]], vocab, "multi_hot", 1).tolist()
        [[0, 0, 0, 1]]
    """
    ids = [vocab.ids(t[:maxlen] if maxlen else t) for t in documents]
    if encoding == "sequence":
        if maxlen is None:
            raise ValueError("sequences need a maxlen")
        return encode_sequences(ids, maxlen)
    if encoding == "multi_hot":
        return encode_multi_hot(ids, len(vocab))
    raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")


@dataclass
class TokenSplit:
    """Tokenized documents of one split with their integer labels."""

    tokens: list[list[str]]
    labels: np.ndarray

    def take(self, idx: np.ndarray) -> TokenSplit:
        return TokenSplit([self.tokens[i] for i in idx], self.labels[idx])


def split_train(
    pool: TokenSplit, spec: DatasetSpec, test: TokenSplit | None
) -> tuple[TokenSplit, TokenSplit, TokenSplit]:
    """Train, validation and test from a training pool (and an official test split, if any).

    Validation is a stratified, seeded ``validation_fraction`` of the pool; without an
    official test split a stratified ``test_fraction`` of it becomes the test split too.
    ``subset`` then caps the training documents (seeded), leaving validation and test whole.

    Raises:
        DataError: a split would be empty (too few documents for the fractions).
    """
    test_fraction = 0.0 if test is not None else spec.test_fraction
    tr, va, te = split_indices(
        len(pool.labels), spec.validation_fraction, test_fraction, spec.seed, labels=pool.labels
    )
    idx = np.arange(len(tr))
    kept = take_subset(Split(idx, idx), spec.subset, spec.seed).x
    splits = (pool.take(tr[kept]), pool.take(va), test if test is not None else pool.take(te))
    for name, split in zip(("train", "validation", "test"), splits, strict=True):
        if len(split.labels) == 0:
            raise DataError(
                f"{len(pool.labels)} documents in {len(np.unique(pool.labels))} classes are too "
                f"few for validation_fraction {spec.validation_fraction}"
                + ("" if test is not None else f" and test_fraction {spec.test_fraction}")
                + f": the {name} split is empty"
            )
    return splits


def build_text_dataset(
    name: str,
    splits: tuple[TokenSplit, TokenSplit, TokenSplit],
    options: TextOptions,
    class_names: list[str],
    meta: dict[str, Any],
) -> Dataset:
    """Encode tokenized train / validation / test documents with a vocabulary of train only.

    ``meta`` gets ``num_words`` (the id range: ``options.num_words``, or fewer when the
    training documents have fewer distinct words), ``maxlen``, ``encoding`` and ``vocabulary``
    (the word of each id).

    Example:
        >>> s = TokenSplit([["good", "news"], ["bad", "news"]], np.array([0, 1]))
        >>> data = build_text_dataset("toy", (s, s, s), TextOptions(maxlen=3), ["pos", "neg"], {})
        >>> data.train.x.tolist(), data.meta["num_words"]
        ([[3, 2, 0], [4, 2, 0]], 5)
    """
    train, validation, test = splits
    vocab = Vocabulary.fit(train.tokens, options.num_words)
    num_words = len(vocab)

    def encode(split: TokenSplit) -> Split:
        x = encode_tokens(split.tokens, vocab, options.encoding, options.maxlen)
        return Split(x, split.labels.astype(np.int64))

    return Dataset(
        name=name,
        task="classification",
        train=encode(train),
        validation=encode(validation),
        test=encode(test),
        num_classes=len(class_names),
        class_names=list(class_names),
        meta={
            **meta,
            "num_words": num_words,
            "maxlen": options.maxlen,
            "encoding": options.encoding,
            "vocabulary": vocab.words,
            "tokenizer": TOKENIZER,
        },
        inputs=InputSpec.text(vocab.words, encoding=options.encoding, maxlen=options.maxlen),
    )


def vocabulary_artifact(data: Dataset) -> dict[str, bytes]:
    """``{"text_vocabulary.json": ...}``: what encoding new text the way ``data`` was needs.

    Empty for data without a vocabulary (a user's own pre-encoded arrays).
    """
    if "vocabulary" not in data.meta:
        return {}
    doc = {
        "dataset": data.name,
        "encoding": data.meta.get("encoding"),
        "maxlen": data.meta.get("maxlen"),
        "num_words": data.meta.get("num_words"),
        "tokenizer": {"name": TOKENIZER},
        "padding": "post",
        "truncating": "post",
        "pad_id": PAD_ID,
        "oov_id": OOV_ID,
        "class_names": data.class_names,
        "vocabulary": data.meta["vocabulary"],
    }
    return {VOCABULARY_ARTIFACT: json.dumps(doc, ensure_ascii=False).encode()}


@dataclass(frozen=True)
class TextEncoder:
    """Turns raw documents into a trained text classifier's inputs, exactly as its trial did.

    Made from the ``text_vocabulary.json`` a ``text_dense`` or ``text_conv1d`` trial stores
    (:func:`vocabulary_artifact`): the same tokenizer (:func:`tokenize`, or the stored regular
    expression of a study made before tokens followed Keras), the
    same vocabulary (unknown words are id 1), the same ``maxlen`` and encoding.

    Example:
        >>> enc = TextEncoder.from_json({"encoding": "sequence", "maxlen": 3,
        ...     "vocabulary": ["<pad>", "<oov>", "oil", "price"], "class_names": ["a", "b"]})
        >>> enc.encode(["Oil PRICE rises"]).tolist(), enc.describe()
        ([[2, 3, 1]], 'token sequences of 3 ids (4 words)')
    """

    words: tuple[str, ...]
    encoding: str
    maxlen: int | None
    pattern: str | None = None  # None: :func:`tokenize`
    class_names: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TextEncoder:
        """Read a ``text_vocabulary.json`` document; :class:`ValueError` says what is wrong."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"{VOCABULARY_ARTIFACT} must hold a JSON object")
        missing = [k for k in ("vocabulary", "encoding") if k not in doc]
        if missing:
            raise ValueError(f"{VOCABULARY_ARTIFACT} lacks {', '.join(missing)}")
        encoding = str(doc["encoding"])
        if encoding not in ENCODINGS:
            raise ValueError(f"{VOCABULARY_ARTIFACT}: unknown encoding {encoding!r}")
        maxlen = doc.get("maxlen")
        if encoding == "sequence" and not isinstance(maxlen, int):
            raise ValueError(f"{VOCABULARY_ARTIFACT}: sequences need an integer maxlen")
        tokenizer = doc.get("tokenizer") or {}
        words = tuple(str(w) for w in doc["vocabulary"])
        if words[:2] != RESERVED:
            raise ValueError(f"{VOCABULARY_ARTIFACT}: the vocabulary must start with {RESERVED}")
        return cls(
            words=words,
            encoding=encoding,
            maxlen=int(maxlen) if maxlen is not None else None,
            pattern=str(tokenizer["pattern"]) if tokenizer.get("pattern") else None,
            class_names=tuple(str(c) for c in doc.get("class_names") or ()),
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The model inputs of ``texts``: one row per document."""
        if self.pattern is None:
            tokens = [tokenize(t) for t in texts]
        else:
            pattern = re.compile(self.pattern)
            tokens = [pattern.findall(t.lower()) for t in texts]
        return encode_tokens(tokens, Vocabulary(self.words), self.encoding, self.maxlen)

    def describe(self) -> str:
        """What the model reads, in words (for messages)."""
        if self.encoding == "sequence":
            return f"token sequences of {self.maxlen} ids ({len(self.words)} words)"
        return f"a multi-hot bag of {len(self.words)} words" + (
            f" (first {self.maxlen} tokens)" if self.maxlen else ""
        )


def describe_inputs(data: Dataset) -> str:
    """A short description of ``data``'s inputs for error messages.

    Example:
        >>> x = np.zeros((2, 28, 28, 1), np.float32)
        >>> describe_inputs(Dataset("fashion_mnist", "classification", Split(x, x), Split(x, x),
        ...                         Split(x, x), 10))
        'float32 images of shape (28, 28, 1) from fashion_mnist'
    """
    x = data.train.x
    shape = tuple(int(d) for d in x.shape[1:])
    encoding = data.meta.get("encoding")
    if encoding == "multi_hot":
        what = f"a multi-hot bag of words of width {shape[0] if shape else '?'}"
    elif encoding == "sequence":
        what = f"integer token sequences of length {shape[0] if shape else '?'}"
    elif len(shape) == 3 and shape[-1] in (1, 3, 4):
        what = f"{x.dtype} images of shape {shape}"
    else:
        what = f"{x.dtype} inputs of shape {shape}"
    return f"{what} from {data.name}"
