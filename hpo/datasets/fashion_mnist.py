"""Fashion-MNIST (Zalando): 70,000 grayscale 28x28 images of clothing in 10 classes.

The loader reads the four original IDX files from the first of these places that has them:

1. ``options: {path: DIR}`` in the space file's ``dataset`` section;
2. the environment variable ``HPO_FASHION_MNIST_DIR``;
3. the Keras cache, ``$KERAS_HOME/datasets/fashion-mnist`` (``~/.keras/datasets/fashion-mnist``);
4. ``/usr/share/datasets/fashion-mnist``, from the Debian package ``dataset-fashion-mnist``;

and only then asks Keras to download them (``options: {download: false}`` forbids that). Each
file may be gzip-compressed (``*.gz``) or plain.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.datasets._base import DataError, Dataset, Split, split_indices, take_subset
from hpo.inputs import InputSpec

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec

log = logging.getLogger(__name__)

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
ENV_VAR = "HPO_FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IMAGE_SIZE = 28
HOW_TO_GET = (
    "To get the data: install the Debian package (sudo apt-get install dataset-fashion-mnist), "
    f"or put the four IDX files ({', '.join(f + '.gz' for f in FILES.values())}) in a "
    f"directory and set {ENV_VAR} or the dataset option 'path' to it, or allow Keras to "
    "download them (needs internet access)."
)


@dataclass(frozen=True)
class _Place:
    """A directory to look in, and why."""

    what: str
    path: Path
    named_by_user: bool = False


def load(spec: DatasetSpec) -> Dataset:
    """Fashion-MNIST as float32 images in [0, 1] of shape (28, 28, 1) and integer labels.

    The test split is the official 10,000 test images (``test_fraction`` does not apply);
    validation is a stratified, seeded ``validation_fraction`` of the official 60,000 training
    images; ``subset`` then caps the training examples (seeded), leaving validation and test whole.

    Example:
        >>> from hpo.spaces import DatasetSpec
        >>> data = load(DatasetSpec(name="fashion_mnist", subset=1000))  # doctest: +SKIP
        >>> len(data.train), len(data.validation), len(data.test)  # doctest: +SKIP
        (1000, 6000, 10000)
    """
    arrays, source = _read_arrays(spec.options)
    x_train, y_train = arrays["train_images"], arrays["train_labels"]
    tr, va, _ = split_indices(
        len(y_train), spec.validation_fraction, 0.0, spec.seed, labels=y_train
    )
    # The subset is chosen before scaling: floats for the 54,000 training images would be 170 MB.
    kept = take_subset(Split(x_train[tr], y_train[tr]), spec.subset, spec.seed)
    train = Split(_scale(kept.x), kept.y)
    return Dataset(
        name="fashion_mnist",
        task="classification",
        train=train,
        validation=Split(_scale(x_train[va]), y_train[va]),
        test=Split(_scale(arrays["test_images"]), arrays["test_labels"]),
        num_classes=len(CLASS_NAMES),
        class_names=list(CLASS_NAMES),
        meta={"source": source, "test_split": "official t10k"},
        inputs=InputSpec.image(
            (IMAGE_SIZE, IMAGE_SIZE),
            scale=1 / 255,
            channels=1,
            description="grayscale images of 28x28 pixels, values 0 to 255 (uint8 as in the "
            "IDX files, or floats)",
        ),
    )


def read_idx_dir(directory: str | Path) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays (uint8 images, int64 labels) from the IDX files in a folder.

    Raises :class:`FileNotFoundError` when a file is missing and :class:`DataError` when one is
    corrupt or the images and labels do not match.

    Example:
        >>> arrays = read_idx_dir("/usr/share/datasets/fashion-mnist")  # doctest: +SKIP
        >>> arrays["test_images"].shape  # doctest: +SKIP
        (10000, 28, 28)
    """
    directory = Path(directory)
    paths = {}
    for key, stem in FILES.items():
        path = _find_file(directory, stem)
        if path is None:
            raise FileNotFoundError(directory / f"{stem}[.gz]")
        paths[key] = path
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images = _read_idx(paths[f"{split}_images"], IMAGE_MAGIC)
        labels = _read_idx(paths[f"{split}_labels"], LABEL_MAGIC)
        if len(images) != len(labels):
            raise DataError(
                f"{paths[f'{split}_images']} has {len(images)} images but "
                f"{paths[f'{split}_labels']} has {len(labels)} labels"
            )
        if labels.size and int(labels.max()) >= len(CLASS_NAMES):
            raise DataError(
                f"{paths[f'{split}_labels']} is corrupt: label {int(labels.max())} "
                f"is not a Fashion-MNIST class (0..{len(CLASS_NAMES) - 1})"
            )
        out[f"{split}_images"] = images
        out[f"{split}_labels"] = labels.astype(np.int64)
    return out


def _scale(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def _places(options: dict[str, Any]) -> list[_Place]:
    places = []
    if options.get("path"):
        places.append(
            _Place("dataset option 'path'", Path(str(options["path"])).expanduser(), True)
        )
    if os.environ.get(ENV_VAR):
        places.append(_Place(f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser(), True))
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    places.append(_Place("Keras cache", keras_home / "datasets" / "fashion-mnist"))
    places.append(_Place("Debian package dataset-fashion-mnist", DEBIAN_DIR))
    return places


def _read_arrays(options: dict[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    looked: list[str] = []
    for place in _places(options):
        missing = [s for s in FILES.values() if _find_file(place.path, s) is None]
        if missing:
            state = (
                "no such directory" if not place.path.is_dir() else f"missing {', '.join(missing)}"
            )
            looked.append(f"{place.path} ({place.what}): {state}")
            if place.named_by_user:
                # Say so rather than quietly reading another copy than the one the user named.
                log.warning("Fashion-MNIST is not in %s (%s): %s", place.path, place.what, state)
            continue
        # A corrupt file raises here, not falling through: a silent re-download would hide it.
        return read_idx_dir(place.path), str(place.path)
    if not options.get("download", True):
        looked.append("Keras download: disabled by the dataset option download: false")
    else:
        try:
            return _download(), "keras.datasets.fashion_mnist"
        except Exception as exc:  # any failure of the download is reported with the places
            looked.append(
                f"Keras download (keras.datasets.fashion_mnist.load_data): "
                f"{type(exc).__name__}: {exc}"
            )
    raise DataError(
        "Fashion-MNIST not found. Looked in:\n  - " + "\n  - ".join(looked) + "\n" + HOW_TO_GET
    )


def _download() -> dict[str, np.ndarray]:
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    return {
        "train_images": np.asarray(x_train, dtype=np.uint8),
        "train_labels": np.asarray(y_train, dtype=np.int64),
        "test_images": np.asarray(x_test, dtype=np.uint8),
        "test_labels": np.asarray(y_test, dtype=np.int64),
    }


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array in one IDX file, after checking its magic number, shape and size."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read {path}: {exc} (a corrupt or truncated download? delete "
            "it and get it again)"
        ) from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    kind = "images" if magic == IMAGE_MAGIC else "labels"
    if len(raw) < header:
        raise DataError(
            f"{path} is corrupt: {len(raw)} bytes, shorter than the {header}-byte "
            f"IDX header of {kind}"
        )
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} is not an IDX file of {kind}: magic number {found:#010x}, "
            f"expected {magic:#010x}"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{path} holds images of {shape[1]}x{shape[2]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path} is corrupt: {len(raw)} bytes, but its header announces "
            f"{shape[0]} {kind} ({expected} bytes)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
