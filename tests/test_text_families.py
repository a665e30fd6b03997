"""The text families (text_conv1d, text_dense) on small slices of the real Reuters archive: layers,
refusal of the wrong data, the shipped spaces, and one real `hpo run`. Training, prediction and
the stored model: the family contract (tests/test_contracts.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpo.cache import CACHE_ENV_VAR
from hpo.datasets import DataError, Dataset, Split, load_dataset, reuters
from hpo.families import get_family
from hpo.families.text_conv1d import TextConv1D
from hpo.families.text_dense import TextDense
from hpo.spaces import DatasetSpec, Params, load_spec

from conftest import REPO, small_text_studies

keras = pytest.importorskip("keras")
SPACES = REPO / "search_spaces"
ARCHIVE = reuters.REPO / reuters.SHARED_ARCHIVE
pytestmark = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"Reuters-21578 is not at {ARCHIVE}")

CONV: dict[str, Any] = {
    "embedding_dim": 8,
    "blocks": 2,
    "filters": 8,
    "kernel_size": 3,
    "pooling": "max",
    "pool_size": 2,
    "global_pooling": "max",
    "dropout": 0.1,
    "dense_units": 8,
    "optimizer": "adam",
    "learning_rate": 0.01,
    "batch_size": 32,
}
DENSE: dict[str, Any] = {
    "layers": 2,
    "units": 16,
    "dropout": 0.1,
    "optimizer": "adam",
    "learning_rate": 0.01,
    "batch_size": 32,
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One parse cache for the test session, never the user's ~/.cache."""
    path = tmp_path_factory.getbasetemp() / "hpo-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV_VAR, str(path))
        yield path


def _reuters(cache: Path, **options: Any) -> Dataset:
    data = load_dataset(
        DatasetSpec(name="reuters", subset=256, seed=0, options={"num_words": 2000, **options})
    )
    # Small validation and test slices keep an epoch and a prediction well under a second.
    data.validation = Split(data.validation.x[:128], data.validation.y[:128])
    data.test = Split(data.test.x[:128], data.test.y[:128])
    return data


@pytest.fixture(scope="module")
def sequences(cache: Path) -> Dataset:
    return _reuters(cache, maxlen=64, encoding="sequence")


@pytest.fixture(scope="module")
def bags(cache: Path) -> Dataset:
    return _reuters(cache, encoding="multi_hot")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DatasetSpec(name="digits", subset=64))


def _types(model: Any) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_families_are_registered() -> None:
    assert isinstance(get_family("text_conv1d"), TextConv1D)
    assert isinstance(get_family("text_dense"), TextDense)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {},
            ["InputLayer", "Embedding", "Conv1D", "MaxPooling1D", "Dropout", "Conv1D", "Dropout",
             "GlobalMaxPooling1D", "Dense", "Dropout", "Dense"],
        ),
        (
            {"blocks": 1, "dense_units": 0, "dropout": 0.0, "global_pooling": "average"},
            ["InputLayer", "Embedding", "Conv1D", "GlobalAveragePooling1D", "Dense"],
        ),
        (
            {"pooling": "average", "batchnorm": "before", "dropout": 0.0, "dense_units": 0},
            ["InputLayer", "Embedding", "Conv1D", "BatchNormalization", "Activation",
             "AveragePooling1D", "Conv1D", "BatchNormalization", "Activation",
             "GlobalMaxPooling1D", "Dense"],
        ),
        (
            {"pooling": "none", "dropout": 0.0, "dense_units": 0},
            ["InputLayer", "Embedding", "Conv1D", "Conv1D", "GlobalMaxPooling1D", "Dense"],
        ),
    ],
    ids=["default", "one block", "batchnorm", "no pooling"],
)  # fmt: skip
def test_conv1d_layers(sequences: Dataset, params: dict[str, Any], expected: list[str]) -> None:
    model = TextConv1D().build(Params({**CONV, **params}), sequences)
    assert _types(model) == expected
    assert model.get_layer("embedding").input_dim == sequences.meta["num_words"] == 2000
    assert model.input_shape == (None, 64) and model.output_shape == (None, 46)
    keras.backend.clear_session()


def test_conv1d_pooling_stops_before_the_sequence_is_gone(sequences: Dataset) -> None:
    # 64 tokens, windows of 4: 64 -> 16 -> 4, then no more pooling (4 < 2 x 4).
    model = TextConv1D().build(Params({**CONV, "blocks": 5, "pool_size": 4}), sequences)
    assert _types(model).count("MaxPooling1D") == 2
    assert model.get_layer("block5_conv").output.shape[1] == 4
    keras.backend.clear_session()


