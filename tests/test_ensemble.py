"""Ensembles of real studies: digits trials trained by `hpo run`, built from what they stored.

One set of studies (made once per test session, see :func:`studies_workspace`) serves every
test here and in test_export.py: ``digA`` (5 trials), ``digB`` (2 trials, same data) and
``digOther`` (1 trial on another split of digits, for the cross-dataset refusal).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from conftest import REPO

# The studies take minutes to train; on a loaded machine far more than the default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
# Developers may point this at the folder of an earlier session's studies to skip training.
REUSE_ENV = "HPO_TEST_ENSEMBLE_STUDIES"
DIGITS_SPACE = REPO / "search_spaces" / "image_cnn_digits.yaml"
_WORKSPACE: dict[str, Path] = {}


def studies_workspace(factory: pytest.TempPathFactory) -> Path:
    """A folder with three finished studies (hpo.db, mlflow.db, mlruns), made once."""
    if "root" in _WORKSPACE:
        return _WORKSPACE["root"]
    if os.environ.get(REUSE_ENV):
        _WORKSPACE["root"] = Path(os.environ[REUSE_ENV])
        return _WORKSPACE["root"]
    root = factory.mktemp("ensemble-studies")
    other = root / "digits_other_split.yaml"
    # The same space on another seeded split: other validation and test targets.
    other.write_text(
        DIGITS_SPACE.read_text().replace("  seed: 0\nobjective", "  seed: 1\nobjective")
    )
    assert other.read_text() != DIGITS_SPACE.read_text()
    runs = {
        "digA": [str(DIGITS_SPACE), "--trials", "5", "--subset", "800", "--seed", "0"],
        "digB": [str(DIGITS_SPACE), "--trials", "2", "--epochs", "1", "--seed", "1"],
        "digOther": [str(other), "--trials", "1", "--epochs", "1", "--subset", "200"],
    }
    # The studies share one store and one MLflow database; run one after the other (creating
    # both databases from several processes at once races).
    for name, args in runs.items():
        proc = subprocess.run(
            [sys.executable, "-m", "hpo", "run", *args, "--study", name, "--workers", "1",
             "--pruner", "none", "--json"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}{proc.stdout[-2000:]}"
        summary = json.loads(proc.stdout)
        assert summary["complete"] == summary["n_trials"], summary
    _WORKSPACE["root"] = root
    return root


@pytest.fixture(scope="session")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return studies_workspace(tmp_path_factory)


@pytest.fixture
def ws(studies: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in the studies' folder (default hpo.db and mlflow.db)."""
    monkeypatch.chdir(studies)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return studies


def cli_app() -> typer.Typer:
    """The ensemble commands as the lead wires them: `ensemble ...`, `export`, `predict`."""
    from hpo.cli import _ensemble

    app = typer.Typer(pretty_exceptions_enable=False)
    app.add_typer(_ensemble.app, name="ensemble")
    app.command("export")(_ensemble.export)
    app.command("predict")(_ensemble.predict)
    return app


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli_app(), list(args), catch_exceptions=False)


def build_json(*args: str) -> dict[str, Any]:
    result = invoke("ensemble", "build", *args, "--json")
    assert result.exit_code == 0, result.stderr + result.stdout
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def client(root: Path) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_dir(root: Path, run_id: str) -> Path:
    uri = client(root).get_run(run_id).info.artifact_uri
    return Path(uri.removeprefix("file://"))


def stored(root: Path, run_id: str) -> dict[str, np.ndarray]:
    """A trial's predictions.npz, plus the test predictions a build made, once it made them."""
    out: dict[str, np.ndarray] = {}
    for name in ("predictions.npz", "test_predictions.npz"):
        path = artifact_dir(root, run_id) / name
        if path.exists():
            with np.load(path) as data:
                out.update({k: np.asarray(data[k]) for k in data.files})
    return out


@contextmanager
def changed_file(path: Path) -> Iterator[Path]:
    """Let a test damage ``path``; put the original back afterwards."""
    backup = path.with_name(path.name + ".orig")
    shutil.copyfile(path, backup)
    try:
        yield path
    finally:
        shutil.move(backup, path)


