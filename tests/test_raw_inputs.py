"""Consistency of raw inputs, tested end to end (issue #18): from the files users hold.

Every path that turns raw inputs into predictions must agree: the study's own path (the
dataset's transformed arrays through each member's trained model, weighted), ``hpo predict``,
the exported ``.keras`` loaded where hpo is not installed, the SavedModel ``serve`` signature,
the MLflow pyfunc model (loaded, and behind a real ``mlflow models serve``). Accuracy on the raw
test file equals the test accuracy the ensemble build reported.

Each dataset's studies are trained once per module (tiny: 2 trials, 1-2 epochs).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_ensemble import artifact_dir, invoke

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

TOL = 1e-5
WINE_NAMES = {0: "barolo", 1: "grignolino", 2: "barbera"}
WINE_NAME = "wine-raw"

TABULAR_SPACE = """\
name: wine_raw
family: dense_bn
dataset:
  name: tabular
  validation_fraction: 0.2
  seed: 0
  options: {{path: {train}, label: cultivar, test_path: {test}}}
objective: {{metric: val_accuracy, direction: maximize}}
budget: {{max_epochs: 2, min_epochs: 1}}
defaults: {{algorithm: optuna-tpe, pruner: none, trials: 2, workers: 1, seed: 0}}
params:
  depth: {{type: int, low: 1, high: 2}}
  units: {{type: int, low: 16, high: 32}}
  shrink: 1.0
  activation: relu
  batchnorm: {{type: categorical, choices: [none, after]}}
  dropout: 0.0
  optimizer:
    type: categorical
    choices:
      adam:
        beta_1: 0.9
  learning_rate: 0.01
  batch_size: 16
"""


# -- helpers -----------------------------------------------------------------------------------


def run_hpo(root: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """``python -m hpo ARGS`` in ``root`` (its hpo.db and mlflow.db)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "MLFLOW_TRACKING_URI")}
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def train(root: Path, space: Path, study: str, *extra: str) -> None:
    proc = run_hpo(
        root, "run", str(space), "--study", study, "--workers", "1", "--pruner", "none",
        "--json", *extra,
    )  # fmt: skip
    assert proc.returncode == 0, f"{study}: {proc.stderr[-3000:]}{proc.stdout[-2000:]}"
    summary = json.loads(proc.stdout)
    assert summary["complete"] == summary["n_trials"], summary


def build(root: Path, name: str, *studies: str) -> dict[str, Any]:
    proc = run_hpo(
        root, "ensemble", "build", *studies, "--name", name, "--method", "average", "--json"
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["exportable"] is not False, out
    return out


def study_path(root: Path, built: dict[str, Any], arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The members' trained models (inside the raw models they saved) on the dataset's own
    transformed arrays, weighted: what the build scored. ``arrays``: study -> inputs."""
    from hpo.inputs import core_model
    from hpo.models import load_keras_model

    total = None
    for m in built["members"]:
        model = load_keras_model(artifact_dir(root, m["run_id"]) / "model.keras")
        core = core_model(model)
        assert core is not model, "the saved model has no raw-input layers"
        x = arrays[m["study"]]
        part = m["weight"] * np.asarray(core.predict(x, verbose=0), dtype=np.float64)
        total = part if total is None else total + part
    assert total is not None
    return total


def close(got: Any, expected: np.ndarray, what: str) -> None:
    got = np.asarray(got, dtype=np.float64).reshape(expected.shape)
    diff = float(np.max(np.abs(got - expected)))
    assert diff <= TOL, f"{what}: differs from the study's path by {diff:.2e}"


def export(root: Path, name: str, fmt: str, out: Path) -> Path:
    proc = run_hpo(root, "export", name, "--format", fmt, "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


LOAD_WITHOUT_HPO = """
import importlib.util, sys
sys.path.append(sys.argv[1])  # site-packages without its .pth files: no editable hpo
assert importlib.util.find_spec("hpo") is None, "hpo is importable"
import keras, numpy as np
model = keras.models.load_model(sys.argv[2], safe_mode=True)
x = np.load(sys.argv[3], allow_pickle=True)
if x.dtype.kind in "US":
    import tensorflow as tf
    x = tf.constant(x.astype(str))
elif x.dtype == object:
    x = np.asarray(x, dtype=object)
np.save(sys.argv[4], np.asarray(model.predict(x, verbose=0)))
"""


def keras_without_hpo(model: Path, x: np.ndarray, tmp: Path) -> np.ndarray:
    """``model``'s predictions for ``x`` in a Python that cannot import hpo."""
    np.save(tmp / "x.npy", x, allow_pickle=x.dtype == object)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LOAD_WITHOUT_HPO, sysconfig.get_paths()["purelib"],
         str(model), str(tmp / "x.npy"), str(tmp / "y.npy")],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.asarray(np.load(tmp / "y.npy"))


def predict_csv(root: Path, ref: str, inputs: Path, out: Path) -> tuple[np.ndarray, list[str]]:
    """``hpo predict REF --input INPUTS --output OUT.csv``: (probabilities, class names)."""
    proc = run_hpo(root, "predict", ref, "--input", str(inputs), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    width = sum(1 for k in rows[0] if k.startswith("p") and k[1:].isdigit())
    probs = np.array([[float(r[f"p{i}"]) for i in range(width)] for r in rows])
    return probs, [r["class_name"] for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served_predictions(model_dir: Path, payload: dict[str, Any], tmp: Path) -> list[Any]:
    """POST ``payload`` to a real ``mlflow models serve`` of ``model_dir``; its predictions."""
    port = free_port()
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir),
         "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1", "-w", "1"],
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        # mlflow runs the venv's uvicorn by name
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, (tmp / "serve.log").read_text()[-3000:]
            time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(exc.read().decode()[-3000:]) from None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    predictions: list[Any] = answer["predictions"]
    return predictions


# -- 1. tabular, from a CSV --------------------------------------------------------------------


def _write_wine(path: Path, x: np.ndarray, y: np.ndarray, names: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*names, "cultivar"])
        for row, label in zip(x, y, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), WINE_NAMES[int(label)]])


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A dense_bn study on a wine CSV with a separate test CSV, and its ensemble."""
    from sklearn.datasets import load_wine

    root = tmp_path_factory.mktemp("raw-wine")
    data = load_wine()
    names = [n.replace("/", "_") for n in data.feature_names]
    order = np.random.default_rng(0).permutation(len(data.target))
    test_idx, train_idx = order[:50], order[50:]
    train_csv, test_csv = root / "wine_train.csv", root / "wine_test.csv"
    _write_wine(train_csv, data.data[train_idx], data.target[train_idx], names)
    _write_wine(test_csv, data.data[test_idx], data.target[test_idx], names)
    space = root / "wine.yaml"
    space.write_text(TABULAR_SPACE.format(train=train_csv, test=test_csv))
    train(root, space, "wine", "--trials", "2", "--epochs", "2")
    built = build(root, WINE_NAME, "wine")
    with test_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        "root": root,
        "space": space,
        "built": built,
        "train_csv": train_csv,
        "test_csv": test_csv,
        "rows": rows,
        "features": names,
    }


def _wine_expected(wine: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(study-path probabilities on the test split, its labels, class names)."""
    from hpo.datasets import load_dataset
    from hpo.spaces import load_spec

    spec = load_spec(wine["space"]).dataset
    data = load_dataset(spec)
    expected = study_path(wine["root"], wine["built"], {"wine": data.test.x})
    return expected, np.asarray(data.test.y), list(data.class_names)


