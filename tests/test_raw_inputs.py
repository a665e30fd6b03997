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
from test_ensemble import artifact_dir

from oracles import assert_reported_metrics, encode, stratified_split, vocabulary

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
    env["COLUMNS"] = "400"  # messages are judged unwrapped
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
    from hpo.tracking.models import load_keras_model

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
# compile=False: a trial's language model is compiled with hpo's bits_per_token metric
model = keras.models.load_model(sys.argv[2], safe_mode=True, compile=False)
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
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
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
    got = keras_without_hpo(model, raw, tmp_path)
    close(got, expected, ".keras without hpo")
    # The reported test metrics, against scikit-learn on the raw CSV's rows and labels (CSV
    # labels take their alphabetical index), through the file loaded in plain Keras.
    labels = np.array([sorted(WINE_NAMES.values()).index(r["cultivar"]) for r in rows])
    assert_reported_metrics(wine["built"]["metrics"]["test"]["ensemble"], got, labels, 3)
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


# -- 5. export and predict safety ----------------------------------------------------------------


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2 with one ``error:`` line (last, after TensorFlow's start-up noise), no traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:] + proc.stdout[-1000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-2000:]
    for word in words:
        assert word in errors[0], errors[0]


def test_export_and_predict_refuse_to_damage_files(wine: dict[str, Any], tmp_path: Path) -> None:
    root = wine["root"]
    folder = export(root, WINE_NAME, "mlflow", tmp_path / "model")
    before = _tree(folder)
    # An unknown ensemble with --overwrite: refused, the earlier export left as it was.
    proc = run_hpo(root, "export", "nosuch", "--format", "mlflow", "--output", str(folder),
                   "--overwrite")  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "nosuch" in proc.stderr
    assert _tree(folder) == before
    # --overwrite onto a folder that is not an earlier export: refused, untouched.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = run_hpo(root, "export", WINE_NAME, "--format", "mlflow", "--output", str(mine),
                   "--overwrite")  # fmt: skip
    assert proc.returncode == 2 and "not an earlier export" in " ".join(proc.stderr.split())
    assert _tree(mine) == {"notes.txt": b"keep me"}
    # An earlier export is replaced with --overwrite.
    proc = run_hpo(root, "export", WINE_NAME, "--format", "mlflow", "--output", str(folder),
                   "--overwrite")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (folder / "MLmodel").is_file()

    # predict --output onto an existing file: refused without --overwrite, file unchanged.
    existing = tmp_path / "existing.csv"
    existing.write_text("mine\n")
    proc = run_hpo(root, "predict", WINE_NAME, "--input", str(wine["test_csv"]),
                   "--output", str(existing))  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert existing.read_text() == "mine\n"
    proc = run_hpo(root, "predict", WINE_NAME, "--input", str(wine["test_csv"]),
                   "--output", str(existing), "--overwrite")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert existing.read_text().startswith("p0,p1,p2,predicted,class_name")

    # A CSV with a header and no rows; a CSV with a missing (NaN) feature value.
    lines = wine["test_csv"].read_text().splitlines()
    empty = tmp_path / "empty.csv"
    empty.write_text(lines[0] + "\n")
    _one_line_error(run_hpo(root, "predict", WINE_NAME, "--input", str(empty)), "no examples")
    cells = lines[2].split(",")
    cells[3] = "nan"
    nan = tmp_path / "nan.csv"
    nan.write_text("\n".join([lines[0], lines[1], ",".join(cells)]) + "\n")
    _one_line_error(run_hpo(root, "predict", WINE_NAME, "--input", str(nan)), "NaN", "rows 2")
    cells[3] = ""
    nan.write_text("\n".join([lines[0], ",".join(cells)]) + "\n")
    _one_line_error(run_hpo(root, "predict", WINE_NAME, "--input", str(nan)), "NaN")


