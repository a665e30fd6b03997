"""Refitting: one trial's configuration trained again on training + validation data.

A search ranks configurations on the validation split, so the chosen model never saw it. A
refit trains that configuration again, with the family's own ``build`` and ``fit``, on the
training and validation examples together (:meth:`hpo.datasets.Dataset.with_validation_in_train`),
for as many epochs as led to the model the trial kept (:data:`EPOCHS_RULE`), seeded; then
scores it on the test split with the metrics an ensemble reports, beside the trial's own test
metrics.

It is recorded as a registered "ensemble" of one member whose weight is 1 and whose run is
the refit's own (:mod:`hpo.ensemble._refit_record`), so ``hpo export``, ``hpo predict``,
:func:`hpo.load_ensemble`, ``hpo ensemble list``/``show`` and serving treat it as any other
registered version. Families and tasks an ensemble refuses are refused here too.

Example:
    >>> result = refit("digits", name="digits-refit")  # doctest: +SKIP
    >>> result.epochs, round(result.metrics["test"]["refit"]["accuracy"], 3)  # doctest: +SKIP
    (2, 0.953)
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.ensemble._candidates import Candidate, StudyInfo, complete_trials, load_studies
from hpo.ensemble._errors import EnsembleError, EnsembleWarning
from hpo.ensemble._metrics import SUPPORTED_TASKS, evaluate
from hpo.ensemble._result import RegisteredVersion
from hpo.errors import HpoError
from hpo.tracking.artifacts import DATASET_FILE, PARAMS_FILE, PREDICTIONS_FILE

if TYPE_CHECKING:
    from hpo.ensemble._build import StudyRef

# How many epochs a refit trains: as many as led to the model the trial kept (its best epoch
# by the objective, budget.restore_best_epoch; else all it trained). The objective that ranked
# the trial is that epoch's value, so the refit repeats the training that was selected, on
# more data. The trial's best reported epoch is recorded beside it (``trial_best_epoch``).
EPOCHS_RULE = "kept"
METHOD = "refit"


class RefitError(HpoError):
    """The refit's training or scoring failed (not a refusal: the CLI exits 1)."""


@dataclass
class RefitResult(RegisteredVersion):
    """What :func:`refit` trained and where it recorded it.

    ``metrics["test"]["refit"]`` holds the refit's test metrics and ``metrics["test"]["trial"]``
    those of the trial it refits (trained on the training split only), where they could be
    made.
    """

    study: str
    trial: int
    trial_run_id: str
    family: str
    epochs: int
    epochs_rule: str
    trial_best_epoch: int | None
    seed: int
    task: str
    train_size: int
    params: dict[str, Any]
    metrics: dict[str, dict[str, dict[str, float]]]
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._where(),
            "method": METHOD,
            "study": self.study,
            "trial": self.trial,
            "trial_run_id": self.trial_run_id,
            "family": self.family,
            "epochs": self.epochs,
            "epochs_rule": self.epochs_rule,
            "trial_best_epoch": self.trial_best_epoch,
            "seed": self.seed,
            "task": self.task,
            "train_size": self.train_size,
            "params": self.params,
            "metrics": self.metrics,
            **self._export(),
        }


@dataclass
class Trained:
    """A refit's model and what it was trained and scored on, for the record."""

    info: StudyInfo
    cand: Candidate
    frozen: Any  # the trial, as Optuna stores it
    family: Any
    data: Any  # the dataset with validation in train
    model: Any  # takes the dataset's arrays
    params: dict[str, Any]
    epochs: int
    best_epoch: int | None
    seed: int
    history: list[dict[str, float]]
    metrics: dict[str, dict[str, dict[str, float]]]
    extra_files: dict[str, bytes]


