"""Fitting ensemble weights on validation predictions: greedy selection, simplex fit, average.

These functions know nothing of studies or MLflow: they take candidates' validation
predictions (or only what the loss needs of them) and return one weight per candidate,
non-negative and summing to 1. Which candidates to offer them is decided elsewhere
(:mod:`hpo.ensemble._candidates`), as in auto-sklearn.

Example:
    >>> import numpy as np
    >>> from hpo.ensemble import nll
    >>> p_true = np.array([[0.9, 0.2], [0.2, 0.9], [0.9, 0.9]])  # 3 examples, 2 candidates
    >>> caruana_weights(lambda i: p_true[:, i], 2, size=2, loss=nll).tolist()
    [0.5, 0.5]
    >>> fit_simplex_weights(p_true).round(3).tolist()
    [0.5, 0.5]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hpo.ensemble._metrics import EPS

METHODS = ("caruana", "weights", "average")
# Weights this small are numerical dust of the optimizer, not a decision: they are dropped.
MIN_WEIGHT = 1e-4
# Losses closer than this are ties, broken by the seeded random generator.
TIE_TOLERANCE = 1e-12


def caruana_selection(
    load: Callable[[int], np.ndarray],
    n_candidates: int,
    size: int,
    loss: Callable[[np.ndarray], float],
    seed: int | None = 0,
) -> list[int]:
    """Greedy forward selection with replacement (Caruana et al., 2004).

    Starting from an empty ensemble, each of ``size`` rounds adds the candidate whose addition
    gives the lowest ``loss`` of the averaged predictions; a candidate may be added several
    times. Ties are broken at random with ``seed``. Only the running sum of the selected
    predictions is kept, and ``load(i)`` is called for every candidate in every round, so
    predictions can be streamed from disk.

    Args:
        load: candidate ``i``'s validation predictions (any array the loss understands).
        n_candidates: how many candidates ``load`` serves.
        size: number of rounds (the ensemble's size, counting repeats).
        loss: loss of averaged predictions; lower is better.
        seed: seed of the tie-breaking generator.

    Returns:
        The candidate chosen in each round, in order.

    Example:
        >>> import numpy as np
        >>> from hpo.ensemble import nll
        >>> p = [np.array([0.9, 0.1]), np.array([0.1, 0.9]), np.array([0.5, 0.5])]
        >>> caruana_selection(lambda i: p[i], 3, size=2, loss=nll)
        [2, 2]
    """
    if n_candidates < 1:
        raise ValueError("greedy selection needs at least one candidate")
    if size < 1:
        raise ValueError(f"the ensemble size must be at least 1, got {size}")
    rng = np.random.default_rng(seed)
    running: np.ndarray | None = None
    chosen: list[int] = []
    for k in range(size):
        losses = np.empty(n_candidates)
        for i in range(n_candidates):
            pred = load(i)
            trial = pred if running is None else (running + pred)
            losses[i] = loss(trial / np.float32(k + 1))
            del pred, trial
        best = np.flatnonzero(losses <= losses.min() + TIE_TOLERANCE)
        pick = int(best[0] if len(best) == 1 else rng.choice(best))
        chosen.append(pick)
        pred = load(pick).astype(np.float32, copy=True)
        running = pred if running is None else running + pred
    return chosen


def counts_to_weights(chosen: list[int], n_candidates: int) -> np.ndarray:
    """Weights from a greedy selection: how often each candidate was chosen, over the size.

    Example:
        >>> counts_to_weights([2, 0, 2, 2], 3).tolist()
        [0.25, 0.0, 0.75]
    """
    counts = np.bincount(np.asarray(chosen, dtype=np.int64), minlength=n_candidates)
    return counts.astype(np.float64) / len(chosen)


def caruana_weights(
    load: Callable[[int], np.ndarray],
    n_candidates: int,
    size: int,
    loss: Callable[[np.ndarray], float],
    seed: int | None = 0,
) -> np.ndarray:
    """:func:`caruana_selection` turned into weights (multiples of ``1 / size``)."""
    return counts_to_weights(caruana_selection(load, n_candidates, size, loss, seed), n_candidates)


def fit_simplex_weights(p_true: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """Weights on the simplex minimizing the log loss of the weighted average.

    The log loss of a weighted average of probabilities, ``-mean(log(P @ w))``, depends only
    on each candidate's probability of the true class (``p_true``, shape ``(examples,
    candidates)``) and is convex in ``w``, so SLSQP with the bounds ``w >= 0`` and the
    constraint ``sum(w) = 1`` finds the global optimum. Weights under ``MIN_WEIGHT`` are
    dropped and the rest renormalized.

    Example:
        >>> import numpy as np
        >>> fit_simplex_weights(np.array([[0.9, 0.5], [0.8, 0.5]])).round(3).tolist()
        [1.0, 0.0]
    """
    from scipy.optimize import minimize

    p = np.clip(np.asarray(p_true, dtype=np.float64), EPS, 1.0)
    m = p.shape[1]
    if m == 1:
        return np.ones(1)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        mix = np.maximum(p @ w, EPS)
        return float(-np.mean(np.log(mix))), -(p / mix[:, None]).mean(axis=0)

    result = minimize(
        objective,
        np.full(m, 1.0 / m),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)}],
        options={"maxiter": max_iter, "ftol": 1e-12},
    )
    return _normalize(np.asarray(result.x))


def average_weights(n_candidates: int, size: int) -> np.ndarray:
    """Uniform weights over the first ``size`` candidates (the best ones).

    Example:
        >>> average_weights(4, 2).tolist()
        [0.5, 0.5, 0.0, 0.0]
    """
    k = max(1, min(size, n_candidates))
    w = np.zeros(n_candidates)
    w[:k] = 1.0 / k
    return w


def _normalize(w: np.ndarray) -> np.ndarray:
    w = np.where(w < MIN_WEIGHT, 0.0, w)
    if w.sum() <= 0:
        raise ValueError("the weight fit ended with every weight at zero")
    return np.asarray(w / w.sum())
