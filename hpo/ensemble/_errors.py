"""Errors and warnings of ensembles."""

from __future__ import annotations


class EnsembleError(ValueError):
    """An ensemble cannot be built, found or exported as asked; the message says why."""


class EnsembleWarning(UserWarning):
    """A candidate was skipped (its message names study, trial and MLflow run)."""
