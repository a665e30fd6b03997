"""A convolutional image classifier: blocks of convolution and pooling, then a dense head.

Parameters (all optional; a missing one takes the default in brackets):

* ``conv_blocks`` [2]: number of convolution blocks;
* ``filters`` [32]: filters of the first block; each further block doubles them;
* ``kernel_size`` [3]; ``conv_type`` [``Conv2D``] or ``SeparableConv2D``;
* ``activation`` [``relu``];
* ``batchnorm`` [``none``]: ``before`` = Conv (no bias) -> BatchNormalization -> Activation,
  ``after`` = Conv(activation) -> BatchNormalization;
* ``pooling`` [``max``]: ``max``, ``average`` or ``none`` (2x2, after each block while the
  feature map is at least 2 pixels wide, so 8x8 images take three blocks);
* ``dropout`` [0.0]: before each dense layer;
* ``dense_units`` [0]: units of one hidden dense layer; 0 leaves it out;
* ``optimizer`` [``adam``] with its conditional sub-parameters, ``learning_rate``;
* ``batch_size`` [32].
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, ClassVar

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

CONV_TYPES = ("Conv2D", "SeparableConv2D")
POOL_LAYERS = {"max": "MaxPooling2D", "average": "AveragePooling2D", "none": None}


class ImageCNN(Family):
    """Convolution blocks (filters doubling per block), optional dense layer, softmax output.

    Example:
        >>> from hpo.spaces import DatasetSpec, Params
        >>> from hpo.datasets import load_dataset
        >>> data = load_dataset(DatasetSpec(name="digits", subset=100))
        >>> model = ImageCNN().build(Params({"conv_blocks": 3, "filters": 4}), data)
        >>> model.output_shape
        (None, 10)
    """

    name = "image_cnn"
    tasks: ClassVar[tuple[Task, ...]] = ("classification",)

    def build(self, hp: Params, data: Dataset) -> keras.Model:
        """A compiled CNN for ``data``'s (height, width, channels) images."""
        import keras

        self.check_data(data)
        if len(data.input_shape) != 3:
            raise DataError(
                f"family 'image_cnn' needs images of shape (height, width, "
                f"channels), but dataset {data.name!r} has inputs of shape "
                f"{data.input_shape}"
            )
        conv_type = str(hp.get("conv_type", "Conv2D"))
        pooling = str(hp.get("pooling", "max"))
        if conv_type not in CONV_TYPES:
            raise ValueError(f"conv_type must be one of {', '.join(CONV_TYPES)}, got {conv_type!r}")
        if pooling not in POOL_LAYERS:
            raise ValueError(f"pooling must be one of {', '.join(POOL_LAYERS)}, got {pooling!r}")
        filters = int(hp.get("filters", 32))
        kernel_size = int(hp.get("kernel_size", 3))
        batchnorm = str(hp.get("batchnorm", "none"))
        activation = str(hp.get("activation", "relu"))
        rate = float(hp.get("dropout", 0.0))
        dense_units = int(hp.get("dense_units", 0))
        conv_cls = getattr(keras.layers, conv_type)
        pool_layer = POOL_LAYERS[pooling]
        pool_cls = getattr(keras.layers, pool_layer) if pool_layer else None

        inputs = keras.Input(data.input_shape, name="image")
        x = inputs
        size = min(data.input_shape[:2])
        for block in range(1, int(hp.get("conv_blocks", 2)) + 1):
            make = partial(conv_cls, filters * 2 ** (block - 1), kernel_size, padding="same")
            x = normalized_layer(
                x, make, batchnorm=batchnorm, activation=activation, name=f"block{block}_conv"
            )
            # A 1-pixel map cannot be pooled; deeper blocks then work at that size.
            if pool_cls is not None and size >= 2:
                x = pool_cls(2, name=f"block{block}_pool")(x)
                size //= 2
        x = keras.layers.Flatten(name="flatten")(x)
        if dense_units > 0:
            x = dropout(x, rate, name="dense_dropout")
            x = keras.layers.Dense(dense_units, activation=activation, name="dense")(x)
        x = dropout(x, rate, name="output_dropout")
        outputs = classifier_output(data)(x)
        model = keras.Model(inputs, outputs, name="image_cnn")
        compile_classifier(model, hp, data)
        return model
