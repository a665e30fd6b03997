"""Raw inputs: what a saved model takes, and the standard Keras layers that take it there.

Datasets transform what users hold (uint8 pixels, raw feature values, strings, integers) into
what a model trains on (floats in [0, 1], standardized features, token ids). Training runs on
the transformed arrays, once; every model that leaves a trial is wrapped so that it takes the
raw inputs instead: :func:`raw_model` puts the dataset's transformation, recorded as an
:class:`InputSpec`, in front of the trained model as standard Keras layers (``Rescaling``,
``Reshape``, ``Normalization``, ``TextVectorization``, ``CategoryEncoding``, ``StringLookup``).
The saved ``.keras`` file then loads in safe mode where hpo is not installed, and an ensemble
of such models (:mod:`hpo.ensemble`) takes raw inputs too.

Example:
    >>> import keras, numpy as np
    >>> spec = InputSpec.image((2, 2), scale=1 / 255, channels=1)
    >>> inner = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten()])
    >>> raw = raw_model(inner, spec)
    >>> raw.predict(np.full((1, 2, 2), 255, np.uint8), verbose=0).tolist()
    [[1.0, 1.0, 1.0, 1.0]]
    >>> core_model(raw).count_params() == inner.count_params()
    True
"""

from hpo.inputs._layers import RAW_MODEL_NAME, core_model, preprocessing_layers, raw_model
from hpo.inputs._spec import INPUTS_KEY, InputSpec, InputSpecError
from hpo.inputs._text import STRIP_PUNCTUATION, keras_tokenize

__all__ = [
    "INPUTS_KEY",
    "RAW_MODEL_NAME",
    "STRIP_PUNCTUATION",
    "InputSpec",
    "InputSpecError",
    "core_model",
    "keras_tokenize",
    "preprocessing_layers",
    "raw_model",
]