# -- 2. images: a mixed dense_bn + image_cnn ensemble on Fashion-MNIST ----------------------------

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_DATASET = """\
dataset:
  name: fashion_mnist
  subset: 600
  validation_fraction: 0.02
  seed: 0
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1, min_epochs: 1}
defaults: {algorithm: optuna-tpe, pruner: none, trials: 1, workers: 1, seed: 0}
"""
DENSE_FASHION = f"""\
name: fashion_dense_raw
family: dense_bn
{FASHION_DATASET}params:
  depth: 1
  units: {{type: int, low: 16, high: 32}}
  shrink: 1.0
  activation: relu
  batchnorm: none
  dropout: 0.0
  optimizer: {{type: categorical, choices: {{adam: {{beta_1: 0.9}}}}}}
  learning_rate: 0.003
  batch_size: 64
"""
CNN_FASHION = f"""\
name: fashion_cnn_raw
family: image_cnn
{FASHION_DATASET}params:
  conv_blocks: 1
  filters: 8
  kernel_size: 3
  conv_type: Conv2D
  batchnorm: {{type: categorical, choices: [none, after]}}
  pooling: max
  dropout: 0.0
  dense_units: 0
  optimizer: {{type: categorical, choices: {{adam: {{beta_1: 0.9}}}}}}
  learning_rate: 0.003
  batch_size: 64
"""
FASHION_NAME = "fashion-raw"


def _idx(path: Path, header: int) -> np.ndarray:
    import gzip

    return np.frombuffer(gzip.decompress(path.read_bytes())[header:], dtype=np.uint8)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two tiny Fashion-MNIST studies of two families and their average ensemble."""
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no Fashion-MNIST in {FASHION_DIR}")
    root = tmp_path_factory.mktemp("raw-fashion")
    spaces = {"fmDense": DENSE_FASHION, "fmCnn": CNN_FASHION}
    for study, text in spaces.items():
        (root / f"{study}.yaml").write_text(text)
        train(root, root / f"{study}.yaml", study, "--trials", "2" if study == "fmDense" else "1")
    built = build(root, FASHION_NAME, *spaces)
    assert {m["study"] for m in built["members"]} == set(spaces), built["members"]
    images = _idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return {"root": root, "built": built, "images": images, "labels": labels, "spaces": spaces}


def test_images_mixed_ensemble_every_path_agrees(fashion: dict[str, Any], tmp_path: Path) -> None:
    import mlflow.pyfunc

    from hpo.datasets import load_dataset
    from hpo.spaces import load_spec

    root, images, labels = fashion["root"], fashion["images"], fashion["labels"]
    assert images.dtype == np.uint8 and images.shape == (10000, 28, 28)
    arrays = {}
    for study in fashion["spaces"]:
        data = load_dataset(load_spec(root / f"{study}.yaml").dataset)
        np.testing.assert_array_equal(data.test.y, labels)  # the test split is t10k, in order
        arrays[study] = data.test.x
    expected = study_path(root, fashion["built"], arrays)
    reported = fashion["built"]["metrics"]["test"]["ensemble"]["accuracy"]
    assert float(np.mean(expected.argmax(axis=1) == labels)) == pytest.approx(reported, abs=1e-9)

    # All 10,000 raw uint8 images through the exported .keras, without hpo.
    model = export(root, FASHION_NAME, "keras", tmp_path / "fashion.keras")
    got = keras_without_hpo(model, images, tmp_path)
    close(got, expected, ".keras without hpo")
    # Every reported test metric, against scikit-learn on the t10k IDX files read here.
    assert_reported_metrics(fashion["built"]["metrics"]["test"]["ensemble"], got, labels, 10)

    first = slice(0, 500)
    np.savez(tmp_path / "images.npz", x=images[first])
    probs, names = predict_csv(root, FASHION_NAME, tmp_path / "images.npz", tmp_path / "p.csv")
    close(probs, expected[first], "hpo predict NAME")
    from hpo.datasets.fashion_mnist import CLASS_NAMES

    assert names == [CLASS_NAMES[int(c)] for c in expected[first].argmax(axis=1)]

    folder = export(root, FASHION_NAME, "mlflow", tmp_path / "mlflow-model")
    answer = mlflow.pyfunc.load_model(str(folder)).predict(images[first])
    close(np.stack(answer["probabilities"].to_list()), expected[first], "pyfunc")
    assert answer["class_name"].tolist() == names

    import tensorflow as tf

    saved = export(root, FASHION_NAME, "savedmodel", tmp_path / "saved")
    loaded = tf.saved_model.load(str(saved))  # kept: serve needs its variables alive
    close(loaded.serve(tf.constant(images[first], tf.float32)), expected[first], "SavedModel")

    # A real model server, fed raw pixels as JSON (what a client sends).
    few = slice(0, 40)
    served = served_predictions(folder, {"inputs": images[few].tolist()}, tmp_path)
    close(np.array([p["probabilities"] for p in served]), expected[few], "mlflow models serve")
    assert [p["class_name"] for p in served] == names[few]


# -- 3. text: a mixed text_conv1d + text_dense ensemble on Reuters newswires ---------------------

TEXT_DATASET = """\
dataset:
  name: text_classification
  validation_fraction: 0.15
  seed: 0
  options: {{path: {train}, test_path: {test}, label_column: topic, num_words: 1000, {encoding}}}
