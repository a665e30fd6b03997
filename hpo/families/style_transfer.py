"""Neural style transfer (Gatys et al., 2015, as in Chollet's *Deep Learning with Python*):
optimize an image so that its features in a feature network match a content image's in an
upper layer and its Gram matrices match a style image's in several layers.

What a trial trains is the generated image itself: a ``keras.Variable`` of shape
(``image_size``, ``image_size``, 3) with pixels in [0, 1] (clipped after every step), the one
weight of a Keras model whose outputs are the feature network's activations and Gram matrices.
The model is compiled with the three losses of the method and trained with ``train_on_batch``,
so Keras computes the gradients on every backend:

* content: mean squared difference of the ``content_layer`` activations to the content image's;
* style: mean squared difference of the Gram matrices (``F^T F / positions``) of each layer of
  ``style_layers`` to the style image's, averaged over the layers;
* total variation: the mean of ``(dx^2 + dy^2) ** 1.25`` over the pixels (smoothness);

weighted by ``content_weight``, ``style_weight`` and ``tv_weight``. One "epoch" is
``steps_per_epoch`` optimizer steps; after each the image is **measured** in a fixed setting,
the same for every trial of the study: the study's feature network (``network``), at the
dataset's size, with fixed layers (content :data:`MEASURE_CONTENT_LAYER`, style all of
:data:`MEASURE_STYLE_LAYERS`) and no weights. The epoch logs:

* ``content_loss`` and ``style_loss``: the measured losses, the study's two objectives (both
  minimized: a Pareto front from "the photo" to "the texture");
* ``total_variation``: the measured smoothness term;
* ``loss``: the trial's own weighted loss (not comparable across trials: its weights and
  layers are searched).

Parameters (all optional; a missing one takes the default in brackets):

* ``network`` [``random``]: ``random`` (untrained multi-scale filters, no download) or
  ``vgg19`` (ImageNet weights); ``vgg19_weights`` [Keras cache]: a local weights file
  (:mod:`hpo.families.style_features`). Keep it fixed in a study: the objectives are measured
  in it;
* ``content_layer`` [``block5_conv2``]; ``style_layers`` [``block1-5``]: a name of
  :data:`STYLE_LAYER_SETS`;
* ``content_weight`` [1.0], ``style_weight`` [1.0], ``tv_weight`` [0.0];
* ``image_size`` [64]: the side of the optimized image (at most the dataset's ``size``);
* ``init`` [``content``]: start from the content image or from ``noise``;
* ``optimizer`` [``adam``] with its sub-parameters, ``learning_rate`` [the optimizer's
  default]; ``steps_per_epoch`` [20]. The losses are small numbers: plain SGD needs learning
  rates of 1 and more, Adam (scale-free) about 0.01.

Data: the ``style_images`` dataset (a content image as ``x``, a style image as ``y``).

Artifacts besides the model (``model.keras``: an image model whose output is the generated
image): ``generated.png``, the image at the dataset's size.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import keras
import numpy as np

from hpo.datasets import DataError, Dataset, Task
from hpo.families._base import Family
from hpo.families._common import build_optimizer
from hpo.families.style_features import FeatureNetworkError, base_network, feature_model

if TYPE_CHECKING:
    from hpo.spaces import Params

# hpo.tracking.artifacts.GENERATED_IMAGE_FILE, which the Pareto grid reads (families sit below
# hpo.tracking and cannot import it; a test keeps the two equal).
GENERATED_IMAGE_FILE = "generated.png"
STYLE_LAYER_SETS: dict[str, tuple[str, ...]] = {
    "block1-5": tuple(f"block{b}_conv1" for b in range(1, 6)),
    "block1-3": tuple(f"block{b}_conv1" for b in range(1, 4)),
    "block2-4": tuple(f"block{b}_conv1" for b in range(2, 5)),
    "block3-5": tuple(f"block{b}_conv1" for b in range(3, 6)),
    "block1-2": ("block1_conv1", "block2_conv1"),
}
MEASURE_CONTENT_LAYER = "block5_conv2"
MEASURE_STYLE_LAYERS = STYLE_LAYER_SETS["block1-5"]
_CONTENT = "content"


@keras.saving.register_keras_serializable(package="hpo")
class UnitInterval(keras.constraints.Constraint):  # type: ignore[misc]
    """Clip a weight to [0, 1] after each optimizer step: the image stays an image."""

    def __call__(self, w: Any) -> Any:
        return keras.ops.clip(w, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="hpo")
class GeneratedImage(keras.layers.Layer):  # type: ignore[misc]
    """Holds the generated image as its one weight; outputs it once per input example."""

    def __init__(self, size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        self.image = self.add_weight(
            shape=(self.size, self.size, 3),
            initializer="zeros",
            constraint=UnitInterval(),
            name="image",
        )

    def call(self, inputs: Any) -> Any:
        batch = keras.ops.shape(inputs)[0]
        return keras.ops.broadcast_to(self.image[None], (batch, self.size, self.size, 3))

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Any:
        return (input_shape[0], self.size, self.size, 3)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size}


def gram(features: Any) -> Any:
    """Gram matrices ``F^T F / positions`` of activations (batch, h, w, c) -> (batch, c, c).

    Example:
        >>> g = gram(np.ones((1, 2, 2, 3), "float32"))
        >>> keras.ops.convert_to_numpy(g).shape, float(keras.ops.convert_to_numpy(g)[0, 0, 0])
        ((1, 3, 3), 1.0)
    """
    shape = keras.ops.shape(features)
    flat = keras.ops.reshape(features, (shape[0], -1, shape[-1]))
    positions = keras.ops.cast(keras.ops.shape(flat)[1], flat.dtype)
    return keras.ops.einsum("bpi,bpj->bij", flat, flat) / positions


def total_variation(images: Any) -> Any:
    """Per image, the mean of ``(dx^2 + dy^2) ** 1.25`` (0 for a flat image).

    Example:
        >>> float(keras.ops.convert_to_numpy(total_variation(np.zeros((1, 4, 4, 3))))[0])
        0.0
    """
    dy = keras.ops.square(images[:, :-1, :-1, :] - images[:, 1:, :-1, :])
    dx = keras.ops.square(images[:, :-1, :-1, :] - images[:, :-1, 1:, :])
    return keras.ops.mean(keras.ops.power(dx + dy, 1.25), axis=(1, 2, 3))


@keras.saving.register_keras_serializable(package="hpo")
class _Gram(keras.layers.Layer):  # type: ignore[misc]
    def call(self, x: Any) -> Any:
        return gram(x)


@keras.saving.register_keras_serializable(package="hpo")
class _TotalVariation(keras.layers.Layer):  # type: ignore[misc]
    def call(self, x: Any) -> Any:
        return total_variation(x)


@keras.saving.register_keras_serializable(package="hpo")
class OutputAsLoss(keras.losses.Loss):  # type: ignore[misc]
    """The model's output is the loss itself (the total variation); ``y_true`` is ignored."""

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return y_pred


