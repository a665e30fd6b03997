"""Generate images with a trained VAE's decoder: sample grids, latent traversals, concept vectors.

Pure functions over a loaded decoder (any Keras model mapping ``(n, latent_dim)`` latent vectors
to ``(n, height, width, channels)`` images in [0, 1], e.g. ``model.get_layer("decoder")`` of a
``vae`` family model) and NumPy arrays; randomness comes only from the ``rng`` passed in. Image
arrays keep a grid layout ``(rows, cols, height, width, channels)`` until :func:`tile` turns
them into one picture and :func:`save_png` writes it.

Concept vectors (the "smile vector" of White, 2016): the mean latent code of class ``a`` minus
that of class ``b`` points from ``b`` to ``a`` in latent space; adding ``alpha`` times it to
codes of class ``b`` moves their decoded images towards class ``a``.

Example:
    >>> means = {"Sneaker": [1.0, 0.0], "Sandal": [0.0, 2.0]}
    >>> concept_vector(means, "Sneaker", "Sandal")
    array([ 1., -2.], dtype=float32)
    >>> tile(np.zeros((2, 3, 4, 4, 1)), pad=1).shape  # 2 rows, 3 columns of 4x4 images
    (11, 16)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpo.errors import UsageError

# Decoding in chunks keeps memory flat for large grids.
_CHUNK = 256


class UnknownClassError(UsageError, ValueError):
    """A class name that the model's stored class means do not have."""


def latent_dim(decoder: Any) -> int:
    """Size of the decoder's latent input."""
    return int(decoder.input_shape[-1])


def decode(decoder: Any, z: np.ndarray) -> np.ndarray:
    """Images ``(n, height, width, channels)`` in [0, 1] for latent vectors ``z`` of shape (n, d).

    Raises:
        ValueError: ``z`` is not (n, latent_dim).
    """
    import keras

    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != latent_dim(decoder):
        raise ValueError(
            f"latent vectors must have shape (n, {latent_dim(decoder)}), got {z.shape}"
        )
    parts = [
        keras.ops.convert_to_numpy(decoder(z[i : i + _CHUNK], training=False))
        for i in range(0, len(z), _CHUNK)
    ]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0,), np.float32)


