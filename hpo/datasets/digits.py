"""scikit-learn's bundled handwritten digits: 1,797 images of 8x8, 10 classes, no download.

Small enough to train a CNN for an epoch in a second, which makes it the data set of the fast
tests and of ``search_spaces/image_cnn_digits.yaml``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hpo.datasets._base import Dataset, Split, split_indices, take_subset
from hpo.inputs import InputSpec

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec

CLASS_NAMES = [str(d) for d in range(10)]
_MAX_PIXEL = 16.0  # load_digits stores 4-bit intensities, 0..16


def load(spec: DatasetSpec) -> Dataset:
    """Digits as float32 images in [0, 1] of shape (8, 8, 1) with stratified, seeded splits.

    ``validation_fraction`` and ``test_fraction`` of every class go to validation and test;
    ``subset`` then caps the training examples (seeded), leaving validation and test as they are,
    so that studies with different subsets are compared on the same held-out data.

    Example:
        >>> from hpo.spaces import DatasetSpec
        >>> data = load(DatasetSpec(name="digits", subset=500))
        >>> data.input_shape, len(data.train), len(data.validation), len(data.test)
        ((8, 8, 1), 500, 179, 359)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / _MAX_PIXEL).reshape(-1, 8, 8, 1)
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, va, te = split_indices(
        len(y), spec.validation_fraction, spec.test_fraction, spec.seed, labels=y
    )
    train = take_subset(Split(x[tr], y[tr]), spec.subset, spec.seed)
    return Dataset(
        name="digits",
        task="classification",
        train=train,
        validation=Split(x[va], y[va]),
        test=Split(x[te], y[te]),
        num_classes=10,
        class_names=list(CLASS_NAMES),
        meta={"source": "sklearn.datasets.load_digits"},
        inputs=InputSpec.image(
            (8, 8),
            scale=1 / _MAX_PIXEL,
            channels=1,
            description="images of 8x8 pixels, values 0 to 16 as sklearn's load_digits gives "
            "them (its 64 columns, reshaped)",
        ),
    )
