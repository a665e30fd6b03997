"""A convolutional variational autoencoder (VAE) for images, with a beta-weighted KL term.

The model is a plain functional Keras model built from two named sub-models, so that the
stored ``model.keras`` alone is enough to generate images::

    image -> encoder -> (z_mean, z_log_var) -> VAESampling -> z -> decoder -> reconstruction
                               \\-> KLDivergence -> kl (per example)

* ``encoder``: ``conv_blocks`` Conv2D blocks (stride 2, filters doubling per block), an optional
  dense layer, then two dense heads ``z_mean`` and ``z_log_var`` of size ``latent_dim``;
* ``decoder``: Dense -> Reshape -> Conv2DTranspose blocks (stride 2, mirroring the encoder) ->
  a crop back to the input size where the strides overshoot it -> a sigmoid image;
* ``VAESampling``: the reparameterization ``z = mean + exp(log_var / 2) * eps``,
  ``eps ~ N(0, I)`` drawn with ``keras.random.normal`` and a ``SeedGenerator``;
* ``KLDivergence``: ``KL(q(z|x) || N(0, I))`` per example, a second model output.

Training fits ``x -> x``: the outputs ``reconstruction`` and ``kl`` each have a compiled loss,
so Keras logs ``reconstruction_loss`` (binary cross-entropy summed over pixels, mean over the
batch) and ``kl_loss`` (KL in nats, unweighted) every epoch, with their ``val_`` versions.

``beta`` weights the KL term *in the gradient* (a beta-VAE: beta > 1 favours a smooth, factorised
latent space, beta < 1 sharper reconstructions), while the reported ``loss`` / ``val_loss`` is
always ``reconstruction_loss + kl_loss``, the negative evidence lower bound (ELBO). This is on
purpose: a loss of ``reconstruction + beta * KL`` would make trials with different ``beta``
incomparable (the smallest beta always "wins"), so a study searching over ``beta`` optimises
``val_loss`` = the negative ELBO, the quantity that measures the model as a generative model.
The KL loss computes ``beta * kl + stop_gradient((1 - beta) * kl)``: value ``kl``, gradient
``beta * d kl``.

Parameters (all optional; a missing one takes the default in brackets):

* ``latent_dim`` [2]; ``conv_blocks`` [2]; ``filters`` [32] (first block; doubling);
* ``kernel_size`` [3]; ``dense_units`` [0]: one hidden dense layer in the encoder and the
  decoder (0 leaves it out);
* ``beta`` [1.0]: KL weight in the gradient (0 trains a plain autoencoder with a reported KL);
* ``optimizer`` [``adam``] with its conditional sub-parameters, ``learning_rate``;
* ``batch_size`` [64].

Data: image datasets (``classification``, e.g. ``fashion_mnist`` and ``digits``) with inputs of
shape (height, width, channels) in [0, 1]; the labels are not used for training, only to
compute per-class mean latent vectors for concept-vector arithmetic (``hpo generate images``).

Artifacts besides the model: ``predictions.npz`` holds each example's latent mean ``z_mean``
(``validation`` / ``test``, with the labels as ``*_true``), and ``vae.json`` the image shape,
``latent_dim``, ``beta``, class names and per-class mean (and standard deviation of) latent
vectors of the validation split.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import keras
import numpy as np

from hpo.datasets import DataError, Dataset, Split, Task
from hpo.families._base import EVAL_BATCH_SIZE, Family
from hpo.families._common import build_optimizer

if TYPE_CHECKING:
    from hpo.spaces import Params

VAE_INFO_FILE = "vae.json"
ENCODER = "encoder"
DECODER = "decoder"
# Keras clips probabilities to [eps, 1 - eps] in binary cross-entropy; same for the loss here.
_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="hpo")
class VAESampling(keras.layers.Layer):  # type: ignore[misc]
    """The reparameterization trick: ``z = z_mean + exp(z_log_var / 2) * eps``, eps ~ N(0, I).

    It samples in training and in inference alike: the validation loss is then an unbiased
    estimate of the negative ELBO. Use the encoder's ``z_mean`` for a deterministic code.

    Example:
        >>> layer = VAESampling(seed=1)
        >>> z = layer([np.zeros((2, 3), "float32"), np.full((2, 3), -40.0, "float32")])
        >>> np.abs(keras.ops.convert_to_numpy(z)).max() < 1e-6  # variance ~ 0: z = z_mean
        np.True_
    """

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs: Sequence[Any]) -> Any:
        z_mean, z_log_var = inputs
        eps = keras.random.normal(keras.ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + keras.ops.exp(0.5 * z_log_var) * eps

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Any:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="hpo")
class KLDivergence(keras.layers.Layer):  # type: ignore[misc]
    """``KL(N(z_mean, exp(z_log_var)) || N(0, I))`` per example, summed over latent dimensions.

    Example:
        >>> kl = KLDivergence()([np.ones((1, 2), "float32"), np.zeros((1, 2), "float32")])
        >>> float(keras.ops.convert_to_numpy(kl)[0])  # 0.5 * (1^2 + 1^2)
        1.0
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        z_mean, z_log_var = inputs
        terms = 1.0 + z_log_var - keras.ops.square(z_mean) - keras.ops.exp(z_log_var)
        return -0.5 * keras.ops.sum(terms, axis=-1)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Any:
        return tuple(input_shape[0][:-1])


