"""Ensembles of text classifiers and of language models, from tiny real studies.

The studies are the session's small text studies (:func:`conftest.small_text_studies`, shared
with test_language_models and test_text_families), trained by `hpo run`, 1 epoch each:
``char_lstm_small`` (2 trials), ``text_conv1d_small`` (1 trial) and ``text_dense_small``
(1 trial, the same Reuters validation and test newswires). From them: a language-model
ensemble (generation), a text ensemble mixing a bag of words with token sequences (registered
without a model; `hpo predict` from raw text member by member) and a text_conv1d ensemble
(exported with its vocabulary).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from conftest import SMALL_TEXT_STUDIES, small_text_studies

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
DOCS = [
    "Oil prices rose sharply after OPEC ministers agreed to cut crude output, traders said.",
    "The company reported net profit of 12 mln dlrs, up from 9 mln dlrs a year earlier.",
    "Wheat and corn exports fell as the Agriculture Department cut its grain estimates.",
    "The central bank raised interest rates to defend the currency against the dollar.",
]


def cli_app() -> typer.Typer:
    from hpo.cli import _ensemble, _generate

    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("export")(_ensemble.export)
    app.command("predict")(_ensemble.predict)
    app.command("generate")(_generate.generate)
    return app


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli_app(), list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The three studies and three ensembles, in one folder (hpo.db, mlflow.db, mlruns)."""
    from hpo.ensemble import build_ensemble

    root, summaries = small_text_studies(tmp_path_factory, *SMALL_TEXT_STUDIES)
    for name, trials in SMALL_TEXT_STUDIES.items():
        assert summaries[name]["complete"] == trials, summaries[name]
    cache = tmp_path_factory.getbasetemp() / "hpo-cache"
    storage = f"sqlite:///{root / 'hpo.db'}"
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("HPO_STORAGE", raising=False)
        mp.setenv("HPO_CACHE_DIR", str(cache))
        built = {
            "lm": build_ensemble(
                ["char_lstm_small"], "chars-ens", method="average", size=2, storage=storage
            ),
            "mixed": build_ensemble(
                ["text_conv1d_small", "text_dense_small"],
                "mixed-text",
                method="average",
                size=2,
                storage=storage,
            ),
            "conv": build_ensemble(["text_conv1d_small"], "conv-text", size=2, storage=storage),
        }
        yield {"root": root, "built": built, "warnings": [str(w.message) for w in caught]}


