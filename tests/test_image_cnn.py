"""The image_cnn family and the shared optimizer / layer helpers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hpo.datasets import DataError, Dataset, Split
from hpo.families import get_family
from hpo.families._common import build_optimizer, optimizer_classes
from hpo.families.image_cnn import ImageCNN
from hpo.spaces import Params

keras = pytest.importorskip("keras")

BASE: dict[str, Any] = {
    "conv_blocks": 2,
    "filters": 4,
    "kernel_size": 3,
    "pooling": "max",
    "dropout": 0.1,
    "dense_units": 8,
    "optimizer": "adam",
    "learning_rate": 0.01,
    "batch_size": 32,
}


@pytest.fixture(scope="module")
def digits(small_digits: Dataset) -> Dataset:
    return small_digits


def _fake_images(shape: tuple[int, ...], n: int = 8) -> Dataset:
    x = np.zeros((n, *shape), np.float32)
    y = np.arange(n) % 10
    return Dataset("fake", "classification", Split(x, y), Split(x, y), Split(x, y), 10)


def _types(model: Any) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def _conv_part(model: Any) -> list[str]:
    types = _types(model)
    return types[1 : types.index("Flatten")]


def test_family_is_registered() -> None:
    family = get_family("image_cnn")
    assert isinstance(family, ImageCNN)
    assert family.name == "image_cnn" and family.tasks == ("classification",)


EXPECTED_BLOCK = {
    "none": ["{conv}", "MaxPooling2D"],
    "before": ["{conv}", "BatchNormalization", "Activation", "MaxPooling2D"],
    "after": ["{conv}", "BatchNormalization", "MaxPooling2D"],
}


@pytest.mark.parametrize("batchnorm", ["none", "before", "after"])
@pytest.mark.parametrize("conv_type", ["Conv2D", "SeparableConv2D"])
def test_layers_in_order_and_one_step_trains(
    digits: Dataset, conv_type: str, batchnorm: str
) -> None:
    keras.utils.set_random_seed(0)
    hp = Params({**BASE, "conv_type": conv_type, "batchnorm": batchnorm})
    family = ImageCNN()
    model = family.build(hp, digits)

    block = [t.format(conv=conv_type) for t in EXPECTED_BLOCK[batchnorm]]
    assert _conv_part(model) == block * 2
    assert _types(model)[-4:] == ["Dropout", "Dense", "Dropout", "Dense"]
    convs = [layer for layer in model.layers if type(layer).__name__ == conv_type]
    assert [c.filters for c in convs] == [4, 8]  # doubling per block
    for conv in convs:
        assert conv.padding == "same" and conv.kernel_size == (3, 3)
        # "before": the normalization's offset replaces the bias, the activation comes after it.
        assert conv.use_bias is (batchnorm != "before")
        assert conv.activation.__name__ == ("linear" if batchnorm == "before" else "relu")
    if batchnorm == "before":
        acts = [layer for layer in model.layers if type(layer).__name__ == "Activation"]
        assert [a.activation.__name__ for a in acts] == ["relu", "relu"]

    # One eager training step of this layout (no traced function: milliseconds); a full epoch,
    # its logs and the stored model are the family contract's (tests/test_contracts.py).
    model.run_eagerly = True
    loss = model.train_on_batch(digits.train.x[:32], digits.train.y[:32])
    assert np.isfinite(np.asarray(loss)).all()
    probs = family.predict(model, hp, digits.test.x[:50])
    assert probs.shape == (50, 10) and np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_compiled_for_sparse_labels(digits: Dataset) -> None:
    model = ImageCNN().build(Params(BASE), digits)
    config = model.get_compile_config()
    assert config["loss"] == "sparse_categorical_crossentropy"
    assert config["metrics"] == ["accuracy"]
    assert model.output_shape == (None, 10)
    assert model.layers[-1].activation.__name__ == "softmax"


def test_defaults_for_a_small_space(digits: Dataset) -> None:
    """A user's space may give only some parameters; the rest take the documented defaults."""
    model = ImageCNN().build(Params({"learning_rate": 0.001}), digits)
    assert _conv_part(model) == ["Conv2D", "MaxPooling2D"] * 2
    assert "Dropout" not in _types(model)  # dropout 0 adds no layer
    assert _types(model)[-2:] == ["Flatten", "Dense"]  # dense_units 0: no hidden layer
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("pooling", "blocks", "n_pools", "layer"),
    [
        ("max", 3, 3, "MaxPooling2D"),  # 8 -> 4 -> 2 -> 1
        ("max", 4, 3, "MaxPooling2D"),  # the fourth block sees 1x1 and is not pooled
        ("average", 2, 2, "AveragePooling2D"),
        ("none", 3, 0, None),
    ],
)
def test_pooling_stops_at_one_pixel(
    digits: Dataset, pooling: str, blocks: int, n_pools: int, layer: str | None
) -> None:
    hp = Params({**BASE, "pooling": pooling, "conv_blocks": blocks, "kernel_size": 5})
    model = ImageCNN().build(hp, digits)
    pools = [t for t in _types(model) if "Pooling" in t]
    assert len(pools) == n_pools and set(pools) <= {layer}
    conv_out = model.get_layer(f"block{blocks}_conv").output.shape
    side = 8 // 2 ** min(n_pools, blocks - 1) if pooling != "none" else 8
    assert conv_out[1:3] == (side, side)
    assert model.get_layer("block1_conv").kernel_size == (5, 5)