@keras.saving.register_keras_serializable(package="hpo")
class ReconstructionLoss(keras.losses.Loss):  # type: ignore[misc]
    """Binary cross-entropy summed over all pixels and channels of each image.

    Summing (not averaging) over pixels keeps the reconstruction term on the scale of
    ``log p(x|z)``, so that it and the KL term form the ELBO.

    Example:
        >>> y = np.full((1, 2, 2, 1), 0.5, "float32")
        >>> round(float(ReconstructionLoss()(y, y)), 4)  # 4 pixels * ln 2
        2.7726
    """

    def __init__(self, name: str = "reconstruction_bce", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_pred = keras.ops.clip(y_pred, _EPSILON, 1.0 - _EPSILON)
        bce = -(y_true * keras.ops.log(y_pred) + (1.0 - y_true) * keras.ops.log(1.0 - y_pred))
        return keras.ops.sum(bce, axis=tuple(range(1, len(bce.shape))))


@keras.saving.register_keras_serializable(package="hpo")
class BetaKLLoss(keras.losses.Loss):  # type: ignore[misc]
    """The per-example KL output as a loss: value ``kl``, gradient ``beta * d kl``.

    ``y_true`` is ignored (the KL term needs no target).

    Example:
        >>> kl = np.array([2.0, 4.0], "float32")
        >>> float(BetaKLLoss(beta=4.0)(np.zeros(2), kl))  # the value is the plain mean KL
        3.0
    """

    def __init__(self, beta: float = 1.0, name: str = "beta_kl", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.beta = float(beta)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        # Reported value stays the unweighted KL (so val_loss is the negative ELBO for every
        # beta and trials compare); only the gradient is scaled by beta.
        return self.beta * y_pred + keras.ops.stop_gradient((1.0 - self.beta) * y_pred)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta}


class VAE(Family):
    """Convolutional VAE on images; fits ``x -> x`` and logs reconstruction and KL losses.

    Example:
        >>> from hpo.spaces import DatasetSpec, Params
        >>> from hpo.datasets import load_dataset
        >>> data = load_dataset(DatasetSpec(name="digits", subset=64))
        >>> model = VAE().build(Params({"latent_dim": 2, "filters": 4}), data)
        >>> model.get_layer("decoder").output_shape, sorted(model.output_names)
        ((None, 8, 8, 1), ['kl', 'reconstruction'])
    """

    # `hpo generate images` decodes latents; the saved model keeps the [0, 1] images it trained on.
    raw_inputs = False
    name = "vae"
    tasks: ClassVar[tuple[Task, ...]] = ("classification", "reconstruction")
    default_batch_size: ClassVar[int] = 64

    def check_data(self, data: Dataset) -> None:
        """Images of shape (height, width, channels) with float values in [0, 1]."""
        super().check_data(data)
        if len(data.input_shape) != 3:
            raise DataError(
                f"family 'vae' needs images of shape (height, width, channels), but dataset "
                f"{data.name!r} has inputs of shape {data.input_shape}"
            )
        for split_name in ("train", "validation"):
            x = getattr(data, split_name).x
            if len(x) == 0:
                raise DataError(f"dataset {data.name!r} has an empty {split_name} split")
            if not np.issubdtype(x.dtype, np.floating):
                raise DataError(
                    f"family 'vae' needs float pixel values in [0, 1], but the {split_name} "
                    f"images of {data.name!r} are {x.dtype}"
                )
            lo, hi = float(np.min(x)), float(np.max(x))
            if lo < 0.0 or hi > 1.0 or not (math.isfinite(lo) and math.isfinite(hi)):
                raise DataError(
                    f"family 'vae' reconstructs images with a binary cross-entropy and needs "
                    f"pixel values in [0, 1], but the {split_name} images of {data.name!r} "
                    f"range over [{lo:g}, {hi:g}]"
                )

    def build(self, hp: Params, data: Dataset) -> keras.Model:
        """A compiled VAE for ``data``'s images, with sub-models ``encoder`` and ``decoder``."""
        self.check_data(data)
        latent_dim = int(hp.get("latent_dim", 2))
        blocks = int(hp.get("conv_blocks", 2))
        filters = int(hp.get("filters", 32))
        kernel_size = int(hp.get("kernel_size", 3))
        dense_units = int(hp.get("dense_units", 0))
        beta = float(hp.get("beta", 1.0))
        if latent_dim < 1 or blocks < 1 or filters < 1:
            raise ValueError(
                f"latent_dim, conv_blocks and filters must be at least 1, got {latent_dim}, "
                f"{blocks}, {filters}"
            )
        if beta < 0:
            raise ValueError(f"beta (the KL weight) must be >= 0, got {beta}")
        encoder = _encoder(data.input_shape, latent_dim, blocks, filters, kernel_size, dense_units)
        decoder = _decoder(data.input_shape, latent_dim, blocks, filters, kernel_size, dense_units)

        image = keras.Input(data.input_shape, name="image")
        z_mean, z_log_var = encoder(image)
        z = VAESampling(name="sampling")([z_mean, z_log_var])
        outputs = {
            "reconstruction": keras.layers.Identity(name="reconstruction")(decoder(z)),
            "kl": KLDivergence(name="kl")([z_mean, z_log_var]),
        }
        model = keras.Model(image, outputs, name="vae")
        model.compile(
            optimizer=build_optimizer(hp),
            loss={"reconstruction": ReconstructionLoss(), "kl": BetaKLLoss(beta)},
        )
        return model

    def fit_targets(self, split: Split) -> dict[str, np.ndarray]:
        """Train ``x -> x``; the KL output's target is a dummy (its loss ignores it)."""
        return _targets(split.x)

    def predict(self, model: keras.Model, hp: Params, x: np.ndarray) -> np.ndarray:
        """Each example's latent mean ``z_mean``, shape (n, latent_dim): small and useful."""
        return encode(model, x, batch_size=max(EVAL_BATCH_SIZE, self.batch_size(hp)))

    def extra_artifacts(self, model: keras.Model, hp: Params, data: Dataset) -> dict[str, bytes]:
        """``vae.json``: what ``hpo generate images`` needs besides the model (:func:`vae_info`)."""
        info = vae_info(model, hp, data, batch_size=max(EVAL_BATCH_SIZE, self.batch_size(hp)))
        return {VAE_INFO_FILE: json.dumps(info, indent=1).encode()}


def vae_info(
    model: keras.Model, hp: Params | dict[str, Any], data: Dataset, batch_size: int = 256
) -> dict[str, Any]:
    """Image shape, latent size, beta, class names and per-class latent statistics.

    ``class_means`` / ``class_stds`` are the mean and standard deviation of ``z_mean`` over each
    class's validation images (never the test split); a class without validation images is left
    out. Datasets without class labels get
    an empty ``class_means``.
    """
    decoder = model.get_layer(DECODER)
    info: dict[str, Any] = {
        "family": "vae",
        "image_shape": [int(d) for d in decoder.output_shape[1:]],
        "latent_dim": int(decoder.input_shape[-1]),
        "beta": float(hp.get("beta", 1.0)),
        "dataset": data.name,
        "class_names": list(data.class_names or []),
        "class_means": {},
        "class_stds": {},
        "class_counts": {},
    }
    y = np.asarray(data.validation.y)
    if data.class_names and y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        z = encode(model, data.validation.x, batch_size=batch_size)
        for index, name in enumerate(data.class_names):
            mask = y == index
            if mask.any():
                info["class_means"][name] = [float(v) for v in z[mask].mean(axis=0)]
                info["class_stds"][name] = [float(v) for v in z[mask].std(axis=0)]
                info["class_counts"][name] = int(mask.sum())
    return info


def encode(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Latent means ``z_mean`` of images ``x`` with the VAE's ``encoder`` sub-model."""
    z_mean, _ = model.get_layer(ENCODER).predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(z_mean)


def _targets(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"reconstruction": x, "kl": np.zeros((len(x),), np.float32)}


def _feature_sizes(size: int, blocks: int) -> list[int]:
    """Spatial sizes after each stride-2 'same' convolution: ``ceil(size / 2)`` per block."""
    sizes = [size]
    for _ in range(blocks):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def _encoder(
    shape: tuple[int, ...],
    latent_dim: int,
    blocks: int,
    filters: int,
    kernel_size: int,
    dense_units: int,
) -> keras.Model:
    image = keras.Input(shape, name="image")
    x = image
    for block in range(blocks):
        x = keras.layers.Conv2D(
            filters * 2**block,
            kernel_size,
            strides=2,
            padding="same",
            activation="relu",
            name=f"enc_conv{block + 1}",
        )(x)
    x = keras.layers.Flatten(name="enc_flatten")(x)
    if dense_units > 0:
        x = keras.layers.Dense(dense_units, activation="relu", name="enc_dense")(x)
    z_mean = keras.layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = keras.layers.Dense(latent_dim, name="z_log_var")(x)
    return keras.Model(image, [z_mean, z_log_var], name=ENCODER)


def _decoder(
    shape: tuple[int, ...],
    latent_dim: int,
    blocks: int,
    filters: int,
    kernel_size: int,
    dense_units: int,
) -> keras.Model:
    height, width, channels = shape
    heights, widths = _feature_sizes(height, blocks), _feature_sizes(width, blocks)
    top = filters * 2 ** (blocks - 1)
    z = keras.Input((latent_dim,), name="z")
    x = z
    if dense_units > 0:
        x = keras.layers.Dense(dense_units, activation="relu", name="dec_dense")(x)
    x = keras.layers.Dense(heights[-1] * widths[-1] * top, activation="relu", name="dec_project")(x)
    x = keras.layers.Reshape((heights[-1], widths[-1], top), name="dec_reshape")(x)
    for block in reversed(range(blocks)):
        x = keras.layers.Conv2DTranspose(
            filters * 2**block,
            kernel_size,
            strides=2,
            padding="same",
            activation="relu",
            name=f"dec_deconv{block + 1}",
        )(x)
    # Odd sizes (28 -> 14 -> 7 -> 4) come back larger (4 -> 8 -> 16 -> 32): crop the excess.
    extra_h, extra_w = heights[-1] * 2**blocks - height, widths[-1] * 2**blocks - width
    if extra_h or extra_w:
        x = keras.layers.Cropping2D(
            ((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2)),
            name="dec_crop",
        )(x)
    image = keras.layers.Conv2D(
        channels, kernel_size, padding="same", activation="sigmoid", name="dec_image"
    )(x)
    return keras.Model(z, image, name=DECODER)


__all__ = [
    "DECODER",
    "ENCODER",
    "VAE",
    "VAE_INFO_FILE",
    "BetaKLLoss",
    "KLDivergence",
    "ReconstructionLoss",
    "VAESampling",
    "encode",
    "vae_info",
]
