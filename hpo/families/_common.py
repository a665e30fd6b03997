"""Building blocks that model families share: optimizers, normalized layers, classifier heads.

Everything here reads a trial's :class:`~hpo.spaces.Params` with ``hp.get(name, default)`` so a
user's space may leave a parameter out, and uses only the ``keras`` API so that every Keras
backend works. Keras is imported inside the functions: importing :mod:`hpo.families` stays light.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.datasets import DataError, Dataset

if TYPE_CHECKING:
    import keras

    from hpo.spaces import Params

BATCHNORM_MODES = ("none", "before", "after")
DEFAULT_OPTIMIZER = "adam"
# Abstract or wrapping classes that cannot be built from a name and keyword arguments alone.
_NOT_BUILDABLE = {"optimizer", "lossscaleoptimizer", "multioptimizer"}


def _normalize(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def optimizer_classes() -> dict[str, type[keras.optimizers.Optimizer]]:
    """Keras optimizer classes by lower-case name without underscores (``adamw``, ``sgd``, ...).

    Example:
        >>> classes = optimizer_classes()
        >>> classes["adam"].__name__, "rmsprop" in classes
        ('Adam', True)
    """
    import keras

    out: dict[str, type[keras.optimizers.Optimizer]] = {}
    for attr in dir(keras.optimizers):
        cls = getattr(keras.optimizers, attr)
        if (
            inspect.isclass(cls)
            and issubclass(cls, keras.optimizers.Optimizer)
            and _normalize(attr) not in _NOT_BUILDABLE
        ):
            out[_normalize(attr)] = cls
    return out


def build_optimizer(hp: Params | Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """The Keras optimizer a trial chose, with its conditional parameters and learning rate.

    Reads the categorical ``optimizer`` (any Keras optimizer name, in any case: ``adam``,
    ``RMSprop``, ``sgd``, ``adamw``, ...; ``adam`` when the space has none), passes its active
    sub-parameters (``optimizer.sgd.momentum`` -> ``momentum=``) as keyword arguments, and the
    top-level ``learning_rate`` when there is one. A ``learning_rate`` given under the chosen
    option wins over the top-level one.

    Raises:
        ValueError: unknown optimizer, or a sub-parameter that optimizer does not take.

    Example:
        >>> from hpo.spaces import Params
        >>> opt = build_optimizer(Params({"optimizer": "sgd", "optimizer.sgd.momentum": 0.9,
        ...                               "optimizer.sgd.nesterov": True, "learning_rate": 0.05}))
        >>> type(opt).__name__, opt.momentum, opt.nesterov, round(float(opt.learning_rate), 4)
        ('SGD', 0.9, True, 0.05)
    """
    name = str(hp.get("optimizer", DEFAULT_OPTIMIZER))
    classes = optimizer_classes()
    cls = classes.get(_normalize(name))
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; Keras has {', '.join(sorted(classes))}")
    kwargs = _children(hp, "optimizer") if "optimizer" in hp else {}
    if "learning_rate" in hp and "learning_rate" not in kwargs:
        kwargs["learning_rate"] = hp["learning_rate"]
    defaults = {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ValueError(
            f"optimizer {name!r} ({cls.__name__}) has no parameter "
            f"{', '.join(map(repr, unknown))}; it takes {', '.join(defaults)}"
        )
    return cls(**{k: _coerce(v, defaults[k]) for k, v in kwargs.items()})


def _children(hp: Params | Mapping[str, Any], name: str) -> dict[str, Any]:
    children = getattr(hp, "children", None)
    if callable(children):
        return dict(children(name))
    # A plain mapping (tests, notebooks): same rule as Params.children, for string options.
    prefix = f"{name}.{hp[name]}."
    return {
        k[len(prefix) :]: v
        for k, v in hp.items()
        if k.startswith(prefix) and "." not in k[len(prefix) :]
    }


def _coerce(value: Any, default: Any) -> Any:
    """Plain Python values of the type Keras expects (it rejects ``momentum=0``, an int)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def compile_classifier(model: keras.Model, hp: Params | Mapping[str, Any], data: Dataset) -> None:
    """Compile for integer class labels (softmax outputs) or 0/1 labels (one sigmoid output).

    Example:
        >>> import keras
        >>> from hpo.datasets import Dataset, Split
        >>> x, y = np.zeros((4, 3), "float32"), np.array([0, 1, 2, 0])
        >>> data = Dataset("toy", "classification", Split(x, y), Split(x, y), Split(x, y), 3)
        >>> model = keras.Sequential([keras.Input((3,)), classifier_output(data)])
        >>> compile_classifier(model, {"optimizer": "adam"}, data)
        >>> model.loss
        'sparse_categorical_crossentropy'
    """
    loss = "binary_crossentropy" if data.task == "binary" else "sparse_categorical_crossentropy"
    model.compile(optimizer=build_optimizer(hp), loss=loss, metrics=["accuracy"])


def classifier_output(data: Dataset, name: str = "predictions") -> keras.layers.Layer:
    """The output layer: softmax over ``data.num_classes``, or one sigmoid unit for binary data.

    Raises:
        DataError: classification data without ``num_classes``.
    """
    import keras

    if data.task == "binary":
        return keras.layers.Dense(1, activation="sigmoid", name=name)
    if not data.num_classes or data.num_classes < 2:
        raise DataError(
            f"dataset {data.name!r} does not say how many classes it has "
            f"(num_classes={data.num_classes}); a classifier needs at least 2"
        )
    return keras.layers.Dense(data.num_classes, activation="softmax", name=name)


def normalized_layer(
    x: Any,
    make: Callable[..., keras.layers.Layer],
    *,
    batchnorm: str = "none",
    activation: str = "relu",
    name: str,
) -> Any:
    """Apply a Dense- or Conv-like layer with optional batch normalization; return the output.

    ``make(activation=..., use_bias=..., name=...)`` creates the layer. ``batchnorm``:

    * ``none``: layer(activation);
    * ``before``: layer without bias -> BatchNormalization -> Activation, as in Ioffe & Szegedy
      (2015): the normalization's offset replaces the bias, which it would cancel anyway;
    * ``after``: layer(activation) -> BatchNormalization.

    Layers are named ``{name}``, ``{name}_bn`` and ``{name}_act``.

    Example:
        >>> import keras
        >>> from functools import partial
        >>> inp = keras.Input((4,))
        >>> out = normalized_layer(inp, partial(keras.layers.Dense, 8), batchnorm="before",
        ...                        name="d1")
        >>> [type(layer).__name__ for layer in keras.Model(inp, out).layers[1:]]
        ['Dense', 'BatchNormalization', 'Activation']
    """
    import keras

    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(
            f"batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {batchnorm!r}"
        )
    if batchnorm == "before":
        x = make(activation=None, use_bias=False, name=name)(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.Activation(activation, name=f"{name}_act")(x)
    x = make(activation=activation, use_bias=True, name=name)(x)
    if batchnorm == "after":
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return x


def dropout(x: Any, rate: float, name: str) -> Any:
    """``Dropout(rate)`` applied to ``x``, or ``x`` itself when the rate is 0 (no empty layer)."""
    import keras

    return keras.layers.Dropout(rate, name=name)(x) if rate > 0 else x


__all__ = [
    "BATCHNORM_MODES",
    "build_optimizer",
    "classifier_output",
    "compile_classifier",
    "dropout",
    "normalized_layer",
    "optimizer_classes",
]