def test_tabular_csv_every_path_agrees(wine: dict[str, Any], tmp_path: Path) -> None:
    import mlflow.pyfunc
    import pandas as pd
    import tensorflow as tf

    root, rows, names = wine["root"], wine["rows"], wine["features"]
    expected, y, class_names = _wine_expected(wine)
    assert class_names == sorted(WINE_NAMES.values())
    # The test split is the test CSV, whole and in order.
    assert [class_names[int(c)] for c in y] == [r["cultivar"] for r in rows]
    raw = np.array([[float(r[n]) for n in names] for r in rows], dtype=np.float32)

    # Accuracy of the raw test CSV is what the build reported for the ensemble.
    reported = wine["built"]["metrics"]["test"]["ensemble"]["accuracy"]
    assert float(np.mean(expected.argmax(axis=1) == y)) == pytest.approx(reported, abs=1e-9)

    # hpo predict on the raw CSV (label column and all), from the registry.
    probs, predicted_names = predict_csv(root, WINE_NAME, wine["test_csv"], tmp_path / "p.csv")
    close(probs, expected, "hpo predict NAME")
    assert predicted_names == [class_names[int(c)] for c in expected.argmax(axis=1)]
    assert set(predicted_names) <= set(WINE_NAMES.values())

    # The exported .keras, where hpo cannot be imported, on the raw rows.
    model = export(root, WINE_NAME, "keras", tmp_path / "wine.keras")
    info = json.loads((tmp_path / "wine.hpo.json").read_text())
    assert info["inputs"]["feature_names"] == names and info["class_names"] == class_names
    close(keras_without_hpo(model, raw, tmp_path), expected, ".keras without hpo")
    # hpo predict on the exported file gives the same.
    probs, _ = predict_csv(root, str(model), wine["test_csv"], tmp_path / "p2.csv")
    close(probs, expected, "hpo predict FILE.keras")

    # SavedModel serve.
    saved = export(root, WINE_NAME, "savedmodel", tmp_path / "saved")
    assert (saved / "hpo.json").is_file()
    loaded = tf.saved_model.load(str(saved))  # kept: serve needs its variables alive
    close(loaded.serve(tf.constant(raw)), expected, "SavedModel serve")

    # MLflow pyfunc: a DataFrame of the raw CSV, label column included (ignored).
    folder = export(root, WINE_NAME, "mlflow", tmp_path / "mlflow-model")
    frame = pd.read_csv(wine["test_csv"])
    assert "cultivar" in frame.columns
    answer = mlflow.pyfunc.load_model(str(folder)).predict(frame)
    assert list(answer.columns) == ["predicted", "class_name", "probabilities"]
    close(np.stack(answer["probabilities"].to_list()), expected, "pyfunc")
    assert answer["class_name"].tolist() == predicted_names

    # A real model server, fed the raw CSV as dataframe_split.
    payload = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    served = served_predictions(folder, payload, tmp_path)
    close(np.array([p["probabilities"] for p in served]), expected, "mlflow models serve")
    assert [p["class_name"] for p in served] == predicted_names
