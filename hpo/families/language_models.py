"""Recurrent language models: predict the next character or word of a window of text.

Both families read windows of token ids (``shakespeare`` or ``text_corpus`` data, see
:mod:`hpo.datasets.text_corpus`) and end in a softmax over the vocabulary. They are compiled
with sparse categorical cross-entropy (the objective to minimize is ``val_loss``) and two
metrics that Keras logs every epoch: ``accuracy`` (of the next token) and ``bits_per_token``,
the cross-entropy in bits (``loss / ln 2``): bits per character for ``char_lstm`` and per word
for ``word_lstm``, the usual way to compare language models; ``val_bits_per_token`` is the
validation one.

``char_lstm`` parameters (a missing one takes the default in brackets):

* ``encoding`` [``onehot``]: ``onehot`` (each character a one-hot vector, as in the course) or
  ``embedding`` (a learned ``Embedding`` of ``embedding_dim`` [32], given at the top level or
  under the option: ``encoding.embedding.embedding_dim``);
* ``cell`` [``LSTM``] or ``GRU``; ``units`` [128]; ``layers`` [1] stacked recurrent layers;
* ``dropout`` [0.0]: after each recurrent layer; ``recurrent_dropout`` [0.0] (slow on CPU);
* ``optimizer`` [``rmsprop``] with its sub-parameters, ``learning_rate``; ``batch_size`` [128].

``word_lstm`` takes the same, except that the input is always a learned ``Embedding`` of
``embedding_dim`` [64] (a one-hot vector over thousands of words would be wasteful).

Both write text samples after chosen epochs (``sample_epochs``, ``sample_temperatures``,
``sample_length``; see :mod:`hpo.families.lm_samples`) into the trial's MLflow run.

Each trial stores ``vocabulary.json`` (tokens, level, window length, lowercasing) beside its
model, so ``hpo generate text`` works from the stored trial alone.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, ClassVar

from hpo.datasets import DataError, Dataset, Task
from hpo.families._base import Family
from hpo.families._common import build_optimizer, classifier_output, dropout
from hpo.families.generation import VOCABULARY_FILE, Vocabulary
from hpo.families.lm_samples import check_sample_params, epoch_samples, sample_plan

if TYPE_CHECKING:
    import keras

    from hpo.spaces import Params, StudySpec

CELLS = ("LSTM", "GRU")
ENCODINGS = ("onehot", "embedding")
DEFAULT_OPTIMIZER = "rmsprop"  # the course's choice for character LSTMs


def bits_per_token(y_true: Any, y_pred: Any) -> Any:
    """Cross-entropy of the next token in bits (nats / ln 2), per window.

    Example:
        >>> import numpy as np
        >>> float(bits_per_token(np.array([0]), np.array([[0.25, 0.75]]))[0])
        2.0
    """
    import keras

    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred) / math.log(2.0)


def bits_metric() -> keras.metrics.Metric:
    """The ``bits_per_token`` metric, a mean over windows like the loss."""
    import keras

    return keras.metrics.MeanMetricWrapper(bits_per_token, name="bits_per_token")


class _LanguageModel(Family):
    """Shared by both families: checks, the recurrent stack, compilation, the vocabulary."""

    tasks: ClassVar[tuple[Task, ...]] = ("language_model",)
    default_batch_size: ClassVar[int] = 128
    level: ClassVar[str] = "char"

    def check_data(self, data: Dataset) -> None:
        """Language-model data of this family's level, with its vocabulary in ``meta``."""
        super().check_data(data)
        vocabulary = data.meta.get("vocabulary")
        if not isinstance(vocabulary, list) or len(vocabulary) != data.num_classes:
            raise DataError(
                f"family {self.name!r} needs the vocabulary in the dataset's meta "
                f"('vocabulary': one token per class, {data.num_classes} of them); dataset "
                f"{data.name!r} has none or one of another size"
            )
        level = data.meta.get("level")
        if level != self.level:
            other = "word_lstm" if self.level == "char" else "char_lstm"
            raise DataError(
                f"family {self.name!r} models {self.level}s, but dataset {data.name!r} is cut "
                f"into {level}s: set the dataset option level: {self.level}, or use the "
                f"family {other}"
            )
        if len(data.input_shape) != 1:
            raise DataError(
                f"family {self.name!r} needs windows of token ids of shape (maxlen,), but "
                f"dataset {data.name!r} has inputs of shape {data.input_shape}"
            )

    def check_spec(self, spec: StudySpec) -> None:
        """The ``sample_*`` parameters (:mod:`hpo.families.lm_samples`)."""
        check_sample_params(spec, self.level)

    def build(self, hp: Params, data: Dataset) -> keras.Model:
        """A compiled model: token ids -> encoding -> recurrent layers -> next-token softmax."""
        import keras

        self.check_data(data)
        sample_plan(hp, self.level)  # bad sampling options fail the trial before it trains
        cell = _choice(hp, "cell", "LSTM", CELLS)
        units = int(hp.get("units", 128))
        layers = int(hp.get("layers", 1))
        rate = float(hp.get("dropout", 0.0))
        recurrent_rate = float(hp.get("recurrent_dropout", 0.0))
        if layers < 1 or units < 1:
            raise ValueError(f"layers and units must be at least 1, got {layers} and {units}")
        inputs = keras.Input(data.input_shape, dtype="int32", name="tokens")
        x = self.encode(inputs, hp, data)
        cell_cls = getattr(keras.layers, cell)
        for i in range(1, layers + 1):
            x = cell_cls(
                units,
                return_sequences=i < layers,  # every layer but the last feeds a sequence on
                recurrent_dropout=recurrent_rate,
                name=f"{cell.lower()}{i}",
            )(x)
            x = dropout(x, rate, name=f"dropout{i}")
        outputs = classifier_output(data, name="next_token")(x)
        model = keras.Model(inputs, outputs, name=self.name)
        model.compile(
            optimizer=build_optimizer(_with_default_optimizer(hp)),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy", bits_metric()],
        )
        return model

    def encode(self, inputs: Any, hp: Params, data: Dataset) -> Any:
        """Token ids -> vectors; each family decides how."""
        raise NotImplementedError

    def epoch_artifacts(
        self, model: keras.Model, hp: Params, data: Dataset, epoch: int, max_epochs: int
    ) -> dict[str, bytes]:
        """Text samples after the epochs ``sample_epochs`` names (``samples/...txt``)."""
        return epoch_samples(model, data, sample_plan(hp, self.level), epoch, max_epochs)

    def extra_artifacts(self, model: keras.Model, hp: Params, data: Dataset) -> dict[str, bytes]:
        """``vocabulary.json``: what ``hpo generate text`` needs to turn text into ids and back."""
        vocabulary = Vocabulary.from_dataset(data)
        return {VOCABULARY_FILE: json.dumps(vocabulary.to_json(), ensure_ascii=False).encode()}


