"""An :class:`~hpo.inputs.InputSpec` as standard Keras layers in front of a trained model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.inputs._spec import InputSpec, InputSpecError

if TYPE_CHECKING:
    import keras

RAW_MODEL_NAME = "raw_inputs_model"
"""The name of every model :func:`raw_model` makes; :func:`core_model` looks for it."""


def preprocessing_layers(spec: InputSpec) -> list[keras.layers.Layer]:
    """The layers that turn ``spec``'s raw inputs into what the trained model reads, in order.

    Only Keras' own layers, so that a saved model loads in safe mode without hpo. The text
    layers (``TextVectorization``, ``StringLookup``) run on TensorFlow: a model that takes
    strings needs the TensorFlow backend (Keras' default) to predict.
    """
    import keras

    layers: list[Any] = []
    for i, step in enumerate(spec.steps):
        op = step["op"]
        name = f"raw_{i}_{op}"
        if op == "rescale":
            layers.append(
                keras.layers.Rescaling(step["scale"], offset=step.get("offset", 0.0), name=name)
            )
        elif op == "reshape":
            layers.append(keras.layers.Reshape(tuple(step["shape"]), name=name))
        elif op == "normalize":
            # Statistics are stored flat; a table of several axes has one per value.
            shape = tuple(int(d) for d in spec.shape if d is not None)
            mean = np.asarray(step["mean"], dtype=np.float32)
            variance = np.asarray(step["variance"], dtype=np.float32)
            if len(shape) > 1 and mean.size == int(np.prod(shape)):
                mean, variance = mean.reshape(shape), variance.reshape(shape)
            axis = tuple(range(-mean.ndim, 0)) if mean.ndim > 1 else -1
            layers.append(
                keras.layers.Normalization(axis=axis, mean=mean, variance=variance, name=name)
            )
        elif op == "text_vectorize":
            layers.append(
                keras.layers.TextVectorization(
                    standardize="lower_and_strip_punctuation",
                    split="whitespace",
                    output_mode="int",
                    output_sequence_length=step.get("sequence_length"),
                    vocabulary=list(step["vocabulary"]) or None,
                    name=name,
                )
            )
        elif op == "multi_hot":
            # Token ids -> a 0/1 vector; its column 0 (padding) is always 0, as in training:
            # crop it away and pad a zero back (no Lambda layer needed).
            width = int(step["num_tokens"])
            layers += [
                keras.layers.CategoryEncoding(width, output_mode="multi_hot", name=name),
                keras.layers.Reshape((width, 1), name=f"{name}_column"),
                keras.layers.Cropping1D((1, 0), name=f"{name}_drop_padding"),
                keras.layers.ZeroPadding1D((1, 0), name=f"{name}_zero_padding"),
                keras.layers.Reshape((width,), name=f"{name}_flat"),
            ]
        elif op == "string_lookup":
            oov = step.get("oov_token")
            layers.append(
                keras.layers.StringLookup(
                    vocabulary=list(step["vocabulary"]),
                    num_oov_indices=0 if oov is None else 1,
                    oov_token=oov if oov is not None else "[UNK]",
                    name=name,
                )
            )
        else:
            raise InputSpecError(f"unknown input transformation {op!r}")
    return layers


def raw_model(model: keras.Model, spec: InputSpec) -> keras.Model:
    """``model`` behind ``spec``'s preprocessing layers: a model that takes raw inputs.

    The trained model is kept whole as one layer (``core_model`` gives it back): an
    uncompiled copy with the same weights, so that the file loads without the functions the
    model was compiled with (a custom metric would otherwise have to be importable).
    """
    import keras

    model = _uncompiled(model)
    dtype = "string" if spec.dtype == "string" else spec.dtype
    inputs = keras.Input(spec.shape, dtype=dtype, name="raw_inputs")
    x = inputs
    for layer in preprocessing_layers(spec):
        x = layer(x)
    return keras.Model(inputs, model(x), name=RAW_MODEL_NAME)


def _uncompiled(model: keras.Model) -> keras.Model:
    if not getattr(model, "compiled", False):
        return model
    try:
        # From its config alone: clone_model would compile the copy like the original.
        copy = type(model).from_config(model.get_config())
        copy.set_weights(model.get_weights())
    except Exception:  # a subclassed model that cannot be cloned: saved with its compile state
        return model
    return copy


def core_model(model: keras.Model) -> keras.Model:
    """The trained model inside a :func:`raw_model` (``model`` itself when it is not one):
    what reads the transformed arrays hpo's datasets hold."""
    import keras

    if getattr(model, "name", None) != RAW_MODEL_NAME:
        return model
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return inner[-1] if inner else model
