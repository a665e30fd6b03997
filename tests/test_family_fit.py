"""``Family.fit``: the optimizer's and metrics' variables exist before the first step is traced
(so TensorFlow traces it once), and the training is the one plain ``model.fit`` gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hpo.datasets import Dataset
from hpo.families import get_family, prebuild
from hpo.spaces import Params

keras = pytest.importorskip("keras")

PARAMS: dict[str, dict[str, Any]] = {
    "dense_bn": {"depth": 2, "units": 16, "batchnorm": "before", "batch_size": 32},
    "image_cnn": {"conv_blocks": 1, "filters": 4, "batchnorm": "after", "batch_size": 32},
    "vae": {"latent_dim": 2, "conv_blocks": 1, "filters": 4, "batch_size": 32},
}


def _created_in_traced_functions(fit: Any) -> list[str]:
    """Names of the variables created inside a traced (tf.function) step while ``fit`` runs."""
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's tracing is what this checks")
    created: list[str] = []

    def creator(next_creator: Any, **kwargs: Any) -> Any:
        variable = next_creator(**kwargs)
        if tf.inside_function():
            created.append(str(kwargs.get("name")))
        return variable

    with tf.variable_creator_scope(creator):
        fit()
    return created


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_fit_creates_no_variable_while_tracing(small_digits: Dataset, name: str) -> None:
    family, hp = get_family(name), Params(PARAMS[name])
    model = family.build(hp, small_digits)
    created = _created_in_traced_functions(lambda: family.fit(model, hp, small_digits, 1, []))
    assert created == []
    assert model.optimizer.built


def test_plain_fit_does_create_them_while_tracing(small_digits: Dataset) -> None:
    """What the test above guards against, seen on Keras' own ``fit``: were this empty (a Keras
    that builds them first itself), ``prebuild`` would have nothing left to do."""
    family, hp = get_family("dense_bn"), Params(PARAMS["dense_bn"])
    model = family.build(hp, small_digits)
    data = small_digits
    created = _created_in_traced_functions(
        lambda: model.fit(data.train.x, data.train.y, batch_size=32, epochs=1, verbose=0)
    )
    assert any("momentum" in n or "velocity" in n for n in created), created


@pytest.mark.parametrize("name", ["dense_bn", "image_cnn"])
def test_fit_trains_as_plain_keras_fit_does(small_digits: Dataset, name: str) -> None:
    """Same seed, same batches: the same weights after two epochs, whichever way."""
    family, hp, data = get_family(name), Params(PARAMS[name]), small_digits

    def trained(plain: bool) -> list[np.ndarray]:
        keras.utils.set_random_seed(7)
        model = family.build(hp, data)
        if plain:
            model.fit(
                data.train.x,
                data.train.y,
                validation_data=(data.validation.x, data.validation.y),
                batch_size=32,
                epochs=2,
                verbose=0,
            )
        else:
            family.fit(model, hp, data, 2, [])
        weights = [np.asarray(w) for w in model.get_weights()]
        keras.utils.clear_session()
        return weights

    plain, hpo = trained(True), trained(False)
    assert len(plain) == len(hpo)
    for a, b in zip(plain, hpo, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert any(not np.allclose(w, 0) for w in hpo)  # it did train


def test_prebuild_leaves_alone_what_keras_should_build(small_digits: Dataset) -> None:
    """An uncompiled model, a custom train_step and inputs Keras cannot take: no error, and
    nothing built (``fit`` builds, or fails with Keras' own message)."""
    data = small_digits
    inputs = keras.Input(data.input_shape)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))

    uncompiled = keras.Model(inputs, outputs)
    prebuild(uncompiled, data.train.x, data.train.y)
    assert getattr(uncompiled, "optimizer", None) is None

    class OwnStep(keras.Model):
        def train_step(self, batch: Any) -> Any:  # pragma: no cover - never trained here
            return super().train_step(batch)

    own = OwnStep(inputs, outputs)
    own.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    prebuild(own, data.train.x, data.train.y)
    assert not own.optimizer.built

    plain = keras.Model(inputs, outputs)
    plain.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    prebuild(plain, np.zeros((4, 3, 3), np.float32), data.train.y)  # the wrong input shape
    with pytest.raises(ValueError):
        plain.fit(np.zeros((4, 3, 3), np.float32), data.train.y[:4], verbose=0)
