"""Building an ensemble: candidates, weights, metrics, the MLflow run and the registered model.

Everything works from what trials stored: their validation predictions choose and weight the
members; test predictions, made from the stored models for the members and baselines only
(:mod:`hpo.ensemble._test_predictions`), are only scored; nothing is retrained. The test split
plays no part in choosing or weighting.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# MLflow's per-download progress bars would bury the command's own output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from hpo._outbox import is_placeholder
from hpo.ensemble._candidates import (
    Candidate,
    check_same_dataset,
    complete_trials,
    fetch_candidates,
    load_studies,
    rank_by_validation_nll,
)
from hpo.ensemble._errors import EnsembleError, EnsembleWarning, RegistryUnavailableError
from hpo.ensemble._metrics import accuracy, as_probabilities, evaluate, metric_names, nll
from hpo.ensemble._predictions import SPLITS, PredictionSet
from hpo.ensemble._test_predictions import DeferredPredictionError, DeferredTestPredictions
from hpo.ensemble._weights import (
    METHODS,
    average_weights,
    caruana_weights,
    fit_simplex_weights,
)
from hpo.names import name_problem
from hpo.storage import mask_url, strip_password

SELECTION_METRICS = ("nll", "accuracy")
# What a build may be asked to select on: "auto" picks from the studies' objective.
BUILD_METRICS = ("auto", *SELECTION_METRICS)
KINDS = ("ensemble", "best_single", "average")
CROSS_STUDY_EXPERIMENT = "ensembles"
ENSEMBLE_FILE = "ensemble.json"


@dataclass
class Combination:
    """Weights fitted on validation predictions, with the metrics of the ensemble and of its
    baselines on both splits.

    ``metrics[split][kind][metric]``: ``split`` is ``validation`` or ``test``; ``kind`` is
    ``ensemble``, ``best_single`` (the best candidate by validation objective) or ``average``
    (the uniform average of the best ``size`` candidates).
    """

    method: str
    weights: np.ndarray
    metrics: dict[str, dict[str, dict[str, float]]]
    size: int


def fit_weights(
    preds: PredictionSet,
    method: str = "caruana",
    size: int = 10,
    metric: str = "nll",
    seed: int | None = 0,
) -> np.ndarray:
    """One weight per candidate of ``preds``, fitted on VALIDATION predictions only.

    Args:
        preds: the candidates' stored predictions, best candidate first.
        method: ``caruana`` (greedy selection with replacement, ``size`` rounds),
            ``weights`` (log loss minimized over the simplex) or ``average`` (the best
            ``size`` candidates, uniformly).
        size: rounds of greedy selection, or members of the average.
        metric: what greedy selection minimizes: ``nll`` (log loss) or ``accuracy``
            (its complement; classifiers only).
        seed: seed of greedy selection's tie-breaking.
    """
    if method not in METHODS:
        raise EnsembleError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if metric not in SELECTION_METRICS:
        raise EnsembleError(
            f"unknown selection metric {metric!r}; choose one of {', '.join(SELECTION_METRICS)}"
        )
    n = len(preds)
    if method == "average":
        return average_weights(n, size)
    if method == "weights":
        return fit_simplex_weights(preds.true_probs("validation"))
    if metric == "nll":
        p_true = preds.true_probs("validation")
        return caruana_weights(lambda i: p_true[:, i], n, size, nll, seed)
    if preds.task == "language_model":
        raise EnsembleError("greedy selection on accuracy is for classifiers; use --metric nll")
    y = preds.targets("validation")
    task = preds.task
    return caruana_weights(
        lambda i: preds.predictions(i, "validation"),
        n,
        size,
        lambda p: 1.0 - accuracy(as_probabilities(p, task), y),
        seed,
    )


def score(preds: PredictionSet, weights: np.ndarray, size: int) -> dict[str, Any]:
    """Metrics of the weighted ensemble, the best single candidate and the top-``size``
    average, on validation and test."""
    baselines = {
        "ensemble": weights,
        "best_single": average_weights(len(preds), 1),
        "average": average_weights(len(preds), size),
    }
    out: dict[str, Any] = {}
    for split in SPLITS:
        y = preds.targets(split)
        out[split] = {
            kind: evaluate(preds.weighted_sum(w, split), y, preds.task)
            for kind, w in baselines.items()
        }
    return out


# How far (in accuracy) the ensemble may trail its best single candidate on validation before
# the build says so: caruana on log loss can trade accuracy for calibration.
SHORTFALL_POINTS = 1.0


def selection_metric(metric: str, objectives: Sequence[str], task: str) -> str:
    """The metric greedy selection minimizes: ``metric``, or for ``auto`` the studies' own.

    ``auto`` selects on accuracy when every study optimized an accuracy (``val_accuracy``,
    ``val_sparse_categorical_accuracy``, ...) and the task is a classification, since the
    ensemble then answers the question the studies asked; otherwise on log loss. Selecting on
    log loss can pick a calibrated but less accurate mix: in the Keras Tuner benchmark's small
    studies it lost up to 11 points of test accuracy against the best trial
    (``docs/benchmarks.md``, "Caruana on log loss or on accuracy").

    Example:
        >>> selection_metric("auto", ["val_accuracy"], "classification")
        'accuracy'
        >>> selection_metric("auto", ["val_accuracy", "val_loss"], "classification")
        'nll'
        >>> selection_metric("nll", ["val_accuracy"], "classification")
        'nll'
    """
    if metric not in BUILD_METRICS:
        raise EnsembleError(
            f"unknown selection metric {metric!r}; choose one of {', '.join(BUILD_METRICS)}"
        )
    if metric != "auto":
        return metric
    accuracy_objective = bool(objectives) and all("accuracy" in o for o in objectives)
    return "accuracy" if accuracy_objective and task != "language_model" else "nll"


def validation_shortfall(comb: Combination, metric: str) -> str | None:
    """Why the ensemble is less accurate on validation than its best single candidate, if it is
    by more than :data:`SHORTFALL_POINTS` points (None otherwise, and for language models).

    Example:
        >>> comb = Combination("caruana", np.array([0.0, 1.0]), {"validation": {
        ...     "ensemble": {"accuracy": 0.70}, "best_single": {"accuracy": 0.79}}}, 10)
        >>> validation_shortfall(comb, "nll")[:59]
        "the ensemble's validation accuracy (0.7000) is 9.0 points b"
    """
    val = comb.metrics.get("validation", {})
    ens = val.get("ensemble", {}).get("accuracy")
    best = val.get("best_single", {}).get("accuracy")
    if ens is None or best is None or 100 * (best - ens) <= SHORTFALL_POINTS:
        return None
    why = (
        "its weights minimize validation log loss, which can favour better-calibrated, "
        "less accurate models; --metric accuracy selects for accuracy"
        if metric == "nll" and comb.method == "caruana"
        else "compare it with the best single trial before deploying it"
    )
    return (
        f"the ensemble's validation accuracy ({ens:.4f}) is {100 * (best - ens):.1f} points "
        f"below its best single trial's ({best:.4f}): {why}"
    )


def combine(
    preds: PredictionSet,
    method: str = "caruana",
    size: int = 10,
    metric: str = "nll",
    seed: int | None = 0,
) -> Combination:
    """Fit weights (validation only) and score the ensemble and its baselines.

    Example:
        >>> comb = combine(preds, "caruana", size=5)  # doctest: +SKIP
        >>> comb.metrics["test"]["ensemble"]["accuracy"]  # doctest: +SKIP
        0.93
    """
    weights = fit_weights(preds, method, size, metric, seed)
    return Combination(method, weights, score(preds, weights, size), size)


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
class EnsembleResult:
    """What :func:`build_ensemble` built and where it recorded it."""

    name: str
    version: int | None
    run_id: str
    experiment_id: str
    tracking_uri: str
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
    exportable: bool = True
    export_problem: str | None = None
    model_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": strip_password(self.tracking_uri),  # ensemble.json: no secret
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
            "exportable": self.exportable,
            "export_problem": self.export_problem,
            "model_uri": self.model_uri,
        }


def check_name(name: str) -> None:
    """Registered ensemble names follow :mod:`hpo.names` (they become tags and model names)."""
    problem = name_problem(name, "ensemble")
    if problem:
        raise EnsembleError(problem)


def build_ensemble(
    studies: Sequence[str],
    name: str,
    *,
    method: str = "caruana",
    top: int = 20,
    size: int = 10,
    metric: str = "auto",
    storage: str | None = None,
    tracking_uri: str | None = None,
    seed: int | None = 0,
) -> EnsembleResult:
    """Build a weighted ensemble of the best trials of ``studies`` and register it as ``name``.

    Candidates are the ``top`` best COMPLETE trials by validation objective over all the
    studies; weights come from ``method`` (see :func:`fit_weights`) on their validation
    predictions, caruana's selecting on ``metric`` (see :func:`selection_metric`: by default
    accuracy for studies that optimized an accuracy, else log loss). The ensemble's MLflow run
    (in the study's experiment, or in ``ensembles`` for several studies) holds its parameters,
    the metrics of the ensemble and of the baselines on validation and test, plots,
    ``ensemble.json`` and the ensemble as an MLflow Keras model, registered as a new version
    of ``name`` in the MLflow Model Registry.

    The Model Registry has no outbox: a build needs the server to answer. When it does not
    (at the start, or it stops answering while the version is being created), the build fails
    with :class:`RegistryUnavailableError` and nothing is registered; a run already created is
    marked FAILED (that write waits in the outbox if need be). Once the version exists, the
    remaining writes (tags, ``ensemble.json``, the run's end) go through the outbox.

    Raises:
        EnsembleError: invalid options, studies on different data, no usable candidate.
        RegistryUnavailableError: the MLflow server does not answer (nothing registered).
        hpo.studies.StudyError: a study that does not exist.

    Example:
        >>> result = build_ensemble(["image_cnn"], "cnn-ens", size=10)  # doctest: +SKIP
        >>> result.version, [round(m.weight, 2) for m in result.members]  # doctest: +SKIP
        (1, [0.4, 0.3, 0.3])
    """
    from hpo import tracking
    from hpo.families import family_ensembles
    from hpo.storage import open_storage, resolve_storage

    check_name(name)
    if top < 1 or size < 1:
        raise EnsembleError("--top and --size must be at least 1")
    if method not in METHODS:
        raise EnsembleError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if metric not in BUILD_METRICS:
        raise EnsembleError(
            f"unknown selection metric {metric!r}; choose one of {', '.join(BUILD_METRICS)}"
        )
    if not studies:
        raise EnsembleError("name at least one study")
    store = open_storage(resolve_storage(storage))
    infos = load_studies(store, list(studies))
    for info in infos:
        if info.spec is not None and not family_ensembles(info.spec.family):
            raise EnsembleError(
                f"study {info.name!r} is a {info.spec.family!r} study, whose trials are not "
                "ensembled (a generator's outputs are not predictions to average)"
            )
    uris = {s.tracking_uri for s in infos if s.tracking_uri}
    if tracking_uri is None and len(uris) > 1:
        raise EnsembleError(
            "the studies are tracked in different MLflow stores ("
            + ", ".join(sorted(uris))
            + "); give the one holding all their runs with --tracking-uri"
        )
    uri = tracking_uri or (uris.pop() if uris else tracking.resolve_tracking_uri())
    client = tracking.client(uri)
    _require_server(client, uri)
    _registered_model(client, name, create=False)  # refuse a foreign name before any work
    by_study = {s.name: complete_trials(store, s) for s in infos}
    if not any(by_study.values()):
        raise EnsembleError(
            "no COMPLETE trial with an MLflow run in " + ", ".join(repr(s.name) for s in infos)
        )
    skipped: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hpo-ensemble-") as tmp:
        dest = Path(tmp)
        tester = DeferredTestPredictions(client, {s.name: s.spec for s in infos}, dest, {})
        dataset = check_same_dataset(client, infos, by_study, dest / "datasets")
        task = str(dataset["task"])
        metric = selection_metric(metric, [s.metric for s in infos], task)
        comparable = len({(s.metric) for s in infos}) == 1
        everyone = [c for s in infos for c in by_study[s.name]]
        if comparable:
            everyone.sort(key=lambda c: (c.rank_key(), c.study, c.trial_number))
            candidates = fetch_candidates(client, everyone, top, dataset, dest, skipped)
        else:
            # Different objectives cannot be compared: rank by validation log loss instead.
            fetched = fetch_candidates(client, everyone, None, dataset, dest, skipped)
            candidates = rank_by_validation_nll(fetched, task)[:top] if fetched else []
        while True:
            if not candidates:
                raise EnsembleError(
                    "no usable candidate: every trial considered was skipped (see the warnings)"
                )
            preds = PredictionSet([c.predictions for c in candidates if c.predictions], task)
            weights = fit_weights(preds, method, size, metric, seed)
            # Test predictions only now, and only for what is scored on test.
            broken = _complete_test_predictions(
                tester, [candidates[i] for i in scored_on_test(weights, size)]
            )
            if not broken:
                preds = PredictionSet([c.predictions for c in candidates if c.predictions], task)
                comb = Combination(method, weights, score(preds, weights, size), size)
                models, broken = _load_members(tester, candidates, comb.weights)
            if not broken:
                break
            for cand, part, why in broken:
                verb = "loaded" if part == "model" else "made"
                message = f"skipped {cand.label}: its {part} cannot be {verb}: {why}"
                warnings.warn(message, EnsembleWarning, stacklevel=2)
                skipped.append({**cand.to_dict(), "reason": f"{part}: {why}"})
            bad = {c.run_id for c, _, _ in broken}
            candidates = [c for c in candidates if c.run_id not in bad]
        shortfall = validation_shortfall(comb, metric)
        if shortfall:
            warnings.warn(shortfall, EnsembleWarning, stacklevel=2)
        members = [
            Member(c.study, c.trial_number, c.run_id, c.family, float(w), {c.metric: c.value})
            for c, w in zip(candidates, comb.weights, strict=True)
            if w > 0
        ]
        result = _record(
            client=client,
            uri=uri,
            name=name,
            infos=infos,
            candidates=candidates,
            members=members,
            models=models,
            comb=comb,
            preds=preds,
            method=method,
            metric=metric,
            size=size,
            top=top,
            seed=seed,
            dataset=dataset,
            skipped=skipped,
            dest=dest,
        )
    _note_studies(store, infos, name, result.version)
    return result


def _note_studies(store: Any, infos: list[Any], name: str, version: int | None) -> None:
    """Add the registered version to each study's list and rewrite its study run's note."""
    from hpo._retry import with_db_retry
    from hpo.notes import add_ensemble, update_study_note
    from hpo.studies import load_config

    if version is None:
        return
    for info in infos:
        try:

            def note(study: str = info.name) -> None:
                add_ensemble(store, study, name, version)
                update_study_note(store, load_config(store, study))

            with_db_retry(note, what="describing the study")
        except Exception as exc:  # the version exists; only the study's summary lags
            warnings.warn(
                f"could not add {name} version {version} to the description of study "
                f"{info.name}: {exc}",
                EnsembleWarning,
                stacklevel=3,
            )


def scored_on_test(weights: np.ndarray, size: int) -> list[int]:
    """The candidates whose test predictions :func:`score` reads: the members (non-zero
    weight), the best single candidate and the top-``size`` average.

    Example:
        >>> scored_on_test(np.array([0.0, 0.5, 0.0, 0.0, 0.5]), 2)
        [0, 1, 4]
    """
    return sorted({0, *range(min(size, len(weights))), *np.flatnonzero(weights).tolist()})


# A candidate that cannot be used after all: (candidate, "model" or "test predictions", why).
Broken = list[tuple[Candidate, str, str]]


def _complete_test_predictions(
    tester: DeferredTestPredictions, candidates: list[Candidate]
) -> Broken:
    broken: Broken = []
    for cand in candidates:
        try:
            tester.complete(cand)
        except DeferredPredictionError as exc:
            broken.append((cand, exc.part, str(exc)))
    return broken


def _load_members(
    tester: DeferredTestPredictions, candidates: list[Candidate], weights: np.ndarray
) -> tuple[list[Any], Broken]:
    """The models of the candidates with a non-zero weight (safe mode; loaded once)."""
    models: list[Any] = []
    broken: Broken = []
    for cand, w in zip(candidates, weights, strict=True):
        if w <= 0:
            continue
        try:
            models.append(tester.model(cand.run_id))
        except Exception as exc:
            broken.append((cand, "model", f"{type(exc).__name__}: {exc}"))
    return models, broken


def _experiment(client: Any, infos: list[Any]) -> tuple[str, str | None]:
    """The ensemble's experiment (the study's, or ``ensembles`` across studies) and parent."""
    if len(infos) == 1 and infos[0].experiment_id:
        experiment_id = str(infos[0].experiment_id)
        parent = infos[0].parent_run_id
        if is_placeholder(experiment_id) or (parent and is_placeholder(parent)):
            from hpo import tracking

            experiment_id = client.resolve(experiment_id)
            parent = tracking.resolve_run_id(client.uri, parent) if parent else None
        return experiment_id, parent
    from hpo.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

    tags = {"hpo.kind": "ensembles", EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    return client.ensure_experiment(CROSS_STUDY_EXPERIMENT, tags=tags), None


def _record(
    *,
    client: Any,
    uri: str,
    name: str,
    infos: list[Any],
    candidates: list[Candidate],
    members: list[Member],
    models: list[Any],
    comb: Combination,
    preds: PredictionSet,
    method: str,
    metric: str,
    size: int,
    top: int,
    seed: int | None,
    dataset: dict[str, Any],
    skipped: list[dict[str, Any]],
    dest: Path,
) -> EnsembleResult:
    """Log the ensemble's run, register its model and tag both ways."""
    from hpo import tracking
    from hpo.ensemble._export import (
        MODEL_ARTIFACT,
        check_standard,
        ensemble_model,
        save_mlflow_model,
    )
    from hpo.notes import ensemble_description, version_metric_tags

    _registered_model(client, name, create=True)
    study_names = [s.name for s in infos]
    experiment_id, parent = _experiment(client, infos)
    tags = {
        "hpo.kind": "ensemble",
        "hpo.studies": ",".join(study_names),
        "hpo.ensemble.name": name,
        "hpo.ensemble.method": method,
        "hpo.ensemble.members": ",".join(m.run_id for m in members),
    }
    if len(infos) == 1:
        tags["hpo.study"] = infos[0].name
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.start_run(experiment_id, run_name=f"ensemble {name}", tags=tags)
    if is_placeholder(run_id) or is_placeholder(experiment_id):
        client.set_tag(run_id, "hpo.fail_reason", "MLflow did not answer: nothing registered")
        client.set_terminated(run_id, "FAILED")
        raise RegistryUnavailableError(
            f"MLflow at {mask_url(uri)} stopped answering before the ensemble could be "
            f"registered: no version of {name!r} was registered (the ensemble's run waits in "
            "the outbox, marked FAILED; `hpo sync` sends it). Build again once the server "
            "answers."
        )
    with _unavailable(uri, f"reading the ensemble's run {run_id}"):
        artifact_uri = str(client.get_run(run_id).info.artifact_uri)
    result = EnsembleResult(
        name=name,
        version=None,
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        method=method,
        metric=metric,
        size=size,
        top=top,
        seed=seed,
        task=str(dataset["task"]),
        studies=study_names,
        members=members,
        metrics=comb.metrics,
        candidates=[c.to_dict() for c in candidates],
        skipped=skipped,
    )
    try:
        tracking.log_params(
            client,
            run_id,
            {
                "method": method,
                "selection_metric": metric,
                "size": size,
                "top": top,
                "seed": seed,
                "studies": ",".join(study_names),
                "dataset": dataset.get("dataset"),
                "task": dataset["task"],
                "fingerprint": dataset["fingerprint"],
                "n_candidates": len(candidates),
                "n_members": len(members),
                "members": json.dumps([[m.study, m.trial, m.run_id, m.weight] for m in members]),
                **{f"member.{i}.run_id": m.run_id for i, m in enumerate(members)},
                **{f"member.{i}.weight": m.weight for i, m in enumerate(members)},
            },
        )
        tracking.log_metrics(client, run_id, flat_metrics(comb.metrics), 0)
        files: dict[str, Path | bytes] = {
            "weights.png": weights_png(members),
            "metrics.png": metrics_png(preds, comb, candidates),
        }
        model_dir = dest / "mlflow-model"
        try:
            inputs = raw_inputs_of(
                [c for c, w in zip(candidates, comb.weights, strict=True) if w > 0]
            )
            ensemble = ensemble_model(
                models, [m.weight for m in members], [f"{m.study}_trial{m.trial}" for m in members]
            )
            check_standard(ensemble)
            save_mlflow_model(
                ensemble,
                model_dir,
                inputs,
                dataset.get("class_names") or _lm_tokens(inputs),
                str(dataset["task"]),
            )
        except EnsembleError as exc:
            result.exportable, result.export_problem = False, str(exc)
            warnings.warn(
                f"the ensemble is registered without a model: {exc}", EnsembleWarning, stacklevel=3
            )
        if result.exportable:
            _log_folder(client, run_id, model_dir, MODEL_ARTIFACT)
        source = f"{artifact_uri}/{MODEL_ARTIFACT}" if result.exportable else artifact_uri
        # Registry writes have no outbox: a server that stops answering now fails the build.
        with _unavailable(
            uri,
            f"registering {name!r}",
            f"no version of {name!r} was registered; the ensemble's run {run_id} is marked "
            "FAILED (sent when the server answers, or with `hpo sync`)",
        ):
            mv = client.raw.create_model_version(
                name,
                source=source,
                run_id=run_id,
                tags={
                    "hpo.kind": "ensemble",
                    "hpo.studies": ",".join(study_names),
                    "hpo.ensemble_run": run_id,
                    "hpo.member_runs": ",".join(m.run_id for m in members),
                    "hpo.method": method,
                    "hpo.task": str(dataset["task"]),
                    "hpo.exportable": str(result.exportable).lower(),
                    **(
                        {"hpo.export_problem": result.export_problem[:4000]}
                        if result.export_problem
                        else {}
                    ),
                    **version_metric_tags(comb.metrics),
                },
                description=ensemble_description(
                    method=method,
                    metric=metric,
                    task=str(dataset["task"]),
                    studies={s.name: s.experiment_id for s in infos},
                    run=(experiment_id, run_id),
                    members=members,
                    metrics=comb.metrics,
                ),
            )
        result.version = int(mv.version)
        result.model_uri = f"models:/{name}/{mv.version}"
        tracking.log_artifact_files(
            client,
            run_id,
            {**files, ENSEMBLE_FILE: json.dumps(result.to_dict(), indent=1).encode()},
        )
        client.set_tag(run_id, "hpo.ensemble.version", str(mv.version))
        client.set_tag(run_id, "hpo.ensemble.model_uri", result.model_uri)
        try:
            _tag_sources(client, name, int(mv.version), members, infos)
        except Exception as exc:
            if not tracking.is_unreachable(exc):
                raise
            # The version exists and names its members in its own tags: only the reverse
            # links (read-modify-write tags on the member and study runs) are missing.
            warnings.warn(
                f"version {mv.version} of {name!r} is registered, but MLflow stopped "
                f"answering before the member trial runs were tagged with it: {exc}",
                EnsembleWarning,
                stacklevel=3,
            )
    except BaseException as exc:
        client.set_tag(run_id, "hpo.fail_reason", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return result


def raw_inputs_of(members: Sequence[Any]) -> Any:
    """The raw inputs every member's saved model takes (:mod:`hpo.inputs`).

    Raises:
        EnsembleError: a member's model takes transformed arrays (a trial stored before
            models took raw inputs, or one whose input layers could not be saved): one
            exported model would silently expect transformed inputs.
    """
    from hpo.inputs import INPUTS_KEY, InputSpec, InputSpecError

    specs = []
    for m in members:
        summary = m.summary or {}
        if INPUTS_KEY not in summary:
            why = summary.get("inputs_problem") or (
                "it was stored before hpo saved models with their input transformation; run "
                "the study's trials again (hpo run --resume with more --trials) to get such "
                "models"
            )
            raise EnsembleError(
                f"{m.label}'s model takes the transformed arrays it trained on, not raw inputs: "
                f"{why}"
            )
        try:
            specs.append(InputSpec.from_json(summary[INPUTS_KEY]))
        except InputSpecError as exc:
            raise EnsembleError(f"{m.label}: {exc}") from None
    first = specs[0]
    for m, spec in zip(members, specs, strict=True):
        if (spec.kind, spec.shape, spec.dtype) != (first.kind, first.shape, first.dtype):
            raise EnsembleError(
                f"{m.label} takes {spec.description} {spec.describe_shape()}, but "
                f"{members[0].label} takes {first.description} {first.describe_shape()}: one "
                "exported model has one input"
            )
    return first


def _lm_tokens(inputs: Any) -> list[str] | None:
    """A language model's "classes": its tokens, by id."""
    if inputs.kind != "tokens":
        return None
    step = inputs.steps[0]
    oov = step.get("oov_token")
    return ([oov] if oov is not None else []) + list(step["vocabulary"])


def _require_server(client: Any, uri: str) -> None:
    """Fail before any work when the registry cannot be written (server down, offline)."""
    from hpo.tracking import OFFLINE_ENV

    if client.answers():
        return
    why = f"{OFFLINE_ENV} is set" if os.environ.get(OFFLINE_ENV) else "it does not answer"
    raise RegistryUnavailableError(
        f"MLflow at {mask_url(uri)} cannot be written ({why}): an ensemble is registered in "
        "the MLflow Model Registry, which has no offline queue; nothing was built or "
        "registered. Build again once the server answers."
    )


@contextlib.contextmanager
def _unavailable(uri: str, doing: str, consequence: str = "nothing was registered") -> Any:
    """Turn "the server does not answer" into a :class:`RegistryUnavailableError`."""
    from hpo import tracking

    try:
        yield
    except Exception as exc:
        if not tracking.is_unreachable(exc):
            raise
        raise RegistryUnavailableError(
            f"MLflow at {mask_url(uri)} stopped answering while {doing} "
            f"({type(exc).__name__}): {consequence}. Build again once the server answers."
        ) from exc


def _registered_model(client: Any, name: str, create: bool) -> Any:
    """The registered model ``name`` (created if missing and ``create``; else None); refuses
    a registered model that hpo did not make."""
    from mlflow.exceptions import MlflowException

    uri = client.uri
    try:
        with _unavailable(uri, f"looking up the registered model {name!r}"):
            model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        if not create:
            return None
        with _unavailable(uri, f"creating the registered model {name!r}"):
            return client.raw.create_registered_model(
                name,
                tags={"hpo.kind": "ensemble"},
                description="Weighted ensemble of hpo trials, built by `hpo ensemble build`.",
            )
    if model.tags.get("hpo.kind") != "ensemble":
        raise EnsembleError(
            f"the registry already has a model named {name!r} that is not an hpo ensemble; "
            "choose another --name"
        )
    return model


def _log_folder(client: Any, run_id: str, folder: Path, artifact_path: str) -> None:
    """Log every file under ``folder`` below ``artifact_path``, keeping the layout."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sub = path.parent.relative_to(folder).as_posix()
        client.log_artifact(run_id, path, artifact_path if sub == "." else f"{artifact_path}/{sub}")


def _append_tag(client: Any, run_id: str, key: str, value: str) -> None:
    current = client.get_run(run_id).data.tags.get(key, "")
    items = [v for v in current.split(",") if v]
    if value not in items:
        items.append(value)
    client.set_tag(run_id, key, ",".join(items)[-5000:])


def _tag_sources(
    client: Any, name: str, version: int, members: list[Member], infos: list[Any]
) -> None:
    """Tag member trial runs and study runs with the registered version that uses them."""
    for m in members:
        _append_tag(client, m.run_id, f"hpo.ensemble.{name}", str(version))
    for s in infos:
        if s.parent_run_id:
            _append_tag(client, s.parent_run_id, "hpo.ensembles", f"{name}:{version}")


def flat_metrics(metrics: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``{kind}_{split}_{metric}`` names, as logged in MLflow.

    Example:
        >>> flat_metrics({"test": {"ensemble": {"nll": 0.2}}})
        {'ensemble_test_nll': 0.2}
    """
    return {
        f"{kind}_{split}_{name}": value
        for split, by_kind in metrics.items()
        for kind, values in by_kind.items()
        for name, value in values.items()
    }


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def weights_png(members: list[Member]) -> bytes:
    """A bar chart of the members' weights."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(members) + 1.5))
    labels = [f"{m.study} #{m.trial} ({m.family})" for m in members]
    ax.barh(range(len(members)), [m.weight for m in members])
    ax.set_yticks(range(len(members)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("weight")
    ax.set_title("ensemble weights")
    return _png(fig)


def metrics_png(preds: PredictionSet, comb: Combination, candidates: list[Candidate]) -> bytes:
    """Each member's metrics beside the ensemble's and the baselines', validation and test."""
    plt = _pyplot()
    names = metric_names(preds.task)
    members = [i for i, w in enumerate(comb.weights) if w > 0]
    rows: list[tuple[str, dict[str, dict[str, float]]]] = []
    for i in members:
        per_split = {
            split: evaluate(preds.predictions(i, split), preds.targets(split), preds.task)
            for split in SPLITS
        }
        rows.append((f"#{candidates[i].trial_number} {candidates[i].study}"[:24], per_split))
    for kind in ("best_single", "average", "ensemble"):
        rows.append((kind, {s: comb.metrics[s][kind] for s in SPLITS}))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 0.35 * len(rows) + 2))
    axes = np.atleast_1d(axes)
    y = np.arange(len(rows))
    for ax, metric in zip(axes, names, strict=True):
        for j, split in enumerate(SPLITS):
            ax.barh(y + 0.4 * j, [r[1][split][metric] for r in rows], height=0.4, label=split)
        ax.set_yticks(y + 0.2, [r[0] for r in rows])
        ax.invert_yaxis()
        ax.set_title(metric)
        ax.legend()
    return _png(fig)


