"""The bag-of-words baseline: a multi-hot vector of the document's words through Dense layers.

Input: a multi-hot bag of words (dataset ``encoding: multi_hot``): one 0/1 column per
vocabulary id, ``data.meta["num_words"]`` wide (any other non-negative 2-D features, such as
counts, work too). It is the classic first model for Reuters topics.

Parameters (all optional; a missing one takes the default in brackets):

* ``layers`` [2]: hidden Dense layers, each of ``units`` [64] with ``activation`` [``relu``],
  ``batchnorm`` [``none``] as in :func:`~hpo.families._common.normalized_layer`, and
  ``dropout`` [0.0] after it;
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


def check_bag_of_words(family: str, data: Dataset) -> None:
    """Raise :class:`DataError` unless ``data`` holds 2-D non-negative features (multi-hot)."""
    x = data.train.x
    encoding = data.meta.get("encoding")
    # Integer ids above 1 are token sequences, not a bag of words, even without meta.
    looks_like_ids = x.dtype.kind in "iu" and x.size > 0 and int(x.max()) > 1
    if encoding == "sequence" or x.ndim != 2 or x.dtype.kind not in "fiub" or looks_like_ids:
        raise DataError(
            f"{family} needs a multi-hot bag of words (dataset encoding 'multi_hot'); got "
            f"{describe_inputs(data)}"
            + (
                ": set `encoding: multi_hot` in the dataset's options"
                if encoding or looks_like_ids
                else ""
            )
        )
    if x.size and float(x.min()) < 0:
        raise DataError(f"{family}: {data.name}'s features are negative; expected 0/1 word flags")


class TextDense(Family):
    """Multi-hot words -> Dense layers -> softmax.

    Example:
        >>> import numpy as np
        >>> from hpo.datasets import Split
        >>> from hpo.spaces import Params
        >>> x, y = np.array([[0, 1, 1, 0], [0, 0, 1, 1]], np.uint8), np.array([0, 1])
        >>> data = Dataset("toy", "classification", Split(x, y), Split(x, y), Split(x, y), 2,
        ...                meta={"num_words": 4, "encoding": "multi_hot"})
        >>> TextDense().build(Params({"layers": 1, "units": 8}), data).output_shape
        (None, 2)
    """

    name = "text_dense"
    tasks: ClassVar[tuple[Task, ...]] = ("classification", "binary")

    def check_data(self, data: Dataset) -> None:
        super().check_data(data)
        check_bag_of_words(self.name, data)

    def build(self, hp: Params, data: Dataset) -> keras.Model:
        """A compiled model for ``data``'s (num_words,) multi-hot vectors."""
        import keras

        self.check_data(data)
        units = int(hp.get("units", 64))
        activation = str(hp.get("activation", "relu"))
        batchnorm = str(hp.get("batchnorm", "none"))
        rate = float(hp.get("dropout", 0.0))
        # float32 input: Keras casts uint8 multi-hot batches on the way in.
        inputs = keras.Input(data.input_shape, name="words")
        x = inputs
        for layer in range(1, int(hp.get("layers", 2)) + 1):
            x = normalized_layer(
                x,
                partial(keras.layers.Dense, units),
                batchnorm=batchnorm,
                activation=activation,
                name=f"dense{layer}",
            )
            x = dropout(x, rate, name=f"dense{layer}_dropout")
        outputs = classifier_output(data)(x)
        model = keras.Model(inputs, outputs, name="text_dense")
        compile_classifier(model, hp, data)
        return model

    def extra_artifacts(self, model: keras.Model, hp: Params, data: Dataset) -> dict[str, bytes]:
        """``text_vocabulary.json``: the tokenizer and vocabulary that new text needs."""
        return vocabulary_artifact(data)
