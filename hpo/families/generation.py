"""Text generation from language models: sampling with a temperature, one token at a time.

A model is used through ``predict_next``: a callable taking a batch of windows of token ids,
shape ``(batch, maxlen)``, and returning next-token probabilities, shape ``(batch, vocabulary)``.
:func:`model_predictor` makes one from a Keras model; :func:`average_predictors` mixes several
(a weighted average of their distributions, as a language-model ensemble would), and anything
else with the same signature plugs in too.

The temperature reweights a distribution ``p`` to ``p ** (1 / T)`` (renormalized) and the next
token is *drawn* from it, never taken as the most likely one: low temperatures (0.2) concentrate
the mass on likely tokens (repetitive, safe text), 1.0 samples the model's own distribution, and
higher ones spread it out (surprising, then incoherent, text).

Seed text: it is tokenized like the training corpus (lowercased if the corpus was). At the
character level, characters the vocabulary lacks are dropped (there is no unknown-character
token); at the word level, unknown words become ``<unk>``. A seed longer than the model's window
keeps its last ``maxlen`` tokens. A shorter one (or none) is completed on the left with the
vocabulary's ``context``: ``maxlen`` tokens of training text that end a paragraph, stored with
the model, so the window looks like text the model was trained on and the seed starts a new
paragraph (a run of padding would be a window the model never saw, and its first characters
garbage). Without a context, line breaks pad the seed (``"\\n"``, or ``" "``, ``<unk>``, id 0: the
first the vocabulary has).

This module needs only NumPy; Keras is imported by :func:`model_predictor` alone.

Example:
    >>> import numpy as np
    >>> vocab = Vocabulary(tokens=["\\n", " ", "a", "b"], level="char", maxlen=4)
    >>> flat = lambda windows: np.full((len(windows), 4), 0.25)
    >>> text = generate_text(flat, vocab.tokens, "char", "ab", 10, 1.0,
    ...                      np.random.default_rng(0), maxlen=4)
    >>> len(text), set(text) <= set(vocab.tokens)
    (10, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.datasets.text_corpus import LEVELS, OOV_TOKEN, detokenize, space_between, tokenize

if TYPE_CHECKING:
    import keras

    from hpo.datasets import Dataset

VOCABULARY_FILE = "vocabulary.json"
PredictNext = Callable[[np.ndarray], np.ndarray]
# Left padding for short seeds, in order of preference: a line break starts a new paragraph.
_PAD_TOKENS = ("\n", " ", OOV_TOKEN)


@dataclass(frozen=True)
class Vocabulary:
    """What generation needs to know of a language model's data: tokens, level, window length.

    Stored as ``vocabulary.json`` beside each trained language model.

    Example:
        >>> v = Vocabulary(["<unk>", "\\n", "the", "king"], "word", maxlen=3, lowercase=True,
        ...                oov_token="<unk>")
        >>> v.encode_seed("The Queen")  # lowercased; "queen" is unknown
        [2, 0]
        >>> Vocabulary.from_json(v.to_json()) == v
        True
    """

    tokens: list[str]
    level: str
    maxlen: int
    lowercase: bool = False
    oov_token: str | None = None
    dataset: str | None = None
    context: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be char or word, got {self.level!r}")
        if len(self.tokens) < 2:
            raise ValueError(f"a vocabulary needs at least 2 tokens, got {len(self.tokens)}")
        if self.maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {self.maxlen}")

    @classmethod
    def from_dataset(cls, data: Dataset) -> Vocabulary:
        """The vocabulary of a language-model dataset (``meta`` of :mod:`.text_corpus`)."""
        meta = data.meta
        return cls(
            tokens=list(meta["vocabulary"]),
            level=str(meta["level"]),
            maxlen=int(meta.get("maxlen") or data.input_shape[0]),
            lowercase=bool(meta.get("lowercase", False)),
            oov_token=meta.get("oov_token"),
            dataset=data.name,
            context=list(meta.get("context", [])),
        )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Vocabulary:
        """Read the content of ``vocabulary.json``; :class:`ValueError` says what is missing."""
        missing = [k for k in ("vocabulary", "level", "maxlen") if k not in obj]
        if missing:
            raise ValueError(f"{VOCABULARY_FILE} lacks {', '.join(missing)}")
        return cls(
            tokens=[str(t) for t in obj["vocabulary"]],
            level=str(obj["level"]),
            maxlen=int(obj["maxlen"]),
            lowercase=bool(obj.get("lowercase", False)),
            oov_token=obj.get("oov_token"),
            dataset=obj.get("dataset"),
            context=[str(t) for t in obj.get("context", [])],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "maxlen": self.maxlen,
            "lowercase": self.lowercase,
            "oov_token": self.oov_token,
            "dataset": self.dataset,
            "context": list(self.context),
            "vocabulary": list(self.tokens),
        }

    @property
    def pad_id(self) -> int:
        index = {t: i for i, t in enumerate(self.tokens)}
        return next((index[t] for t in _PAD_TOKENS if t in index), 0)

    def window(self, seed_text: str) -> list[int]:
        """The first window: the seed's last ``maxlen`` ids, completed by the context or padding.

        Example:
            >>> v = Vocabulary(list("\\n .abc"), "char", maxlen=5, context=list("abc.\\n"))
            >>> v.decode(v.window("ba"))
            'c.\\nba'
        """
        seed_ids = self.encode_seed(seed_text)[-self.maxlen :]
        missing = self.maxlen - len(seed_ids)
        if missing == 0:
            return seed_ids
        context = self._context_ids()
        if len(context) >= missing:
            return context[len(context) - missing :] + seed_ids
        return [self.pad_id] * (missing - len(context)) + context + seed_ids

    def _context_ids(self) -> list[int]:
        index = {t: i for i, t in enumerate(self.tokens)}
        oov = index.get(self.oov_token) if self.oov_token else None
        ids = [index.get(t, oov) for t in self.context]
        return [i for i in ids if i is not None]

    def encode_seed(self, text: str) -> list[int]:
        """Ids of the seed's tokens: unknown characters dropped, unknown words as ``<unk>``."""
        index = {t: i for i, t in enumerate(self.tokens)}
        oov = index.get(self.oov_token) if self.oov_token else None
        ids = []
        for token in tokenize(text, self.level, self.lowercase):
            if token in index:
                ids.append(index[token])
            elif oov is not None:
                ids.append(oov)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return detokenize((self.tokens[i] for i in ids), self.level)


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float, or :class:`ValueError` unless it is finite and above 0.

    Example:
        >>> check_temperature(0.5)
        0.5
    """
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(
            f"temperature must be a number above 0 (e.g. 0.2, 0.5, 1.0), got {temperature}; "
            "0 would mean always taking the most likely token, which generation never does"
        )
    return t


def reweight(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs ** (1 / temperature)``, renormalized (computed in log space to avoid overflow).

    Tokens of probability 0 keep probability 0.

    Example:
        >>> reweight(np.array([0.5, 0.25, 0.25]), 0.5).round(3).tolist()
        [0.667, 0.167, 0.167]
    """
    t = check_temperature(temperature)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"probs must be a non-empty 1-D array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("probs must be finite, non-negative and not all 0")
    with np.errstate(divide="ignore"):
        logits = np.log(p) / t
    weights = np.exp(logits - logits.max())
    out: np.ndarray = weights / weights.sum()
    return out


