"""The dense_bn family: layer order for each batch-norm placement, widths, training on real data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hpo.datasets import DataError, Dataset, Split, load_dataset
from hpo.families import get_family
from hpo.families.dense_bn import DenseBN, layer_widths
from hpo.spaces import DatasetSpec, Params

keras = pytest.importorskip("keras")

BASE: dict[str, Any] = {
    "depth": 2,
    "units": 16,
    "shrink": 0.5,
    "activation": "relu",
    "dropout": 0.1,
    "optimizer": "adam",
    "learning_rate": 0.01,
    "batch_size": 32,
}


@pytest.fixture(scope="module")
def digits(small_digits: Dataset) -> Dataset:
    return small_digits


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """scikit-learn's breast-cancer table through the tabular loader: binary data."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    path = tmp_path_factory.mktemp("cancer") / "cancer.npz"
    np.savez(path, x=bunch.data, y=bunch.target)
    return load_dataset(DatasetSpec(name="tabular", subset=200, options={"path": str(path)}))


def _zeros(shape: tuple[int, ...], task: str = "classification", n: int = 8) -> Dataset:
    """Inputs of a given shape for build-only checks (no training on them)."""
    x = np.zeros((n, *shape), np.float32)
    y = np.arange(n) % 10
    return Dataset("shape", task, Split(x, y), Split(x, y), Split(x, y), 10)  # type: ignore[arg-type]


def _types(model: Any) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_family_is_registered() -> None:
    family = get_family("dense_bn")
    assert isinstance(family, DenseBN)
    assert family.tasks == ("classification", "binary")


EXPECTED_HIDDEN = {
    "none": ["Dense", "Dropout"],
    "after": ["Dense", "BatchNormalization", "Dropout"],
    "before": ["Dense", "BatchNormalization", "Activation", "Dropout"],
}


@pytest.mark.parametrize("batchnorm", ["none", "before", "after"])
def test_layer_order_and_one_step_trains(digits: Dataset, batchnorm: str) -> None:
    hp = Params({**BASE, "batchnorm": batchnorm})
    model = DenseBN().build(hp, digits)
    assert _types(model) == [
        "InputLayer",
        "Flatten",
        *EXPECTED_HIDDEN[batchnorm] * 2,
        "Dense",
    ]
    hidden = [model.get_layer("dense1"), model.get_layer("dense2")]
    assert [d.units for d in hidden] == [16, 8]  # shrink 0.5
    for dense in hidden:
        # before: the normalization's offset replaces the bias; the activation comes after it.
        assert dense.use_bias is (batchnorm != "before")
        assert dense.activation.__name__ == ("linear" if batchnorm == "before" else "relu")
    if batchnorm == "before":
        assert model.get_layer("dense1_act").activation.__name__ == "relu"
        # Normalization sits between the linear Dense and its activation.
        assert model.get_layer("dense1_bn").input is model.get_layer("dense1").output
        assert model.get_layer("dense1_act").input is model.get_layer("dense1_bn").output
    if batchnorm == "after":
        assert model.get_layer("dense1_bn").input is model.get_layer("dense1").output
    out = model.layers[-1]
    assert out.units == 10 and out.activation.__name__ == "softmax"
    # One eager training step of this layout (no traced function: milliseconds); a full epoch,
    # its logs and the stored model are the family contract's (tests/test_contracts.py).
    keras.utils.set_random_seed(0)
    model.run_eagerly = True
    loss = model.train_on_batch(digits.train.x[:32], digits.train.y[:32])
    assert np.isfinite(np.asarray(loss)).all()
    probs = DenseBN().predict(model, hp, digits.test.x[:50])
    assert probs.shape == (50, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_widths_and_defaults(digits: Dataset) -> None:
    assert layer_widths(256, 4, 0.5) == [256, 128, 64, 32]
    assert layer_widths(100, 3) == [100, 100, 100]  # constant width
    assert layer_widths(3, 3, 0.1) == [3, 1, 1]  # never below one unit
    with pytest.raises(ValueError, match="shrink"):
        layer_widths(10, 2, 1.5)
    model = DenseBN().build(Params({}), digits)
    # Defaults: two hidden layers of 128 relu units, no normalization, no dropout, Adam.
    assert _types(model) == ["InputLayer", "Flatten", "Dense", "Dense", "Dense"]
    assert [layer.units for layer in model.layers[2:]] == [128, 128, 10]
    assert type(model.optimizer).__name__ == "Adam"
    linear = DenseBN().build(Params({"depth": 0}), digits)
    assert _types(linear) == ["InputLayer", "Flatten", "Dense"]


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8), (30,)])
def test_flattens_any_input_shape(shape: tuple[int, ...]) -> None:
    model = DenseBN().build(Params(BASE), _zeros(shape))
    assert model.input_shape == (None, *shape)
    assert model.get_layer("flatten").output.shape == (None, int(np.prod(shape)))


def test_optimizer_and_activation(digits: Dataset) -> None:
    hp = Params(
        {
            **BASE,
            "activation": "elu",
            "batchnorm": "before",
            "optimizer": "sgd",
            "optimizer.sgd.momentum": 0.9,
            "optimizer.sgd.nesterov": True,
            "learning_rate": 0.05,
        }
    )
    model = DenseBN().build(hp, digits)
    assert model.get_layer("dense2_act").activation.__name__ == "elu"
    opt = model.optimizer
    assert type(opt).__name__ == "SGD" and opt.nesterov is True
    assert opt.momentum == pytest.approx(0.9) and float(opt.learning_rate) == pytest.approx(0.05)


def test_rejects_unsuitable_data(digits: Dataset) -> None:
    lm = _zeros((8,), task="language_model")
    with pytest.raises(DataError, match="classification or binary"):
        DenseBN().build(Params(BASE), lm)
    text = _zeros((3,))
    text.train = Split(np.array([["a", "b", "c"]] * 8), text.train.y)
    with pytest.raises(DataError, match="numeric inputs"):
        DenseBN().build(Params(BASE), text)
    bad_binary = _zeros((4,), task="binary")
    with pytest.raises(DataError, match="0/1 labels"):
        DenseBN().build(Params(BASE), bad_binary)
    with pytest.raises(ValueError, match="batchnorm"):
        DenseBN().build(Params({**BASE, "batchnorm": "both"}), digits)


@pytest.mark.slow
def test_binary_tabular_trains(cancer: Dataset) -> None:
    """Breast-cancer features (standardized by the loader): one sigmoid, better than chance."""
    keras.utils.set_random_seed(0)
    hp = Params({**BASE, "batchnorm": "after", "units": 16})
    family = DenseBN()
    model = family.build(hp, cancer)
    assert model.output_shape == (None, 1) and model.loss == "binary_crossentropy"
    history = keras.callbacks.History()
    family.fit(model, hp, cancer, epochs=3, callbacks=[history])
    probs = family.predict(model, hp, cancer.test.x)
    assert probs.shape == (len(cancer.test), 1)
    assert ((probs >= 0) & (probs <= 1)).all()
    # Three epochs on 200 standardized rows separate this data well (measured 0.9+).
    assert ((probs[:, 0] > 0.5) == cancer.test.y).mean() > 0.8
