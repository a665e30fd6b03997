"""Images from a trained GAN generator: latent interpolation and class latents for arithmetic.

The grid and concept-vector arithmetic are those of :mod:`hpo.families.vae_sampling` (a
generator maps latent vectors to [0, 1] images, as a VAE's decoder does); what a GAN adds is
below.

Example:
    >>> z = interpolation_latents(np.zeros(2), np.ones(2), 3)
    >>> z.tolist()
    [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def interpolation_latents(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` latent vectors on the straight line from ``z0`` to ``z1`` (both ends included)."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return ((1.0 - t) * np.asarray(z0, np.float32) + t * np.asarray(z1, np.float32)).astype(
        np.float32
    )


def interpolation_grid(generator: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows, each ``n`` images from one random latent vector to another, shape
    ``(n, n, height, width, channels)``."""
    from hpo.families.vae_sampling import decode, latent_dim

    d = latent_dim(generator)
    ends = rng.standard_normal((n, 2, d)).astype(np.float32)
    z = np.concatenate([interpolation_latents(a, b, n) for a, b in ends])
    images = decode(generator, z)
    return images.reshape(n, n, *images.shape[1:])


def class_latents(stored: Mapping[str, Sequence[Sequence[float]]], name: str, n: int) -> np.ndarray:
    """``n`` stored latent vectors whose samples the classifier assigned to class ``name``
    (repeated in turn when fewer are stored)."""
    rows = np.asarray(stored[name], np.float32)
    return rows[np.arange(n) % len(rows)]


__all__ = ["class_latents", "interpolation_grid", "interpolation_latents"]
