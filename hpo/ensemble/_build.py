"""Building an ensemble, step by step: the candidates (:mod:`hpo.ensemble._candidates`), their
weights and scores (:mod:`hpo.ensemble._combine`), then its MLflow run and registered version
(:mod:`hpo.ensemble._record`).

Everything works from what trials stored: their validation predictions choose and weight the
members; test predictions, made from the stored models for the members and baselines only
(:mod:`hpo.ensemble._test_predictions`), are only scored; nothing is retrained. The test split
plays no part in choosing or weighting.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# MLflow's per-download progress bars would bury the command's own output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from hpo.ensemble._candidates import (
    Candidate,
    check_same_dataset,
    complete_trials,
    fetch_candidates,
    load_studies,
    rank_by_validation_nll,
)
from hpo.ensemble._combine import (
    BUILD_METRICS,
    Combination,
    fit_weights,
    score,
    selection_metric,
    validation_shortfall,
)
from hpo.ensemble._errors import EnsembleError, EnsembleWarning
from hpo.ensemble._predictions import PredictionSet
from hpo.ensemble._record import (
    EnsembleRecord,
    _registered_model,
    _require_server,
    record,
)
from hpo.ensemble._result import EnsembleResult, Member
from hpo.ensemble._test_predictions import DeferredPredictionError, DeferredTestPredictions
from hpo.ensemble._weights import (
    METHODS,
)
from hpo.names import name_problem


def check_name(name: str) -> None:
    """Registered ensemble names follow :mod:`hpo.names` (they become tags and model names)."""
    problem = name_problem(name, "ensemble")
    if problem:
        raise EnsembleError(problem)


class StudyRef(Protocol):
    """A study given as an object (:class:`hpo.Study`): its name and its store's URL."""

    name: str
    storage: str


def build_ensemble(
    studies: str | StudyRef | Sequence[str | StudyRef],
    name: str | None = None,
    *,
    method: str = "caruana",
    top: int = 20,
    size: int = 10,
    metric: str = "auto",
    storage: str | None = None,
    tracking_uri: str | None = None,
    seed: int | None = 0,
) -> EnsembleResult:
    """Build a weighted ensemble of the best trials of ``studies`` (names, or :class:`hpo.Study`
    objects) and register it as ``name`` (default ``STUDY-ensemble``). The store is that of
    the studies given as objects, else ``storage``.

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
        hpo.storage.studies.StudyError: a study that does not exist.

    Example:
        >>> result = build_ensemble(["image_cnn"], "cnn-ens", size=10)  # doctest: +SKIP
        >>> result.version, [round(m.weight, 2) for m in result.members]  # doctest: +SKIP
        (1, [0.4, 0.3, 0.3])
    """
    from hpo import tracking
    from hpo.families import family_ensembles
    from hpo.storage import open_storage, resolve_storage

    given = [studies] if isinstance(studies, str) or not isinstance(studies, Sequence) else studies
    names = [s if isinstance(s, str) else s.name for s in given]
    if storage is None:
        storage = next((s.storage for s in given if not isinstance(s, str)), None)
    name = name or f"{'-'.join(names)}-ensemble"
    check_name(name)
    if top < 1 or size < 1:
        raise EnsembleError("--top and --size must be at least 1")
    if method not in METHODS:
        raise EnsembleError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if metric not in BUILD_METRICS:
        raise EnsembleError(
            f"unknown selection metric {metric!r}; choose one of {', '.join(BUILD_METRICS)}"
        )
    if not names:
        raise EnsembleError("name at least one study")
    store = open_storage(resolve_storage(storage))
    infos = load_studies(store, names)
    for info in infos:
        if info.spec is not None and not family_ensembles(info.spec.family):
            raise EnsembleError(
                f"study {info.name!r} is a {info.spec.family!r} study, whose trials are not "
                "ensembled (its models generate images, not predictions to average)"
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
        record_of = EnsembleRecord(
            name, uri, infos, candidates, members, models, comb, preds, metric, top, seed,
            dataset, skipped, dest,
        )  # fmt: skip
        result = record(client, record_of)
    _note_studies(store, infos, name, result.version)
    return result


def _note_studies(store: Any, infos: list[Any], name: str, version: int | None) -> None:
    """Add the registered version to each study's list and rewrite its study run's note."""
    from hpo.storage._retry import with_db_retry
    from hpo.storage.studies import load_config
    from hpo.tracking.notes import add_ensemble, update_study_note

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


# -- reading registered ensembles -------------------------------------------------------------
