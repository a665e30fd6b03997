"""Choosing ensemble candidates: the best feasible COMPLETE trials of one or more studies.

Candidates are ranked by their validation objective, each study's direction respected; trials
whose stored predictions, model or dataset summary are missing or unreadable are skipped with a
warning that names them, and the next best takes their place. Studies must share their dataset
(same task, same validation and test targets: the ``fingerprint`` of ``dataset.json``); their
model families may differ.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.ensemble._errors import EnsembleError, EnsembleWarning
from hpo.ensemble._metrics import SUPPORTED_TASKS, nll, true_class_probs
from hpo.ensemble._predictions import PredictionSet, check_predictions, reference_of
from hpo.tracking._outbox import is_placeholder
from hpo.tracking.artifacts import DATASET_FILE, MODEL_FILE, PREDICTIONS_FILE

if TYPE_CHECKING:
    from hpo.tracking import TrackingClient as MlflowClient

REQUIRED = (MODEL_FILE, PREDICTIONS_FILE, DATASET_FILE)


@dataclass
class StudyInfo:
    """What an ensemble needs to know of a study."""

    name: str
    metric: str
    direction: str
    family: str
    tracking_uri: str | None
    experiment_id: str | None
    parent_run_id: str | None
    dataset: dict[str, Any] = field(default_factory=dict)
    spec: Any = None  # its StudySpec: the dataset and family its test predictions need


@dataclass
class Candidate:
    """One COMPLETE trial offered to the ensemble."""

    study: str
    trial_number: int
    run_id: str
    value: float
    metric: str
    direction: str
    family: str
    predictions: Path | None = None
    artifacts: frozenset[str] | None = None  # its run's file names, as fetched (None: unread)
    summary: dict[str, Any] | None = None  # its dataset.json, as fetched

    @property
    def label(self) -> str:
        return f"study {self.study!r} trial {self.trial_number} (run {self.run_id})"

    def rank_key(self) -> float:
        """Lower is better, whatever the study's direction."""
        return -self.value if self.direction == "maximize" else self.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "trial": self.trial_number,
            "run_id": self.run_id,
            "family": self.family,
            self.metric: self.value,
        }


def load_studies(storage: Any, names: Sequence[str]) -> list[StudyInfo]:
    """The stored configuration of each named study (:class:`~hpo.storage.studies.StudyError` if one
    does not exist)."""
    from hpo.storage.studies import load_config

    if len(set(names)) != len(names):
        raise EnsembleError(f"a study is named twice: {', '.join(names)}")
    out = []
    for name in names:
        config = load_config(storage, name)
        spec = config.spec()
        out.append(
            StudyInfo(
                name=name,
                metric=spec.metrics[0],
                direction=spec.directions[0],
                family=spec.family,
                tracking_uri=config.tracking_uri,
                experiment_id=config.experiment_id,
                parent_run_id=config.parent_run_id,
                spec=spec,
            )
        )
    return out


def complete_trials(storage: Any, study: StudyInfo) -> list[Candidate]:
    """The study's COMPLETE trials that have an MLflow run and meet the space's constraints,
    best first.

    A multi-objective study is ranked by its first objective.
    """
    import optuna
    from optuna.trial import TrialState

    from hpo.storage.feasibility import is_feasible
    from hpo.storage.studies import RUN_ID_ATTR

    trials = optuna.load_study(study_name=study.name, storage=storage).get_trials(
        deepcopy=False, states=(TrialState.COMPLETE,)
    )
    out = []
    for t in trials:
        run_id = t.user_attrs.get(RUN_ID_ATTR)
        if not run_id or not t.values or not math.isfinite(t.values[0]) or not is_feasible(t):
            continue
        out.append(
            Candidate(
                study=study.name,
                trial_number=t.number,
                run_id=str(run_id),
                value=float(t.values[0]),
                metric=study.metric,
                direction=study.direction,
                family=study.family,
            )
        )
    out.sort(key=lambda c: (c.rank_key(), c.trial_number))
    return out


def read_dataset_summary(client: MlflowClient, run_id: str, dest: Path) -> dict[str, Any]:
    """The ``dataset.json`` a trial stored (task, fingerprint, sizes)."""
    local = client.download_artifacts(run_id, DATASET_FILE, str(dest))
    data = json.loads(Path(local).read_text())
    if not isinstance(data, dict) or "fingerprint" not in data or "task" not in data:
        raise ValueError("dataset.json has no fingerprint or task")
    return data


