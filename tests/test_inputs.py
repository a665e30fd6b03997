"""Raw inputs (hpo.inputs): the layers a saved model carries make exactly the arrays the model
trained on, from what users hold.

Each oracle is independent of the code under test: TensorFlow's own TextVectorization for the
tokenizer, numpy arithmetic written here for images, tables and sequences, and the datasets'
arrays (what training read) for the end-to-end layer checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo.inputs import InputSpec, core_model, keras_tokenize, raw_model

# Text that exercises what the tokenizer must agree on: ASCII and non-ASCII letters in both
# cases, every ASCII punctuation mark, ASCII and Unicode white space, digits.
TEXT = st.text(
    alphabet=st.sampled_from(
        list("aZqÉéßİΣ\u03c3日本0 9")
        + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
        + [" ", "\t", "\n", "\r", "\v", "\f", "\x1c", "\x85", "\xa0", "\u2003", "\u3000"]
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TEXT, min_size=1, max_size=8))
def test_tokens_are_textvectorizations(texts: list[str]) -> None:
    """hpo tokenizes training text without TensorFlow; the saved layer must agree exactly."""
    import keras

    layer = keras.layers.TextVectorization(output_mode="int", vocabulary=["zz"])
    vocabulary = sorted({t for text in texts for t in keras_tokenize(text)})
    if vocabulary:
        layer.set_vocabulary(vocabulary)
    ids = np.asarray(layer(np.asarray(texts, dtype=object)))
    words = ["", "[UNK]", *vocabulary] if vocabulary else ["", "[UNK]", "zz"]
    for text, row in zip(texts, ids, strict=True):
        got = [words[i] for i in row if i != 0]
        assert got == keras_tokenize(text), (text, got)


def test_image_and_sequence_layers_match_the_arithmetic() -> None:
    import keras

    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    inner = keras.Sequential([keras.Input((4, 3, 1)), keras.layers.Flatten()])
    model = raw_model(inner, InputSpec.image((4, 3), scale=1 / 255, channels=1))
    got = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(got, pixels.reshape(5, -1) / 255.0, atol=1e-7)

    values = np.array([[3, 7, 42, -1, -1], [0, 0, 99, 99, -1]])  # padded with low - 1 = -1
    tokens = keras.Sequential([keras.Input((5,)), keras.layers.Identity()])
    seq = raw_model(tokens, InputSpec.sequence(5, low=0))
    np.testing.assert_array_equal(seq.predict(values, verbose=0), values + 1)  # 0 = padding


def test_normalization_matches_training_statistics() -> None:
    import keras

    rng = np.random.default_rng(1)
    train = rng.normal(5.0, 3.0, size=(50, 2, 3))
    mean, std = train.mean(axis=0), train.std(axis=0)
    names = [f"f{i}" for i in range(6)]
    spec = InputSpec.tabular(names, mean=mean.reshape(-1), std=std.reshape(-1), shape=(2, 3))
    # A flat table too: the common CSV case.
    flat = InputSpec.tabular(names, mean=mean.reshape(-1), std=std.reshape(-1))
    new = rng.normal(5.0, 3.0, size=(7, 2, 3))
    for s, x in ((spec, new), (flat, new.reshape(7, -1))):
        inner = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Identity()])
        got = raw_model(inner, s).predict(x, verbose=0)
        expected = ((new - mean) / std).reshape(x.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("encoding", ["sequence", "multi_hot"])
def test_text_layers_make_the_datasets_encoding(encoding: str) -> None:
    """Raw strings through the saved layers equal the ids/bags hpo's text datasets train on."""
    import keras

    from hpo.datasets._text import TextOptions, TokenSplit, build_text_dataset, tokenize

    docs = [
        "Oil prices ROSE 4.5 pct, the U.S. said.",
        "Wheat exports fell; oil steady.",
        "Café Nestlé's shares rose",
        "",
        "unknownword oil oil oil",
    ]
    split = TokenSplit([tokenize(d) for d in docs], np.arange(len(docs)) % 2)
    options = TextOptions(num_words=8, maxlen=4 if encoding == "sequence" else 3, encoding=encoding)
    data = build_text_dataset("toy", (split, split, split), options, ["a", "b"], {})
    assert data.inputs is not None
    width = data.train.x.shape[1]
    inner = keras.Sequential([keras.Input((width,)), keras.layers.Identity()])
    got = raw_model(inner, data.inputs).predict(np.asarray(docs, dtype=object), verbose=0)
    np.testing.assert_array_equal(got, data.train.x)