def _recompute(root: Path, members: list[dict[str, Any]], split: str) -> dict[str, float]:
    from hpo.ensemble import expected_calibration_error

    mix = None
    y = None
    for m in members:
        arrays = stored(root, m["run_id"])
        part = m["weight"] * arrays[split].astype(np.float64)
        mix = part if mix is None else mix + part
        y = arrays[f"{split}_true"]
    assert mix is not None and y is not None
    p_true = np.clip(mix[np.arange(len(y)), y], 1e-7, 1.0)
    return {
        "accuracy": float(np.mean(mix.argmax(axis=1) == y)),
        "nll": float(-np.mean(np.log(p_true))),
        "ece": expected_calibration_error(mix, y),
    }


def test_caruana_build_is_recorded_registered_and_tagged_both_ways(ws: Path) -> None:
    out = build_json("digA", "--name", "digA-caruana", "--top", "5", "--size", "7")
    assert out["method"] == "caruana" and out["version"] == 1
    weights = np.array([m["weight"] for m in out["members"]])
    assert np.all(weights > 0) and weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weights * 7, np.round(weights * 7), atol=1e-9)
    assert len(out["candidates"]) == 5
    for split in ("validation", "test"):
        assert set(out["metrics"][split]) == {"ensemble", "best_single", "average"}
        for values in out["metrics"][split].values():
            assert set(values) == {"accuracy", "nll", "ece"}

    c = client(ws)
    run = c.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["hpo.kind"] == "ensemble"
    assert run.data.tags["hpo.ensemble.name"] == "digA-caruana"
    assert run.data.tags["hpo.ensemble.version"] == "1"
    assert run.data.tags["hpo.study"] == "digA"
    experiment = c.get_experiment_by_name("digA")
    assert run.info.experiment_id == experiment.experiment_id
    assert run.data.params["method"] == "caruana"
    assert json.loads(run.data.params["members"]) == [
        [m["study"], m["trial"], m["run_id"], m["weight"]] for m in out["members"]
    ]
    assert run.data.metrics["ensemble_test_nll"] == pytest.approx(
        out["metrics"]["test"]["ensemble"]["nll"]
    )
    # Trials did not predict the test split; the build did, for what it scored on test (here
    # every candidate: --size 7 >= 5), from their models, and stored it in their runs.
    made = {}
    for cand in out["candidates"]:
        with np.load(artifact_dir(ws, cand["run_id"]) / "predictions.npz") as data:
            assert "test" not in data.files and "test_true" in data.files
        test_file = artifact_dir(ws, cand["run_id"]) / "test_predictions.npz"
        made[cand["run_id"]] = test_file.stat().st_mtime_ns
        with np.load(test_file) as data:
            assert data["test"].shape == (len(data["test_true"]), 10)
            np.testing.assert_allclose(data["test"].sum(axis=1), 1.0, atol=1e-4)
    files = {a.path for a in c.list_artifacts(out["run_id"])}
    assert {"weights.png", "metrics.png", "ensemble.json", "model"} <= files
    assert "model/MLmodel" in {a.path for a in c.list_artifacts(out["run_id"], "model")}
    # Registered version -> ensemble run -> member trials, and back.
    mv = c.get_model_version("digA-caruana", "1")
    assert mv.run_id == out["run_id"]
    assert mv.source.endswith("/model")
    assert mv.tags["hpo.studies"] == "digA"
    assert mv.tags["hpo.member_runs"].split(",") == [m["run_id"] for m in out["members"]]
    assert c.get_registered_model("digA-caruana").tags["hpo.kind"] == "ensemble"
    for m in out["members"]:
        member = c.get_run(m["run_id"])
        assert member.data.tags["hpo.ensemble.digA-caruana"] == "1"
        assert member.data.tags["hpo.study"] == "digA"
    parent = c.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["hpo.kind"] == "study"
    assert "digA-caruana:1" in parent.data.tags["hpo.ensembles"].split(",")

    # A second build is a new version; list and show read the registry back.
    again = build_json("digA", "--name", "digA-caruana", "--top", "5", "--size", "3")
    assert again["version"] == 2
    # ...reading the stored test predictions back rather than predicting again.
    for run_id, mtime in made.items():
        assert (artifact_dir(ws, run_id) / "test_predictions.npz").stat().st_mtime_ns == mtime
    listed = json.loads(invoke("ensemble", "list", "--json").stdout)
    entry = next(e for e in listed if e["name"] == "digA-caruana")
    assert entry["versions"] == 2 and entry["latest_version"] == 2
    shown = json.loads(invoke("ensemble", "show", "digA-caruana", "--json").stdout)
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    first = shown["versions"][0]
    assert first["method"] == "caruana"
    assert [m["run_id"] for m in first["members"]] == [m["run_id"] for m in out["members"]]
    assert first["metrics"]["test"]["ensemble"] == pytest.approx(out["metrics"]["test"]["ensemble"])
    text = invoke("ensemble", "show", "digA-caruana", "--version", "1")
    assert text.exit_code == 0 and "caruana" in text.stdout
    missing = invoke("ensemble", "show", "no-such-ensemble")
    assert missing.exit_code == 2 and "no registered ensemble" in missing.stderr


