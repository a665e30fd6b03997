"""Datasets by name. Loaders read local copies first and download only as a last resort.

Example:
    >>> from hpo.datasets import DATASETS
    >>> "digits" in DATASETS
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from hpo._registry import LazyRegistry
from hpo.datasets._base import DataError, Dataset, Split, Task, split_indices, take_subset

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec


class DatasetLoader(Protocol):
    def __call__(self, spec: DatasetSpec) -> Dataset: ...


DATASETS: LazyRegistry[DatasetLoader] = LazyRegistry(
    "dataset",
    {
        "fashion_mnist": "hpo.datasets.fashion_mnist:load",
        "digits": "hpo.datasets.digits:load",
        "tabular": "hpo.datasets.tabular:load",
        "reuters": "hpo.datasets.reuters:load",
        "text_classification": "hpo.datasets.text_classification:load",
        "shakespeare": "hpo.datasets.text_corpus:load_shakespeare",
        "text_corpus": "hpo.datasets.text_corpus:load",
        "sorted_sequences": "hpo.datasets.sorted_sequences:load",
    },
)


def load_dataset(spec: DatasetSpec) -> Dataset:
    """Load the dataset a study names, with its fixed seeded splits."""
    return DATASETS.get(spec.name)(spec)


__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "DatasetLoader",
    "Split",
    "Task",
    "load_dataset",
    "split_indices",
    "take_subset",
]
