"""How good a GAN's samples are: Fréchet distance in a feature classifier's space, class shares.

A GAN has no validation loss that measures its samples. The Fréchet distance (the FID of Heusel
et al., 2017, with a small classifier of the study's own data in place of Inception) compares
the Gaussian fitted to the features of generated images with the one fitted to the features of
real validation images::

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

Lower is better; 0 means the two feature distributions have the same mean and covariance.

The feature classifier is trained once per dataset (its training split, seeded) and cached in
``$HPO_CACHE_DIR`` (see :func:`hpo.cache.cache_dir`), so the trials of a study, and
of later studies on the same data, share it. Its test accuracy is stored beside it: a distance
measured with a poor classifier says little.

Its predictions on generated images also give their class distribution: a GAN whose samples
fall into one class has collapsed onto one mode (:func:`class_shares`).

Example:
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(2000, 3)), rng.normal(1.0, size=(2000, 3))
    >>> round(frechet_distance(*gaussian(a), *gaussian(a)), 6)
    0.0
    >>> 2.8 < frechet_distance(*gaussian(a), *gaussian(b)) < 3.2  # |mu_1 - mu_2|^2 = 3
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

    from hpo.datasets import Dataset

# Bump when the classifier's architecture or training changes: cached ones are then retrained.
CLASSIFIER_VERSION = 1
CLASSIFIER_SEED = 0
FEATURES_LAYER = "features"
# Samples whose pixels vary less than this across samples are all alike: a collapsed GAN.
MIN_PIXEL_STD = 1e-3
_FEATURES = 64


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are observations) of ``features``, in float64."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """The Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    The matrix square root is :func:`scipy.linalg.sqrtm`; a singular product (fewer samples
    than features) gets a small diagonal offset first, as the reference FID code does.
    """
    from scipy import linalg

    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    with warnings.catch_warnings():
        # A singular product (dead ReLU features) warns and may give a wrong root: offset it.
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            covmean = linalg.sqrtm(s1 @ s2)
            singular = not np.isfinite(covmean).all()
        except linalg.LinAlgWarning:
            singular = True
    if singular:
        offset = np.eye(len(s1)) * 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)  # round-off leaves tiny imaginary parts
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def class_shares(probabilities: np.ndarray, num_classes: int) -> dict[str, float]:
    """Of images with these class probabilities: the share of the most frequent predicted class
    (``max_class_share``: 1.0 = every image in one class) and the entropy of the predicted
    classes relative to a uniform spread (``class_entropy``: 1.0 = all classes equally often,
    0.0 = one class).

    Example:
        >>> class_shares(np.eye(4)[[0, 1, 2, 3]], 4)
        {'max_class_share': 0.25, 'class_entropy': 1.0}
        >>> class_shares(np.eye(4)[[2, 2, 2, 2]], 4)
        {'max_class_share': 1.0, 'class_entropy': 0.0}
    """
    counts = np.bincount(np.argmax(probabilities, axis=-1), minlength=num_classes)
    shares = counts / max(1, counts.sum())
    nonzero = shares[shares > 0]
    entropy = max(0.0, float(-(nonzero * np.log(nonzero)).sum()))  # no -0.0
    return {
        "max_class_share": float(shares.max()),
        "class_entropy": entropy / math.log(num_classes) if num_classes > 1 else 0.0,
    }


@dataclass
class FeatureClassifier:
    """The classifier whose penultimate layer is the feature space of the Fréchet distance."""

    model: keras.Model
    test_accuracy: float
    path: Path

    def features_and_probabilities(
        self, x: np.ndarray, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray]:
        import keras

        both = keras.Model(
            self.model.inputs, [self.model.get_layer(FEATURES_LAYER).output, self.model.output]
        )
        features, probabilities = both.predict(x, batch_size=batch_size, verbose=0)
        return np.asarray(features), np.asarray(probabilities)


def classifier_key(data: Dataset) -> str:
    """What the cached classifier depends on: the training images and labels, test labels, the
    classifier's version."""
    h = hashlib.sha256(f"gan-feature-classifier-{CLASSIFIER_VERSION}|{data.name}".encode())
    for array in (data.train.x, data.train.y, data.test.y):
        a = np.ascontiguousarray(array)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def feature_classifier(data: Dataset, cache: Path | None = None) -> FeatureClassifier:
    """The feature classifier of ``data``: loaded from the cache, or trained (seeded) and cached.

    Training resets Keras' global random seed to :data:`CLASSIFIER_SEED`; callers that need
    their own random stream afterwards reseed.
    """
    import keras

    from hpo.cache import cache_dir

    folder = cache if cache is not None else cache_dir()
    path = folder / f"gan-classifier-{data.name}-{classifier_key(data)}.keras"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        model = keras.models.load_model(path, safe_mode=True, compile=False)
        return FeatureClassifier(model, float(info["test_accuracy"]), path)
    model, accuracy = _train_classifier(data)
    folder.mkdir(parents=True, exist_ok=True)
    # Write under temporary names, then rename: a concurrent trial reads whole files or none.
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp_model = Path(tmp) / path.name
        model.save(tmp_model)
        tmp_info = Path(tmp) / info_path.name
        tmp_info.write_text(
            json.dumps({"test_accuracy": accuracy, "dataset": data.name, "seed": CLASSIFIER_SEED})
        )
        os.replace(tmp_model, path)
        os.replace(tmp_info, info_path)
    return FeatureClassifier(model, accuracy, path)