objective: {{metric: val_accuracy, direction: maximize}}
budget: {{max_epochs: 2, min_epochs: 1}}
defaults: {{algorithm: optuna-tpe, pruner: none, trials: 1, workers: 1, seed: 0}}
"""
CONV_TEXT = """\
name: text_conv_raw
family: text_conv1d
{dataset}params:
  embedding_dim: 8
  blocks: 1
  filters: 8
  kernel_size: 3
  pooling: max
  global_pooling: max
  dropout: 0.0
  dense_units: 0
  optimizer: {{type: categorical, choices: {{adam: {{beta_1: 0.9}}}}}}
  learning_rate: 0.01
  batch_size: 32
"""
DENSE_TEXT = """\
name: text_dense_raw
family: text_dense
{dataset}params:
  layers: 1
  units: 16
  dropout: 0.0
  optimizer: adam
  learning_rate: 0.01
  batch_size: 32
"""
TEXT_NAME = "reuters-raw"
TOPICS = ("acq", "crude", "earn")


def _write_docs(path: Path, docs: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "topic"])
        writer.writerows(docs)


@pytest.fixture(scope="module")
def reuters_text(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two tiny text studies of two families on a Reuters CSV and their average ensemble."""
    from hpo.datasets import reuters

    archive = reuters.REPO / reuters.SHARED_ARCHIVE
    if not archive.is_file():
        pytest.skip(f"Reuters-21578 is not at {archive}")
    docs: dict[str, list[str]] = {t: [] for t in TOPICS}
    for doc in reuters.read_collection(archive):
        text = " ".join(doc.text.split())  # one line: `hpo predict` reads a document a line
        if len(doc.topics) == 1 and doc.topics[0] in docs and text:
            docs[doc.topics[0]].append(text)
    train_docs = [(d, t) for t in TOPICS for d in docs[t][:100]]
    test_docs = [(d, t) for i in range(40) for t in TOPICS for d in [docs[t][100 + i]]]
    root = tmp_path_factory.mktemp("raw-text")
    train_csv, test_csv = root / "train.csv", root / "test.csv"
    _write_docs(train_csv, train_docs)
    _write_docs(test_csv, test_docs)
    spaces = {
        "txConv": CONV_TEXT.format(
            dataset=TEXT_DATASET.format(
                train=train_csv, test=test_csv, encoding="maxlen: 64, encoding: sequence"
            )
        ),
        "txDense": DENSE_TEXT.format(
            dataset=TEXT_DATASET.format(
                train=train_csv, test=test_csv, encoding="encoding: multi_hot"
            )
        ),
    }
    for study, text in spaces.items():
        (root / f"{study}.yaml").write_text(text)
        train(root, root / f"{study}.yaml", study)
    built = build(root, TEXT_NAME, *spaces)
    assert {m["study"] for m in built["members"]} == set(spaces), built["members"]
    return {"root": root, "built": built, "train": train_docs, "test": test_docs, "spaces": spaces}


def test_exported_text_models_vectorize_as_the_raw_documents_say(
    reuters_text: dict[str, Any], tmp_path: Path
) -> None:
    """The exported model's own text layers against a vocabulary and encodings the test makes
    from the raw training CSV (tests/oracles.py): the documented split, tokens, ranking, ids."""
    import keras
    import tensorflow as tf

    train_docs, texts = reuters_text["train"], [d for d, _ in reuters_text["test"]]
    topics = np.array([sorted(TOPICS).index(t) for _, t in train_docs])
    train_idx, _, _ = stratified_split(topics, 0.15, 0.0, seed=0)  # TEXT_DATASET's split
    vocab = vocabulary([train_docs[i][0] for i in train_idx], num_words=1000)
    oracle = {
        "txConv": encode(texts, vocab, maxlen=64, multi_hot=False),
        "txDense": encode(texts, vocab, maxlen=None, multi_hot=True),
    }
    model = export(reuters_text["root"], TEXT_NAME, "keras", tmp_path / "text.keras")
    exported = keras.models.load_model(model, safe_mode=True, compile=False)
    members = [layer for layer in exported.layers if isinstance(layer, keras.Model)]
    studies = [m["study"] for m in reuters_text["built"]["members"]]
    assert len(members) == len(studies) and set(studies) == set(oracle)
    for member, study in zip(members, studies, strict=True):
        # Between the raw-string input and the trained model: the text layers, in order.
        x: Any = tf.constant(texts)
        steps = [layer for layer in member.layers[1:] if not isinstance(layer, keras.Model)]
        for layer in steps:
            x = layer(x)
        vectorizer = next(s for s in steps if isinstance(s, keras.layers.TextVectorization))
        assert vectorizer.get_vocabulary()[2:] == vocab[2:], study
        got = np.asarray(x)
        np.testing.assert_array_equal(got, oracle[study].astype(got.dtype), err_msg=study)


