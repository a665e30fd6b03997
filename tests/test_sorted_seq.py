"""The sorted_sequences dataset and the sorted_seq family (a recurrent sortedness classifier)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpo.datasets import DataError, Dataset, Split, load_dataset
from hpo.datasets.sorted_sequences import KINDS, generate, is_sorted
from hpo.families import get_family
from hpo.families.sorted_seq import SortedSeq
from hpo.spaces import DatasetSpec, Params, load_spec

from conftest import REPO, hpo

SPACE = REPO / "search_spaces" / "sorted_seq.yaml"
EASY, HARD, SORTED = (KINDS.index(k) for k in ("easy", "hard", "sorted"))


def _load(n: int = 2000, seed: int = 0, subset: int | None = None, **options: Any) -> Dataset:
    return load_dataset(
        DatasetSpec(
            name="sorted_sequences",
            subset=subset,
            seed=seed,
            validation_fraction=0.1,
            test_fraction=0.2,
            options={"n": n, **options},
        )
    )


@pytest.fixture(scope="module")
def data() -> Dataset:
    return _load()


def _values(data: Dataset, row: np.ndarray) -> np.ndarray:
    """The integers of one padded token row."""
    tokens = row[row != 0]
    values: np.ndarray = tokens.astype(np.int64) + (int(data.meta["low"]) - 1)
    return values


def _splits(data: Dataset) -> list[tuple[str, Split]]:
    return [("train", data.train), ("validation", data.validation), ("test", data.test)]


# -- dataset --------------------------------------------------------------------------------------


def test_shape_padding_lengths_and_values(data: Dataset) -> None:
    assert data.task == "binary" and data.num_classes == 2
    assert data.class_names == ["unsorted", "sorted"]
    assert data.input_shape == (20,) and data.train.x.dtype == np.int32
    assert data.meta["vocab_size"] == 101 and data.meta["pad"] == 0
    assert len(data.train) + len(data.validation) + len(data.test) == 2000
    lengths = []
    for _, split in _splits(data):
        for row in split.x:
            n = int((row != 0).sum())
            # Right padding: tokens first, then only zeros.
            assert (row[:n] != 0).all() and (row[n:] == 0).all()
            lengths.append(n)
            values = _values(data, row)
            assert values.min() >= 0 and values.max() <= 99
    assert min(lengths) == 10 and max(lengths) == 20
    assert set(lengths) == set(range(10, 21))


def test_labels_say_sorted_and_classes_are_balanced(data: Dataset) -> None:
    y_all = np.concatenate([s.y for _, s in _splits(data)])
    assert int(y_all.sum()) == 1000  # exactly half sorted
    for name, split in _splits(data):
        kinds = np.array(data.meta["kinds"][name])
        assert len(kinds) == len(split)
        assert split.y.mean() == pytest.approx(0.5, abs=0.01)
        for row, label, kind in zip(split.x, split.y, kinds, strict=True):
            assert is_sorted(_values(data, row)) is bool(label)
            assert bool(kind == SORTED) is bool(label)


def test_hard_negatives_are_one_adjacent_swap_from_sorted(data: Dataset) -> None:
    kinds = np.concatenate([data.meta["kinds"][name] for name, _ in _splits(data)])
    x = np.concatenate([s.x for _, s in _splits(data)])
    # Default fraction 0.5 of the 1000 unsorted sequences.
    assert (kinds == HARD).sum() == 500 and (kinds == EASY).sum() == 500
    for row in x[kinds == HARD]:
        seq = _values(data, row)
        descents = np.flatnonzero(seq[1:] < seq[:-1])
        assert len(descents) == 1
        i = int(descents[0])
        fixed = seq.copy()
        fixed[i], fixed[i + 1] = fixed[i + 1], fixed[i]
        assert is_sorted(fixed)
    # Easy negatives are random: most have several inversions, unlike the hard ones.
    easy_descents = [int((np.diff(_values(data, row)) < 0).sum()) for row in x[kinds == EASY]]
    assert np.median(easy_descents) >= 4


def test_hard_negative_fraction_option() -> None:
    for fraction, n_hard in ((0.0, 0), (1.0, 100), (0.3, 30)):
        _, y, kinds = generate(200, 5, 8, 0, 50, fraction, seed=1)
        assert int(y.sum()) == 100 and int((kinds == HARD).sum()) == n_hard


def test_splits_are_disjoint_and_stratified(data: Dataset) -> None:
    seen = [{row.tobytes() for row in split.x} for _, split in _splits(data)]
    assert sum(map(len, seen)) == 2000  # no duplicate anywhere, so no sequence in two splits
    assert not (seen[0] & seen[2]) and not (seen[0] & seen[1]) and not (seen[1] & seen[2])
    for name, share in (("validation", 0.1), ("test", 0.2)):
        counts = np.bincount(data.meta["kinds"][name], minlength=3)
        np.testing.assert_allclose(counts, np.array([500, 500, 1000]) * share, atol=1)


def test_another_seed_draws_other_sequences(data: Dataset) -> None:
    # The same seed, the same splits: the dataset contract (tests/test_contracts.py).
    other = _load(seed=1)
    assert not np.array_equal(other.test.x, data.test.x)


def test_subset_caps_training_and_keeps_kinds_aligned(data: Dataset) -> None:
    small = _load(subset=300)
    assert len(small.train) == 300 and len(small.meta["kinds"]["train"]) == 300
    np.testing.assert_array_equal(small.test.x, data.test.x)
    for row, kind in zip(small.train.x, small.meta["kinds"]["train"], strict=True):
        assert is_sorted(_values(small, row)) is bool(kind == SORTED)


def test_options_shift_values_and_lengths() -> None:
    data = _load(n=200, min_length=3, max_length=5, low=-10, high=10)
    assert data.input_shape == (5,) and data.meta["vocab_size"] == 22
    values = np.concatenate([_values(data, row) for row in data.train.x])
    assert values.min() >= -10 and values.max() <= 10 and values.min() < 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lenght": 5}, r"unknown option 'lenght'; it takes n, min_length"),
        ({"min_length": 1}, r"2 <= min_length <= max_length"),
        ({"min_length": 30}, r"2 <= min_length <= max_length"),
        ({"low": 5, "high": 5}, r"need low < high"),
        ({"n": 5}, r"n must be at least 10"),
        ({"n": "many"}, r"option n must be an integer"),
        ({"hard_negative_fraction": 2}, r"hard_negative_fraction must be a number from 0 to 1"),
        # Only 3 sorted sequences of length 2 exist over {0, 1}: 50 cannot be distinct.
        (
            {"n": 100, "min_length": 2, "max_length": 2, "low": 0, "high": 1},
            r"could not draw 100 distinct sequences.*widen the value range",
        ),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(DatasetSpec(name="sorted_sequences", options=options))


# -- family ---------------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "input": "embedding",
    "input.embedding.embedding_dim": 4,
    "cell": "LSTM",
    "units": 8,
    "bidirectional": False,
    "layers": 1,
    "optimizer": "adam",
    "learning_rate": 0.01,
    "lr_schedule": "constant",
    "batch_size": 64,
}


def _types(model: Any) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


@pytest.fixture(scope="module")
def small() -> Dataset:
    """A small real slice: 400 training, 100 validation sequences."""
    pytest.importorskip("keras")
    data = _load(n=1000, subset=400)
    data.validation = Split(data.validation.x, data.validation.y)
    return data


def test_family_is_registered() -> None:
    family = get_family("sorted_seq")
    assert isinstance(family, SortedSeq) and family.tasks == ("binary",)
    assert family.batch_size(Params({})) == 64


@pytest.mark.parametrize(
    ("hp", "expected"),
    [
        ({}, ["InputLayer", "Embedding", "LSTM", "Dense"]),
        (
            {"input": "scalar", "cell": "GRU", "layers": 2},
            ["InputLayer", "Reshape", "Rescaling", "Masking", "GRU", "GRU", "Dense"],
        ),
        (
            {"cell": "SimpleRNN", "bidirectional": True, "layers": 2},
            ["InputLayer", "Embedding", "Bidirectional", "Bidirectional", "Dense"],
        ),
    ],
)
def test_layers(small: Dataset, hp: dict[str, Any], expected: list[str]) -> None:
    model = SortedSeq().build(Params({**BASE, **hp}), small)
    assert _types(model) == expected
    assert model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert model.loss == "binary_crossentropy"
    rnns = [
        getattr(layer, "forward_layer", layer)
        for layer in model.layers
        if type(layer).__name__ in {"LSTM", "GRU", "SimpleRNN", "Bidirectional"}
    ]
    # Only the last recurrent layer returns one vector; the ones below pass sequences up.
    assert [r.return_sequences for r in rnns] == [True] * (len(rnns) - 1) + [False]
    if "Embedding" in expected:
        emb = model.get_layer("embedding")
        assert emb.mask_zero is True and emb.input_dim == 101 and emb.output_dim == 4
    if hp.get("bidirectional"):
        assert model.get_layer("bi_rnn1").forward_layer.units == 8


@pytest.mark.parametrize(
    "hp", [{}, {"bidirectional": True}, {"input": "scalar", "cell": "GRU", "layers": 2}]
)
def test_padding_is_masked(small: Dataset, hp: dict[str, Any]) -> None:
    """A padded sequence gives what the same layers give on its real tokens alone."""
    import keras

    keras.utils.set_random_seed(0)
    model = SortedSeq().build(Params({**BASE, **hp}), small)
    for row in small.test.x[:3]:
        n = int((row != 0).sum())
        assert n < len(row)  # there is padding to ignore
        padded = float(model.predict(row[None], verbose=0)[0, 0])
        if hp.get("input") == "scalar":
            x = keras.ops.convert_to_tensor(row[None, :n, None].astype("float32"))
            layers = model.layers[2:]  # after Reshape, which is fixed to the padded length
        else:
            x = keras.ops.convert_to_tensor(row[None, :n])
            layers = model.layers[1:]
        for layer in layers:
            x = layer(x)
        assert padded == pytest.approx(float(keras.ops.convert_to_numpy(x)[0, 0]), abs=1e-5)


def test_rejects_unsuitable_data(small: Dataset) -> None:
    classification = _load(n=100)
    classification.task = "classification"
    with pytest.raises(DataError, match="works on binary data"):
        SortedSeq().build(Params(BASE), classification)
    floats = _load(n=100)
    floats.train = Split(floats.train.x.astype(np.float32), floats.train.y)
    with pytest.raises(DataError, match="integer token sequences"):
        SortedSeq().build(Params(BASE), floats)
    with pytest.raises(ValueError, match="cell must be one of SimpleRNN, LSTM, GRU"):
        SortedSeq().build(Params({**BASE, "cell": "Transformer"}), small)
    with pytest.raises(ValueError, match="input must be one of embedding, scalar"):
        SortedSeq().build(Params({**BASE, "input": "onehot"}), small)
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        SortedSeq().build(Params({**BASE, "lr_schedule": "step"}), small)
    with pytest.raises(ValueError, match="bidirectional must be true or false"):
        SortedSeq().build(Params({**BASE, "bidirectional": "maybe"}), small)


@pytest.mark.parametrize(
    "hp",
    [
        {},
        {"input": "scalar", "cell": "GRU", "bidirectional": True},
        {"input": "scalar", "cell": "SimpleRNN", "layers": 2},
    ],
)
def test_one_step_trains(small: Dataset, hp: dict[str, Any]) -> None:
    """One eager training step of each input and cell (no traced function); a full epoch, its
    logs and the stored model are the family contract's (tests/test_contracts.py)."""
    import keras

    keras.utils.set_random_seed(0)
    params = Params({**BASE, **hp})
    family = SortedSeq()
    model = family.build(params, small)
    model.run_eagerly = True
    loss = model.train_on_batch(small.train.x[:64], small.train.y[:64])
    assert np.isfinite(np.asarray(loss)).all()
    probs = family.predict(model, params, small.test.x[:50])
    assert probs.shape == (50, 1)
    assert ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.slow
