"""Test predictions made at the final stage (hpo.ensemble._test_predictions), with small fakes.

The MLflow client is a dictionary of artifacts per run, the model a NumPy function and the
dataset a few arrays; tests/test_ensemble.py covers the same path on real studies.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hpo.ensemble._candidates import Candidate
from hpo.ensemble._errors import EnsembleWarning
from hpo.ensemble._test_predictions import (
    TEST_PREDICTIONS_FILE,
    DeferredPredictionError,
    DeferredTestPredictions,
    has_test_predictions,
)

N_TEST = 12


class FakeClient:
    """Artifacts per run in memory; ``download_artifacts`` writes them where asked."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, bytes]] = {}
        self.logged: list[tuple[str, str]] = []
        self.listed = 0

    def list_artifacts(self, run_id: str) -> list[Any]:
        self.listed += 1
        return [SimpleNamespace(path=name) for name in self.files.get(run_id, {})]

    def download_artifacts(self, run_id: str, name: str, dst: str) -> str:
        path = Path(dst) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.files[run_id][name])
        return str(path)

    def log_artifact_content(self, run_id: str, name: str, content: bytes | Path) -> None:
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        self.files.setdefault(run_id, {})[name] = data
        self.logged.append((run_id, name))


class ScaledFamily:
    """``predict`` returns softmax(x * scale): the trial's parameter must reach it."""

    def predict(self, model: Any, hp: Any, x: np.ndarray) -> np.ndarray:
        z = x * float(hp["scale"])
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture
def data() -> Any:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_TEST, 3)).astype(np.float32)
    y = rng.integers(0, 3, N_TEST)
    return SimpleNamespace(test=SimpleNamespace(x=x, y=y))


def make_trial(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    data: Any,
    *,
    stored: dict[str, np.ndarray] | None = None,
) -> tuple[FakeClient, Candidate, dict[str, np.ndarray]]:
    """One trial run "r1" whose predictions.npz has validation predictions and test targets."""
    import hpo.families

    monkeypatch.setattr(hpo.families, "get_family", lambda name: ScaledFamily())
    arrays = stored or {
        "validation": np.full((5, 3), 1 / 3, np.float32),
        "validation_true": np.zeros(5, np.int64),
        "test_true": data.test.y,
    }
    client = FakeClient()
    client.files["r1"] = {
        "predictions.npz": npz(**arrays),
        "params.json": json.dumps({"scale": 2.0}).encode(),
        "model.keras": b"loaded by the fake model() below",
    }
    local = Path(client.download_artifacts("r1", "predictions.npz", str(tmp_path / "r1")))
    cand = Candidate("s", 3, "r1", 0.9, "val_accuracy", "maximize", "fake", predictions=local)
    return client, cand, arrays


def make_tester(client: FakeClient, tmp_path: Path, data: Any) -> DeferredTestPredictions:
    spec = SimpleNamespace(
        family="fake",
        dataset=SimpleNamespace(name="toy", model_dump_json=lambda: "toy"),
    )
    datasets = SimpleNamespace(get=lambda dataset_spec: data)
    return DeferredTestPredictions(
        client,
        {"s": spec},
        tmp_path / "dest",
        {"r1": object()},
        datasets,  # type: ignore[arg-type]
    )


def read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as d:
        return {k: np.asarray(d[k]) for k in d.files}


def test_missing_test_predictions_are_made_with_the_trials_params_and_stored_in_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Any
) -> None:
    client, cand, arrays = make_trial(tmp_path, monkeypatch, data)
    assert cand.predictions is not None and not has_test_predictions(cand.predictions)
    t = make_tester(client, tmp_path, data)
    t.complete(cand)
    assert t.predicted == 1
    merged = read(cand.predictions)
    expected = ScaledFamily().predict(None, {"scale": 2.0}, data.test.x)
    np.testing.assert_allclose(merged["test"], expected)
    np.testing.assert_array_equal(merged["validation"], arrays["validation"])
    np.testing.assert_array_equal(merged["test_true"], data.test.y)
    assert client.logged == [("r1", TEST_PREDICTIONS_FILE)]

    # A later build (a new tester, fresh download) reads them back instead of predicting.
    again_client, again, _ = make_trial(tmp_path / "2", monkeypatch, data)
    again_client.files["r1"][TEST_PREDICTIONS_FILE] = client.files["r1"][TEST_PREDICTIONS_FILE]
    t2 = make_tester(again_client, tmp_path / "2", data)
    t2._predict = None  # type: ignore[assignment,method-assign]  # would fail if called
    t2.complete(again)
    assert t2.predicted == 0 and again_client.logged == []
    assert again.predictions is not None
    np.testing.assert_allclose(read(again.predictions)["test"], expected)