def _train_classifier(data: Dataset) -> tuple[keras.Model, float]:
    import keras

    keras.utils.set_random_seed(CLASSIFIER_SEED)
    classes = int(data.num_classes or int(np.max(data.train.y)) + 1)
    image = keras.Input(data.input_shape, name="image")
    x = image
    size = min(data.input_shape[:2])
    for block, filters in enumerate((32, 64), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}")(
            x
        )
        if size >= 2:
            x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
            size //= 2
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(_FEATURES, activation="relu", name=FEATURES_LAYER)(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    probabilities = keras.layers.Dense(classes, activation="softmax", name="classes")(x)
    model = keras.Model(image, probabilities, name="gan_feature_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # About 15,000 example visits: 13 epochs of 1,168 digits, 3 of 6,000 Fashion-MNIST images.
    epochs = int(np.clip(math.ceil(15_000 / max(1, len(data.train))), 3, 20))
    model.fit(data.train.x, data.train.y, batch_size=64, epochs=epochs, verbose=0)
    _, accuracy = model.evaluate(data.test.x, data.test.y, batch_size=256, verbose=0)
    return model, float(accuracy)


def grid_png(images: np.ndarray, columns: int) -> bytes:
    """A PNG of ``images`` (n, height, width, channels) in [0, 1], ``columns`` to a row."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpo.families.vae_sampling import tile

    n, h, w, c = images.shape
    rows = -(-n // columns)
    padded = np.ones((rows * columns, h, w, c), np.float32)
    padded[:n] = np.nan_to_num(images)
    picture = tile(padded.reshape(rows, columns, h, w, c), scale=max(1, -(-48 // h)))
    buffer = io.BytesIO()
    if picture.ndim == 2:
        plt.imsave(buffer, picture, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    else:
        plt.imsave(buffer, picture, format="png")
    return buffer.getvalue()


class KeptGenerator:
    """The generator's weights at the epoch of the lowest Fréchet distance so far.

    Adversarial training oscillates: the distance often rises again after its low (one epoch's
    generator is much better than the next one's), so the last epoch is an arbitrary pick. The
    trial keeps the best epoch's generator, as ``EarlyStopping(restore_best_weights=True)``
    does; the distance is measured on the validation images, never the test ones.
    """

    def __init__(self, generator: keras.Model) -> None:
        self.generator = generator
        self.best = math.inf
        self.epoch = 0
        self.weights: list[np.ndarray] | None = None

    def update(self, fd: float, epoch: int) -> dict[str, float]:
        """This epoch's logs: ``epoch_fd`` (this epoch's generator), ``val_fd`` (the kept one's)
        and ``kept_epoch``; nothing while the distance is not finite (the trial fails)."""
        if not math.isfinite(fd):
            return {}
        if fd < self.best:
            self.best, self.epoch = fd, epoch
            self.weights = [np.array(w, copy=True) for w in self.generator.get_weights()]
        return {"epoch_fd": fd, "val_fd": self.best, "kept_epoch": float(self.epoch)}

    def restore(self) -> None:
        if self.weights is not None:
            self.generator.set_weights(self.weights)


class CollapseWatch:
    """Why the GAN cannot go on (diverged or collapsed) after an epoch, or None.

    GAN training oscillates: samples crowd into one class for an epoch and spread out again
    the next. Collapse on one class counts only after ``epochs`` epochs in a row of
    ``gen_max_class_share >= share``.
    """

    def __init__(self, share: float, epochs: int) -> None:
        self.share = share
        self.epochs = max(1, epochs)
        self.streak = 0

    def problem(self, measured: dict[str, float], epoch: int) -> str | None:
        if not math.isfinite(measured["val_fd"]):
            return f"diverged: the generator's samples are not finite after epoch {epoch}"
        if measured["gen_pixel_std"] < MIN_PIXEL_STD:
            return (
                f"collapsed: all generated samples are alike after epoch {epoch} (pixel "
                f"standard deviation across samples {measured['gen_pixel_std']:.2g} < "
                f"{MIN_PIXEL_STD:g})"
            )
        self.streak = self.streak + 1 if measured["gen_max_class_share"] >= self.share else 0
        if self.streak >= self.epochs:
            return (
                f"collapsed: {measured['gen_max_class_share']:.0%} of the generated samples "
                f"fall into one class after epoch {epoch} ({self.streak} epoch"
                f"{'s' if self.streak > 1 else ''} in a row at collapse_share {self.share:g} "
                "or more)"
            )
        return None


__all__ = [
    "CLASSIFIER_SEED",
    "CLASSIFIER_VERSION",
    "CollapseWatch",
    "FeatureClassifier",
    "KeptGenerator",
    "class_shares",
    "classifier_key",
    "feature_classifier",
    "frechet_distance",
    "gaussian",
    "grid_png",
]
