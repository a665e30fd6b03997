"""One contract for every built-in family and one for every built-in dataset.

Family: its shipped space validates; a point sampled from that space builds, on tiny data, a
compiled model that fits one batch, logs the space's objective metric and only finite values,
predicts class probabilities (a classifier), reads every sampled parameter, and saves a model
that takes raw inputs and loads back (safe mode) predicting what the trained model predicts (a
generator family's stored generator: the same samples for the same latent vectors).

Shipped space: every file of search_spaces/ validates, and points sampled from it build, on
its own dataset, models that pass the trial's model check (outputs that suit the task, a loss
and the objective's metric computed), with one output per class, reading every parameter.

Dataset: for a seed its splits are the same on every load, non-empty, of one example shape,
with labels inside the class count, and no training example reappears in validation or test.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from hpo.cache import CACHE_ENV_VAR
from hpo.catalog import DATASETS, FAMILIES
from hpo.datasets import Dataset, Split, load_dataset
from hpo.spaces import DatasetSpec, Params, load_spec, suggest

keras = pytest.importorskip("keras")

REPO = Path(__file__).resolve().parents[1]

# Each family's shipped space, with the data cut down so that a build and a batch take seconds.
FAMILY_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "image_cnn": ("image_cnn_digits.yaml", {"subset": 64}),
    "dense_bn": ("dense_bn_digits.yaml", {"subset": 64}),
    "vae": ("vae_small.yaml", {"subset": 64}),
    "gan": ("gan_small.yaml", {"subset": 64}),
    "text_conv1d": ("text_conv1d_small.yaml", {"subset": 64}),
    "text_dense": ("text_dense_small.yaml", {"subset": 64}),
    "char_lstm": (
        "char_lstm_small.yaml",
        {"subset": 64, "options": {"plays": ["hamlet"], "max_chars": 6000, "maxlen": 16}},
    ),
    "word_lstm": (
        "word_lstm.yaml",
        {
            "subset": 64,
            "options": {
                "plays": ["hamlet"],
                "level": "word",
                "max_chars": 12000,
                "maxlen": 8,
                "num_words": 200,
            },
        },
    ),
    "sorted_seq": ("sorted_seq.yaml", {"options": {"n": 400, "min_length": 6, "max_length": 8}}),
    "style_transfer": ("style_transfer_small.yaml", {"options": {"size": 24}}),
}
TEXT_FAMILIES = {"text_conv1d", "text_dense"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One parse cache for the Reuters archive, never the user's ~/.cache."""
    path = tmp_path_factory.getbasetemp() / "hpo-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV_VAR, str(path))
        yield path


def test_every_family_and_dataset_has_a_contract_case() -> None:
    assert set(FAMILY_CASES) == set(FAMILIES.names())
    assert set(DATASET_CASES) == set(DATASETS.names())


def _small(split: Split, n: int) -> Split:
    return Split(split.x[:n], split.y[:n])