def test_cosine_schedule_decays_the_rate_each_epoch(small: Dataset) -> None:
    import keras

    from hpo.families.sorted_seq import cosine_lr

    assert cosine_lr(0, base=0.02, epochs=3) == pytest.approx(0.02)
    assert cosine_lr(3, base=0.02, epochs=3) == pytest.approx(0.0)
    tiny = _load(n=200)
    # The rate under the optimizer option is the one the schedule starts from.
    hp = Params(
        {**BASE, "lr_schedule": "cosine", "optimizer.adam.learning_rate": 0.02,
         "learning_rate": 0.5}
    )  # fmt: skip
    family = SortedSeq()
    model = family.build(hp, tiny)
    history = keras.callbacks.History()
    family.fit(model, hp, tiny, epochs=3, callbacks=[history])
    expected = [0.02, 0.015, 0.005]  # 0.02 * (1 + cos(pi * e / 3)) / 2
    assert history.history["learning_rate"] == pytest.approx(expected, rel=1e-5)


def test_shipped_space_is_sorted_sequences_of_10_to_20() -> None:
    # That its samples build is the contract's (tests/test_contracts.py::test_shipped_space_builds).
    spec = load_spec(SPACE)
    assert spec.family == "sorted_seq" and spec.dataset.name == "sorted_sequences"
    assert (spec.dataset.options["min_length"], spec.dataset.options["max_length"]) == (10, 20)


