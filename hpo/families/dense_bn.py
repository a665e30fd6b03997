"""A dense (fully connected) classifier on flattened inputs, with batch-norm placement searched.

Works on any input shape: images (Fashion-MNIST, digits) are flattened, tabular features are
used as they are. Parameters (all optional; a missing one takes the default in brackets):

* ``depth`` [2]: number of hidden layers (0 gives a linear classifier);
* ``units`` [128]: width of the first hidden layer;
* ``shrink`` [1.0]: each further hidden layer is ``shrink`` times as wide as the one before
  (rounded, at least 1 unit): 1.0 keeps a constant width, 0.5 halves it layer by layer
  (128 -> 64 -> 32), the usual funnel shape;
* ``activation`` [``relu``]: any Keras activation name;
* ``batchnorm`` [``none``]: ``after`` = Dense(activation) -> BatchNormalization;
  ``before`` = Dense (no bias) -> BatchNormalization -> Activation, as in Ioffe & Szegedy (2015);
* ``dropout`` [0.0]: after every hidden layer;
* ``optimizer`` [``adam``] with its conditional sub-parameters, ``learning_rate``;
* ``batch_size`` [32].

Classification data gets a softmax over the classes and sparse categorical cross-entropy;
binary data (0/1 labels) one sigmoid unit and binary cross-entropy.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from hpo.datasets import DataError, Dataset, Task
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


def layer_widths(units: int, depth: int, shrink: float = 1.0) -> list[int]:
    """Widths of the hidden layers: ``units``, then ``shrink`` times the previous one.

    Example:
        >>> layer_widths(128, 3, 0.5), layer_widths(64, 2), layer_widths(4, 4, 0.25)
        ([128, 64, 32], [64, 64], [4, 1, 1, 1])
    """
    if units < 1:
        raise ValueError(f"units must be at least 1, got {units}")
    if depth < 0:
        raise ValueError(f"depth must not be negative, got {depth}")
    if not 0 < shrink <= 1:
        raise ValueError(f"shrink must be in (0, 1], got {shrink}")
    return [max(1, round(units * shrink**i)) for i in range(depth)]


class DenseBN(Family):
    """Flatten -> ``depth`` x [Dense with optional batch normalization -> Dropout] -> output.

    Example:
        >>> from hpo.spaces import DatasetSpec, Params
        >>> from hpo.datasets import load_dataset
        >>> data = load_dataset(DatasetSpec(name="digits", subset=100))
        >>> model = DenseBN().build(Params({"depth": 2, "units": 32, "shrink": 0.5}), data)
        >>> [layer.units for layer in model.layers if type(layer).__name__ == "Dense"]
        [32, 16, 10]
    """

    name = "dense_bn"
    tasks: ClassVar[tuple[Task, ...]] = ("classification", "binary")

    def check_data(self, data: Dataset) -> None:
        """Classification or binary data with numeric inputs of any shape."""
        super().check_data(data)
        if data.train.x.dtype.kind not in "biuf":
            raise DataError(
                f"family 'dense_bn' needs numeric inputs, but dataset {data.name!r} has inputs "
                f"of dtype {data.train.x.dtype}"
            )
        if data.task == "binary" and not np.isin(data.train.y, (0, 1)).all():
            found = np.unique(data.train.y)[:5].tolist()
            raise DataError(
                f"family 'dense_bn' needs 0/1 labels for binary data, but dataset {data.name!r} "
                f"has labels {found}"
            )
        if not data.input_shape:
            raise DataError(
                f"family 'dense_bn' needs at least one feature per example, but dataset "
                f"{data.name!r} has scalar inputs (shape {data.train.x.shape})"
            )

    def build(self, hp: Params, data: Dataset) -> keras.Model:
        """A compiled dense network for ``data`` (inputs flattened)."""
        import keras

        self.check_data(data)
        batchnorm = str(hp.get("batchnorm", "none"))
        activation = str(hp.get("activation", "relu"))
        rate = float(hp.get("dropout", 0.0))
        widths = layer_widths(
            int(hp.get("units", 128)), int(hp.get("depth", 2)), float(hp.get("shrink", 1.0))
        )

        inputs = keras.Input(data.input_shape, name="features")
        # Flatten also for (n, features) inputs: a no-op there, and one layout for every shape.
        x = keras.layers.Flatten(name="flatten")(inputs)
        for i, width in enumerate(widths, start=1):
            x = normalized_layer(
                x,
                partial(keras.layers.Dense, width),
                batchnorm=batchnorm,
                activation=activation,
                name=f"dense{i}",
            )
            x = dropout(x, rate, name=f"dense{i}_dropout")
        outputs = classifier_output(data)(x)
        model = keras.Model(inputs, outputs, name="dense_bn")
        compile_classifier(model, hp, data)
        return model