def test_dense_layers(bags: Dataset) -> None:
    model = TextDense().build(Params({**DENSE, "batchnorm": "before"}), bags)
    assert _types(model) == [
        "InputLayer", "Dense", "BatchNormalization", "Activation", "Dropout",
        "Dense", "BatchNormalization", "Activation", "Dropout", "Dense",
    ]  # fmt: skip
    assert model.input_shape == (None, 2000) and model.output_shape == (None, 46)
    keras.backend.clear_session()


def test_vocabulary_is_stored_with_the_model(sequences: Dataset, bags: Dataset) -> None:
    for fam, data in ((TextConv1D(), sequences), (TextDense(), bags)):
        files = fam.extra_artifacts(None, Params({}), data)  # type: ignore[arg-type]
        doc = json.loads(files["text_vocabulary.json"])
        assert doc["class_names"][:3] == ["cocoa", "grain", "veg-oil"]
        assert doc["vocabulary"][:2] == ["<pad>", "<oov>"]
        assert len(doc["vocabulary"]) == doc["num_words"] == 2000
        assert (doc["encoding"], doc["maxlen"]) == (data.meta["encoding"], data.meta["maxlen"])


# -- the wrong data is refused before any training -----------------------------------------------


def test_conv1d_refuses_images(digits: Dataset) -> None:
    with pytest.raises(DataError) as info:
        TextConv1D().check_data(digits)
    assert str(info.value) == (
        "text_conv1d needs integer token sequences (dataset encoding 'sequence'); "
        "got float32 images of shape (8, 8, 1) from digits"
    )


def test_conv1d_refuses_a_bag_of_words(bags: Dataset) -> None:
    with pytest.raises(DataError) as info:
        TextConv1D().build(Params(CONV), bags)
    assert str(info.value) == (
        "text_conv1d needs integer token sequences (dataset encoding 'sequence'); got a "
        "multi-hot bag of words of width 2000 from reuters: set `encoding: sequence` in the "
        "dataset's options"
    )


def test_dense_refuses_sequences_and_images(sequences: Dataset, digits: Dataset) -> None:
    with pytest.raises(DataError) as info:
        TextDense().check_data(sequences)
    assert str(info.value) == (
        "text_dense needs a multi-hot bag of words (dataset encoding 'multi_hot'); got integer "
        "token sequences of length 64 from reuters: set `encoding: multi_hot` in the dataset's "
        "options"
    )
    with pytest.raises(DataError, match=r"got float32 images of shape \(8, 8, 1\) from digits"):
        TextDense().check_data(digits)
    # Token ids without meta (a user's own arrays) are recognised too.
    bare = Dataset("ids", "classification", sequences.train, sequences.train, sequences.train, 46)
    with pytest.raises(DataError, match="got int32 inputs of shape \\(64,\\) from ids: set"):
        TextDense().check_data(bare)


def test_conv1d_refuses_ids_beyond_the_vocabulary(sequences: Dataset) -> None:
    x = sequences.train.x.copy()
    x[0, 0] = 2000
    bad = Dataset(
        "reuters", "classification", Split(x, sequences.train.y), sequences.validation,
        sequences.test, 46, meta=dict(sequences.meta),
    )  # fmt: skip
    with pytest.raises(DataError, match="token id 2000, but meta\\['num_words'\\] is 2000"):
        TextConv1D().check_data(bad)


# -- the shipped spaces --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("text_conv1d.yaml", "text_conv1d"),
        ("text_conv1d_small.yaml", "text_conv1d"),
        ("text_dense.yaml", "text_dense"),
        ("text_dense_small.yaml", "text_dense"),
    ],
)
def test_shipped_spaces_are_reuters_in_the_family_encoding(path: str, family: str) -> None:
    # That their samples build, reading every parameter, and that each family refuses the other
    # encoding are the contract's (tests/test_contracts.py::test_shipped_space_builds) and the
    # tests above.
    spec = load_spec(SPACES / path)
    assert (spec.family, spec.dataset.name) == (family, "reuters")
    expected = "sequence" if family == "text_conv1d" else "multi_hot"
    assert spec.dataset.options["encoding"] == expected


@pytest.mark.slow
def test_hpo_run_small_text_study(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> None:
    """`hpo run` of text_conv1d_small (1 trial, shared with the ensemble tests)."""
    _, summaries = small_text_studies(tmp_path_factory, "text_conv1d_small")
    summary = summaries["text_conv1d_small"]
    assert summary["complete"] == 1 and summary["failed"] == 0