class _Logs(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.logs: dict[str, float] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.logs = dict(logs or {})


@pytest.mark.slow
@pytest.mark.parametrize("family_name", sorted(FAMILY_CASES))
def test_family_contract(family_name: str, cache: Path, tmp_path: Path) -> None:
    from hpo.families import get_family
    from hpo.inputs import core_model
    from hpo.tracking.models import load_keras_model
    from hpo.workers.model_checks import check_model

    filename, dataset_update = FAMILY_CASES[family_name]
    spec = load_spec(REPO / "search_spaces" / filename)
    assert spec.family == family_name
    data = load_dataset(spec.dataset.model_copy(update=dataset_update))
    family = get_family(family_name)
    assert family.name == family_name and data.task in family.tasks
    family.check_data(data)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    hp = Params(suggest(study.ask(), spec.space))
    keras.utils.set_random_seed(0)
    model = family.build(hp, data)
    # A generator family (no ensembles: a GAN) trains networks of its own inside its model.
    generator = not family.ensembles
    if not generator:
        assert model.optimizer is not None, "build must return a compiled model"
    check_model(model, family, data, spec.metrics)
    # One batch of training, a small validation split: the metrics of one epoch.
    batch = family.batch_size(hp)
    data.train = _small(data.train, batch)
    data.validation = _small(data.validation, 32)
    logs = _Logs()
    family.fit(model, hp, data, 1, [logs])
    metric = spec.metrics[0]
    assert metric in logs.logs, logs.logs
    assert all(np.isfinite(v) for v in logs.logs.values()), logs.logs
    if not generator:
        assert {"loss", "val_loss"} <= set(logs.logs), logs.logs
    for key in ("accuracy", "val_accuracy"):
        assert 0.0 <= logs.logs.get(key, 0.0) <= 1.0, logs.logs
    if _predicts_classes(family):
        _check_probabilities(family.predict(model, hp, data.validation.x[:20]), data)
    # Every sampled parameter was read by build, fit or predict: none is searched for nothing.
    assert hp.unread() == [], hp.unread()
    # The model a trial stores: raw inputs in front when the data records them.
    saved = family.saved_model(model, data)
    if family.raw_inputs and data.inputs is not None:
        assert saved is not model
    saved.save(tmp_path / "model.keras")
    again = load_keras_model(tmp_path / "model.keras")
    if generator:
        # What it stores maps latent vectors to samples: the same samples after loading.
        z = np.random.default_rng(0).normal(size=(8, *saved.input_shape[1:])).astype("float32")
        assert np.allclose(np.asarray(again(z)), np.asarray(saved(z)), atol=1e-5)
    else:
        x = data.validation.x[:8]
        expected = family.predict(model, hp, x)
        assert np.allclose(family.predict(core_model(again), hp, x), expected, atol=1e-5)
    keras.backend.clear_session()


def _predicts_classes(family: Any) -> bool:
    """A family that trains on the labels (not an autoencoder, not a generator)."""
    from hpo.families import Family

    return family.ensembles and type(family).fit_targets is Family.fit_targets  # type: ignore[no-any-return]


def _check_probabilities(probs: np.ndarray, data: Dataset) -> None:
    """One probability per class for each example (binary: one, of the positive class)."""
    if data.task == "binary":
        assert probs.shape == (len(probs), 1), probs.shape
    else:
        assert probs.shape == (len(probs), data.num_classes), probs.shape
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert len(probs) > 0 and ((probs >= 0) & (probs <= 1)).all()


SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


@pytest.fixture(scope="module")
def space_data(cache: Path) -> Callable[[DatasetSpec], Dataset]:
    """A space's dataset, 64 training examples; one load per dataset and options (the
    splits' sizes do not matter to a build)."""
    loaded: dict[str, Dataset] = {}

    def load(spec: DatasetSpec) -> Dataset:
        key = json.dumps([spec.name, spec.options], sort_keys=True)
        if key not in loaded:
            loaded[key] = load_dataset(spec.model_copy(update={"subset": 64}))
        return loaded[key]

    return load


def test_every_family_ships_a_space() -> None:
    assert {load_spec(path).family for path in SPACES} == set(FAMILIES.names())


# 16 spaces, 4 builds each (and Reuters parsed): the slow tier. The per-family files build
# each family's layouts in the fast tier.
@pytest.mark.slow
@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_space_builds(path: Path, space_data: Callable[[DatasetSpec], Dataset]) -> None:
    from hpo.families import Family, get_family
    from hpo.workers.model_checks import check_model

    spec = load_spec(path)
    family = get_family(spec.family)
    data = space_data(spec.dataset)
    family.check_data(data)
    # A family that trains its own way (a GAN) reads its training parameters in fit: the
    # family contract checks those, after training.
    reads_all_in_build = type(family).fit is Family.fit
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        hp = Params(suggest(study.ask(), spec.space))
        model = family.build(hp, data)
        family.batch_size(hp)
        check_model(model, family, data, spec.metrics)
        if _predicts_classes(family):
            width = 1 if data.task == "binary" else data.num_classes
            assert model.output_shape == (None, width), model.output_shape
        if reads_all_in_build:
            assert hp.unread() == [], hp.unread()
        keras.backend.clear_session()


def _texts(tmp: Path) -> Path:
    """Lines of two plays, labelled by play: a real two-class text CSV."""
    from hpo.datasets import text_corpus as tc

    path = tmp / "lines.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for play in ("hamlet", "macbeth"):
            text = tc.markdown_play_to_text(tc.shakespeare_files([play])[0].read_text("utf-8"))
            lines = [line for line in text.splitlines() if len(line.split()) > 5][:150]
            out.writerows([line, play] for line in lines)
    return path


def _table(tmp: Path) -> Path:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    path = tmp / "wine.npz"
    np.savez(path, x=bunch.data, y=bunch.target)
    return path


def _corpus(tmp: Path) -> Path:
    from hpo.datasets import text_corpus as tc

    path = tmp / "hamlet.txt"
    text = tc.markdown_play_to_text(tc.shakespeare_files(["hamlet"])[0].read_text("utf-8"))
    path.write_text(text[:8000], encoding="utf-8")
    return path


# Each built-in dataset, small; a callable option makes its file in a temporary folder.
DATASET_CASES: dict[str, dict[str, Any]] = {
    "digits": {},
    "fashion_mnist": {"subset": 200},
    "tabular": {"options": {"path": _table}},
    "reuters": {"subset": 200, "options": {"num_words": 2000, "maxlen": 64}},
    "text_classification": {"options": {"path": _texts, "num_words": 5000, "maxlen": 32}},
    "shakespeare": {"options": {"plays": ["hamlet"], "max_chars": 6000, "maxlen": 16}},
    "text_corpus": {"options": {"path": _corpus, "maxlen": 16}},
    "sorted_sequences": {"options": {"n": 400}},
    "style_images": {"options": {"size": 24}},
}
# Datasets of one example that every split holds (a style transfer's content and style image):
# nothing to split, so the leak check does not apply.
ONE_EXAMPLE = {"style_images"}


def _spec(name: str, tmp: Path, seed: int) -> DatasetSpec:
    case = dict(DATASET_CASES[name])
    options = {k: (v(tmp) if callable(v) else v) for k, v in case.pop("options", {}).items()}
    return DatasetSpec(name=name, seed=seed, options=options, **case)


def _rows(x: np.ndarray) -> set[bytes]:
    x = np.ascontiguousarray(x)
    return {row.tobytes() for row in x.reshape(len(x), -1)}


def _check_dataset(data: Dataset, leak_check: bool = True) -> None:
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    for key, split in splits.items():
        assert len(split) > 0, key
        assert len(split.x) == len(split.y), key
        assert split.x.shape[1:] == data.train.x.shape[1:], key
        assert split.x.dtype.kind in "fiu", (key, split.x.dtype)
        assert split.x.dtype.kind != "f" or np.isfinite(split.x).all(), key
        if data.task in ("classification", "language_model"):
            assert data.num_classes is not None and data.num_classes >= 2
            assert split.y.dtype.kind in "iu", (key, split.y.dtype)
            assert split.y.min() >= 0 and split.y.max() < data.num_classes, key
        elif data.task == "binary":
            assert set(np.unique(split.y)) <= {0, 1}, key
        else:  # reconstruction: the targets are the inputs
            assert split.y.shape == split.x.shape, key
    if data.class_names is not None and data.task != "binary":
        assert len(data.class_names) == data.num_classes
    train = _rows(data.train.x)
    if leak_check and len(train) == len(data.train):  # none may reappear elsewhere
        for key in ("validation", "test"):
            shared = train & _rows(splits[key].x)
            assert not shared, f"{len(shared)} training examples reappear in {key}"


# Parsing the Reuters archive takes a while the first time: the slow tier.
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n == "reuters" else n
        for n in sorted(DATASET_CASES)
    ],
)
def test_dataset_contract(name: str, cache: Path, tmp_path: Path) -> None:
    first = load_dataset(_spec(name, tmp_path, seed=1))
    _check_dataset(first, leak_check=name not in ONE_EXAMPLE)
    again = load_dataset(_spec(name, tmp_path, seed=1))
    for split in ("train", "validation", "test"):
        a, b = getattr(first, split), getattr(again, split)
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y), split
    assert first.fingerprint() == again.fingerprint()


def test_the_dataset_contract_catches_a_leak_and_a_bad_label() -> None:
    # The contract can fail: a test split copied from train, and a label past the classes.
    data = load_dataset(DatasetSpec(name="digits", subset=100))
    leaked = Dataset(
        data.name, data.task, data.train, data.validation,
        Split(data.train.x[:5], data.train.y[:5]), data.num_classes,
    )  # fmt: skip
    with pytest.raises(AssertionError, match="reappear in test"):
        _check_dataset(leaked)
    bad = Dataset(
        data.name, data.task, data.train, data.validation,
        Split(data.test.x, np.full(len(data.test), 10)), data.num_classes,
    )  # fmt: skip
    with pytest.raises(AssertionError):
        _check_dataset(bad)
