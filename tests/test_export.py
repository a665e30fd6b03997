"""Exporting a registered ensemble (.keras without hpo, SavedModel, MLflow) and `hpo predict`.

The ensemble is built from the digits studies that test_ensemble.py makes once per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_ensemble import artifact_dir, invoke, studies_workspace

from conftest import REPO
from oracles import assert_reported_metrics, stratified_split

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
NAME = "digA-export"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A caruana ensemble of digA registered as NAME, with digits test inputs: ``x`` raw, as
    sklearn's load_digits gives them (8x8 values 0-16), ``x_model`` as the trials read them."""
    from hpo.datasets import load_dataset
    from hpo.ensemble import build_ensemble
    from hpo.spaces import DatasetSpec

    root = studies_workspace(tmp_path_factory)
    result = build_ensemble(["digA"], NAME, size=6, storage=f"sqlite:///{root / 'hpo.db'}")
    data = load_dataset(DatasetSpec(name="digits", validation_fraction=0.15, test_fraction=0.2))
    x_model = data.test.x[:64]
    # Raw pixels, independently of the dataset's scaling: the same rows of load_digits.
    from sklearn.datasets import load_digits

    raw = load_digits().data.reshape(-1, 8, 8).astype(np.float32)
    rows = [
        int(np.flatnonzero((raw / 16.0 == x_model[i, ..., 0]).all(axis=(1, 2)))[0])
        for i in range(len(x_model))
    ]
    return {"root": root, "result": result, "x": raw[rows], "x_model": x_model}


