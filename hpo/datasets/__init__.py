"""Datasets by name. Loaders read local copies first and download only as a last resort.

Example:
    >>> from hpo.datasets import DATASETS
    >>> "digits" in DATASETS
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from hpo._registry import LazyRegistry
from hpo.catalog import DATASETS as _DATASETS
from hpo.catalog import is_user_target
from hpo.datasets._base import DataError, Dataset, Split, Task, split_indices, take_subset
from hpo.datasets._user import from_arrays, load_user_dataset

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec


class DatasetLoader(Protocol):
    def __call__(self, spec: DatasetSpec) -> Dataset: ...


#: Built-in datasets by name (their names live in :mod:`hpo.catalog`).
DATASETS: LazyRegistry[DatasetLoader] = _DATASETS


def load_dataset(spec: DatasetSpec) -> Dataset:
    """Load the dataset a study names, with its fixed seeded splits.

    ``module:attribute`` names a user's loader of arrays (see :func:`from_arrays`).
    """
    if is_user_target(spec.name):
        return load_user_dataset(spec)
    return DATASETS.get(spec.name)(spec)


class DatasetCache:
    """Loaded datasets by spec, so that a process loads each one once.

    Args:
        keep: how many datasets to hold at once (None: all); when a new one is loaded past
            that, the ones held are dropped first (a trial process keeps one in memory).

    Example:
        >>> from hpo.spaces import DatasetSpec
        >>> cache = DatasetCache(keep=1)
        >>> spec = DatasetSpec(name="digits")
        >>> cache.get(spec) is cache.get(spec)
        True
    """

    def __init__(self, keep: int | None = None) -> None:
        self.keep = keep
        self._loaded: dict[str, Dataset] = {}

    def get(self, spec: DatasetSpec) -> Dataset:
        key = spec.model_dump_json()
        if key not in self._loaded:
            if self.keep is not None and len(self._loaded) >= self.keep:
                self._loaded.clear()  # drop before loading: never two large sets at once
            self._loaded[key] = load_dataset(spec)
        return self._loaded[key]


__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "DatasetCache",
    "DatasetLoader",
    "Split",
    "Task",
    "from_arrays",
    "load_dataset",
    "split_indices",
    "take_subset",
]
