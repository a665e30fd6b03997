"""A deep convolutional GAN (DCGAN) for small images, trained adversarially, judged by a
Fréchet distance.

* ``generator``: z ~ N(0, I) of size ``latent_dim`` -> Dense -> Reshape -> ``conv_blocks``
  upsampling blocks (a stride-2 ``Conv2DTranspose``, or a resize and a ``Conv2D``; filters
  halving towards the image; optional batch normalization; LeakyReLU) -> a crop back to the
  image size -> a sigmoid Conv2D image in [0, 1];
* ``discriminator``: ``conv_blocks`` Conv2D blocks (4x4 kernels, stride 2, filters doubling,
  LeakyReLU) -> Flatten -> Dropout -> one logit "real".

Training follows the adversarial loop of Chollet's *Deep Learning with Python* (section 8.5): per
generator step, ``d_steps`` discriminator steps on a batch of real images labelled real and a
batch of generated ones labelled fake, then one step of the stacked model
``discriminator(generator(z))`` with the discriminator frozen, on "real" labels (the generator
learns to fool the discriminator). Both steps are compiled Keras models trained with
``train_on_batch``, so Keras computes the gradients on every backend (TensorFlow, JAX, PyTorch)
and the family holds no backend-specific code. Labels get one-sided smoothing (real =
``1 - label_smoothing``) and uniform noise of amplitude ``label_noise`` (the course's "add noise
to the labels"), both for the discriminator only.

Each epoch (one pass of the discriminator over the training images) logs ``d_loss`` and
``g_loss`` (means over the epoch's steps), then measures ``fd_samples`` generated images in the
feature space of the dataset's feature classifier (:mod:`hpo.families.gan_quality`):

* ``epoch_fd``: the Fréchet distance of this epoch's samples to the validation split's images;
* ``val_fd``: the lowest ``epoch_fd`` so far, the objective (minimize), and ``kept_epoch``, its
  epoch: adversarial training oscillates, so the trial keeps the generator of that epoch
  (restored when training ends), not the last one;
* ``gen_max_class_share`` and ``gen_class_entropy``: the class distribution of the samples as
  the classifier sees it (mode collapse shows as a share near 1, an entropy near 0);
* ``gen_pixel_std``: the samples' pixel standard deviation across samples (0: all alike);
* ``classifier_test_accuracy``: the feature classifier's own accuracy on the test split.

A trial whose losses or samples turn non-finite fails as *diverged*; one whose samples fall into
one class (``gen_max_class_share >= collapse_share`` for ``collapse_epochs`` epochs in a row:
adversarial training oscillates, one such epoch is common) or are all alike
(``gen_pixel_std < 1e-3``) fails as *collapsed*; the reason is the trial's.

Parameters (all optional; a missing one takes the default in brackets):

* ``latent_dim`` [32]; ``conv_blocks`` [2]; ``g_filters`` [64], ``d_filters`` [32] (filters of
  the block nearest the latent code / the first discriminator block; doubling per block);
* ``g_upsampling`` [resize]: ``resize`` (``UpSampling2D`` then a 3x3 ``Conv2D``) or
  ``transpose`` (a 4x4 ``Conv2DTranspose`` at stride 2, the course's and DCGAN's; its samples
  were at 1.7 times resize's Fréchet distance after six epochs on Fashion-MNIST,
  ``bench/gan_variants.py``);
* ``g_batchnorm`` [true]; ``d_dropout`` [0.3];
* ``g_learning_rate`` [2e-4], ``g_beta_1`` [0.5], ``d_learning_rate`` [2e-4], ``d_beta_1``
  [0.5] (Adam for both);
* ``label_smoothing`` [0.0]; ``label_noise`` [0.05]; ``d_steps`` [1];
* ``batch_size`` [64]; ``fd_samples`` [1000]; ``collapse_share`` [0.9];
  ``collapse_epochs`` [3].

Data: image datasets (``classification``, e.g. ``digits`` and ``fashion_mnist``) with inputs of
shape (height, width, channels) in [0, 1]; the labels train only the feature classifier.

The trial's ``model.keras`` is the generator alone (latent vectors -> images). Artifacts besides
it: ``gan.json`` (image and latent shape, the classifier's accuracy, per class the mean latent
vector and a few latent vectors of the generated samples most like it, for ``hpo generate
images``; see :func:`gan_info`) and
``samples_epoch_NNN.png``, the same latent vectors' images after each epoch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import keras
import numpy as np

from hpo.datasets import DataError, Dataset, Split, Task
from hpo.families._base import Family

if TYPE_CHECKING:
    from hpo.spaces import Params

GAN_INFO_FILE = "gan.json"
GENERATOR = "generator"
DISCRIMINATOR = "discriminator"
# How the generator doubles its feature maps: a nearest-neighbour resize followed by a 3x3
# convolution, or a stride-2 transposed convolution (DCGAN's).
UPSAMPLING = ("resize", "transpose")
# Latent vectors kept per class in gan.json for `hpo generate images --arithmetic`.
LATENTS_PER_CLASS = 16
# Generated samples classified at the end of training for gan.json's per-class latents, and
# the share of them, most like a class, whose latent vectors stand for it.
INFO_SAMPLES = 2000
CLASS_SHARE = 0.05


class GANModel(keras.Model):  # type: ignore[misc]
    """The generator and the discriminator; calling it on images gives the discriminator's
    logits "real". Training is :meth:`GAN.fit`'s adversarial loop, not ``model.fit``."""

    def __init__(self, generator: keras.Model, discriminator: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        # Per-epoch sample grids (PNG bytes), stored as trial artifacts at the end.
        self.sample_grids: list[bytes] = []
        self.quality: Any = None

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.discriminator(inputs, training=training)


class GAN(Family):
    """DCGAN on images; objective ``val_fd`` (Fréchet distance of samples to validation images).

    Example:
        >>> from hpo.spaces import DatasetSpec, Params
        >>> from hpo.datasets import load_dataset
        >>> data = load_dataset(DatasetSpec(name="digits", subset=64))
        >>> model = GAN().build(Params({"latent_dim": 8, "g_filters": 8, "d_filters": 4}), data)
        >>> model.generator.output_shape, model.discriminator.output_shape
        ((None, 8, 8, 1), (None, 1))
    """

    # The saved model is the generator: latent vectors in, images out.
    raw_inputs = False
    name = "gan"
    # Its loop's random stream, collapse watch and sample grids are not in a checkpoint.
    resumable: ClassVar[bool] = False
    tasks: ClassVar[tuple[Task, ...]] = ("classification",)
    default_batch_size: ClassVar[int] = 64
    ensembles = False

    def check_data(self, data: Dataset) -> None:
        """Labelled images of shape (height, width, channels) with float values in [0, 1]."""
        super().check_data(data)
        if len(data.input_shape) != 3:
            raise DataError(
                f"family 'gan' needs images of shape (height, width, channels), but dataset "
                f"{data.name!r} has inputs of shape {data.input_shape}"
            )
        for split_name in ("train", "validation", "test"):
            x = getattr(data, split_name).x
            if len(x) < 2:
                raise DataError(
                    f"family 'gan' needs at least 2 images in the {split_name} split of "
                    f"{data.name!r}, got {len(x)}"
                )
            lo, hi = float(np.min(x)), float(np.max(x))
            if not np.issubdtype(x.dtype, np.floating) or lo < 0.0 or hi > 1.0:
                raise DataError(
                    f"family 'gan' generates sigmoid images and needs float pixel values in "
                    f"[0, 1], but the {split_name} images of {data.name!r} are {x.dtype} in "
                    f"[{lo:g}, {hi:g}]"
                )

    def build(self, hp: Params, data: Dataset) -> keras.Model:
        """A :class:`GANModel` for ``data``'s images (its two parts are compiled in :meth:`fit`)."""
        self.check_data(data)
        latent_dim = int(hp.get("latent_dim", 32))
        blocks = int(hp.get("conv_blocks", 2))
        g_filters = int(hp.get("g_filters", 64))
        d_filters = int(hp.get("d_filters", 32))
        if min(latent_dim, blocks, g_filters, d_filters) < 1:
            raise ValueError(
                f"latent_dim, conv_blocks, g_filters and d_filters must be at least 1, got "
                f"{latent_dim}, {blocks}, {g_filters}, {d_filters}"
            )
        upsampling = str(hp.get("g_upsampling", "resize"))
        if upsampling not in UPSAMPLING:
            raise ValueError(
                f"g_upsampling must be one of {', '.join(UPSAMPLING)}, got {upsampling!r}"
            )
        generator = _generator(
            data.input_shape,
            latent_dim,
            blocks,
            g_filters,
            bool(hp.get("g_batchnorm", True)),
            upsampling,
        )
        discriminator = _discriminator(
            data.input_shape, blocks, d_filters, float(hp.get("d_dropout", 0.3))
        )
        model = GANModel(generator, discriminator, name="gan")
        model(np.zeros((1, *data.input_shape), np.float32))  # build: count_params works
        return model

    def fit_targets(self, split: Split) -> np.ndarray:
        """A GAN trains on images alone: every training image is "real"."""
        return np.ones((len(split.x), 1), np.float32)

    def fit(
        self,
        model: keras.Model,
        hp: Params,
        data: Dataset,
        epochs: int,
        callbacks: Sequence[keras.callbacks.Callback],
        initial_epoch: int = 0,
    ) -> None:
        """The adversarial loop; each epoch's logs hold the losses and the sample quality.

        Always from epoch 0 (``resumable = False``): the loop's own state (its random stream,
        the collapse watch, the sample grids) is not in a checkpoint.
        """
        from hpo.families.gan_quality import CollapseWatch, KeptGenerator, feature_classifier

        # The classifier's training reseeds Keras; keep the trial's own stream either way.
        seed = int(np.random.randint(2**31 - 1))
        classifier = feature_classifier(data)
        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        quality = _Quality(classifier, data, int(hp.get("fd_samples", 1000)))
        model.quality = quality
        loop = _AdversarialLoop(model, hp, rng)
        callback_list = keras.callbacks.CallbackList(
            list(callbacks), add_history=False, add_progbar=False, model=model
        )
        grid_z = rng.standard_normal((64, loop.latent_dim)).astype(np.float32)
        collapse = CollapseWatch(
            float(hp.get("collapse_share", 0.9)), int(hp.get("collapse_epochs", 3))
        )
        kept = KeptGenerator(model.generator)
        batch_size = self.batch_size(hp)
        x = data.train.x.astype(np.float32)
        model.stop_training = False
        callback_list.on_train_begin()
        for epoch in range(epochs):
            callback_list.on_epoch_begin(epoch)
            order = rng.permutation(len(x))
            d_losses: list[float] = []
            g_losses: list[float] = []
            batches = [order[i : i + batch_size] for i in range(0, len(x), batch_size)]
            starts = range(0, len(batches), loop.d_steps)
            for step, start in enumerate(starts):
                callback_list.on_train_batch_begin(step)
                if model.stop_training:
                    break
                d_losses += [
                    loop.discriminator_step(x[b]) for b in batches[start : start + loop.d_steps]
                ]
                g_losses.append(loop.generator_step(batch_size))
                losses = (d_losses[-1], g_losses[-1])
                callback_list.on_train_batch_end(
                    step, {"d_loss": losses[0], "g_loss": losses[1], "loss": sum(losses)}
                )
                if not all(math.isfinite(v) for v in losses):
                    break  # the epoch's logs carry the non-finite loss: the trial fails
            if model.stop_training and not d_losses:
                break
            logs = {"d_loss": float(np.mean(d_losses)), "g_loss": float(np.mean(g_losses))}
            problem = None
            if all(math.isfinite(v) for v in logs.values()):
                images = _generate(model.generator, grid_z)
                model.sample_grids.append(_grid(images))
                measured = quality.measure(model.generator, rng)
                logs.update(measured)
                problem = collapse.problem(measured, epoch + 1)
                logs.update(kept.update(measured["val_fd"], epoch + 1))
            callback_list.on_epoch_end(epoch, logs)
            if problem:
                from hpo.workers.tasks import TrialFailedError

                raise TrialFailedError(problem)
            if model.stop_training:
                break
        kept.restore()
        callback_list.on_train_end()

    def saved_model(self, model: keras.Model, data: Dataset) -> keras.Model:
        """The generator: what ``hpo generate images`` draws images with."""
        return model.generator

    def predict(self, model: keras.Model, hp: Params, x: np.ndarray) -> np.ndarray:
        """The discriminator's logit "real" for each image, shape (n, 1)."""
        return np.asarray(model.discriminator.predict(x, batch_size=256, verbose=0))

    def extra_artifacts(self, model: keras.Model, hp: Params, data: Dataset) -> dict[str, bytes]:
        """``gan.json`` (see :func:`gan_info`) and the per-epoch sample grids."""
        info = gan_info(model, data)
        files = {GAN_INFO_FILE: json.dumps(info, indent=1).encode()}
        for epoch, png in enumerate(model.sample_grids, start=1):
            files[f"samples_epoch_{epoch:03d}.png"] = png
        return files


def gan_info(model: GANModel, data: Dataset, seed: int = 0) -> dict[str, Any]:
    """Image and latent shape, the classifier's test accuracy, and per class the latent vectors
    of the generated samples that the feature classifier finds most like that class.

    Of :data:`INFO_SAMPLES` samples, each class takes the :data:`CLASS_SHARE` with the highest
    probability of that class (whatever class is the most probable: a young generator may draw
    few samples of some class, still its most class-like ones point the way). ``class_means``
    / ``class_stds`` are their latent vectors' mean and standard deviation (the concept vectors
    of ``hpo generate images --arithmetic``), ``class_latents`` the :data:`LATENTS_PER_CLASS` most
    class-like latent vectors, and ``class_counts`` how many samples the classifier assigns to
    each class (its most probable class): their spread shows mode collapse.
    """
    generator = model.generator
    latent_dim = int(generator.input_shape[-1])
    info: dict[str, Any] = {
        "family": "gan",
        "image_shape": [int(d) for d in generator.output_shape[1:]],
        "latent_dim": latent_dim,
        "dataset": data.name,
        "class_names": list(data.class_names or []),
        "class_means": {},
        "class_stds": {},
        "class_counts": {},
        "class_latents": {},
    }
    quality = model.quality
    if quality is None:
        return info
    info["classifier_test_accuracy"] = quality.classifier.test_accuracy
    z = np.random.default_rng(seed).standard_normal((INFO_SAMPLES, latent_dim)).astype(np.float32)
    _, probabilities = quality.classifier.features_and_probabilities(_generate(generator, z))
    counts = np.bincount(probabilities.argmax(axis=-1), minlength=probabilities.shape[-1])
    names = data.class_names or [str(i) for i in range(probabilities.shape[-1])]
    top = max(LATENTS_PER_CLASS, int(CLASS_SHARE * INFO_SAMPLES))
    for index, name in enumerate(names):
        ranked = np.argsort(-probabilities[:, index], kind="stable")
        chosen = z[ranked[:top]]
        info["class_means"][name] = [float(v) for v in chosen.mean(axis=0)]
        info["class_stds"][name] = [float(v) for v in chosen.std(axis=0)]
        info["class_counts"][name] = int(counts[index])
        info["class_latents"][name] = [
            [float(v) for v in row] for row in z[ranked[:LATENTS_PER_CLASS]]
        ]
    return info


class _AdversarialLoop:
    """The discriminator and the stacked generator -> frozen discriminator, each compiled."""

    def __init__(self, model: GANModel, hp: Params, rng: np.random.Generator) -> None:
        self.generator = model.generator
        self.discriminator = model.discriminator
        self.rng = rng
        self.latent_dim = int(self.generator.input_shape[-1])
        self.d_steps = max(1, int(hp.get("d_steps", 1)))
        self.smoothing = float(hp.get("label_smoothing", 0.0))
        self.noise = float(hp.get("label_noise", 0.05))
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        self.discriminator.trainable = True
        self.discriminator.compile(
            optimizer=keras.optimizers.Adam(
                float(hp.get("d_learning_rate", 2e-4)), beta_1=float(hp.get("d_beta_1", 0.5))
            ),
            loss=loss,
        )
        # The stacked model trains the generator only: the discriminator is frozen while it is
        # built and compiled, and whenever the stacked model trains (Keras reads `trainable`
        # when a model's train function is made and at every call).
        self.discriminator.trainable = False
        z = keras.Input((self.latent_dim,), name="z")
        self.stacked = keras.Model(z, self.discriminator(self.generator(z)), name="stacked")
        self.stacked.compile(
            optimizer=keras.optimizers.Adam(
                float(hp.get("g_learning_rate", 2e-4)), beta_1=float(hp.get("g_beta_1", 0.5))
            ),
            loss=loss,
        )

    def latents(self, n: int) -> np.ndarray:
        return self.rng.standard_normal((n, self.latent_dim)).astype(np.float32)

    def discriminator_step(self, real: np.ndarray) -> float:
        n = len(real)
        # Training mode, as in the stacked model: batch normalization uses the batch's statistics.
        fake = keras.ops.convert_to_numpy(self.generator(self.latents(n), training=True))
        images = np.concatenate([real, fake])
        labels = np.concatenate(
            [
                np.full((n, 1), 1.0 - self.smoothing, np.float32)
                - self.noise * self.rng.random((n, 1), np.float32),
                self.noise * self.rng.random((n, 1), np.float32),
            ]
        )
        self.discriminator.trainable = True
        loss = self.discriminator.train_on_batch(images, labels)
        self.discriminator.trainable = False
        return float(np.asarray(loss).reshape(-1)[0])

    def generator_step(self, n: int) -> float:
        loss = self.stacked.train_on_batch(self.latents(n), np.ones((n, 1), np.float32))
        return float(np.asarray(loss).reshape(-1)[0])


class _Quality:
    """Per-epoch sample quality against the validation split's classifier features."""

    def __init__(self, classifier: Any, data: Dataset, samples: int) -> None:
        from hpo.families.gan_quality import gaussian

        self.classifier = classifier
        self.samples = max(2, samples)
        self.num_classes = int(data.num_classes or 2)
        real, _ = classifier.features_and_probabilities(data.validation.x)
        self.real = gaussian(real)

    def measure(self, generator: keras.Model, rng: np.random.Generator) -> dict[str, float]:
        from hpo.families.gan_quality import class_shares, frechet_distance, gaussian

        z = rng.standard_normal((self.samples, int(generator.input_shape[-1]))).astype(np.float32)
        images = _generate(generator, z)
        if not np.isfinite(images).all():
            return {"val_fd": math.nan, "gen_pixel_std": math.nan}
        features, probabilities = self.classifier.features_and_probabilities(images)
        return {
            "val_fd": frechet_distance(*gaussian(features), *self.real),
            **{f"gen_{k}": v for k, v in class_shares(probabilities, self.num_classes).items()},
            "gen_pixel_std": float(images.std(axis=0).mean()),
            "classifier_test_accuracy": self.classifier.test_accuracy,
        }


def _generate(generator: keras.Model, z: np.ndarray) -> np.ndarray:
    return np.asarray(generator.predict(z, batch_size=256, verbose=0), np.float32)


def _grid(images: np.ndarray) -> bytes:
    from hpo.families.gan_quality import grid_png

    return grid_png(images, columns=math.isqrt(len(images)))


def _sizes(size: int, blocks: int) -> list[int]:
    """Spatial sizes after each stride-2 'same' convolution: ``ceil(size / 2)`` per block."""
    sizes = [size]
    for _ in range(blocks):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def _generator(
    shape: tuple[int, ...],
    latent_dim: int,
    blocks: int,
    filters: int,
    batchnorm: bool,
    upsampling: str,
) -> keras.Model:
    height, width, channels = shape
    heights, widths = _sizes(height, blocks), _sizes(width, blocks)
    z = keras.Input((latent_dim,), name="z")

    def activate(x: Any, name: str) -> Any:
        if batchnorm:
            # A short momentum: the moving statistics that sampling uses keep up with a
            # generator that changes fast.
            x = keras.layers.BatchNormalization(momentum=0.8, name=f"{name}_bn")(x)
        return keras.layers.LeakyReLU(0.2, name=f"{name}_act")(x)

    x = keras.layers.Dense(
        heights[-1] * widths[-1] * filters, use_bias=not batchnorm, name="project"
    )(z)
    x = activate(x, "project")
    x = keras.layers.Reshape((heights[-1], widths[-1], filters), name="reshape")(x)
    for block in range(blocks):
        block_filters = max(1, filters // 2**block)
        if upsampling == "resize":
            # Resize, then convolve (Odena et al., "Deconvolution and Checkerboard Artifacts",
            # 2016): every output pixel sees the same number of input pixels, so the weights
            # cannot print a periodic pattern into the image as a transposed convolution can.
            x = keras.layers.UpSampling2D(2, name=f"resize{block + 1}")(x)
            x = keras.layers.Conv2D(
                block_filters, 3, padding="same", use_bias=not batchnorm, name=f"deconv{block + 1}"
            )(x)
        else:
            x = keras.layers.Conv2DTranspose(
                block_filters,
                4,
                strides=2,
                padding="same",
                use_bias=not batchnorm,
                name=f"deconv{block + 1}",
            )(x)
        x = activate(x, f"deconv{block + 1}")
    # Odd sizes (28 -> 14 -> 7 -> 4) come back larger (4 -> 8 -> 16 -> 32): crop the excess.
    extra_h, extra_w = heights[-1] * 2**blocks - height, widths[-1] * 2**blocks - width
    if extra_h or extra_w:
        x = keras.layers.Cropping2D(
            ((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2)),
            name="crop",
        )(x)
    image = keras.layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="image")(x)
    return keras.Model(z, image, name=GENERATOR)


def _discriminator(shape: tuple[int, ...], blocks: int, filters: int, rate: float) -> keras.Model:
    image = keras.Input(shape, name="image")
    x = image
    for block in range(blocks):
        # 4x4 kernels, as in the course and DCGAN: a 3x3 kernel at stride 2 covers every other
        # pixel twice, and its uneven gradients print a checkerboard into the generator's images.
        x = keras.layers.Conv2D(
            filters * 2**block, 4, strides=2, padding="same", name=f"conv{block + 1}"
        )(x)
        x = keras.layers.LeakyReLU(0.2, name=f"conv{block + 1}_act")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if rate > 0:
        x = keras.layers.Dropout(rate, name="dropout")(x)
    logit = keras.layers.Dense(1, name="real")(x)
    return keras.Model(image, logit, name=DISCRIMINATOR)


__all__ = ["DISCRIMINATOR", "GAN", "GAN_INFO_FILE", "GENERATOR", "GANModel", "gan_info"]