@pytest.fixture
def ws(workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(workspace["root"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    return workspace


def artifact_dir(root: Path, run_id: str) -> Path:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    run = MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(run_id)
    return Path(run.info.artifact_uri.removeprefix("file://"))


# --- text classifiers ------------------------------------------------------------------------


def keras_tokens(text: str) -> list[str]:
    """Keras' TextVectorization defaults, written out: ASCII letters lower-cased, its
    punctuation removed, split on ASCII white space."""
    lower = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    stripped = "".join(c for c in lower if c not in "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'")
    return [t for t in re.split("[ \t\n\v\f\r]+", stripped) if t]


def encode_by_hand(doc: dict[str, Any], texts: list[str]) -> np.ndarray:
    """What the trial's dataset did to its documents, written out from text_vocabulary.json."""
    index = {w: i for i, w in enumerate(doc["vocabulary"])}
    assert doc["tokenizer"] == {"name": "keras_text_vectorization"}
    rows = []
    for text in texts:
        tokens = keras_tokens(text)
        if doc["maxlen"]:
            tokens = tokens[: doc["maxlen"]]
        ids = [index.get(t, doc["oov_id"]) for t in tokens]
        if doc["encoding"] == "sequence":
            rows.append((ids + [doc["pad_id"]] * doc["maxlen"])[: doc["maxlen"]])
        else:
            row = np.zeros(len(doc["vocabulary"]), dtype=np.uint8)
            row[ids] = 1
            row[doc["pad_id"]] = 0
            rows.append(list(row))
    return np.asarray(rows)


def members_average(root: Path, members: list[Any], texts: list[str]) -> tuple[np.ndarray, Any]:
    """The weighted average of the members' trained models (inside the stored raw-text
    models) on their own encodings of ``texts``."""
    from hpo.inputs import core_model
    from hpo.tracking.models import load_keras_model

    total = np.zeros(())
    doc: Any = None
    for m in members:
        where = artifact_dir(root, m.run_id)
        doc = json.loads((where / "text_vocabulary.json").read_text(encoding="utf-8"))
        x = encode_by_hand(doc, texts)
        model = core_model(load_keras_model(where / "model.keras"))
        probs = model.predict(x.astype(str(model.inputs[0].dtype)), verbose=0)
        total = total + m.weight * np.asarray(probs, dtype=np.float64)
    return total, doc


def test_mixed_encodings_predict_from_raw_text(ws: dict[str, Any], tmp_path: Path) -> None:
    mixed = ws["built"]["mixed"]
    assert len(mixed.members) == 2 and sorted(m.family for m in mixed.members) == [
        "text_conv1d",
        "text_dense",
    ]
    # Both take raw strings, so bags of words and token sequences make one exported model.
    assert mixed.exportable, mixed.export_problem
    expected, doc = members_average(ws["root"], mixed.members, DOCS)

    lines = tmp_path / "docs.txt"
    lines.write_text("\n".join([DOCS[0], "", *DOCS[1:]]) + "\n", encoding="utf-8")
    result = invoke("predict", "mixed-text", "--input", str(lines), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    probs = np.asarray(data["probabilities"])
    assert probs.shape == (len(DOCS), 46)
    assert np.max(np.abs(probs - expected)) <= 1e-5
    assert data["predicted"] == expected.argmax(axis=1).tolist()
    assert data["predicted_class"] == [doc["class_names"][i] for i in data["predicted"]]
    assert data["documents"] == ["line 1", "line 3", "line 4", "line 5"]

    # A CSV's text column, and a folder of .txt files, give the same predictions.
    table = tmp_path / "docs.csv"
    table.write_text(
        "id,body\n" + "".join(f'{i},"{d}"\n' for i, d in enumerate(DOCS)), encoding="utf-8"
    )
    ref = f"mixed-text:{mixed.version}"
    result = invoke("predict", ref, "-i", str(table), "--text-column", "body")
    assert result.exit_code == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [int(r[1]) for r in rows] == data["predicted"]
    assert [r[2] for r in rows] == data["predicted_class"]  # class names, printed
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, d in enumerate(DOCS):
        (folder / f"{i}.txt").write_text(d, encoding="utf-8")
    out = tmp_path / "out.npz"
    result = invoke("predict", "mixed-text", "-i", str(folder), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    with np.load(out) as saved:
        assert np.max(np.abs(saved["probabilities"] - expected)) <= 1e-5

    result = invoke("predict", "mixed-text", "-i", str(table))
    assert result.exit_code == 2
    assert "no column 'text'" in result.stderr and "'body'" in result.stderr


def test_exported_text_ensemble_takes_raw_text(ws: dict[str, Any], tmp_path: Path) -> None:
    conv = ws["built"]["conv"]
    assert conv.exportable, conv.export_problem
    expected, doc = members_average(ws["root"], conv.members, DOCS)
    path = tmp_path / "conv.keras"
    assert invoke("export", "conv-text", "--output", str(path)).exit_code == 0
    sidecar = tmp_path / "conv.hpo.json"
    info = json.loads(sidecar.read_text(encoding="utf-8"))
    assert info["inputs"]["kind"] == "text" and info["class_names"] == doc["class_names"]
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS), encoding="utf-8")
    for model in (str(path), "conv-text"):
        result = invoke("predict", model, "--input", str(docs), "--json")
        assert result.exit_code == 0, result.stderr
        probs = np.asarray(json.loads(result.stdout)["probabilities"])
        assert np.max(np.abs(probs - expected)) <= 1e-5

    # The vocabulary is inside the file: alone, it still reads text (without class names).
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "conv.keras").write_bytes(path.read_bytes())
    result = invoke("predict", str(lone / "conv.keras"), "--input", str(docs), "--json")
    assert result.exit_code == 0, result.stderr
    probs = np.asarray(json.loads(result.stdout)["probabilities"])
    assert np.max(np.abs(probs - expected)) <= 1e-5


# --- language models ---------------------------------------------------------------------------


def test_language_model_ensemble_reports_loss_and_bits(ws: dict[str, Any]) -> None:
    lm = ws["built"]["lm"]
    assert lm.task == "language_model" and len(lm.members) == 2
    assert lm.exportable, lm.export_problem
    for split in ("validation", "test"):
        for kind in ("ensemble", "best_single", "average"):
            m = lm.metrics[split][kind]
            assert set(m) == {"loss", "bits_per_token"}
            assert m["bits_per_token"] == pytest.approx(m["loss"] / math.log(2))
    # Mixing two members never does worse than the worse of them (log loss is convex).
    assert lm.metrics["test"]["ensemble"]["loss"] <= lm.metrics["test"]["best_single"]["loss"] + 0.5


def test_mixture_is_the_weighted_average_of_member_distributions(ws: dict[str, Any]) -> None:
    from hpo.ensemble._language import language_model_ensemble

    ens = language_model_ensemble("chars-ens")
    assert [m.run_id for m in ens.members] == [m.run_id for m in ws["built"]["lm"].members]
    window = np.asarray([ens.vocabulary.window("HAMLET:"), ens.vocabulary.window("To be")])
    mixed = ens.predict_next(window.astype(np.int32))
    expected = sum(
        w * np.asarray(model.predict(window[:, -v.maxlen :], verbose=0), dtype=np.float64)
        for model, v, w in zip(ens.models, ens.vocabularies, ens.weights, strict=True)
    )
    np.testing.assert_allclose(mixed, expected, atol=1e-6)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-5)
    singles = [np.asarray(m.predict(window, verbose=0)) for m in ens.models]
    assert all(np.max(np.abs(mixed - s)) > 1e-4 for s in singles)  # a real mixture


def test_generate_from_a_language_model_ensemble(ws: dict[str, Any]) -> None:
    lm = ws["built"]["lm"]
    vocab = json.loads(
        (artifact_dir(ws["root"], lm.members[0].run_id) / "vocabulary.json").read_text()
    )["vocabulary"]
    result = invoke(
        "generate", "chars-ens", "--seed-text", "HAMLET:", "-t", "0.5", "-t", "0.2,2.0",
        "--length", "80", "--seed", "4", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ensemble"] == f"ensemble 'chars-ens' version {lm.version}"
    assert [m["run_id"] for m in report["members"]] == [m.run_id for m in lm.members]
    texts = [s["text"] for s in report["samples"]]
    assert [s["temperature"] for s in report["samples"]] == [0.5, 0.2, 2.0]
    assert all(len(t) == 80 and set(t) <= set(vocab) for t in texts)
    assert len(set(texts)) == 3  # temperatures sample differently

    plain = invoke("generate", f"models:/chars-ens/{lm.version}", "--length", "20", "--seed", "4")
    assert plain.exit_code == 0, plain.stderr
    assert "weighted ensemble of 2 char-level models" in " ".join(plain.stdout.split())

    refused = invoke("generate", "mixed-text", "--length", "5")
    assert refused.exit_code == 2
    assert "not of language models" in " ".join(refused.stderr.split())


def test_members_with_different_windows_each_read_their_own() -> None:
    """Two real (untrained) models of windows 3 and 5 over one vocabulary, mixed 1:3."""
    import keras

    from hpo.families.generation import average_predictors, model_predictor, window_predictor

    def lm(maxlen: int, seed: int) -> Any:
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((maxlen,), dtype="int32")
        x = keras.layers.GRU(4)(keras.layers.Embedding(6, 3)(inputs))
        return keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(x))

    short, long = lm(3, 0), lm(5, 1)
    mix = average_predictors(
        [window_predictor(model_predictor(short), 3), window_predictor(model_predictor(long), 5)],
        [1, 3],
    )
    window = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], dtype=np.int32)
    expected = 0.25 * short.predict(window[:, -3:], verbose=0) + 0.75 * long.predict(
        window, verbose=0
    )
    np.testing.assert_allclose(mix(window), expected, atol=1e-6)
    with pytest.raises(ValueError, match="this model needs 5"):
        window_predictor(model_predictor(long), 5)(window[:, :4])


def test_language_models_store_a_bounded_seeded_set_of_windows() -> None:
    from hpo.workers._trial_files import LM_MIN_WINDOWS, LM_STORED_FLOATS, stored_rows

    assert stored_rows(600, 60, "language_model") is None  # small splits: every window
    rows = stored_rows(50_000, 10_000, "language_model")
    assert rows is not None and len(rows) == LM_MIN_WINDOWS
    rows = stored_rows(50_000, 2_000, "language_model")
    assert rows is not None and len(rows) * 2_000 <= LM_STORED_FLOATS
    assert np.all(np.diff(rows) > 0) and rows[-1] < 50_000
    again = stored_rows(50_000, 2_000, "language_model")
    assert again is not None and np.array_equal(rows, again)  # every trial: the same windows
    assert stored_rows(50_000, 10_000, "classification") is None