def test_text_mixed_ensemble_is_one_model_and_every_path_agrees(
    reuters_text: dict[str, Any], tmp_path: Path
) -> None:
    import mlflow.pyfunc

    from hpo.datasets import load_dataset
    from hpo.spaces import load_spec

    root, test = reuters_text["root"], reuters_text["test"]
    texts = [d for d, _ in test]
    arrays = {}
    for study in reuters_text["spaces"]:
        data = load_dataset(load_spec(root / f"{study}.yaml").dataset)
        assert list(data.class_names) == sorted(TOPICS)
        # The test split is the test CSV, whole and in order.
        assert [data.class_names[int(c)] for c in data.test.y] == [t for _, t in test]
        arrays[study] = data.test.x
    expected = study_path(root, reuters_text["built"], arrays)
    labels = np.array([sorted(TOPICS).index(t) for _, t in test])
    reported = reuters_text["built"]["metrics"]["test"]["ensemble"]["accuracy"]
    assert float(np.mean(expected.argmax(axis=1) == labels)) == pytest.approx(reported, abs=1e-9)

    # One exported file for the two families, taking raw strings, without hpo.
    model = export(root, TEXT_NAME, "keras", tmp_path / "text.keras")
    got = keras_without_hpo(model, np.asarray(texts, dtype=object), tmp_path)
    close(got, expected, ".keras without hpo")
    assert_reported_metrics(reuters_text["built"]["metrics"]["test"]["ensemble"], got, labels, 3)

    lines = tmp_path / "docs.txt"
    lines.write_text("\n".join(texts) + "\n", encoding="utf-8")
    probs, names = predict_csv(root, TEXT_NAME, lines, tmp_path / "p.csv")
    close(probs, expected, "hpo predict NAME (.txt)")
    assert names == [sorted(TOPICS)[int(c)] for c in expected.argmax(axis=1)]
    probs, _ = predict_csv(root, str(model), lines, tmp_path / "p2.csv")
    close(probs, expected, "hpo predict FILE.keras (.txt)")

    import pandas as pd

    folder = export(root, TEXT_NAME, "mlflow", tmp_path / "mlflow-model")
    answer = mlflow.pyfunc.load_model(str(folder)).predict(pd.DataFrame({"text": texts}))
    close(np.stack(answer["probabilities"].to_list()), expected, "pyfunc")
    assert answer["class_name"].tolist() == names

    import tensorflow as tf

    saved = export(root, TEXT_NAME, "savedmodel", tmp_path / "saved")
    loaded = tf.saved_model.load(str(saved))  # kept: serve needs its variables alive
    close(loaded.serve(tf.constant(texts)), expected, "SavedModel")

    # A real model server, fed raw strings.
    payload = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts[:30]]}}
    served = served_predictions(folder, payload, tmp_path)
    close(np.array([p["probabilities"] for p in served]), expected[:30], "mlflow models serve")
    assert [p["class_name"] for p in served] == names[:30]


# -- 4. integer sequences and a character language model ------------------------------------------

SORTED_SPACE = """\
name: sorted_raw
family: sorted_seq
dataset:
  name: sorted_sequences
  validation_fraction: 0.2
  test_fraction: 0.2
  seed: 0
  options: {n: 600, min_length: 5, max_length: 8, low: 3, high: 30}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1, min_epochs: 1}
defaults: {algorithm: optuna-tpe, pruner: none, trials: 1, workers: 1, seed: 0}
params:
  input: {type: categorical, choices: {scalar: {}}}
  cell: GRU
  units: 8
  bidirectional: false
  layers: 1
"""
CHAR_SPACE = """\
name: char_raw
family: char_lstm
dataset:
  name: text_corpus
  validation_fraction: 0.1
  test_fraction: 0.1
  seed: 0
  options: {{path: {path}, level: char, maxlen: 12, step: 3}}
objective: {{metric: val_loss, direction: minimize}}
budget: {{max_epochs: 1, min_epochs: 1}}
defaults: {{algorithm: optuna-tpe, pruner: none, trials: 1, workers: 1, seed: 0}}
params:
  encoding: {{type: categorical, choices: {{onehot: {{}}}}}}
  cell: GRU
  units: 16
  layers: 1
  dropout: 0.0
  optimizer: adam
  learning_rate: 0.01
  batch_size: 64
"""


