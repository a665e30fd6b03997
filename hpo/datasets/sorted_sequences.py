"""A synthetic binary task: is this integer sequence sorted (non-decreasing)?

Generated from the dataset seed, no files. Half the sequences are sorted (label 1) and half are
not (label 0). Of the unsorted ones, a fraction are **hard negatives**: a sorted sequence with
one adjacent pair of unequal values swapped, so the only evidence is a single local inversion
anywhere in the sequence; the rest are uniformly random sequences (rarely close to sorted).
Sorted, hard and easy sequences draw their values the same way (uniform over the range), so
value statistics alone do not give the label away.

Options (``dataset: {name: sorted_sequences, options: {...}}``):

* ``n`` [20000]: examples in all (train + validation + test);
* ``min_length`` [10], ``max_length`` [20]: lengths, uniform in that range (both included);
* ``low`` [0], ``high`` [99]: values, uniform integers in that range (both included);
* ``hard_negative_fraction`` [0.5]: the share of the unsorted sequences that are one adjacent
  swap away from sorted.

Inputs are **tokens**: value ``v`` is stored as ``v - low + 1``, so tokens run from 1 to
``high - low + 1`` and 0 is padding; every sequence is right-padded to ``max_length``. ``meta``
holds ``vocab_size`` (``high - low + 2``, padding included), ``pad`` (0), ``low``, ``high``,
``min_length`` and ``max_length``; per split, ``meta["kinds"]`` says which examples are
``sorted``, ``hard`` or ``easy``.

Saved models take the values themselves (integers from ``low`` to ``high``), right-padded to
``max_length`` with ``low - 1`` (-1 for the default range): a ``Rescaling`` layer inside them
makes the tokens (:mod:`hpo.inputs`).

Every sequence is generated once and appears once: train, validation and test are disjoint
(stratified by kind, so each split has the same mix of sorted, hard and easy examples).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.datasets._base import DataError, Dataset, Split, split_indices, take_subset
from hpo.inputs import InputSpec

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec

DEFAULTS: dict[str, Any] = {
    "n": 20000,
    "min_length": 10,
    "max_length": 20,
    "low": 0,
    "high": 99,
    "hard_negative_fraction": 0.5,
}
PAD = 0
KINDS = ("easy", "hard", "sorted")  # kind codes 0, 1, 2 in meta["kinds"]
_EASY, _HARD, _SORTED = range(3)
_MAX_TRIES = 50  # draws per wanted sequence before the space is declared too small


def load(spec: DatasetSpec) -> Dataset:
    """Generate the sequences of ``spec.options`` with ``spec.seed`` and split them.

    ``validation_fraction`` and ``test_fraction`` of each kind go to validation and test;
    ``subset`` then caps the training examples (seeded).

    Raises:
        DataError: an unknown option or an impossible setting (e.g. ``min_length`` below 2,
            ``low`` not below ``high``, or more examples than distinct sequences exist).

    Example:
        >>> from hpo.spaces import DatasetSpec
        >>> data = load(DatasetSpec(name="sorted_sequences", options={"n": 1000}))
        >>> data.task, data.input_shape, len(data.train), int(data.train.y.sum())
        ('binary', (20,), 700, 350)
    """
    opts = _options(spec.options)
    x, y, kinds = generate(
        opts["n"],
        opts["min_length"],
        opts["max_length"],
        opts["low"],
        opts["high"],
        opts["hard_negative_fraction"],
        spec.seed,
    )
    tr, va, te = split_indices(
        len(y), spec.validation_fraction, spec.test_fraction, spec.seed, labels=kinds
    )
    if min(len(tr), len(va), len(te)) == 0:
        raise DataError(
            f"dataset 'sorted_sequences': n={opts['n']} is too small to split into train, "
            "validation and test; raise the option n"
        )
    # take_subset over the index array itself: the same seeded choice, and the kinds follow.
    train_idx = take_subset(Split(tr, y[tr]), spec.subset, spec.seed).x
    train = Split(x[train_idx], y[train_idx])
    return Dataset(
        name="sorted_sequences",
        task="binary",
        train=train,
        validation=Split(x[va], y[va]),
        test=Split(x[te], y[te]),
        num_classes=2,
        class_names=["unsorted", "sorted"],
        meta={
            **opts,
            "vocab_size": opts["high"] - opts["low"] + 2,
            "pad": PAD,
            "kinds": {
                "names": list(KINDS),
                "train": kinds[train_idx].tolist(),
                "validation": kinds[va].tolist(),
                "test": kinds[te].tolist(),
            },
        },
        inputs=InputSpec.sequence(opts["max_length"], low=opts["low"]),
    )


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise DataError(
            f"dataset 'sorted_sequences': unknown option {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(DEFAULTS)}"
        )
    out = {**DEFAULTS, **options}
    for key in ("n", "min_length", "max_length", "low", "high"):
        if isinstance(out[key], bool) or not isinstance(out[key], int):
            raise DataError(
                f"dataset 'sorted_sequences': option {key} must be an integer, got {out[key]!r}"
            )
    fraction = out["hard_negative_fraction"]
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not 0 <= fraction <= 1
    ):
        raise DataError(
            "dataset 'sorted_sequences': option hard_negative_fraction must be a number from 0 "
            f"to 1, got {fraction!r}"
        )
    out["hard_negative_fraction"] = float(fraction)
    if not 2 <= out["min_length"] <= out["max_length"]:
        raise DataError(
            "dataset 'sorted_sequences': need 2 <= min_length <= max_length (a one-element "
            f"sequence is always sorted), got min_length={out['min_length']}, "
            f"max_length={out['max_length']}"
        )
    if out["low"] >= out["high"]:
        raise DataError(
            f"dataset 'sorted_sequences': need low < high, got low={out['low']}, high={out['high']}"
        )
    if out["n"] < 10:
        raise DataError(f"dataset 'sorted_sequences': option n must be at least 10, got {out['n']}")
    return out


def is_sorted(seq: np.ndarray) -> bool:
    """Whether ``seq`` is non-decreasing.

    Example:
        >>> is_sorted(np.array([1, 2, 2, 5])), is_sorted(np.array([1, 3, 2]))
        (True, False)
    """
    return bool(np.all(seq[1:] >= seq[:-1]))


def generate(
    n: int,
    min_length: int,
    max_length: int,
    low: int,
    high: int,
    hard_negative_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` distinct token sequences, their labels (1 = sorted) and kinds (see :data:`KINDS`).

    Exactly ``n // 2`` sequences are sorted; of the others, ``round(fraction * (n - n // 2))``
    are hard negatives. The order is shuffled. Values are drawn uniformly from ``[low, high]``
    and stored as tokens ``value - low + 1``; 0 pads up to ``max_length``.

    Example:
        >>> x, y, kinds = generate(10, 3, 5, 0, 9, 0.5, seed=0)
        >>> x.shape, int(y.sum()), sorted(np.bincount(kinds).tolist())
        ((10, 5), 5, [2, 3, 5])
    """
    rng = np.random.default_rng(seed)
    n_sorted = n // 2
    n_hard = round(hard_negative_fraction * (n - n_sorted))
    plan = np.array([_SORTED] * n_sorted + [_HARD] * n_hard + [_EASY] * (n - n_sorted - n_hard))
    plan = plan[rng.permutation(n)]
    x = np.full((n, max_length), PAD, dtype=np.int32)
    seen: set[bytes] = set()
    tries = 0
    for i, kind in enumerate(plan):
        while True:
            tries += 1
            if tries > _MAX_TRIES * n:
                raise DataError(
                    f"dataset 'sorted_sequences': could not draw {n} distinct sequences of "
                    f"lengths {min_length}-{max_length} over values {low}-{high}; widen the "
                    "value range or the lengths, or lower n"
                )
            seq = _draw(rng, int(kind), min_length, max_length, low, high)
            if seq is None:
                continue
            key = seq.tobytes()
            if key not in seen:
                seen.add(key)
                break
        x[i, : len(seq)] = seq - low + 1
    y = (plan == _SORTED).astype(np.int64)
    return x, y, plan.astype(np.int64)


def _draw(
    rng: np.random.Generator, kind: int, min_length: int, max_length: int, low: int, high: int
) -> np.ndarray | None:
    """One sequence of ``kind``, or None when this draw cannot make one (redraw)."""
    length = int(rng.integers(min_length, max_length, endpoint=True))
    seq = rng.integers(low, high, size=length, endpoint=True).astype(np.int64)
    if kind == _EASY:
        return None if is_sorted(seq) else seq
    seq.sort()
    if kind == _SORTED:
        return seq
    # Only a swap of two unequal neighbours unsorts the sequence; all-equal draws are redrawn.
    ascents = np.flatnonzero(seq[1:] > seq[:-1])
    if len(ascents) == 0:
        return None
    j = int(rng.choice(ascents))
    seq[j], seq[j + 1] = seq[j + 1], seq[j]
    return seq