def sample_grid(decoder: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` x ``n`` images decoded from ``z ~ N(0, I)``, shape ``(n, n, height, width, ch)``.

    Example:
        >>> images = sample_grid(decoder, 8, np.random.default_rng(0))  # doctest: +SKIP
        >>> images.shape  # doctest: +SKIP
        (8, 8, 28, 28, 1)
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    z = rng.standard_normal((n * n, latent_dim(decoder))).astype(np.float32)
    images = decode(decoder, z)
    return images.reshape(n, n, *images.shape[1:])


def latent_traversal(
    decoder: Any,
    base_z: np.ndarray | Sequence[float],
    dim: int,
    values: np.ndarray | Sequence[float],
) -> np.ndarray:
    """Images of ``base_z`` with latent dimension ``dim`` set to each of ``values``.

    Returns shape ``(len(values), height, width, channels)``: what that one dimension encodes.

    Example:
        >>> row = latent_traversal(decoder, np.zeros(2), 0, np.linspace(-3, 3, 7))  # doctest: +SKIP
        >>> row.shape  # doctest: +SKIP
        (7, 28, 28, 1)
    """
    base = np.asarray(base_z, dtype=np.float32).reshape(-1)
    d = latent_dim(decoder)
    if base.shape != (d,):
        raise ValueError(f"base_z must have {d} values, got {base.size}")
    if not 0 <= dim < d:
        raise ValueError(f"dim must be in 0..{d - 1}, got {dim}")
    z = np.repeat(base[np.newaxis], len(values), axis=0)
    z[:, dim] = np.asarray(values, dtype=np.float32)
    return decode(decoder, z)


def concept_vector(class_means: Mapping[str, Sequence[float]], a: str, b: str) -> np.ndarray:
    """Mean latent code of class ``a`` minus that of class ``b`` (float32).

    Raises:
        UnknownClassError: ``a`` or ``b`` has no mean; the message lists the known classes.

    Example:
        >>> concept_vector({"x": [3.0, 1.0], "y": [1.0, 1.0]}, "x", "y")
        array([2., 0.], dtype=float32)
    """
    for name in (a, b):
        if name not in class_means:
            raise UnknownClassError(
                f"unknown class {name!r}; known classes: {', '.join(map(repr, class_means))}"
            )
    return np.asarray(class_means[a], dtype=np.float32) - np.asarray(
        class_means[b], dtype=np.float32
    )


def apply_concept(
    decoder: Any, z: np.ndarray, vector: np.ndarray, alphas: np.ndarray | Sequence[float]
) -> np.ndarray:
    """Decode ``z + alpha * vector`` for every code in ``z`` and every ``alpha``.

    Returns shape ``(len(z), len(alphas), height, width, channels)``: one row per code, one
    column per alpha (``alpha = 0`` is the code itself).

    Example:
        >>> rows = apply_concept(decoder, z, v, [0, 0.5, 1])  # doctest: +SKIP
        >>> rows.shape  # doctest: +SKIP
        (8, 3, 28, 28, 1)
    """
    z = np.asarray(z, dtype=np.float32)
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if z.ndim != 2 or vector.shape != (z.shape[1],):
        raise ValueError(f"z must be (n, d) and vector (d,), got {z.shape} and {vector.shape}")
    alphas_arr = np.asarray(alphas, dtype=np.float32)
    shifted = z[:, np.newaxis, :] + alphas_arr[np.newaxis, :, np.newaxis] * vector
    images = decode(decoder, shifted.reshape(-1, z.shape[1]))
    return images.reshape(len(z), len(alphas_arr), *images.shape[1:])


def class_samples(
    class_means: Mapping[str, Sequence[float]],
    class_stds: Mapping[str, Sequence[float]] | None,
    name: str,
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``n`` latent codes around class ``name``: ``mean + std * eps`` (std 0 when unknown).

    Example:
        >>> class_samples({"a": [1.0, 2.0]}, None, "a", 2, np.random.default_rng(0))
        array([[1., 2.],
               [1., 2.]], dtype=float32)
    """
    if name not in class_means:
        raise UnknownClassError(
            f"unknown class {name!r}; known classes: {', '.join(map(repr, class_means))}"
        )
    mean = np.asarray(class_means[name], dtype=np.float32)
    std = (
        np.asarray(class_stds[name], dtype=np.float32)
        if class_stds and name in class_stds
        else np.zeros_like(mean)
    )
    eps = rng.standard_normal((n, mean.size)).astype(np.float32)
    return (mean + std * eps).astype(np.float32)


def parse_arithmetic(spec: str, class_names: Sequence[str]) -> tuple[str, str]:
    """Split ``"CLASS_A-CLASS_B"`` into two known class names.

    Class names may hold hyphens themselves (Fashion-MNIST's ``T-shirt/top``): every hyphen is
    tried and the one split where both sides are known classes wins. A class may also be
    given by its index (``"7-5"``); names are matched case-insensitively.

    Raises:
        UnknownClassError: no split (or more than one) gives two known classes.

    Example:
        >>> parse_arithmetic("t-shirt/top-Trouser", ["T-shirt/top", "Trouser"])
        ('T-shirt/top', 'Trouser')
        >>> parse_arithmetic("1-0", ["T-shirt/top", "Trouser"])
        ('Trouser', 'T-shirt/top')
    """
    names = list(class_names)
    known = ", ".join(map(repr, names)) or "none (the model stored no class names)"

    def lookup(part: str) -> str | None:
        part = part.strip()
        for name in names:
            if name.lower() == part.lower():
                return name
        if part.isdigit() and int(part) < len(names):
            return names[int(part)]
        return None

    splits = {
        (a, b)
        for i, ch in enumerate(spec)
        if ch == "-"
        for a, b in [(lookup(spec[:i]), lookup(spec[i + 1 :]))]
        if a is not None and b is not None
    }
    if len(splits) == 1:
        return next(iter(splits))
    if not splits:
        raise UnknownClassError(
            f"--arithmetic {spec!r}: expected CLASS_A-CLASS_B with two known classes (names "
            f"or indices); known classes: {known}"
        )
    options = " or ".join(f"{a}-{b}" for a, b in sorted(splits))
    raise UnknownClassError(
        f"--arithmetic {spec!r} is ambiguous ({options}); give the classes by index instead"
    )


def tile(grid: np.ndarray, pad: int = 1, scale: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """One picture from a ``(rows, cols, height, width, channels)`` grid of images.

    Images are separated by ``pad`` pixels of ``pad_value`` (white by default) and enlarged
    ``scale`` times (nearest neighbour, so small 8x8 images stay crisp). One channel gives a 2-D
    array; three or four give (height, width, channels).

    Example:
        >>> tile(np.zeros((1, 2, 2, 2, 1)), pad=1, scale=2).shape
        (6, 11)
    """
    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim != 5:
        raise ValueError(f"expected (rows, cols, height, width, channels), got {grid.shape}")
    rows, cols, h, w, c = grid.shape
    if c not in (1, 3, 4):
        raise ValueError(f"images need 1, 3 or 4 channels to be shown, got {c}")
    if scale > 1:
        grid = grid.repeat(scale, axis=2).repeat(scale, axis=3)
        h, w = h * scale, w * scale
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.float32)
    for r in range(rows):
        for k in range(cols):
            top, left = pad + r * (h + pad), pad + k * (w + pad)
            out[top : top + h, left : left + w] = grid[r, k]
    out = np.clip(out, 0.0, 1.0)
    return out[..., 0] if c == 1 else out


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a [0, 1] image (2-D grayscale or (h, w, 3|4) colour) as a PNG, pixel for pixel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 2:
        plt.imsave(path, image, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    else:
        plt.imsave(path, image, format="png")
    return path


__all__ = [
    "UnknownClassError",
    "apply_concept",
    "class_samples",
    "concept_vector",
    "decode",
    "latent_dim",
    "latent_traversal",
    "parse_arithmetic",
    "sample_grid",
    "save_png",
    "tile",
]
