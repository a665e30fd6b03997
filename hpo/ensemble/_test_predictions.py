"""Test predictions, made at the final stage for the candidates an ensemble scores.

Trials store their validation predictions and the test *targets*, not test predictions: a
search of hundreds of trials would otherwise predict the test split hundreds of times for the
few models that are ever scored on it (on Fashion-MNIST that prediction was most of what a trial
paid on top of training; ``bench/overhead.py``). An ensemble build asks for the test
predictions of its members and baselines only. For each, in this order:

1. ``predictions.npz`` already holds them (trials of hpo versions that predicted test in the
   trial);
2. the trial's run holds ``test_predictions.npz``, written by an earlier build;
3. else the trial's stored model predicts the test split of its own study's dataset (loaded
   here from the study's spec, as the trial process loaded it), with its family's ``predict``
   and the trial's ``params.json``; the targets must equal the ``test_true`` the trial stored.
   The result is logged to the trial's run as ``test_predictions.npz`` for later builds.

The merged file (the trial's arrays plus ``test``) is written next to the downloaded one and
becomes the candidate's ``predictions``; the rest of the build reads it like any other.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hpo.datasets import DatasetCache
from hpo.ensemble._errors import EnsembleWarning
from hpo.errors import HpoError
from hpo.tracking.artifacts import MODEL_FILE, PARAMS_FILE, PREDICTIONS_FILE, TEST_PREDICTIONS_FILE

MERGED_FILE = "predictions-with-test.npz"


class DeferredPredictionError(HpoError):
    """A candidate's test predictions cannot be made; ``part`` says what failed: its
    ``model`` (cannot be loaded) or its ``test predictions`` (data, files, predicting)."""

    def __init__(self, why: str, part: str = "test predictions") -> None:
        super().__init__(why)
        self.part = part


def has_test_predictions(path: Path) -> bool:
    """Whether the ``.npz`` at ``path`` holds a ``test`` array (read from its index only)."""
    with np.load(path, allow_pickle=False) as data:
        return "test" in data.files


class DeferredTestPredictions:
    """Completes candidates' predictions with test predictions, loading what it needs once.

    Args:
        client: the MLflow client of the trials' runs.
        specs: each study's :class:`~hpo.spaces.StudySpec`, by study name.
        dest: where downloads and merged files go.
        models: loaded models by run id; filled here and read by the build (no second load).
        datasets: where the studies' datasets are loaded (default: a new cache that keeps
            every one it loads, since candidates of several studies may share one).
    """

    def __init__(
        self,
        client: Any,
        specs: dict[str, Any],
        dest: Path,
        models: dict[str, Any],
        datasets: DatasetCache | None = None,
    ) -> None:
        self.client = client
        self.specs = specs
        self.dest = dest
        self.models = models
        self.datasets = datasets or DatasetCache()
        self.predicted = 0  # how many candidates were predicted here (not read back)

    def complete(self, cand: Any) -> None:
        """Point ``cand.predictions`` at a file that holds test predictions too.

        Raises:
            DeferredPredictionError: why they cannot be made.
        """
        assert cand.predictions is not None
        if has_test_predictions(cand.predictions):
            return
        with np.load(cand.predictions, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
        if "test_true" not in arrays:
            raise DeferredPredictionError("predictions.npz has no test_true array")
        test = self._stored(cand, arrays) if self._has_stored(cand) else None
        if test is None:
            test = self._predict(cand, arrays)
            self.predicted += 1
            self._log(cand, test, arrays["test_true"])
        merged = cand.predictions.parent / MERGED_FILE
        np.savez(merged, allow_pickle=False, **arrays, test=test)
        cand.predictions = merged

    def model(self, run_id: str) -> Any:
        """The run's ``model.keras``, downloaded and loaded (safe mode) once."""
        from hpo.tracking.models import load_keras_model

        if run_id not in self.models:
            local = self.client.download_artifacts(run_id, MODEL_FILE, str(self.dest / run_id))
            self.models[run_id] = load_keras_model(local)
        return self.models[run_id]

    def _has_stored(self, cand: Any) -> bool:
        names = cand.artifacts  # listed when it was fetched
        if names is None:
            names = {a.path for a in self.client.list_artifacts(cand.run_id)}
        return TEST_PREDICTIONS_FILE in names

    def _stored(self, cand: Any, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
        """The test predictions an earlier build logged, if they match this trial's targets."""
        where = self.dest / cand.run_id / "test"
        local = self.client.download_artifacts(cand.run_id, TEST_PREDICTIONS_FILE, str(where))
        with np.load(local, allow_pickle=False) as data:
            test, y = np.asarray(data["test"]), np.asarray(data["test_true"])
        if not np.array_equal(y, arrays["test_true"]) or len(test) != len(y):
            warnings.warn(
                f"{cand.label}: its {TEST_PREDICTIONS_FILE} does not match its test targets; "
                "predicting again",
                EnsembleWarning,
                stacklevel=3,
            )
            return None
        return test

    def _predict(self, cand: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
        from hpo.families import get_family
        from hpo.inputs import core_model
        from hpo.spaces import Params

        spec = self.specs.get(cand.study)
        if spec is None:
            raise DeferredPredictionError(f"the spec of study {cand.study!r} is unknown")
        try:
            local = self.client.download_artifacts(
                cand.run_id, PARAMS_FILE, str(self.dest / cand.run_id)
            )
            params = json.loads(Path(local).read_text(encoding="utf-8"))
        except Exception as exc:
            raise DeferredPredictionError(f"{PARAMS_FILE}: {type(exc).__name__}: {exc}") from None
        try:
            model = self.model(cand.run_id)
        except Exception as exc:
            raise DeferredPredictionError(f"{type(exc).__name__}: {exc}", "model") from None
        try:
            data = self.datasets.get(spec.dataset)
        except Exception as exc:
            raise DeferredPredictionError(
                f"its dataset {spec.dataset.name!r} cannot be loaded here: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        try:
            family = get_family(spec.family)
        except Exception as exc:
            raise DeferredPredictionError(
                f"its family {spec.family!r}: {type(exc).__name__}: {exc}"
            ) from None
        # The stored model takes raw inputs; the loaded split holds the model's own arrays.
        return predict_test_split(
            family, core_model(model), Params(params), data, arrays, spec.dataset.name
        )

    def _log(self, cand: Any, test: np.ndarray, y: np.ndarray) -> None:
        """Keep them in the trial's run for later builds; a failure costs only a re-predict."""
        from hpo import tracking

        buf = io.BytesIO()
        np.savez_compressed(buf, allow_pickle=False, test=test, test_true=y)
        try:
            tracking.log_artifact_files(
                self.client, cand.run_id, {TEST_PREDICTIONS_FILE: buf.getvalue()}
            )
        except Exception as exc:
            warnings.warn(
                f"{cand.label}: its test predictions could not be stored in its run "
                f"({type(exc).__name__}: {exc}); the next build predicts them again",
                EnsembleWarning,
                stacklevel=3,
            )


def predict_test_split(
    family: Any,
    model: Any,
    params: Any,
    data: Any,
    arrays: dict[str, np.ndarray],
    dataset_name: str,
) -> np.ndarray:
    """``model``'s predictions (by ``family.predict``) for the test examples a trial stored
    the targets of (``arrays``: its ``predictions.npz``; language models store some rows).

    ``model`` takes ``data``'s arrays (not raw inputs). Raises
    :class:`DeferredPredictionError` when the test split loaded here is not the one the trial
    stored, or the predictions are not finite or not shaped like the validation ones.
    """
    rows = arrays.get("test_rows")
    x = data.test.x if rows is None else data.test.x[rows]
    y = data.test.y if rows is None else data.test.y[rows]
    if y.shape != arrays["test_true"].shape or not np.array_equal(y, arrays["test_true"]):
        raise DeferredPredictionError(
            f"the test split of {dataset_name!r} loaded here differs from the one its "
            "trial stored (other data files, or another version of the loader)"
        )
    try:
        test = np.asarray(family.predict(model, params, x))
    except Exception as exc:
        raise DeferredPredictionError(
            f"predicting the test split: {type(exc).__name__}: {exc}"
        ) from None
    if test.shape[0] != len(y) or test.shape[1:] != arrays["validation"].shape[1:]:
        raise DeferredPredictionError(
            f"test predictions have shape {test.shape}; validation ones "
            f"{arrays['validation'].shape}"
        )
    if not np.all(np.isfinite(test)):
        raise DeferredPredictionError("test predictions are not all finite")
    return test


def trial_predictions(
    study: str, trial: int, *, storage: str | None = None, tracking_uri: str | None = None
) -> dict[str, np.ndarray]:
    """Trial ``trial`` of ``study``: its stored predictions, test predictions included.

    The arrays of its ``predictions.npz`` (``validation``, ``validation_true``, ``test_true``,
    language models' ``*_rows``) plus ``test``: read back if an ensemble build (or an earlier
    call) stored them, else predicted now from the trial's model and stored in its run.

    Raises:
        hpo.storage.studies.StudyError: no such study.
        EnsembleError: the trial is not COMPLETE or has no MLflow run.
        DeferredPredictionError: the test predictions cannot be made.

    Example:
        >>> arrays = trial_predictions("digits", 3)  # doctest: +SKIP
        >>> float((arrays["test"].argmax(axis=1) == arrays["test_true"]).mean())  # doctest: +SKIP
        0.9611
    """
    import tempfile

    from hpo import tracking
    from hpo.ensemble._candidates import complete_trials, load_studies
    from hpo.ensemble._errors import EnsembleError
    from hpo.storage import open_storage, resolve_storage
    from hpo.tracking._outbox import is_placeholder

    store = open_storage(resolve_storage(storage))
    (info,) = load_studies(store, [study])
    found = [c for c in complete_trials(store, info) if c.trial_number == trial]
    if not found:
        raise EnsembleError(
            f"study {study!r} has no COMPLETE trial {trial} with an MLflow run that meets the "
            "space's constraints (if any)"
        )
    cand = found[0]
    client = tracking.client(tracking_uri or info.tracking_uri or tracking.resolve_tracking_uri())
    if is_placeholder(cand.run_id):
        cand.run_id = client.resolve(cand.run_id)
    with tempfile.TemporaryDirectory(prefix="hpo-predictions-") as tmp:
        dest = Path(tmp)
        local = client.download_artifacts(cand.run_id, PREDICTIONS_FILE, str(dest / cand.run_id))
        cand.predictions = Path(local)
        DeferredTestPredictions(client, {study: info.spec}, dest, {}).complete(cand)
        with np.load(cand.predictions, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