class StyleTransferModel(keras.Model):  # type: ignore[misc]
    """The image model (``image_model``: any input -> the generated image) with what training
    and measuring need; calling it gives the image."""

    def __init__(self, image_model: Any, trainer: Any, measure: Measure, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_model = image_model
        self.trainer = trainer
        self.measure = measure
        self.targets: list[np.ndarray] = []

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.image_model(inputs, training=training)

    def count_params(self) -> int:
        """The generated image's pixels: the feature networks are fixed, not trained."""
        return int(self.image_model.count_params())

    @property
    def image(self) -> np.ndarray:
        """The generated image, (size, size, 3) in [0, 1]."""
        layer = self.image_model.get_layer("generated")
        return np.asarray(keras.ops.convert_to_numpy(layer.image), np.float32)


class Measure:
    """The fixed measurement: content and style losses in the study's feature network with
    fixed layers, at the dataset's size (see the module's description)."""

    def __init__(self, base: Any, data: Dataset) -> None:
        layers = [MEASURE_CONTENT_LAYER, *MEASURE_STYLE_LAYERS]
        self.features = feature_model(base, layers)
        self.size = data.input_shape[:2]
        content = self.features(data.train.x[:1])
        style = self.features(data.train.y[:1])
        self.content = keras.ops.convert_to_numpy(content[MEASURE_CONTENT_LAYER])
        self.grams = {n: keras.ops.convert_to_numpy(gram(style[n])) for n in MEASURE_STYLE_LAYERS}

    def __call__(self, image: np.ndarray) -> dict[str, float]:
        resized = keras.ops.image.resize(image[None], self.size, interpolation="bilinear")
        feats = self.features(resized)
        content = keras.ops.mean(keras.ops.square(feats[MEASURE_CONTENT_LAYER] - self.content))
        style = [
            keras.ops.mean(keras.ops.square(gram(feats[n]) - self.grams[n]))
            for n in MEASURE_STYLE_LAYERS
        ]
        return {
            "content_loss": float(keras.ops.convert_to_numpy(content)),
            "style_loss": float(np.mean([keras.ops.convert_to_numpy(s) for s in style])),
            "total_variation": float(keras.ops.convert_to_numpy(total_variation(resized))[0]),
        }


class StyleTransfer(Family):
    """Gatys-style transfer of a style image's look onto a content image; two objectives,
    ``content_loss`` and ``style_loss``, measured in a fixed setting.

    Example:
        >>> from hpo.spaces import DatasetSpec, Params
        >>> from hpo.datasets import load_dataset
        >>> data = load_dataset(DatasetSpec(name="style_images", options={"size": 32}))
        >>> model = StyleTransfer().build(Params({"image_size": 16}), data)
        >>> model.image.shape, float(model.image.max()) <= 1.0
        ((16, 16, 3), True)
    """

    resumable: ClassVar[bool] = False

    raw_inputs = False
    name = "style_transfer"
    tasks: ClassVar[tuple[Task, ...]] = ("reconstruction",)
    default_batch_size: ClassVar[int] = 1
    ensembles = False

    def check_data(self, data: Dataset) -> None:
        """One RGB content image (``x``) and one style image (``y``) in [0, 1]."""
        super().check_data(data)
        for role, arrays in (("content", data.train.x), ("style", data.train.y)):
            arr = np.asarray(arrays)
            if arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) < 1:
                raise DataError(
                    f"family 'style_transfer' needs RGB images (n, height, width, 3) as the "
                    f"{role} of dataset {data.name!r}, got shape {arr.shape}"
                )
            lo, hi = float(arr.min()), float(arr.max())
            if not (lo >= 0.0 and hi <= 1.0):
                raise DataError(
                    f"family 'style_transfer' needs {role} pixel values in [0, 1], dataset "
                    f"{data.name!r} has [{lo:g}, {hi:g}]"
                )

    def build(self, hp: Params, data: Dataset) -> keras.Model:
        """The image model around a trainer compiled with the weighted losses."""
        self.check_data(data)
        network = str(hp.get("network", "random"))
        weights = hp.get("vgg19_weights")
        layer_set = str(hp.get("style_layers", "block1-5"))
        if layer_set not in STYLE_LAYER_SETS:
            raise ValueError(
                f"style_layers must be one of {', '.join(STYLE_LAYER_SETS)}, got {layer_set!r}"
            )
        style_layers = STYLE_LAYER_SETS[layer_set]
        content_layer = str(hp.get("content_layer", MEASURE_CONTENT_LAYER))
        size = min(int(hp.get("image_size", 64)), data.input_shape[0])
        if size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {size}")
        try:
            # One network for both: the trial's layers and the fixed measuring ones.
            base = base_network(network, weights)
            features = feature_model(base, [content_layer, *style_layers])
            measure = Measure(base, data)
        except FeatureNetworkError as exc:
            from hpo.workers.tasks import TrialFailedError

            raise TrialFailedError(str(exc)) from None

        content = _resize(data.train.x[:1], size)
        style = _resize(data.train.y[:1], size)
        # The image model takes images of the dataset's shape and ignores all but their number.
        anchor = keras.Input(data.input_shape, name="anchor")
        generated = GeneratedImage(size, name="generated")
        image_model = keras.Model(anchor, generated(anchor), name="style_transfer_image")
        feats = features(image_model.output)
        outputs = [keras.layers.Identity(name=_CONTENT)(feats[content_layer])]
        outputs += [_Gram(name=f"style_{i}")(feats[name]) for i, name in enumerate(style_layers)]
        outputs.append(_TotalVariation(name="tv")(image_model.output))
        trainer = keras.Model(anchor, outputs, name="style_transfer_trainer")
        n = len(style_layers)
        style_weight = float(hp.get("style_weight", 1.0)) / n
        trainer.compile(
            optimizer=build_optimizer(hp),
            loss=["mean_squared_error", *[_GramLoss() for _ in range(n)], OutputAsLoss()],
            loss_weights=[
                float(hp.get("content_weight", 1.0)),
                *[style_weight] * n,
                float(hp.get("tv_weight", 0.0)),
            ],
        )
        content_feats = features(content)
        style_feats = features(style)
        model = StyleTransferModel(image_model, trainer, measure, name="style_transfer")
        model.targets = [
            keras.ops.convert_to_numpy(content_feats[content_layer]),
            *[keras.ops.convert_to_numpy(gram(style_feats[name])) for name in style_layers],
            np.zeros((1,), np.float32),
        ]
        init = str(hp.get("init", "content"))
        if init not in ("content", "noise"):
            raise ValueError(f"init must be content or noise, got {init!r}")
        start = (
            content[0] if init == "content" else np.random.default_rng(0).random(content[0].shape)
        )
        generated.image.assign(np.asarray(start, np.float32))
        model(data.train.x[:1])
        return model

    def fit(
        self,
        model: keras.Model,
        hp: Params,
        data: Dataset,
        epochs: int,
        callbacks: Sequence[keras.callbacks.Callback],
        initial_epoch: int = 0,
    ) -> None:
        """Rounds of ``steps_per_epoch`` optimizer steps; each epoch logs the measured losses.

        Always from epoch 0 (``resumable = False``): the image and its optimizer would restore,
        but a resumed run was never compared with a straight one.
        """
        steps = int(hp.get("steps_per_epoch", 20))
        if steps < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps}")
        anchor = np.asarray(data.train.x[:1], np.float32)
        # Plain arrays: the model's attribute is a Keras-tracked list, which JAX's jit refuses.
        targets = [np.asarray(t) for t in model.targets]
        callback_list = keras.callbacks.CallbackList(
            list(callbacks), add_history=False, add_progbar=False, model=model
        )
        model.stop_training = False
        callback_list.on_train_begin()
        for epoch in range(epochs):
            callback_list.on_epoch_begin(epoch)
            losses: list[float] = []
            for step in range(steps):
                callback_list.on_train_batch_begin(step)
                if model.stop_training:
                    break
                loss = model.trainer.train_on_batch(anchor, targets, return_dict=True)
                losses.append(float(loss["loss"]))
                callback_list.on_train_batch_end(step, {"loss": losses[-1]})
                if not math.isfinite(losses[-1]):
                    break
            if not losses:
                break
            logs = {"loss": float(np.mean(losses))}
            if math.isfinite(logs["loss"]):
                logs.update(model.measure(model.image))
            callback_list.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        callback_list.on_train_end()

    def saved_model(self, model: keras.Model, data: Dataset) -> keras.Model:
        """The image model: images of the dataset's shape -> the generated image, one each."""
        return model.image_model

    def predict(self, model: keras.Model, hp: Params, x: np.ndarray) -> np.ndarray:
        """The generated image, once per example of ``x``."""
        return np.repeat(model.image[None], len(x), axis=0)

    def extra_artifacts(self, model: keras.Model, hp: Params, data: Dataset) -> dict[str, bytes]:
        """``generated.png``: the generated image at the dataset's size."""
        return {GENERATED_IMAGE_FILE: image_png(_resize(model.image[None], data.input_shape[0])[0])}


@keras.saving.register_keras_serializable(package="hpo")
class _GramLoss(keras.losses.Loss):  # type: ignore[misc]
    def call(self, y_true: Any, y_pred: Any) -> Any:
        return keras.ops.mean(keras.ops.square(y_pred - y_true), axis=(1, 2))


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return np.asarray(images, np.float32)
    resized = keras.ops.image.resize(images, (size, size), interpolation="bilinear")
    return np.clip(np.asarray(keras.ops.convert_to_numpy(resized), np.float32), 0.0, 1.0)


def image_png(image: np.ndarray) -> bytes:
    """A PNG of one RGB image (height, width, 3) in [0, 1]."""
    from PIL import Image

    pixels = np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = [
    "GENERATED_IMAGE_FILE",
    "MEASURE_CONTENT_LAYER",
    "MEASURE_STYLE_LAYERS",
    "STYLE_LAYER_SETS",
    "GeneratedImage",
    "Measure",
    "StyleTransfer",
    "StyleTransferModel",
    "gram",
    "image_png",
    "total_variation",
]