def test_language_model_windows_through_string_lookup() -> None:
    import keras
    import tensorflow as tf

    vocabulary = ["<unk>", "the", "king", ",", "\n"]
    spec = InputSpec.tokens(vocabulary, maxlen=3, oov_token="<unk>", level="word")
    inner = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Identity()])
    windows = [["the", "king", ","], ["queen", "\n", "the"]]
    got = raw_model(inner, spec).predict(tf.constant(windows), verbose=0)
    index = {w: i for i, w in enumerate(vocabulary)}
    np.testing.assert_array_equal(got, [[index.get(t, 0) for t in w] for w in windows])


def test_core_model_and_json_round_trip(tmp_path: Path) -> None:
    import keras

    from hpo.tracking.models import load_keras_model

    inner = keras.Sequential(
        [keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    inner.compile(loss="mse", metrics=[keras.metrics.MeanMetricWrapper(lambda a, b: a, "odd")])
    spec = InputSpec.image((2, 2), scale=1 / 255, channels=1)
    assert InputSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    raw = raw_model(inner, spec)
    raw.save(tmp_path / "m.keras")
    # Loads in safe mode although the trained model was compiled with a lambda metric.
    loaded = load_keras_model(tmp_path / "m.keras")
    x = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), inner.predict(x[..., None] / 255, verbose=0), atol=1e-5
    )
    np.testing.assert_allclose(
        core_model(loaded).predict(x[..., None] / 255, verbose=0),
        inner.predict(x[..., None] / 255, verbose=0),
        atol=1e-5,
    )
    assert core_model(inner) is inner


def test_members_saved_without_raw_inputs_are_refused_by_name() -> None:
    from hpo.ensemble import EnsembleError
    from hpo.ensemble._record import raw_inputs_of

    class Member:
        def __init__(self, label: str, summary: dict[str, Any]) -> None:
            self.label, self.summary = label, summary

    image = InputSpec.image((8, 8), scale=1 / 16, channels=1).to_json()
    text = InputSpec.text(["<pad>", "<oov>", "a"], encoding="sequence", maxlen=3).to_json()
    assert raw_inputs_of([Member("a", {"inputs": image}), Member("b", {"inputs": image})])
    with pytest.raises(EnsembleError, match=r"study 'old' trial 3.*before hpo saved models"):
        raw_inputs_of([Member("a", {"inputs": image}), Member("study 'old' trial 3", {})])
    with pytest.raises(EnsembleError, match=r"b takes raw documents"):
        raw_inputs_of([Member("a", {"inputs": image}), Member("b", {"inputs": text})])


@pytest.mark.slow
def test_predict_shows_no_tensorflow_start_up_noise(tmp_path: Path) -> None:
    """Users of hpo predict see predictions and hpo's own messages, not absl or oneDNN logs."""
    import keras

    inner = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    spec = InputSpec.image((8, 8), scale=1 / 16, channels=1)
    raw_model(inner, spec).save(tmp_path / "m.keras")
    (tmp_path / "m.hpo.json").write_text(
        json.dumps(
            {"inputs": spec.to_json(), "class_names": ["no", "yes"], "task": "classification"}
        )
    )
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), dtype=np.uint8))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo",
            "predict",
            str(tmp_path / "m.keras"),
            "-i",
            str(tmp_path / "x.npy"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 3
    assert all(line.split("\t")[2] in ("no", "yes") for line in proc.stdout.strip().splitlines())
    for noise in ("absl", "oneDNN", "cpu_feature_guard", "retracing"):
        assert noise not in proc.stderr, proc.stderr
