"""A 1-D convolutional text classifier over word embeddings.

Input: integer token sequences (dataset ``encoding: sequence``): ids below
``data.meta["num_words"]``, 0 for padding. Layers: Embedding -> conv blocks -> global pooling
-> optional dense layer -> softmax.

Parameters (all optional; a missing one takes the default in brackets):

* ``embedding_dim`` [64];
* ``blocks`` [2]: convolution blocks; each is Conv1D (``filters`` [64], ``kernel_size`` [5],
  ``same`` padding, ``activation`` [``relu``], ``batchnorm`` [``none``] as in
  :func:`~hpo.families._common.normalized_layer`), then ``dropout`` [0.0];
* ``pooling`` [``max``]: ``max``, ``average`` or ``none``, window ``pool_size`` [2], between
  blocks (not after the last: the global pooling follows it; skipped once the sequence is
  shorter than the window);
* ``global_pooling`` [``max``]: ``max`` (is the pattern anywhere?) or ``average``;
* ``dense_units`` [0]: units of one hidden dense layer (with ``dropout`` before the output);
  0 leaves it out;
* ``optimizer`` [``adam``] with its conditional sub-parameters, ``learning_rate``;
* ``batch_size`` [32].
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, ClassVar

from hpo.datasets import DataError, Dataset, Task
from hpo.datasets._text import describe_inputs, vocabulary_artifact
from hpo.families._base import Family
from hpo.families._common import (
    classifier_output,
    compile_classifier,
    dropout,
    normalized_layer,
)

if TYPE_CHECKING:
    import keras

    from hpo.spaces import Params

POOLING = {"max": "MaxPooling1D", "average": "AveragePooling1D", "none": None}
GLOBAL_POOLING = {"max": "GlobalMaxPooling1D", "average": "GlobalAveragePooling1D"}


def token_range(data: Dataset) -> int:
    """Number of token ids, padding included: ``meta["num_words"]`` or the largest id + 1.

    Example:
        >>> import numpy as np
        >>> from hpo.datasets import Split
        >>> x = np.array([[3, 1, 0]], np.int32)
        >>> token_range(Dataset("t", "classification", Split(x, x), Split(x, x), Split(x, x), 2))
        4
    """
    seen = max(int(s.x.max()) + 1 if s.x.size else 1 for s in (data.train, data.validation))
    return max(int(data.meta.get("num_words") or 0), seen)


def check_token_sequences(family: str, data: Dataset) -> None:
    """Raise :class:`DataError` unless ``data`` holds 2-D integer token sequences."""
    x = data.train.x
    if data.meta.get("encoding") == "multi_hot" or x.ndim != 2 or x.dtype.kind not in "iu":
        raise DataError(
            f"{family} needs integer token sequences (dataset encoding 'sequence'); got "
            f"{describe_inputs(data)}"
            + (
                ": set `encoding: sequence` in the dataset's options"
                if data.meta.get("encoding")
                else ""
            )
        )
    num_words = data.meta.get("num_words")
    for name, split in (
        ("train", data.train),
        ("validation", data.validation),
        ("test", data.test),
    ):
        if split.x.size and int(split.x.min()) < 0:
            raise DataError(f"{family}: {data.name}'s {name} split has negative token ids")
        if num_words and split.x.size and int(split.x.max()) >= int(num_words):
            raise DataError(
                f"{family}: {data.name}'s {name} split has token id {int(split.x.max())}, but "
                f"meta['num_words'] is {num_words} (ids must be below it)"
            )


class TextConv1D(Family):
    """Embedding, Conv1D blocks, global pooling, optional dense layer, softmax.

    Example:
        >>> import numpy as np
        >>> from hpo.datasets import Split
        >>> from hpo.spaces import Params
        >>> x, y = np.array([[2, 3, 0], [4, 2, 5]], np.int32), np.array([0, 1])
        >>> data = Dataset("toy", "classification", Split(x, y), Split(x, y), Split(x, y), 2,
        ...                meta={"num_words": 6, "encoding": "sequence"})
        >>> model = TextConv1D().build(Params({"blocks": 1, "filters": 4, "embedding_dim": 3}),
        ...                            data)
        >>> model.output_shape
        (None, 2)
    """

    name = "text_conv1d"
    tasks: ClassVar[tuple[Task, ...]] = ("classification", "binary")

    def check_data(self, data: Dataset) -> None:
        super().check_data(data)
        check_token_sequences(self.name, data)

    def build(self, hp: Params, data: Dataset) -> keras.Model:
        """A compiled model for ``data``'s (maxlen,) token sequences."""
        import keras

        self.check_data(data)
        pooling = str(hp.get("pooling", "max"))
        global_pooling = str(hp.get("global_pooling", "max"))
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {', '.join(POOLING)}, got {pooling!r}")
        if global_pooling not in GLOBAL_POOLING:
            raise ValueError(
                f"global_pooling must be one of {', '.join(GLOBAL_POOLING)}, got {global_pooling!r}"
            )
        blocks = int(hp.get("blocks", 2))
        filters = int(hp.get("filters", 64))
        kernel_size = int(hp.get("kernel_size", 5))
        pool_size = int(hp.get("pool_size", 2))
        activation = str(hp.get("activation", "relu"))
        batchnorm = str(hp.get("batchnorm", "none"))
        rate = float(hp.get("dropout", 0.0))
        dense_units = int(hp.get("dense_units", 0))
        pool_layer = POOLING[pooling]
        pool_cls = getattr(keras.layers, pool_layer) if pool_layer else None

        length = int(data.train.x.shape[1])
        inputs = keras.Input((length,), dtype="int32", name="tokens")
        x = keras.layers.Embedding(
            token_range(data), int(hp.get("embedding_dim", 64)), name="embedding"
        )(inputs)
        for block in range(1, blocks + 1):
            make = partial(keras.layers.Conv1D, filters, kernel_size, padding="same")
            x = normalized_layer(
                x, make, batchnorm=batchnorm, activation=activation, name=f"block{block}_conv"
            )
            # Pool between blocks only: the global pooling summarizes the last one, and a
            # window longer than what is left of the sequence would empty it.
            if pool_cls is not None and block < blocks and length >= 2 * pool_size:
                x = pool_cls(pool_size, name=f"block{block}_pool")(x)
                length //= pool_size
            x = dropout(x, rate, name=f"block{block}_dropout")
        x = getattr(keras.layers, GLOBAL_POOLING[global_pooling])(name="global_pool")(x)
        if dense_units > 0:
            x = keras.layers.Dense(dense_units, activation=activation, name="dense")(x)
            x = dropout(x, rate, name="dense_dropout")
        outputs = classifier_output(data)(x)
        model = keras.Model(inputs, outputs, name="text_conv1d")
        compile_classifier(model, hp, data)
        return model

    def extra_artifacts(self, model: keras.Model, hp: Params, data: Dataset) -> dict[str, bytes]:
        """``text_vocabulary.json``: the tokenizer, vocabulary and length that new text needs."""
        return vocabulary_artifact(data)
