"""What a build made: its members with their weights, and the result it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpo.storage import strip_password


@dataclass
class Member:
    """A trial in an ensemble, with its weight."""

    study: str
    trial: int
    run_id: str
    family: str
    weight: float
    objective: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "trial": self.trial,
            "run_id": self.run_id,
            "family": self.family,
            "weight": self.weight,
            "objective": self.objective,
        }


@dataclass
class RegisteredVersion:
    """Where a built or refit model was recorded, and whether it exports: what every
    registered version's result has (:class:`EnsembleResult`, :class:`~hpo.RefitResult`)."""

    name: str
    version: int | None
    run_id: str
    experiment_id: str
    tracking_uri: str
    exportable: bool = field(default=True, kw_only=True)
    export_problem: str | None = field(default=None, kw_only=True)
    model_uri: str | None = field(default=None, kw_only=True)

    def _where(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "model_uri": self.model_uri,
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": strip_password(self.tracking_uri),  # ensemble.json: no secret
        }

    def _export(self) -> dict[str, Any]:
        return {"exportable": self.exportable, "export_problem": self.export_problem}


@dataclass
class EnsembleResult(RegisteredVersion):
    """What :func:`build_ensemble` built and where it recorded it."""

    method: str
    metric: str
    size: int
    top: int
    seed: int | None
    task: str
    studies: list[str]
    members: list[Member]
    metrics: dict[str, dict[str, dict[str, float]]]
    candidates: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._where(),
            "method": self.method,
            "metric": self.metric,
            "size": self.size,
            "top": self.top,
            "seed": self.seed,
            "task": self.task,
            "studies": self.studies,
            "members": [m.to_dict() for m in self.members],
            "metrics": self.metrics,
            "candidates": self.candidates,
            "skipped": self.skipped,
            **self._export(),
        }
