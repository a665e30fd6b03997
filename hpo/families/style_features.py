"""The feature networks of neural style transfer: VGG19 (ImageNet weights) or random filters.

Both take RGB images in [0, 1] of any size and name their convolutions as VGG19 does
(``block1_conv1`` ... ``block5_conv2``), so one space's layer choices suit either network:

* ``vgg19``: ``keras.applications.VGG19`` without its classifier, with ImageNet weights from a
  local file (``vgg19_weights``), else from the Keras cache (``~/.keras/models``), else
  downloaded as Keras does; its inputs are scaled to 0-255 and mean-centred as VGG was trained.
* ``random``: a network that no one trained: five blocks, each a multi-scale convolution
  (3x3, 5x5 and 7x7 filters side by side, ``blockN_conv1``) and a 3x3 convolution
  (``blockN_conv2``), ReLU, average pooling between blocks; He-normal filters drawn from a
  fixed seed, so every trial (and every worker) holds the same network. Random multi-scale
  filters capture textures surprisingly well (Ustyuzhaninov et al., 2017, "What does it take
  to generate natural textures?"); they know nothing of objects, so content is kept as edges
  and colours rather than as what the picture shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from hpo.errors import HpoError

NETWORKS = ("random", "vgg19")
BLOCKS = 5
RANDOM_SEED = 0
# Filters of each random block (the multi-scale convolution splits them over three sizes).
_RANDOM_WIDTHS = (48, 96, 96, 192, 192)
_KERNELS = (3, 5, 7)
# ImageNet's mean pixel in BGR, as keras.applications.vgg19.preprocess_input subtracts it.
_VGG_MEAN_BGR = (103.939, 116.779, 123.68)
VGG19_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"


class FeatureNetworkError(HpoError, ValueError):
    """The feature network cannot be made (no VGG19 weights here, a bad weights file)."""


def layer_names() -> list[str]:
    """The convolutions both networks have, by their VGG19 names."""
    return [f"block{b}_conv{c}" for b in range(1, BLOCKS + 1) for c in (1, 2)]


def base_network(network: str, weights: str | None = None) -> Any:
    """The whole feature network ``network`` (``random`` or ``vgg19``), images in [0, 1]."""
    if network not in NETWORKS:
        raise FeatureNetworkError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    return random_network() if network == "random" else vgg19_network(weights)


def feature_model(base: Any, layers: Sequence[str]) -> Any:
    """A model from images in [0, 1] (any size) to a dict of ``layers``' activations in
    ``base`` (a :func:`base_network`); several feature models may share one base."""
    missing = [name for name in layers if name not in layer_names()]
    if missing:
        raise FeatureNetworkError(
            f"no layer {missing[0]!r} in the feature networks; they have {', '.join(layer_names())}"
        )
    outputs = {name: base.get_layer(name).output for name in dict.fromkeys(layers)}
    model = keras.Model(base.inputs[0], outputs, name=f"{base.name}_features")
    model.trainable = False
    return model


def random_network(seed: int = RANDOM_SEED) -> Any:
    """The untrained multi-scale network (see the module's description), seeded."""
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="centre")(image)
    for block, width in enumerate(_RANDOM_WIDTHS, start=1):
        if block > 1:
            x = keras.layers.AveragePooling2D(2, name=f"block{block - 1}_pool")(x)
        branches = [
            keras.layers.Conv2D(
                width // len(_KERNELS),
                k,
                padding="same",
                activation="relu",
                kernel_initializer=keras.initializers.HeNormal(seed=seed * 1000 + block * 10 + k),
                name=f"block{block}_scale{k}",
            )(x)
            for k in _KERNELS
        ]
        x = keras.layers.Concatenate(name=f"block{block}_conv1")(branches)
        x = keras.layers.Conv2D(
            width,
            3,
            padding="same",
            activation="relu",
            kernel_initializer=keras.initializers.HeNormal(seed=seed * 1000 + block * 10),
            name=f"block{block}_conv2",
        )(x)
    return keras.Model(image, x, name="random_multiscale")


def vgg19_network(weights: str | None = None) -> Any:
    """VGG19's convolutions with ImageNet weights, taking images in [0, 1].

    ``weights``: a local weights file (the ``notop`` one), or None / ``imagenet`` for the Keras
    cache, downloading the file there when it is missing.
    """
    if weights not in (None, "imagenet"):
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise FeatureNetworkError(f"vgg19_weights: no such weights file: {path}")
        source: str = str(path)
    else:
        source = "imagenet"
    image = keras.Input((None, None, 3), name="image")
    # VGG was trained on BGR pixels of 0-255 with ImageNet's mean removed.
    centred = _VGGInput(name="vgg_input")(image)
    try:
        vgg = keras.applications.VGG19(include_top=False, weights=source, input_tensor=centred)
    except Exception as exc:  # no weights here and no network: say so in one line
        raise FeatureNetworkError(
            f"VGG19's ImageNet weights could not be loaded ({type(exc).__name__}: {exc}); give "
            f"a local file as vgg19_weights, put {VGG19_WEIGHTS_FILE} in ~/.keras/models, or "
            "use network: random"
        ) from None
    return vgg


class _VGGInput(keras.layers.Layer):  # type: ignore[misc]
    """RGB in [0, 1] -> BGR in 0-255 less ImageNet's mean pixel."""

    def call(self, x: Any) -> Any:
        bgr = keras.ops.flip(x, axis=-1) * 255.0
        return bgr - keras.ops.convert_to_tensor(_VGG_MEAN_BGR, dtype=bgr.dtype)


__all__ = [
    "BLOCKS",
    "NETWORKS",
    "RANDOM_SEED",
    "VGG19_WEIGHTS_FILE",
    "FeatureNetworkError",
    "base_network",
    "feature_model",
    "layer_names",
    "random_network",
    "vgg19_network",
]
