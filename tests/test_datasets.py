"""Dataset loaders: digits (scikit-learn) and Fashion-MNIST (IDX files, local first)."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpo.datasets import DataError, Dataset, DatasetCache, load_dataset
from hpo.datasets import fashion_mnist as fm
from hpo.spaces import DatasetSpec

N_DIGITS = 1797


def _rows(*arrays: np.ndarray) -> Counter[bytes]:
    """Multiset of examples (image bytes + label), to compare splits without their indices."""
    out: Counter[bytes] = Counter()
    for x, y in zip(arrays[::2], arrays[1::2], strict=True):
        out.update(xi.tobytes() + int(yi).to_bytes(2, "big") for xi, yi in zip(x, y, strict=True))
    return out


def _all(data: Dataset) -> Counter[bytes]:
    s = (data.train, data.validation, data.test)
    return _rows(*(a for split in s for a in (split.x, split.y)))


# -- digits ------------------------------------------------------------------------------------


def test_digits_shapes_sizes_and_scale() -> None:
    data = load_dataset(DatasetSpec(name="digits", validation_fraction=0.1, test_fraction=0.2))
    assert data.task == "classification" and data.num_classes == 10
    assert data.class_names == [str(i) for i in range(10)]
    assert data.input_shape == (8, 8, 1)
    assert data.train.x.dtype == np.float32
    assert data.train.x.min() >= 0.0 and data.train.x.max() == 1.0
    assert len(data.train) + len(data.validation) + len(data.test) == N_DIGITS
    assert len(data.validation) == pytest.approx(0.1 * N_DIGITS, abs=10)
    assert len(data.test) == pytest.approx(0.2 * N_DIGITS, abs=10)


def test_digits_splits_are_disjoint_and_cover_the_data() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 8, 8, 1)
    data = load_dataset(DatasetSpec(name="digits", seed=3))
    # Equal multisets: every example is in exactly one split.
    assert _all(data) == _rows(x, bunch.target)


def test_digits_is_stratified() -> None:
    data = load_dataset(DatasetSpec(name="digits", validation_fraction=0.2, test_fraction=0.3))
    total = np.bincount(np.concatenate([data.train.y, data.validation.y, data.test.y]))
    for split, fraction in ((data.validation, 0.2), (data.test, 0.3)):
        counts = np.bincount(split.y, minlength=10)
        assert np.all(np.abs(counts - total * fraction) <= 1), counts


def test_digits_another_seed_splits_otherwise() -> None:
    # The same seed, the same splits and fingerprint: the dataset contract (test_contracts.py).
    a = load_dataset(DatasetSpec(name="digits", seed=1))
    c = load_dataset(DatasetSpec(name="digits", seed=2))
    assert a.fingerprint() != c.fingerprint()


def test_digits_subset_caps_training_only() -> None:
    full = load_dataset(DatasetSpec(name="digits", seed=5))
    small = load_dataset(DatasetSpec(name="digits", seed=5, subset=100))
    assert len(small.train) == 100
    assert not _rows(small.train.x, small.train.y) - _rows(full.train.x, full.train.y)
    np.testing.assert_array_equal(small.validation.y, full.validation.y)
    np.testing.assert_array_equal(small.test.x, full.test.x)
    assert small.fingerprint() == full.fingerprint()
    # A cap above the training size changes nothing.
    assert len(load_dataset(DatasetSpec(name="digits", seed=5, subset=10_000)).train) == len(
        full.train
    )


# -- Fashion-MNIST from IDX files ---------------------------------------------------------------


def _idx(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(
    directory: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, **replace: bytes
) -> dict[str, np.ndarray]:
    """Write four small IDX files; ``replace`` swaps a file's bytes (by FILES key)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_train)
    arrays = {
        "train_labels": np.arange(n_train) % 10,
        "test_labels": np.arange(n_test) % 10,
    }
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        images[:, 0, 0] = 255  # so that the maximum is known
        arrays[f"{split}_images"] = images
    for key, stem in fm.FILES.items():
        magic = fm.IMAGE_MAGIC if key.endswith("images") else fm.LABEL_MAGIC
        raw = replace.get(key, _idx(magic, arrays[key]))
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return arrays


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real copy is visible: the variable unset, an empty Keras home and Debian folder."""
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    return tmp_path


@pytest.fixture
def isolated(places: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``places``, and a download that fails the test if the loader ever asks for it."""

    def no_download() -> Any:
        raise AssertionError("the loader must not download when a local copy exists")

    monkeypatch.setattr(fm, "_download", no_download)
    return places


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_fashion_reads_idx_files(isolated: Path, gz: bool) -> None:
    arrays = write_fashion(isolated / "fm", n_train=100, n_test=30, gz=gz)
    spec = DatasetSpec(
        name="fashion_mnist", validation_fraction=0.2, options={"path": str(isolated / "fm")}
    )
    data = load_dataset(spec)
    assert data.meta["source"] == str(isolated / "fm")
    assert data.input_shape == (28, 28, 1) and data.train.x.dtype == np.float32
    assert data.num_classes == 10 and data.class_names == fm.CLASS_NAMES
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert (len(data.train), len(data.validation), len(data.test)) == (80, 20, 30)
    # The test split is the official test file, in order, scaled to [0, 1].
    np.testing.assert_allclose(data.test.x[..., 0], arrays["test_images"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(data.test.y, arrays["test_labels"])
    assert data.train.x.max() == 1.0 and data.train.x.min() >= 0.0
    # Validation is stratified: 2 of each class's 10 training images.
    assert np.bincount(data.validation.y).tolist() == [2] * 10


def test_fashion_subset_caps_training_only(isolated: Path) -> None:
    write_fashion(isolated / "fm", n_train=100)
    opts = {"path": str(isolated / "fm")}
    full = load_dataset(DatasetSpec(name="fashion_mnist", options=opts, seed=4))
    small = load_dataset(DatasetSpec(name="fashion_mnist", options=opts, seed=4, subset=25))
    assert len(small.train) == 25
    assert not _rows(small.train.x, small.train.y) - _rows(full.train.x, full.train.y)
    np.testing.assert_array_equal(small.validation.x, full.validation.x)
    assert small.fingerprint() == full.fingerprint()


def test_fashion_search_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    option_dir, env_dir = isolated / "opt", isolated / "env"
    keras_dir = isolated / "keras_home" / "datasets" / "fashion-mnist"
    for d in (option_dir, env_dir, keras_dir, fm.DEBIAN_DIR):
        write_fashion(d)
    monkeypatch.setenv(fm.ENV_VAR, str(env_dir))

    def source(options: dict[str, Any]) -> str:
        return str(load_dataset(DatasetSpec(name="fashion_mnist", options=options)).meta["source"])

    assert source({"path": str(option_dir)}) == str(option_dir)
    assert source({"path": str(isolated / "empty")}) == str(env_dir)  # falls through
    assert source({}) == str(env_dir)
    monkeypatch.delenv(fm.ENV_VAR)
    assert source({}) == str(keras_dir)
    for f in keras_dir.iterdir():
        f.unlink()
    assert source({}) == str(fm.DEBIAN_DIR)


def test_fashion_falls_back_to_keras_download(
    places: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keras = pytest.importorskip("keras")
    calls = []

    def fake_load_data() -> Any:
        calls.append(1)
        x = np.zeros((30, 28, 28), np.uint8)
        y = np.arange(30, dtype=np.uint8) % 10
        return (x, y), (x[:10], y[:10])

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", fake_load_data)
    data = load_dataset(DatasetSpec(name="fashion_mnist"))
    assert calls and data.meta["source"] == "keras.datasets.fashion_mnist"
    assert (len(data.train) + len(data.validation), len(data.test)) == (30, 10)


def test_fashion_nothing_found_names_every_place(
    places: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keras = pytest.importorskip("keras")
    (places / "env_empty").mkdir()
    monkeypatch.setenv(fm.ENV_VAR, str(places / "env_empty"))

    def offline() -> Any:
        raise OSError("URL fetch failure: no internet")

    # Keras itself fails, as it does on a machine without internet access.
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(DataError) as err:
        load_dataset(
            DatasetSpec(name="fashion_mnist", options={"path": str(places / "opt_missing")})
        )
    msg = str(err.value)
    for place in (
        places / "opt_missing",
        places / "env_empty",
        places / "keras_home" / "datasets" / "fashion-mnist",
        fm.DEBIAN_DIR,
    ):
        assert str(place) in msg
    assert "no such directory" in msg and "missing train-images-idx3-ubyte" in msg
    assert "no internet" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "internet access" in msg and fm.ENV_VAR in msg


def test_fashion_download_can_be_disabled(isolated: Path) -> None:
    with pytest.raises(DataError, match="download: false"):
        load_dataset(DatasetSpec(name="fashion_mnist", options={"download": False}))


def test_fashion_partial_directory_says_what_is_missing(isolated: Path) -> None:
    write_fashion(isolated / "fm")
    (isolated / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte"):
        load_dataset(
            DatasetSpec(
                name="fashion_mnist", options={"path": str(isolated / "fm"), "download": False}
            )
        )


def _bad_files() -> dict[str, tuple[dict[str, bytes], bool, str]]:
    labels = np.arange(60) % 10
    images = np.zeros((60, 28, 28))
    good_images = _idx(fm.IMAGE_MAGIC, images)
    return {
        "wrong magic": ({"train_images": _idx(fm.LABEL_MAGIC, images)}, True, "magic number"),
        "truncated": ({"train_images": good_images[:-100]}, False, "header announces"),
        "short header": ({"test_labels": b"\x00\x00\x08"}, False, "shorter than"),
        "not gzip": ({}, True, "cannot read"),
        "wrong size": (
            {"train_images": _idx(fm.IMAGE_MAGIC, np.zeros((60, 32, 32)))},
            True,
            "32x32",
        ),
        "count mismatch": (
            {"train_labels": _idx(fm.LABEL_MAGIC, labels[:50])},
            True,
            "60 images but .* 50 labels",
        ),
        "bad label": ({"train_labels": _idx(fm.LABEL_MAGIC, labels + 10)}, True, "label 19"),
    }


@pytest.mark.parametrize("case", list(_bad_files()))
def test_fashion_corrupt_file_is_a_data_error(isolated: Path, case: str) -> None:
    replace, gz, message = _bad_files()[case]
    write_fashion(isolated / "fm", gz=gz, **replace)
    if case == "not gzip":
        (isolated / "fm" / "train-labels-idx1-ubyte.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match=message):
        load_dataset(DatasetSpec(name="fashion_mnist", options={"path": str(isolated / "fm")}))


@pytest.mark.skipif(
    not (fm.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_fashion_real_files_from_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # so that the Debian copy is the one read
    data = load_dataset(DatasetSpec(name="fashion_mnist", subset=5000, seed=0))
    assert data.meta["source"] == str(fm.DEBIAN_DIR)
    assert (len(data.train), len(data.validation), len(data.test)) == (5000, 6000, 10000)
    assert data.input_shape == (28, 28, 1) and data.train.x.dtype == np.float32
    assert data.train.x.min() == 0.0 and data.train.x.max() == 1.0
    assert np.bincount(data.validation.y).tolist() == [600] * 10
    assert np.bincount(data.test.y).tolist() == [1000] * 10
    raw = fm.read_idx_dir(fm.DEBIAN_DIR)
    assert raw["train_images"].shape == (60000, 28, 28)
    np.testing.assert_array_equal(data.test.y, raw["test_labels"])


def test_dataset_cache_loads_once_and_keeps_at_most_what_it_is_told() -> None:
    one, other = DatasetSpec(name="digits", seed=1), DatasetSpec(name="digits", seed=2)
    single = DatasetCache(keep=1)
    a = single.get(one)
    assert single.get(one) is a  # loaded once
    b = single.get(other)
    assert single.get(other) is b
    assert single.get(one) is not a  # dropped when the other was loaded: loaded again
    np.testing.assert_array_equal(single.get(one).test.y, a.test.y)
    every = DatasetCache()
    c, d = every.get(one), every.get(other)
    assert every.get(one) is c and every.get(other) is d
