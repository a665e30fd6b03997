"""Checks of a trial's compiled model before it trains: outputs that suit the task, a compile
that works, and the metrics the study's objective needs.

A family of one's own (``family: mypackage.models:build``) that compiles the wrong thing would
otherwise fail inside Keras, with an internal error (``model.compile(opt, loss, ["accuracy"])``
passes ``["accuracy"]`` as ``loss_weights``: "dtype='string' is not a valid dtype for Keras type
promotion"), or train a whole epoch before hpo notices that ``val_accuracy`` is never logged.
The runner calls :func:`check_model` once per trial, between ``build`` and ``fit``, and fails
the trial with the message of :class:`ModelCheckError`.

These checks need a built model, so they run in the trial, not in the data check of ``hpo run``
(which does not import Keras, and has no trial parameters to build with): a family that does not
suit its study fails its first trial, before its first epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.errors import UsageError

if TYPE_CHECKING:
    from hpo.datasets import Dataset
    from hpo.families import Family

_COMPILE_HINT = (
    "check the loss and metrics given to model.compile, e.g. model.compile(optimizer=..., "
    "loss='sparse_categorical_crossentropy', metrics=['accuracy'])"
)


class ModelCheckError(UsageError, ValueError):
    """The compiled model cannot serve this study; the message says why and what to change."""


def check_model(
    model: Any,
    family: Family,
    data: Dataset,
    objectives: Iterable[str],
    batch: int = 2,
    constrained: Iterable[str] = (),
) -> None:
    """Raise :class:`ModelCheckError` when ``model`` does not suit ``data`` or the objectives.

    1. For classification and binary data, when the family trains on the labels (does not
       override :meth:`Family.fit_targets`, as an autoencoder does), the model's output per
       example must be one value per class (binary: one sigmoid value, or two softmax values).
    2. Unless the family trains in its own way (overrides :meth:`Family.fit`), the model is run
       on ``batch`` training examples, eagerly, and its compiled loss and metrics computed on
       them. This is the cheapest reliable way to learn the names Keras will log: before
       training, Keras 3 only knows ``metrics_names == ['loss', 'compile_metrics']``, and the
       metric objects (with their names) are made when first computed. A forward pass and one
       loss and metric update on 2 examples take milliseconds, with no traced function to
       compile (fit traces its own). The metrics' state is reset afterwards. A compile error
       (a misspelt metric, a loss that does not fit the outputs) surfaces here with the family
       named.
    3. Every objective and constrained metric (of those Keras logs: the runner leaves out
       :data:`hpo.catalog.RECORDED_METRICS`) must then be among what ``fit`` will log:
       ``val_accuracy`` needs a compiled metric named ``accuracy``.

    Example:
        >>> import keras
        >>> from hpo.datasets import Dataset, Split
        >>> from hpo.families import get_family
        >>> x, y = np.zeros((4, 3), "float32"), np.array([0, 1, 2, 0])
        >>> data = Dataset("toy", "classification", Split(x, y), Split(x, y), Split(x, y), 3)
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, "softmax")])
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        >>> try:
        ...     check_model(model, get_family("dense_bn"), data, ["val_accuracy"])
        ... except ModelCheckError as exc:
        ...     "compile it with metrics=['accuracy'] (it reports: loss)" in str(exc)
        True
    """
    # What needs each metric, as the message says it: an objective, or a constraint's bound.
    roles = {m: "the constraint on" for m in constrained} | {m: "the objective" for m in objectives}
    _check_loss_weights(model)
    x = _head(data.train.x, batch)
    if x is None:
        return
    try:
        y_pred = model(x, training=False)
    except Exception as exc:
        raise ModelCheckError(
            f"the model cannot run on {batch} training examples of dataset {data.name!r} "
            f"(input {_shape(data.input_shape)} per example): {type(exc).__name__}: {exc}"
        ) from exc
    from hpo.families import Family

    if type(family).fit_targets is Family.fit_targets:  # it trains on the labels
        _check_outputs(y_pred, data)
    if type(family).fit is not Family.fit:
        return  # it trains (and logs) in its own way; the runner checks the logs each epoch
    y = _head(family.fit_targets(data.train), batch)
    if y is None:
        return
    try:
        model.compute_loss(x=x, y=y, y_pred=y_pred)
        results = model.compute_metrics(x, y, y_pred, sample_weight=None)
    except Exception as exc:
        raise ModelCheckError(
            f"the compiled model fails on {batch} training examples of dataset {data.name!r} "
            f"before training: {type(exc).__name__}: {exc}; {_COMPILE_HINT}"
        ) from exc
    finally:
        for metric in model.metrics:
            metric.reset_state()
    reported = sorted(results) if isinstance(results, Mapping) else ["loss"]
    for wanted, role in roles.items():
        name = wanted.removeprefix("val_")
        if name not in reported:
            raise ModelCheckError(
                f"the model does not report {name!r}, which {role} {wanted!r} needs: "
                f"compile it with metrics=[{name!r}] (it reports: {', '.join(reported)})"
            )


def _check_loss_weights(model: Any) -> None:
    """``model.compile(optimizer, loss, ["accuracy"])``: the third argument is loss_weights."""
    config = getattr(getattr(model, "_compile_config", None), "config", None)
    if not isinstance(config, Mapping):
        return
    weights = config.get("loss_weights")
    values = weights.values() if isinstance(weights, Mapping) else weights
    if isinstance(values, Iterable) and not isinstance(values, str | bytes):
        names = [v for v in values if isinstance(v, str)]
        if names:
            raise ModelCheckError(
                f"the model was compiled with loss_weights={weights!r}: model.compile's third "
                f"positional argument is loss_weights, not metrics; write "
                f"model.compile(optimizer=..., loss=..., metrics={names!r})"
            )


def _check_outputs(y_pred: Any, data: Dataset) -> None:
    if data.task not in ("classification", "binary") or not hasattr(y_pred, "shape"):
        return  # several outputs (a dict or list), or a task whose outputs are not classes
    per_example = tuple(int(d) for d in y_pred.shape[1:])
    width = int(np.prod(per_example)) if per_example else 1
    if data.task == "binary":
        if width in (1, 2) and len(per_example) <= 1:
            return
        raise ModelCheckError(
            f"the model outputs {_values(per_example)} per example, but dataset {data.name!r} "
            "is a binary task (0/1 labels): end the model with Dense(1, activation='sigmoid') "
            "and compile it with loss='binary_crossentropy' (or Dense(2, activation='softmax') "
            "with loss='sparse_categorical_crossentropy')"
        )
    classes = data.num_classes
    if not classes or per_example == (classes,):
        return
    raise ModelCheckError(
        f"the model outputs {_values(per_example)} per example, but dataset {data.name!r} has "
        f"{classes} classes: end the model with Dense(data.num_classes, activation='softmax') "
        f"({classes} units) and compile it with loss='sparse_categorical_crossentropy'"
    )


def _values(per_example: tuple[int, ...]) -> str:
    if len(per_example) <= 1:
        n = per_example[0] if per_example else 1
        return f"{n} value{'s' if n != 1 else ''}"
    return f"an array of shape {_shape(per_example)}"


def _shape(shape: Iterable[int]) -> str:
    return "x".join(str(d) for d in shape) or "a scalar"


def _head(values: Any, n: int) -> Any:
    """The first ``n`` rows of an array, or None for targets of another kind."""
    if isinstance(values, np.ndarray) and values.ndim >= 1 and len(values) >= 1:
        return values[:n]
    return None