@pytest.fixture
def ws(built: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(built["root"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root: Path = built["root"]
    return root


def members_average(built: dict[str, Any]) -> np.ndarray:
    """The weighted average of the members' own predictions: their trained models (inside the
    stored raw-input models) on the arrays the trials read."""
    from hpo.inputs import core_model
    from hpo.tracking.models import load_keras_model

    total = None
    for m in built["result"].members:
        stored = load_keras_model(artifact_dir(built["root"], m.run_id) / "model.keras")
        model = core_model(stored)
        assert model is not stored, "the stored model does not take raw inputs"
        part = m.weight * np.asarray(model.predict(built["x_model"], verbose=0), dtype=np.float64)
        total = part if total is None else total + part
    assert total is not None
    return total


LOAD_WITHOUT_HPO = """
import importlib.util, sys
sys.path.append(sys.argv[1])  # site-packages without its .pth files: no editable hpo
assert importlib.util.find_spec("hpo") is None, "hpo is importable"
try:
    import hpo  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("import hpo succeeded")
import keras, numpy as np
model = keras.models.load_model(sys.argv[2], safe_mode=True)
np.save(sys.argv[4], model.predict(np.load(sys.argv[3]), verbose=0))
print("loaded", type(model).__name__, len(model.layers))
"""


def test_keras_export_loads_without_hpo_and_equals_the_weighted_members(
    ws: Path, built: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "ensemble.keras"
    result = invoke("export", NAME, "--output", str(out), "--format", "keras")
    assert result.exit_code == 0, result.stderr
    assert out.is_file()
    np.save(tmp_path / "x.npy", built["x"])
    site = sysconfig.get_paths()["purelib"]
    # -I: no PYTHONPATH, no user site, no current directory; -S: no site-packages .pth files
    # (the editable install of hpo is one). Run outside the repository.
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            LOAD_WITHOUT_HPO,
            site,
            str(out),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded" in proc.stdout
    got = np.load(tmp_path / "y.npy")
    expected = members_average(built)
    assert np.max(np.abs(got - expected)) <= 1e-5
    # The file holds standard Keras classes only: no Lambda, nothing of hpo.
    import zipfile

    config = zipfile.ZipFile(out).read("config.json").decode()
    assert "Lambda" not in config and "hpo" not in json.loads(config)["module"]

    again = invoke("export", NAME, "--output", str(out))
    assert again.exit_code == 2 and "exists" in again.stderr
    assert invoke("export", NAME, "--output", str(out), "--overwrite").exit_code == 0
    bad = invoke("export", NAME, "--output", str(tmp_path / "e.bin"))
    assert bad.exit_code == 2 and ".keras" in bad.stderr
    unknown = invoke("export", "no-such", "--output", str(tmp_path / "n.keras"))
    assert unknown.exit_code == 2 and "no registered ensemble" in unknown.stderr


def test_reported_test_metrics_equal_sklearn_on_the_raw_test_split(
    ws: Path, built: dict[str, Any], tmp_path: Path
) -> None:
    """What the build reported, recorded in MLflow and wrote to ensemble.json, against an
    oracle that shares nothing with hpo: digits read with scikit-learn, the test split made by
    the documented rule, the exported file in plain Keras, scikit-learn's metrics."""
    import keras
    from mlflow import MlflowClient
    from sklearn.datasets import load_digits

    digits = load_digits()
    spec = {"validation_fraction": 0.15, "test_fraction": 0.2, "seed": 0}
    assert f"test_fraction: {spec['test_fraction']}\n  seed: {spec['seed']}" in (
        (REPO / "search_spaces" / "image_cnn_digits.yaml").read_text()
    )
    _, _, test = stratified_split(
        digits.target, spec["validation_fraction"], spec["test_fraction"], spec["seed"]
    )
    x = digits.data[test].reshape(-1, 8, 8).astype(np.float32)  # raw values 0..16
    y = digits.target[test]

    out = tmp_path / "ensemble.keras"
    assert invoke("export", NAME, "--output", str(out)).exit_code == 0
    probs = keras.models.load_model(out, safe_mode=True).predict(x, verbose=0)

    reported = built["result"].metrics["test"]["ensemble"]
    assert_reported_metrics(reported, probs, y, num_classes=10)
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    run_id = built["result"].run_id
    logged = MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics
    assert_reported_metrics(
        {k: logged[f"ensemble_test_{k}"] for k in ("accuracy", "nll", "ece")}, probs, y, 10
    )
    saved = json.loads((artifact_dir(ws, run_id) / "ensemble.json").read_text())
    assert_reported_metrics(saved["metrics"]["test"]["ensemble"], probs, y, 10)


def test_savedmodel_and_mlflow_exports_load_and_predict(
    ws: Path, built: dict[str, Any], tmp_path: Path
) -> None:
    import mlflow.pyfunc
    import tensorflow as tf

    expected = members_average(built)
    saved = tmp_path / "savedmodel"
    result = invoke("export", NAME, "--output", str(saved), "--format", "savedmodel")
    assert result.exit_code == 0, result.stderr
    served = tf.saved_model.load(str(saved))
    got = np.asarray(served.serve(tf.constant(built["x"])))
    assert np.max(np.abs(got - expected)) <= 1e-5

    folder = tmp_path / "mlflow-model"
    result = invoke("export", NAME, "--output", str(folder), "--format", "mlflow", "--version", "1")
    assert result.exit_code == 0, result.stderr
    assert (folder / "MLmodel").is_file()
    model = mlflow.pyfunc.load_model(str(folder))
    frame = model.predict(built["x"])
    got = np.stack(frame["probabilities"].to_numpy())
    assert np.max(np.abs(got - expected)) <= 1e-5
    assert frame["class_name"].tolist() == [str(c) for c in expected.argmax(axis=1)]


def test_predict_from_a_file_and_from_the_registry(
    ws: Path, built: dict[str, Any], tmp_path: Path
) -> None:
    model = tmp_path / "ensemble.keras"
    assert invoke("export", NAME, "--output", str(model)).exit_code == 0
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=built["x"])
    expected = members_average(built)

    out = tmp_path / "predictions.npz"
    result = invoke("predict", str(model), "--input", str(inputs), "--output", str(out))
    assert result.exit_code == 0, result.stderr
    with np.load(out) as data:
        assert np.max(np.abs(data["probabilities"] - expected)) <= 1e-5
        np.testing.assert_array_equal(data["predicted"], expected.argmax(axis=1))

    result = invoke("predict", f"{NAME}:1", "--input", str(inputs), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["predicted"] == expected.argmax(axis=1).tolist()

    # A CSV of 64 raw values per row (no header) is reshaped to the model's 8x8 images.
    csv = tmp_path / "inputs.csv"
    np.savetxt(csv, built["x"][:3].reshape(3, -1), delimiter=",")
    result = invoke("predict", str(model), "--input", str(csv))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [int(line.split("\t")[1]) for line in lines] == expected[:3].argmax(axis=1).tolist()

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, features=built["x"])
    result = invoke("predict", str(model), "--input", str(wrong))
    assert result.exit_code == 2 and "no array named 'x'" in result.stderr


def test_predict_refuses_lambda_layers_and_legacy_h5(ws: Path, tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    data = tmp_path / "x.npz"
    np.savez(data, x=np.zeros((2, 4), dtype="float32"))
    result = invoke("predict", str(path), "--input", str(data))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "refused" in message and "Lambda" in message

    h5 = tmp_path / "legacy.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    result = invoke("predict", str(h5), "--input", str(data))
    assert result.exit_code == 2
    assert "legacy HDF5" in " ".join(result.stderr.split())


def test_members_with_custom_classes_cannot_be_one_standard_file() -> None:
    import keras

    from hpo.ensemble import EnsembleError, ensemble_model
    from hpo.ensemble._export import check_standard

    @keras.saving.register_keras_serializable(package="somefamily")
    class Scale(keras.layers.Layer):  # type: ignore[misc]
        def call(self, x: Any) -> Any:
            return x * 2.0

    inputs = keras.Input((3,))
    member = keras.Model(inputs, keras.layers.Softmax()(Scale()(inputs)))
    ensemble = ensemble_model([member, member], [0.5, 0.5], ["a", "b"])
    with pytest.raises(EnsembleError, match=r"custom classes .*Scale.*VAE"):
        check_standard(ensemble)