# -- reading registered ensembles -------------------------------------------------------------


def _version_summary(client: Any, mv: Any) -> dict[str, Any]:
    run = client.get_run(mv.run_id) if mv.run_id else None
    metrics = {}
    params: dict[str, str] = {}
    if run is not None:
        metrics = dict(run.data.metrics)
        params = dict(run.data.params)
    members = json.loads(params.get("members", "[]")) if params.get("members") else []
    return {
        "version": int(mv.version),
        "run_id": mv.run_id,
        "created": time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(int(mv.creation_timestamp) / 1000)
        ),
        "method": mv.tags.get("hpo.method") or params.get("method"),
        "studies": [s for s in mv.tags.get("hpo.studies", "").split(",") if s],
        "task": mv.tags.get("hpo.task"),
        "exportable": mv.tags.get("hpo.exportable") != "false",
        "source": mv.source,
        "members": [{"study": s, "trial": t, "run_id": r, "weight": w} for s, t, r, w in members],
        "metrics": _nest(metrics),
    }


def _nest(flat: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in flat.items():
        for kind in KINDS:
            for split in SPLITS:
                prefix = f"{kind}_{split}_"
                if key.startswith(prefix):
                    out.setdefault(split, {}).setdefault(kind, {})[key[len(prefix) :]] = value
    return out


def _ensemble_models(client: Any) -> list[Any]:
    return [
        m
        for m in client.search_registered_models(max_results=1000)
        if m.tags.get("hpo.kind") == "ensemble"
    ]


def list_ensembles(tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every registered hpo ensemble with its latest version's method, members and metrics.

    Example:
        >>> [e["name"] for e in list_ensembles()]  # doctest: +SKIP
        ['cnn-ens']
    """
    from hpo import tracking

    client = tracking.client(tracking.resolve_tracking_uri(tracking_uri))
    out = []
    for model in sorted(_ensemble_models(client), key=lambda m: m.name):
        versions = client.search_model_versions(f"name = '{_quote(model.name)}'")
        if not versions:
            continue
        latest = max(versions, key=lambda v: int(v.version))
        summary = _version_summary(client, latest)
        out.append(
            {
                "name": model.name,
                "versions": len(versions),
                "latest_version": summary["version"],
                "method": summary["method"],
                "studies": summary["studies"],
                "members": len(summary["members"]),
                "metrics": summary["metrics"],
            }
        )
    return out


def show_ensemble(
    name: str, version: int | None = None, tracking_uri: str | None = None
) -> dict[str, Any]:
    """A registered ensemble: its versions (or one), each with method, members, weights and
    metrics.

    Example:
        >>> show_ensemble("cnn-ens")["versions"][0]["method"]  # doctest: +SKIP
        'caruana'
    """
    from hpo import tracking
    from hpo.ensemble._export import registered_version

    client = tracking.client(tracking.resolve_tracking_uri(tracking_uri))
    if version is not None:
        versions = [registered_version(client, name, version)]
    else:
        versions = client.search_model_versions(f"name = '{_quote(name)}'")
        if not versions:
            known = ", ".join(m.name for m in _ensemble_models(client)) or "none"
            raise EnsembleError(f"no registered ensemble named {name!r}; known: {known}")
    return {
        "name": name,
        "versions": [
            _version_summary(client, mv) for mv in sorted(versions, key=lambda v: int(v.version))
        ],
    }


def _quote(name: str) -> str:
    return name.replace("'", "\\'")
