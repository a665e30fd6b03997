"""What a worker and its trial process send each other: a trial to run, a study to finalize,
and how the trial ended. No Keras here: the worker process imports this module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpo.errors import HpoError


@dataclass
class TrialTask:
    """What a worker hands to its trial process."""

    storage_url: str
    config_json: str
    trial_id: int
    trial_number: int
    params: dict[str, Any]


@dataclass
class FinalizeTask:
    """Asks a trial process to end a finished study's MLflow run (see ``finalize_study``)."""

    storage_url: str
    config_json: str


@dataclass
class TrialResult:
    """How a trial ended: state COMPLETE, PRUNED or FAIL, with values or a reason."""

    state: str
    values: list[float] | None = None
    reason: str | None = None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # The study's set-up failed (data, family import, sampler), not this trial's parameters:
    # the worker counts these in a row and marks the study broken (see hpo.storage.studies).
    setup_failed: bool = False
    # The space's constraints this trial broke (described); None: the space has none, or the
    # trial failed before they could be checked.
    violated: list[str] | None = None
    # Stopped after its model was built, for a constraint known before training.
    untrained: bool = False


class TrialFailedError(HpoError):
    """The trial cannot go on (non-finite loss, missing metric); the message says why."""


class TrialSetupError(HpoError):
    """The study's set-up failed in the trial process (its data, its family's import)."""