@pytest.mark.parametrize("method", ["caruana", "weights", "average"])
def test_reported_metrics_match_recomputation_from_stored_predictions(
    ws: Path, method: str
) -> None:
    out = build_json("digA", "--name", f"digA-{method}", "--method", method, "--size", "3")
    weights = np.array([m["weight"] for m in out["members"]])
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0)
    if method == "average":
        assert len(out["members"]) == 3
        np.testing.assert_allclose(weights, 1 / 3)
        ranked = [c["run_id"] for c in out["candidates"]]
        assert [m["run_id"] for m in out["members"]] == ranked[:3]
    for split in ("validation", "test"):
        expected = _recompute(ws, out["members"], split)
        assert out["metrics"][split]["ensemble"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        best = out["candidates"][0]
        single = _recompute(ws, [{"run_id": best["run_id"], "weight": 1.0}], split)
        assert out["metrics"][split]["best_single"] == pytest.approx(single, rel=1e-5, abs=1e-6)
    # Candidates are ranked by the study's objective (val_accuracy, maximized).
    values = [c["val_accuracy"] for c in out["candidates"]]
    assert values == sorted(values, reverse=True)
    if method == "weights":
        val = out["metrics"]["validation"]
        floor = min(val["best_single"]["nll"], val["average"]["nll"])
        assert val["ensemble"]["nll"] <= floor + 1e-6


def test_the_default_build_selects_on_the_studies_accuracy_objective(ws: Path) -> None:
    # digA optimized val_accuracy: by default caruana selects on accuracy, as --metric
    # accuracy does; --metric nll is still there for calibrated probabilities.
    default = build_json("digA", "--name", "digA-auto", "--size", "4")
    by_accuracy = build_json("digA", "--name", "digA-acc", "--size", "4", "--metric", "accuracy")
    by_nll = build_json("digA", "--name", "digA-nll", "--size", "4", "--metric", "nll")
    assert (default["metric"], by_accuracy["metric"], by_nll["metric"]) == (
        "accuracy",
        "accuracy",
        "nll",
    )
    members = [(m["run_id"], m["weight"]) for m in default["members"]]
    assert members == [(m["run_id"], m["weight"]) for m in by_accuracy["members"]]
    run = client(ws).get_run(default["run_id"])
    assert run.data.params["selection_metric"] == "accuracy"  # what auto chose, in MLflow


def test_the_test_split_plays_no_part_in_choosing_or_weighting(ws: Path) -> None:
    before = {
        method: build_json("digA", "--name", "digA-blind", "--method", method, "--size", "4")
        for method in ("caruana", "weights")
    }
    runs = [c["run_id"] for c in before["caruana"]["candidates"]]
    rng = np.random.default_rng(0)
    with contextlib_exit_stack() as stack:
        # Replace the test predictions the builds made and stored (those they score on test).
        damaged = 0
        for run_id in runs:
            path = artifact_dir(ws, run_id) / "test_predictions.npz"
            if not path.exists():
                continue
            stack.enter_context(changed_file(path))
            arrays = stored(ws, run_id)
            arrays = {
                "test": rng.dirichlet(np.ones(10), size=len(arrays["test"])).astype("float32"),
                "test_true": arrays["test_true"],
            }
            np.savez_compressed(path, **arrays)
            damaged += 1
        assert damaged >= 4
        for method, first in before.items():
            after = build_json("digA", "--name", "digA-blind", "--method", method, "--size", "4")
            assert after["members"] == first["members"]
            assert after["metrics"]["validation"] == first["metrics"]["validation"]
            assert after["metrics"]["test"] != first["metrics"]["test"]


def contextlib_exit_stack() -> Any:
    import contextlib

    return contextlib.ExitStack()


def test_a_trial_without_predictions_is_skipped_with_a_warning(ws: Path) -> None:
    full = build_json("digA", "--name", "digA-skip", "--top", "5", "--method", "average")
    best = full["candidates"][0]
    path = artifact_dir(ws, best["run_id"]) / "predictions.npz"
    with changed_file(path):
        path.unlink()
        result = invoke("ensemble", "build", "digA", "--name", "digA-skip", "--json")
        assert result.exit_code == 0, result.stderr
        out = json.loads(result.stdout)
    warning = (
        f"skipped study 'digA' trial {best['trial']} (run {best['run_id']}): "
        "predictions.npz missing"
    )
    assert warning in " ".join(result.stderr.split())
    assert best["run_id"] not in {c["run_id"] for c in out["candidates"]}
    assert out["skipped"][0]["run_id"] == best["run_id"]
    assert len(out["candidates"]) == 4

    # An unreadable model is skipped too, and the weights are fitted again without it.
    chosen = full["members"][0]
    model = artifact_dir(ws, chosen["run_id"]) / "model.keras"
    with changed_file(model):
        model.write_bytes(b"not a zip file")
        # An average of every candidate loads every model, the damaged one included.
        result = invoke(
            "ensemble", "build", "digA", "--name", "digA-skip", "--method", "average", "--json"
        )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert chosen["run_id"] not in {m["run_id"] for m in out["members"]}
    assert f"trial {chosen['trial']} (run {chosen['run_id']}): its model cannot be loaded" in (
        " ".join(result.stderr.split())
    )


def test_cross_study_ensemble_mixes_studies_in_its_own_experiment(ws: Path) -> None:
    out = build_json("digA", "digB", "--name", "dig-cross", "--top", "7", "--size", "10")
    assert {c["study"] for c in out["candidates"]} == {"digA", "digB"}
    assert len(out["candidates"]) == 7
    values = [c["val_accuracy"] for c in out["candidates"]]
    assert values == sorted(values, reverse=True)
    c = client(ws)
    run = c.get_run(out["run_id"])
    assert c.get_experiment(run.info.experiment_id).name == "ensembles"
    assert run.data.tags["hpo.studies"] == "digA,digB"
    assert "mlflow.parentRunId" not in run.data.tags
    mv = c.get_model_version("dig-cross", str(out["version"]))
    assert mv.tags["hpo.studies"] == "digA,digB"
    for name in ("digA", "digB"):
        experiment = c.get_experiment_by_name(name)
        study_run = c.search_runs(
            [experiment.experiment_id], filter_string="tags.`hpo.kind` = 'study'"
        )[0]
        assert f"dig-cross:{out['version']}" in study_run.data.tags["hpo.ensembles"]


def test_studies_on_different_data_are_refused(ws: Path) -> None:
    result = invoke("ensemble", "build", "digA", "digOther", "--name", "mixed")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "'digA' and 'digOther' did not use the same data" in message
    assert "mixed" not in {m.name for m in client(ws).search_registered_models()}


def test_invalid_options_exit_2(ws: Path) -> None:
    cases = [
        (["digA", "--method", "bagging"], "unknown method"),
        (["digA", "--name", "bad name!"], "invalid ensemble name"),
        (["nope"], "no study named 'nope'"),
    ]
    for args, message in cases:
        result = invoke("ensemble", "build", *args)
        assert result.exit_code == 2, (args, result.stdout)
        assert message in " ".join(result.stderr.split())


def test_ensemble_metric_bench_rebuilds_each_study_per_metric(studies: Path) -> None:
    """bench/ensemble_metric.py on the studies here: a row per build and a ratio line."""
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ensemble_metric.py"), str(studies),
         "--study", "digA", "--study", "digB", "--size", "3", "--top", "3"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines()[2:-2]]
    kinds = [" ".join(r[:-4]) for r in rows]
    assert kinds == [
        "digA best single", "ensemble nll", "ensemble accuracy",
        "digB best single", "ensemble nll", "ensemble accuracy",
    ]  # fmt: skip
    for row in rows:  # validation and test accuracy, then log loss
        assert all(0.0 < float(x) <= 1.0 for x in row[-4:-2]), row
        assert all(float(x) > 0.0 for x in row[-2:]), row
    assert "2 studies, 4 builds in" in out.stdout
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("ratios (ensemble test accuracy") and "nll: " in last, last