def refit(
    study: str | StudyRef,
    trial: int | None = None,
    name: str | None = None,
    *,
    seed: int = 0,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> RefitResult:
    """Train trial ``trial`` of ``study`` (default: its best COMPLETE trial) again on training
    + validation data, score it on the test split and register it as ``name`` (default
    ``STUDY-refit``) like an ensemble of one member.

    ``study`` is a name or a :class:`hpo.Study` (whose store is used unless ``storage`` is
    given). Training uses the study's family and dataset, the trial's parameters
    (``params.json`` of its run), ``seed`` (:func:`keras.utils.set_random_seed`) and as many
    epochs as led to the model the trial kept (its best epoch, unless the study kept the last).
    The refit's MLflow run, in the study's experiment under the study run, is tagged
    ``hpo.kind=refit`` and ``hpo.refit.trial_run`` (the trial's run);
    it holds the parameters, per-epoch training metrics, test metrics, the model (raw
    inputs, as trials store it) and the MLflow model that the registered version points at.

    Raises:
        hpo.storage.studies.StudyError: no such study.
        EnsembleError: no such trial, a trial that is not COMPLETE, a family or task that an
            ensemble refuses (generators, reconstruction), a name in use by another model.
        RegistryUnavailableError: the MLflow server does not answer (nothing registered).
        RefitError: training or scoring failed.
    """
    from hpo import tracking
    from hpo.ensemble._build import _note_studies, check_name
    from hpo.ensemble._record import _registered_model, _require_server
    from hpo.ensemble._refit_record import record_refit
    from hpo.families import family_ensembles
    from hpo.storage import open_storage, resolve_storage

    study_name = study if isinstance(study, str) else study.name
    if storage is None and not isinstance(study, str):
        storage = study.storage
    name = name or f"{study_name}-refit"
    check_name(name)
    store = open_storage(resolve_storage(storage))
    (info,) = load_studies(store, [study_name])
    if not family_ensembles(info.family):
        raise EnsembleError(
            f"study {study_name!r} is a {info.family!r} study, whose trials are not refit "
            "(a generator's outputs are not predictions to score on the test split)"
        )
    cand, frozen = _chosen_trial(store, info, trial)
    uri = tracking_uri or info.tracking_uri or tracking.resolve_tracking_uri()
    client = tracking.client(uri)
    _require_server(client, uri)
    _registered_model(client, name, create=False)  # refuse a foreign name before any work
    with tempfile.TemporaryDirectory(prefix="hpo-refit-") as tmp:
        trained = _train_and_score(client, info, cand, frozen, seed, Path(tmp))
        result = record_refit(client, uri, name, trained, Path(tmp))
    _note_studies(store, [info], name, result.version)
    return result


def _chosen_trial(store: Any, info: StudyInfo, number: int | None) -> tuple[Candidate, Any]:
    """The trial to refit (the best COMPLETE one when ``number`` is None) and its stored form."""
    import optuna
    from optuna.trial import TrialState

    trials = optuna.load_study(study_name=info.name, storage=store).get_trials(deepcopy=False)
    complete = complete_trials(store, info)
    if number is None:
        if not complete:
            raise EnsembleError(f"study {info.name!r} has no COMPLETE trial with an MLflow run")
        number = complete[0].trial_number
    found = [t for t in trials if t.number == number]
    if not found:
        known = f"0 to {len(trials) - 1}" if trials else "none yet"
        raise EnsembleError(f"study {info.name!r} has no trial {number} (its trials: {known})")
    if found[0].state != TrialState.COMPLETE:
        raise EnsembleError(
            f"trial {number} of study {info.name!r} is {found[0].state.name}, not COMPLETE: "
            "only a completed trial's configuration can be refit"
        )
    cand = next((c for c in complete if c.trial_number == number), None)
    if cand is None:
        raise EnsembleError(
            f"trial {number} of study {info.name!r} has no MLflow run or no finite objective"
        )
    return cand, found[0]


def kept_epochs(frozen: Any, max_epochs: int) -> int:
    """The epoch whose model the trial kept (what the runner stored), else the epochs it
    trained (trials stored before they kept their best epoch), else those it reported.

    Example:
        >>> from types import SimpleNamespace
        >>> kept_epochs(SimpleNamespace(user_attrs={"epochs": 4, "kept_epoch": 2}), 4)
        2
    """
    for key in ("kept_epoch", "epochs"):
        stored = frozen.user_attrs.get(key)
        if isinstance(stored, int | float) and not isinstance(stored, bool) and stored >= 1:
            return int(stored)
    return len(frozen.intermediate_values) or max_epochs


def best_epoch(frozen: Any, direction: str) -> int | None:
    """The epoch whose reported objective was best (the first of equals), if it reported any.

    Example:
        >>> from types import SimpleNamespace
        >>> best_epoch(SimpleNamespace(intermediate_values={1: 0.5, 2: 0.9, 3: 0.9}), "maximize")
        2
    """
    values = {
        int(k): float(v)
        for k, v in frozen.intermediate_values.items()
        if v is not None and math.isfinite(v)
    }
    if not values:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(values, key=lambda epoch: (sign * values[epoch], epoch))


def _trial_files(client: Any, cand: Candidate, dest: Path) -> tuple[dict[str, Any], Path]:
    """The trial's parameters and its predictions file, downloaded; its dataset checked."""
    from hpo.tracking._outbox import is_placeholder

    if is_placeholder(cand.run_id):
        try:
            cand.run_id = client.resolve(cand.run_id)
        except LookupError as exc:
            raise EnsembleError(f"{cand.label}: its MLflow run does not exist: {exc}") from None
    where = dest / "trial"
    names = {a.path for a in client.list_artifacts(cand.run_id)}
    missing = [f for f in (PARAMS_FILE, PREDICTIONS_FILE, DATASET_FILE) if f not in names]
    if missing:
        raise EnsembleError(f"{cand.label}: {', '.join(missing)} missing from its MLflow run")
    cand.artifacts = frozenset(names)
    local = {
        f: Path(client.download_artifacts(cand.run_id, f, str(where)))
        for f in (PARAMS_FILE, PREDICTIONS_FILE, DATASET_FILE)
    }
    params = json.loads(local[PARAMS_FILE].read_text(encoding="utf-8"))
    summary = json.loads(local[DATASET_FILE].read_text(encoding="utf-8"))
    task = summary.get("task")
    if task not in SUPPORTED_TASKS:
        raise EnsembleError(
            f"a refit is scored like an ensemble, on predicted probabilities; {task} data "
            f"({cand.label}) has none. Supported tasks: {', '.join(SUPPORTED_TASKS)}"
        )
    cand.summary = summary
    return params, local[PREDICTIONS_FILE]


def _train_and_score(
    client: Any, info: StudyInfo, cand: Candidate, frozen: Any, seed: int, dest: Path
) -> Trained:
    from hpo.datasets import DatasetCache
    from hpo.ensemble._test_predictions import (
        DeferredPredictionError,
        DeferredTestPredictions,
        predict_test_split,
    )
    from hpo.families import get_family
    from hpo.spaces import Params

    params, predictions = _trial_files(client, cand, dest)
    cand.predictions = predictions
    with np.load(predictions, allow_pickle=False) as stored:
        arrays = {k: np.asarray(stored[k]) for k in stored.files}
    if "test_true" not in arrays or "validation" not in arrays:
        raise EnsembleError(f"{cand.label}: its {PREDICTIONS_FILE} has no test targets")
    spec = info.spec
    datasets = DatasetCache()
    try:
        data = datasets.get(spec.dataset)
        family = get_family(spec.family)
        family.check_data(data)
    except HpoError:
        raise
    except Exception as exc:
        raise RefitError(
            f"study {info.name!r}: its dataset {spec.dataset.name!r} or family "
            f"{spec.family!r} cannot be loaded here: {type(exc).__name__}: {exc}"
        ) from None
    task = str(data.task)
    metrics: dict[str, dict[str, dict[str, float]]] = {"test": {}}
    # The trial's own test score, for comparison (its model trained on training data only).
    tester = DeferredTestPredictions(client, {info.name: spec}, dest / "tester", {}, datasets)
    try:
        tester.complete(cand)
        with np.load(cand.predictions, allow_pickle=False) as merged:
            metrics["test"]["trial"] = evaluate(merged["test"], arrays["test_true"], task)
    except DeferredPredictionError as exc:
        warnings.warn(
            f"{cand.label}: its own test metrics cannot be made: {exc}",
            EnsembleWarning,
            stacklevel=3,
        )
    finally:
        tester.models.clear()
    epochs = kept_epochs(frozen, spec.budget.max_epochs)
    merged_data = data.with_validation_in_train()
    hp = Params(params)
    model, history = _fit(family, hp, merged_data, epochs, seed)
    try:
        test = predict_test_split(family, model, hp, merged_data, arrays, spec.dataset.name)
    except DeferredPredictionError as exc:
        raise RefitError(f"scoring the refit of {cand.label}: {exc}") from None
    metrics["test"]["refit"] = evaluate(test, arrays["test_true"], task)
    return Trained(
        info=info,
        cand=cand,
        frozen=frozen,
        family=family,
        data=merged_data,
        model=model,
        params=params,
        epochs=len(history),
        best_epoch=best_epoch(frozen, info.direction),
        seed=seed,
        history=history,
        metrics=metrics,
        extra_files=dict(family.extra_artifacts(model, hp, merged_data)),
    )


def _fit(
    family: Any, hp: Any, data: Any, epochs: int, seed: int
) -> tuple[Any, list[dict[str, float]]]:
    """Build and train the model, seeded; the training metrics of each epoch.

    ``fit`` gets the validation split as its validation data (a family's ``fit`` passes it
    on), but those examples are part of the training data now: their ``val_*`` numbers are
    not held out and are left out of the history.
    """
    import keras

    keras.utils.set_random_seed(int(seed) % 2**31)
    try:
        model = family.build(hp, data)
    except Exception as exc:
        raise RefitError(f"building the model failed: {type(exc).__name__}: {exc}") from None
    history: list[dict[str, float]] = []

    class _History(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            values = {}
            for key, value in (logs or {}).items():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    continue
                if not key.startswith("val_"):
                    values[key] = number
            history.append(values)
            if not all(math.isfinite(v) for k, v in values.items() if "loss" in k):
                self.model.stop_training = True

    try:
        family.fit(model, hp, data, epochs, [_History()])
    except Exception as exc:
        raise RefitError(f"training failed: {type(exc).__name__}: {exc}") from None
    bad = [
        (i + 1, k, v)
        for i, h in enumerate(history)
        for k, v in h.items()
        if "loss" in k and not math.isfinite(v)
    ]
    if bad:
        epoch, key, value = bad[0]
        raise RefitError(f"training failed: {key} became {value} in epoch {epoch}")
    if len(history) != epochs:
        raise RefitError(f"training stopped after {len(history)} of {epochs} epochs")
    return model, history
