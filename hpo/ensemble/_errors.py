"""Errors and warnings of ensembles."""

from __future__ import annotations

from hpo.errors import UsageError


class EnsembleError(UsageError, ValueError):
    """An ensemble cannot be built, found or exported as asked; the message says why."""


class RegistryUnavailableError(EnsembleError):
    """The MLflow server did not answer, so an ensemble could not be registered.

    Registry writes are never queued in the outbox: the build fails instead (CLI exit 1),
    saying what was and was not recorded.
    """

    exit_code = 1


class EnsembleWarning(UserWarning):
    """A candidate was skipped (its message names study, trial and MLflow run)."""