def check_same_dataset(
    client: MlflowClient,
    studies: Sequence[StudyInfo],
    candidates: dict[str, list[Candidate]],
    dest: Path,
) -> dict[str, Any]:
    """Check that every study ran on the same data and task; return that dataset's summary.

    Each study's data is read from the ``dataset.json`` of its best trial that has a readable
    one. Raises :class:`EnsembleError` when two studies differ or the task has no ensemble.
    """
    first: StudyInfo | None = None
    for study in studies:
        for cand in candidates[study.name]:
            try:
                study.dataset = read_dataset_summary(client, cand.run_id, dest / cand.run_id)
                break
            except Exception:  # an unreadable summary is reported when the trial is fetched
                continue
        if not study.dataset:
            continue
        if first is None:
            first = study
            continue
        a, b = first.dataset, study.dataset
        if a["task"] != b["task"] or a["fingerprint"] != b["fingerprint"]:
            raise EnsembleError(
                f"studies {first.name!r} and {study.name!r} did not use the same data: "
                f"{first.name!r} has {a['task']} data {a.get('dataset')!r} (fingerprint "
                f"{a['fingerprint']}), {study.name!r} has {b['task']} data "
                f"{b.get('dataset')!r} (fingerprint {b['fingerprint']}); an ensemble needs "
                "the same validation and test examples"
            )
    if first is None:
        raise EnsembleError(
            "no complete trial of "
            + ", ".join(repr(s.name) for s in studies)
            + " has stored its dataset summary and predictions"
        )
    task = first.dataset["task"]
    if task not in SUPPORTED_TASKS:
        raise EnsembleError(
            f"ensembles combine predicted probabilities; {task} data (study {first.name!r}) "
            f"has none. Supported tasks: {', '.join(SUPPORTED_TASKS)}"
        )
    return first.dataset


def _skip(cand: Candidate, why: str, skipped: list[dict[str, Any]]) -> None:
    message = f"skipped {cand.label}: {why}"
    warnings.warn(message, EnsembleWarning, stacklevel=3)
    skipped.append({**cand.to_dict(), "reason": why})


def _missing_reason(client: MlflowClient, run_id: str, missing: list[str]) -> str:
    from hpo.tracking.retention import removal_note

    try:
        why = removal_note(client.get_run(run_id).data.tags)
    except Exception:
        why = None
    return why or f"{', '.join(missing)} missing from its MLflow run"


def fetch_candidates(
    client: MlflowClient,
    ranked: Sequence[Candidate],
    top: int | None,
    dataset: dict[str, Any],
    dest: Path,
    skipped: list[dict[str, Any]],
) -> list[Candidate]:
    """Download the predictions of the best ``top`` usable candidates (all when None).

    Goes down ``ranked`` in order; a candidate whose model, predictions or dataset summary is
    missing or unreadable, or whose data differ from ``dataset``, is skipped with a warning
    (and recorded in ``skipped``) and the next one is tried.
    """
    out: list[Candidate] = []
    reference: dict[str, Any] | None = None
    for cand in ranked:
        if top is not None and len(out) >= top:
            break
        try:
            if is_placeholder(cand.run_id):
                # Its run was created while MLflow was unreachable: find the real id.
                cand.run_id = client.resolve(cand.run_id)
        except LookupError as exc:
            _skip(cand, f"its MLflow run does not exist: {exc}", skipped)
            continue
        where = dest / cand.run_id
        try:
            names = {a.path for a in client.list_artifacts(cand.run_id)}
        except Exception as exc:
            _skip(cand, f"its MLflow run cannot be read: {exc}", skipped)
            continue
        missing = [f for f in REQUIRED if f not in names]
        if missing:
            _skip(cand, _missing_reason(client, cand.run_id, missing), skipped)
            continue
        cand.artifacts = frozenset(names)
        try:
            summary = read_dataset_summary(client, cand.run_id, where)
            local = Path(client.download_artifacts(cand.run_id, PREDICTIONS_FILE, str(where)))
        except Exception as exc:
            _skip(cand, f"unreadable artifacts: {type(exc).__name__}: {exc}", skipped)
            continue
        if summary["fingerprint"] != dataset["fingerprint"] or summary["task"] != dataset["task"]:
            _skip(cand, "its dataset differs from the other candidates'", skipped)
            continue
        problem = check_predictions(local, reference)
        if problem:
            _skip(cand, problem, skipped)
            continue
        if reference is None:
            reference = reference_of(local)
        cand.predictions = local
        cand.summary = summary
        out.append(cand)
    return out


def rank_by_validation_nll(candidates: list[Candidate], task: str) -> list[Candidate]:
    """Candidates sorted by the log loss of their own validation predictions, best first.

    Used when the studies optimize different metrics, whose values cannot be compared.
    """
    preds = PredictionSet([c.predictions for c in candidates if c.predictions], task)
    y = preds.targets("validation")
    losses = [
        nll(true_class_probs(preds.predictions(i, "validation"), y, task))
        for i in range(len(preds))
    ]
    order = sorted(range(len(candidates)), key=lambda i: (losses[i], i))
    return [candidates[i] for i in order]
