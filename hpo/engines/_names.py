"""The algorithm and pruner names a space file or the CLI may use (they live in
:mod:`hpo.catalog`, which the space validator reads without importing the engines)."""

from hpo.catalog import ALGORITHMS, PRUNERS, AlgorithmInfo

__all__ = ["ALGORITHMS", "PRUNERS", "AlgorithmInfo"]