@pytest.mark.slow
def test_hpo_run_end_to_end(tmp_path: Path) -> None:
    """One real trial through `hpo run`: worker subprocess, SQLite store, MLflow artifacts."""
    from mlflow import MlflowClient

    result = hpo(
        "run", str(SPACE), "--trials", "1", "--epochs", "1", "--workers", "1",
        "--subset", "300", "--seed", "0", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert summary["complete"] == 1 and summary["failed"] == 0
    assert summary["family"] == "sorted_seq" and summary["dataset"] == "sorted_sequences"

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sorted_seq")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`hpo.kind` = 'trial'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert "val_accuracy" in runs[0].data.metrics
    local = Path(client.download_artifacts(run_id, "predictions.npz", str(tmp_path)))
    with np.load(io.BytesIO(local.read_bytes())) as preds:
        # The shipped space: 20,000 sequences, 10% validation and 20% test, never subset.
        assert preds["validation"].shape == (2000, 1) and preds["test_true"].shape == (4000,)
        assert "test" not in preds.files  # made at the final stage, from the stored model
    # ... as here: the trial's model predicts the test split it regenerates, and the result is
    # stored in the trial's run.
    from hpo.ensemble import TEST_PREDICTIONS_FILE, trial_predictions

    arrays = trial_predictions(
        summary["name"],
        0,
        storage=f"sqlite:///{tmp_path / 'hpo.db'}",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert arrays["test"].shape == (4000, 1) and set(np.unique(arrays["test_true"])) == {0, 1}
    assert ((arrays["test"] >= 0) & (arrays["test"] <= 1)).all()
    assert TEST_PREDICTIONS_FILE in {a.path for a in client.list_artifacts(run_id)}
    summary_file = Path(client.download_artifacts(run_id, "dataset.json", str(tmp_path)))
    assert json.loads(summary_file.read_text())["train_size"] == 300