@pytest.fixture(scope="module")
def sequences(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A one-trial sorted_seq study and a one-trial character LM study, each an ensemble."""
    root = tmp_path_factory.mktemp("raw-seq")
    (root / "sorted.yaml").write_text(SORTED_SPACE)
    words = (__doc__ or "").split() * 12
    (root / "corpus.txt").write_text(" ".join(words) + "\n", encoding="utf-8")
    (root / "char.yaml").write_text(CHAR_SPACE.format(path=root / "corpus.txt"))
    train(root, root / "sorted.yaml", "seq")
    train(root, root / "char.yaml", "chars")
    return {"root": root, "seq": build(root, "seq-raw", "seq")}


def test_sorted_sequences_raw_values_agree(sequences: dict[str, Any], tmp_path: Path) -> None:
    from hpo.datasets import load_dataset
    from hpo.spaces import load_spec

    root = sequences["root"]
    data = load_dataset(load_spec(root / "sorted.yaml").dataset)
    expected = study_path(root, sequences["seq"], {"seq": data.test.x})
    tokens = np.asarray(data.test.x).astype(np.int64)
    raw = tokens + 3 - 1  # the values themselves; padding 0 becomes low - 1 = 2
    assert raw.min() == 2 and raw.max() <= 30 and (raw[tokens > 0] >= 3).all()
    reported = sequences["seq"]["metrics"]["test"]["ensemble"]["accuracy"]
    predicted = (expected.reshape(len(expected), -1)[:, 0] >= 0.5).astype(int)
    assert float(np.mean(predicted == data.test.y)) == pytest.approx(reported, abs=1e-9)

    model = export(root, "seq-raw", "keras", tmp_path / "seq.keras")
    close(keras_without_hpo(model, raw, tmp_path), expected, ".keras without hpo")
    np.savez(tmp_path / "seq.npz", x=raw)
    probs, _ = predict_csv(root, "seq-raw", tmp_path / "seq.npz", tmp_path / "p.csv")
    close(probs, expected, "hpo predict NAME")


def test_char_language_model_takes_token_windows(sequences: dict[str, Any], tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from hpo.datasets import load_dataset
    from hpo.inputs import core_model
    from hpo.spaces import load_spec
    from hpo.tracking.models import load_keras_model

    root = sequences["root"]
    data = load_dataset(load_spec(root / "char.yaml").dataset)
    assert data.inputs is not None and data.inputs.kind == "tokens"
    vocabulary = data.inputs.steps[0]["vocabulary"]
    ids = np.asarray(data.test.x[:300]).astype(np.int64)
    windows = np.asarray([[vocabulary[i] for i in row] for row in ids], dtype=str)
    # Lines of text lose leading and trailing white space: keep windows without any there.
    keep = [i for i, w in enumerate(windows) if w[0].strip() and w[-1].strip()]
    ids, windows = ids[keep], windows[keep]

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("chars")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if (artifact_dir(root, r.info.run_id) / "model.keras").is_file()
    ]
    assert runs
    path = artifact_dir(root, runs[0].info.run_id) / "model.keras"
    model = load_keras_model(path)
    expected = np.asarray(core_model(model).predict(ids, verbose=0), dtype=np.float64)
    close(keras_without_hpo(path, windows, tmp_path), expected, "trial .keras on windows")

    # hpo predict: one context per line, the model reads its last maxlen characters.
    contexts = tmp_path / "contexts.txt"
    lines = ["".join(w) for w in windows]
    assert all("\n" not in line for line in lines)
    contexts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    exported = tmp_path / "chars.keras"
    (tmp_path / "chars.hpo.json").write_text(
        json.dumps({"inputs": data.inputs.to_json(), "class_names": list(vocabulary)})
    )
    import shutil

    shutil.copyfile(path, exported)
    probs, _ = predict_csv(root, str(exported), contexts, tmp_path / "p.csv")
    close(probs, expected, "hpo predict FILE.keras (.txt contexts)")