class CharLSTM(_LanguageModel):
    """A character-level LSTM/GRU language model (one-hot or embedded characters).

    Example:
        >>> from hpo.datasets import load_dataset
        >>> from hpo.spaces import DatasetSpec, Params
        >>> data = load_dataset(DatasetSpec(name="shakespeare", test_fraction=0.1,
        ...                                 options={"max_chars": 5000, "maxlen": 20}))
        >>> model = CharLSTM().build(Params({"units": 16, "cell": "GRU"}), data)
        >>> model.output_shape == (None, data.num_classes)
        True
    """

    name = "char_lstm"
    level = "char"

    def encode(self, inputs: Any, hp: Params, data: Dataset) -> Any:
        import keras

        encoding = _choice(hp, "encoding", "onehot", ENCODINGS)
        assert data.num_classes is not None  # check_data made sure
        if encoding == "onehot":
            # CategoryEncoding appends the one-hot axis: (batch, maxlen) -> (batch, maxlen, V);
            # a built-in layer, so the saved model loads in safe mode with no custom code.
            return keras.layers.CategoryEncoding(
                data.num_classes, output_mode="one_hot", name="one_hot"
            )(inputs)
        embedding = keras.layers.Embedding(
            data.num_classes, _embedding_dim(hp, 32), name="embedding"
        )
        return embedding(inputs)


class WordLSTM(_LanguageModel):
    """A word-level LSTM/GRU language model over a learned word embedding.

    Example:
        >>> from hpo.datasets import load_dataset
        >>> from hpo.spaces import DatasetSpec, Params
        >>> data = load_dataset(DatasetSpec(name="shakespeare", test_fraction=0.1, options={
        ...     "level": "word", "max_chars": 20000, "maxlen": 8, "num_words": 300}))
        >>> model = WordLSTM().build(Params({"units": 16, "embedding_dim": 8}), data)
        >>> model.output_shape
        (None, 300)
    """

    name = "word_lstm"
    level = "word"

    def encode(self, inputs: Any, hp: Params, data: Dataset) -> Any:
        import keras

        assert data.num_classes is not None  # check_data made sure
        embedding = keras.layers.Embedding(
            data.num_classes, _embedding_dim(hp, 64), name="embedding"
        )
        return embedding(inputs)


def _choice(hp: Params, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = str(hp.get(name, default))
    by_lower = {c.lower(): c for c in choices}
    if value.lower() not in by_lower:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return by_lower[value.lower()]


def _embedding_dim(hp: Params, default: int) -> int:
    """``embedding_dim`` under the ``encoding: embedding`` option, or at the top level."""
    if "encoding" in hp and hasattr(hp, "children"):
        nested = hp.children("encoding").get("embedding_dim")
        if nested is not None:
            return int(nested)
    return int(hp.get("embedding_dim", default))


def _with_default_optimizer(hp: Params) -> Any:
    """``hp``, or ``hp`` plus ``optimizer: rmsprop`` when the space names no optimizer."""
    if "optimizer" in hp:
        return hp
    return {**dict(hp), "optimizer": DEFAULT_OPTIMIZER}