def sample_next(probs: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Draw one token id from ``probs`` reweighted by ``temperature`` (never the argmax).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> sorted({sample_next(np.full(4, 0.25), 1.0, rng) for _ in range(100)})
        [0, 1, 2, 3]
    """
    weights = reweight(probs, temperature)
    return int(rng.choice(len(weights), p=weights))


def generate_texts(
    predict_next: PredictNext,
    vocabulary: Sequence[str] | Vocabulary,
    level: str,
    seed_text: str,
    length: int,
    temperatures: Sequence[float],
    rng: np.random.Generator,
    *,
    maxlen: int,
    lowercase: bool = False,
) -> list[str]:
    """One continuation of ``seed_text`` per temperature, all generated in one batch.

    ``length`` counts tokens: characters, or words and punctuation marks. The seed itself is not
    part of the returned texts. ``vocabulary`` is the id -> token list (``<unk>`` in it marks
    the word level's unknown token), or a :class:`Vocabulary`, which also carries the
    lowercasing (``level`` and ``maxlen`` must then agree with it).

    Example:
        >>> flat = lambda windows: np.full((len(windows), 3), 1 / 3)
        >>> texts = generate_texts(flat, ["a", "b", "c"], "char", "", 5, [0.2, 1.0],
        ...                        np.random.default_rng(0), maxlen=2)
        >>> [len(t) for t in texts]
        [5, 5]
    """
    if isinstance(vocabulary, Vocabulary):
        vocab = vocabulary
        if (vocab.level, vocab.maxlen) != (level, maxlen):
            raise ValueError(
                f"the vocabulary is for {vocab.level}-level windows of {vocab.maxlen} tokens, "
                f"but level={level!r} and maxlen={maxlen} were given"
            )
    else:
        tokens = list(vocabulary)
        vocab = Vocabulary(
            tokens,
            level,
            maxlen,
            lowercase,
            oov_token=OOV_TOKEN if OOV_TOKEN in tokens else None,
        )
    temps = [check_temperature(t) for t in temperatures]
    if not temps:
        raise ValueError("give at least one temperature")
    if length < 0:
        raise ValueError(f"length must be at least 0, got {length}")
    start = vocab.window(seed_text)
    window = np.tile(np.asarray(start, dtype=np.int32), (len(temps), 1))
    generated: list[list[int]] = [[] for _ in temps]
    for _ in range(length):
        probs = np.asarray(predict_next(window))
        if probs.shape != (len(temps), len(vocab.tokens)):
            raise ValueError(
                f"predict_next returned shape {probs.shape}, expected "
                f"({len(temps)}, {len(vocab.tokens)}): one distribution over the vocabulary "
                "per window"
            )
        ids = [sample_next(probs[i], t, rng) for i, t in enumerate(temps)]
        for out, token_id in zip(generated, ids, strict=True):
            out.append(token_id)
        window = np.concatenate([window[:, 1:], np.asarray(ids, np.int32)[:, None]], axis=1)
    return [vocab.decode(ids) for ids in generated]


def generate_text(
    predict_next: PredictNext,
    vocabulary: Sequence[str] | Vocabulary,
    level: str,
    seed_text: str,
    length: int,
    temperature: float,
    rng: np.random.Generator,
    *,
    maxlen: int,
    lowercase: bool = False,
) -> str:
    """One continuation of ``seed_text``: ``length`` tokens sampled at ``temperature``.

    Example:
        >>> peaked = lambda w: np.tile([0.9, 0.05, 0.05], (len(w), 1))
        >>> generate_text(peaked, ["a", "b", "c"], "char", "", 8, 0.1,
        ...               np.random.default_rng(0), maxlen=3)
        'aaaaaaaa'
    """
    return generate_texts(
        predict_next,
        vocabulary,
        level,
        seed_text,
        length,
        [temperature],
        rng,
        maxlen=maxlen,
        lowercase=lowercase,
    )[0]


def join_seed(seed_text: str, generated: str, level: str) -> str:
    """The seed followed by its continuation, with a space between words where one belongs.

    Example:
        >>> join_seed("The king", "is dead .", "word"), join_seed("ROMEO:", "\\nAy", "char")
        ('The king is dead .', 'ROMEO:\\nAy')
    """
    if level == "char" or not seed_text or not generated or seed_text[-1].isspace():
        return seed_text + generated
    glue = " " if space_between(seed_text[-1], generated[0]) else ""
    return seed_text + glue + generated


def model_predictor(model: keras.Model) -> PredictNext:
    """``predict_next`` for a Keras model (one compiled predict step, reused every token).

    ``predict_on_batch`` is used rather than ``model(x)`` (eager: 60x slower per token for an
    LSTM on TensorFlow) or ``predict`` (sets up a dataset per call).
    """

    def predict_next(windows: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(windows))

    return predict_next


def window_predictor(predict_next: PredictNext, maxlen: int) -> PredictNext:
    """``predict_next`` fed only the last ``maxlen`` ids of longer windows.

    Lets members of an ensemble with different window lengths share one (longest) window.

    Example:
        >>> seen = []
        >>> p = window_predictor(lambda w: seen.append(w.tolist()) or np.ones((1, 2)) / 2, 2)
        >>> _ = p(np.array([[5, 6, 7]])); seen
        [[[6, 7]]]
    """
    if maxlen < 1:
        raise ValueError(f"maxlen must be at least 1, got {maxlen}")

    def predict(windows: np.ndarray) -> np.ndarray:
        if windows.shape[-1] < maxlen:
            raise ValueError(f"windows of {windows.shape[-1]} ids; this model needs {maxlen}")
        return predict_next(windows[..., -maxlen:])

    return predict


def average_predictors(
    predictors: Sequence[PredictNext], weights: Sequence[float] | None = None
) -> PredictNext:
    """``predict_next`` of a weighted average of several models' distributions.

    Example:
        >>> a = lambda w: np.tile([1.0, 0.0], (len(w), 1))
        >>> b = lambda w: np.tile([0.0, 1.0], (len(w), 1))
        >>> average_predictors([a, b], [3, 1])(np.zeros((1, 2))).tolist()
        [[0.75, 0.25]]
    """
    if not predictors:
        raise ValueError("give at least one predictor")
    w = np.ones(len(predictors)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(predictors),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"weights must be {len(predictors)} non-negative numbers, not all 0; got {weights}"
        )
    w = w / w.sum()

    def predict_next(windows: np.ndarray) -> np.ndarray:
        out: np.ndarray = sum(
            (
                wi * np.asarray(p(windows), dtype=np.float64)
                for wi, p in zip(w, predictors, strict=True)
                if wi > 0  # a model weighted 0 need not run
            ),
            start=np.zeros(()),
        )
        return out

    return predict_next