def test_a_file_that_already_holds_test_predictions_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Any
) -> None:
    old = {
        "validation": np.full((5, 3), 1 / 3, np.float32),
        "validation_true": np.zeros(5, np.int64),
        "test": np.full((N_TEST, 3), 1 / 3, np.float32),
        "test_true": data.test.y,
    }
    client, cand, _ = make_trial(tmp_path, monkeypatch, data, stored=old)
    before = cand.predictions
    t = make_tester(client, tmp_path, data)
    t.complete(cand)
    assert cand.predictions == before and t.predicted == 0 and client.logged == []


def test_only_the_stored_language_model_rows_are_predicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Any
) -> None:
    rows = np.array([1, 4, 7])
    arrays = {
        "validation": np.full((5, 3), 1 / 3, np.float32),
        "validation_true": np.zeros(5, np.int64),
        "test_true": data.test.y[rows],
        "test_rows": rows,
    }
    client, cand, _ = make_trial(tmp_path, monkeypatch, data, stored=arrays)
    make_tester(client, tmp_path, data).complete(cand)
    assert cand.predictions is not None
    merged = read(cand.predictions)
    expected = ScaledFamily().predict(None, {"scale": 2.0}, data.test.x[rows])
    np.testing.assert_allclose(merged["test"], expected)


def test_a_test_split_that_differs_from_the_trials_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Any
) -> None:
    client, cand, _ = make_trial(tmp_path, monkeypatch, data)
    other = SimpleNamespace(test=SimpleNamespace(x=data.test.x, y=(data.test.y + 1) % 3))
    with pytest.raises(DeferredPredictionError, match="differs from the one its trial stored"):
        make_tester(client, tmp_path, other).complete(cand)
    assert client.logged == []


def test_non_finite_or_misshaped_test_predictions_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Any
) -> None:
    client, cand, _ = make_trial(tmp_path, monkeypatch, data)
    client.files["r1"]["params.json"] = json.dumps({"scale": float("nan")}).encode()
    with pytest.raises(DeferredPredictionError, match="not all finite"):
        make_tester(client, tmp_path, data).complete(cand)
    wide = SimpleNamespace(test=SimpleNamespace(x=np.ones((N_TEST, 4)), y=data.test.y))
    client.files["r1"]["params.json"] = json.dumps({"scale": 1.0}).encode()
    with pytest.raises(DeferredPredictionError, match="shape"):
        make_tester(client, tmp_path, wide).complete(cand)


def test_a_model_that_cannot_be_loaded_is_reported_as_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Any
) -> None:
    client, cand, _ = make_trial(tmp_path, monkeypatch, data)
    t = make_tester(client, tmp_path, data)
    t.models.clear()  # the real loader now reads the fake bytes: not a .keras file
    with pytest.raises(DeferredPredictionError) as info:
        t.complete(cand)
    assert info.value.part == "model"


def test_stored_test_predictions_for_other_targets_are_made_again_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Any
) -> None:
    client, cand, _ = make_trial(tmp_path, monkeypatch, data)
    client.files["r1"][TEST_PREDICTIONS_FILE] = npz(
        test=np.zeros((N_TEST, 3), np.float32), test_true=(data.test.y + 1) % 3
    )
    t = make_tester(client, tmp_path, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.complete(cand)
    assert any(
        issubclass(w.category, EnsembleWarning) and "predicting again" in str(w.message)
        for w in caught
    )
    assert t.predicted == 1
    assert cand.predictions is not None
    assert read(cand.predictions)["test"].sum() == pytest.approx(N_TEST, rel=1e-5)


def test_a_candidate_fetched_with_its_file_list_is_not_listed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Any
) -> None:
    client, cand, _ = make_trial(tmp_path, monkeypatch, data)
    stored = npz(test=np.full((N_TEST, 3), 1 / 3, np.float32), test_true=data.test.y)
    client.files["r1"][TEST_PREDICTIONS_FILE] = stored
    cand.artifacts = frozenset(client.files["r1"])  # as fetch_candidates records them
    t = make_tester(client, tmp_path, data)
    t.complete(cand)
    assert client.listed == 0 and t.predicted == 0
    assert cand.predictions is not None
    np.testing.assert_allclose(read(cand.predictions)["test"], 1 / 3)

    # Without the list (a candidate made by hand), the run is listed once.
    client2, cand2, _ = make_trial(tmp_path / "2", monkeypatch, data)
    make_tester(client2, tmp_path / "2", data).complete(cand2)
    assert client2.listed == 1