def test_optimizer_gets_its_conditional_parameters(digits: Dataset) -> None:
    hp = Params(
        {
            **BASE,
            "optimizer": "sgd",
            "optimizer.sgd.momentum": 0.8,
            "optimizer.sgd.nesterov": True,
            "optimizer.adam.beta_1": 0.5,  # inactive branch: must be ignored
            "learning_rate": 0.02,
        }
    )
    opt = ImageCNN().build(hp, digits).optimizer
    assert type(opt).__name__ == "SGD"
    assert opt.momentum == pytest.approx(0.8) and opt.nesterov is True
    assert float(opt.learning_rate) == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("name", "child", "value", "cls", "attr"),
    [
        ("adam", "beta_1", 0.85, "Adam", "beta_1"),
        ("rmsprop", "rho", 0.8, "RMSprop", "rho"),
        ("adamw", "weight_decay", 0.01, "AdamW", "weight_decay"),
        ("RMSprop", "momentum", 0.5, "RMSprop", "momentum"),  # any case
        ("nadam", "beta_2", 0.99, "Nadam", "beta_2"),
    ],
)
def test_build_optimizer(name: str, child: str, value: float, cls: str, attr: str) -> None:
    opt = build_optimizer(
        Params({"optimizer": name, f"optimizer.{name}.{child}": value, "learning_rate": 3e-3})
    )
    assert type(opt).__name__ == cls
    assert getattr(opt, attr) == pytest.approx(value)
    assert float(opt.learning_rate) == pytest.approx(3e-3)


def test_build_optimizer_details() -> None:
    # An integer where Keras wants a float (SGD rejects momentum=0) is converted.
    opt = build_optimizer(Params({"optimizer": "sgd", "optimizer.sgd.momentum": 0}))
    assert opt.momentum == 0.0
    # A learning rate under the chosen option wins over the top-level one.
    opt = build_optimizer(
        Params({"optimizer": "sgd", "optimizer.sgd.learning_rate": 0.5, "learning_rate": 0.1})
    )
    assert float(opt.learning_rate) == pytest.approx(0.5)
    # Plain mappings work too; no optimizer at all means Adam.
    assert type(build_optimizer({"optimizer": "sgd", "optimizer.sgd.nesterov": True})).__name__ == (
        "SGD"
    )
    assert type(build_optimizer({})).__name__ == "Adam"
    assert {"adam", "adamw", "sgd", "rmsprop", "nadam"} <= set(optimizer_classes())
    assert "lossscaleoptimizer" not in optimizer_classes()


def test_build_optimizer_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'.*adam"):
        build_optimizer(Params({"optimizer": "adamm"}))
    with pytest.raises(ValueError, match=r"'sgd' \(SGD\) has no parameter 'beta_1'"):
        build_optimizer(Params({"optimizer": "sgd", "optimizer.sgd.beta_1": 0.9}))


def test_rejects_unsuitable_data() -> None:
    flat = _fake_images((64,))
    with pytest.raises(DataError, match="height, width, channels"):
        ImageCNN().build(Params(BASE), flat)
    lm = _fake_images((8, 8, 1))
    lm.task = "language_model"
    with pytest.raises(DataError, match="classification"):
        ImageCNN().build(Params(BASE), lm)
    with pytest.raises(ValueError, match="conv_type"):
        ImageCNN().build(Params({**BASE, "conv_type": "Conv3D"}), _fake_images((8, 8, 1)))
    with pytest.raises(ValueError, match="batchnorm"):
        ImageCNN().build(Params({**BASE, "batchnorm": "both"}), _fake_images((8, 8, 1)))
