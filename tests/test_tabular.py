"""The tabular dataset: the user's CSV or NPZ file, checked, split and standardized.

Real data throughout: scikit-learn's bundled wine (3 classes) and breast-cancer (2 classes)
tables written to CSV and NPZ files in ``tmp_path``.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpo.datasets import DataError, Dataset, load_dataset, tabular
from hpo.spaces import DatasetSpec

N_WINE, N_CANCER = 178, 569


def _wine() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    return bunch.data, bunch.target, list(bunch.feature_names), list(bunch.target_names)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def wine_csv(tmp_path: Path) -> Path:
    """Wine with the class as text ("class_0", ...) in a column named "cultivar", put first."""
    x, y, features, names = _wine()
    rows = [[names[t], *map(repr, r)] for r, t in zip(x.tolist(), y.tolist(), strict=True)]
    return _write_csv(tmp_path / "wine.csv", ["cultivar", *features], rows)


@pytest.fixture
def cancer_npz(tmp_path: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    path = tmp_path / "cancer.npz"
    np.savez(path, features=bunch.data, target=bunch.target)
    return path


def _load(path: Path | str, seed: int = 0, subset: int | None = None, **options: Any) -> Dataset:
    return load_dataset(
        DatasetSpec(
            name="tabular",
            subset=subset,
            seed=seed,
            validation_fraction=0.1,
            test_fraction=0.2,
            options={"path": str(path), **options},
        )
    )


def _unscaled(data: Dataset, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.asarray(x, np.float64) * np.array(data.meta["std"]) + np.array(
        data.meta["mean"]
    )
    return out


def _rows(x: np.ndarray, y: np.ndarray) -> Counter[tuple[float, ...]]:
    return Counter((*np.round(r, 3).tolist(), int(t)) for r, t in zip(x, y, strict=True))


# -- reading --------------------------------------------------------------------------------------


def test_csv_with_text_labels(wine_csv: Path) -> None:
    data = _load(wine_csv, label="cultivar")
    x, y, features, names = _wine()
    assert data.name == "tabular" and data.task == "classification"
    assert data.num_classes == 3 and data.class_names == names
    assert data.input_shape == (13,) and data.meta["feature_names"] == features
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int64
    assert len(data.train) + len(data.validation) + len(data.test) == N_WINE
    # Every row lands in exactly one split, with its own label (after undoing the scaling).
    found = sum(
        (_rows(_unscaled(data, s.x), s.y) for s in (data.train, data.validation, data.test)),
        Counter(),
    )
    assert found == _rows(x, y)


def test_split_is_stratified_seeded_and_subset_caps_training(wine_csv: Path) -> None:
    data = _load(wine_csv, label="cultivar")
    total = np.bincount(np.concatenate([data.train.y, data.validation.y, data.test.y]))
    for split, fraction in ((data.validation, 0.1), (data.test, 0.2)):
        np.testing.assert_allclose(np.bincount(split.y, minlength=3), total * fraction, atol=1)
    # The same seed, the same splits: the dataset contract (tests/test_contracts.py).
    other = _load(wine_csv, seed=1, label="cultivar")
    assert _rows(_unscaled(other, other.test.x), other.test.y) != _rows(
        _unscaled(data, data.test.x), data.test.y
    )
    small = _load(wine_csv, subset=50, label="cultivar")
    assert len(small.train) == 50
    # validation and test do not depend on the subset (same rows, same order).
    np.testing.assert_allclose(
        _unscaled(small, small.test.x), _unscaled(data, data.test.x), rtol=1e-5
    )


def test_standardized_with_training_statistics_only(wine_csv: Path) -> None:
    x, _, _, _ = _wine()
    for subset in (None, 40):
        data = _load(wine_csv, subset=subset, label="cultivar")
        assert data.meta["standardized"] is True
        np.testing.assert_allclose(data.train.x.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(data.train.x.std(axis=0), 1.0, atol=1e-4)
        # The statistics are those of the (capped) training rows, not of all the data ...
        train_raw = _unscaled(data, data.train.x)
        np.testing.assert_allclose(data.meta["mean"], train_raw.mean(axis=0), rtol=1e-5)
        np.testing.assert_allclose(data.meta["std"], train_raw.std(axis=0), rtol=1e-4)
        assert not np.allclose(data.meta["mean"], x.mean(axis=0), rtol=1e-3)
        # ... and validation and test are scaled with them: so not exactly mean 0 / std 1.
        assert np.abs(data.test.x.mean(axis=0)).max() > 0.05
    raw = _load(wine_csv, label="cultivar", standardize=False)
    assert raw.meta["standardized"] is False and "mean" not in raw.meta
    assert raw.train.x.max() > 100  # proline, in the hundreds
    assert Counter(map(tuple, raw.train.x.tolist())) <= Counter(map(tuple, x.astype("f4").tolist()))


def test_constant_feature_is_centred_not_divided_by_zero(tmp_path: Path) -> None:
    x, y, features, names = _wine()
    rows = [[names[t], 7.0, *r] for r, t in zip(x.tolist(), y.tolist(), strict=True)]
    path = _write_csv(tmp_path / "c.csv", ["label", "constant", *features], rows)
    data = _load(path)
    assert data.input_shape == (14,)
    assert np.isfinite(data.train.x).all() and (data.test.x[:, 0] == 0).all()


def test_npz_binary_with_configured_keys(cancer_npz: Path) -> None:
    data = _load(cancer_npz, x_key="features", y_key="target")
    assert data.task == "binary" and data.num_classes == 2 and data.class_names == ["0", "1"]
    assert data.input_shape == (30,) and data.meta["feature_names"][:2] == ["f0", "f1"]
    assert len(data.train) + len(data.validation) + len(data.test) == N_CANCER
    assert set(np.unique(data.train.y)) == {0, 1}
    # task: classification keeps two classes as a two-way softmax problem.
    assert _load(cancer_npz, x_key="features", y_key="target", task="classification").task == (
        "classification"
    )


def test_npz_default_keys_and_text_labels(tmp_path: Path) -> None:
    x, y, _, names = _wine()
    path = tmp_path / "wine.npz"
    np.savez(path, x=x, y=np.array(names)[y])
    data = _load(path)
    assert data.class_names == names and data.num_classes == 3


def test_numeric_labels_sort_as_numbers(tmp_path: Path) -> None:
    x, y, features, _ = _wine()
    codes = np.array([2, 10, 33])[y]  # "10" < "2" as text, not as numbers
    rows = [[int(c), *r] for r, c in zip(x.tolist(), codes.tolist(), strict=True)]
    data = _load(_write_csv(tmp_path / "w.csv", ["label", *features], rows))
    assert data.class_names == ["2", "10", "33"]
    assert np.bincount(data.test.y).tolist() == np.round(np.bincount(y) * 0.2).astype(int).tolist()


def test_path_from_environment(wine_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tabular.ENV_VAR, str(wine_csv))
    data = load_dataset(DatasetSpec(name="tabular", options={"label": "cultivar"}))
    assert data.meta["source"] == str(wine_csv)


# -- errors ---------------------------------------------------------------------------------------


def test_no_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tabular.ENV_VAR, raising=False)
    with pytest.raises(DataError, match=r"needs a file.*options: \{path: .*HPO_TABULAR_PATH"):
        load_dataset(DatasetSpec(name="tabular"))


def test_file_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=rf"{missing} \(from dataset option 'path'\) does not"):
        _load(missing)
    monkeypatch.setenv(tabular.ENV_VAR, str(missing))
    with pytest.raises(DataError, match=r"from \$HPO_TABULAR_PATH\) does not exist"):
        load_dataset(DatasetSpec(name="tabular"))
    with pytest.raises(DataError, match="is a directory"):
        _load(tmp_path)
    (tmp_path / "data.xlsx").write_bytes(b"x")
    with pytest.raises(DataError, match=r"unsupported file type '.xlsx'.*\.csv, \.tsv, \.npz"):
        _load(tmp_path / "data.xlsx")


def test_missing_label_column_names_the_columns(wine_csv: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"no label column 'label'; its columns are 'cultivar', "
        r"'alcohol', 'malic_acid'.*option 'label'",
    ):
        _load(wine_csv)


def test_empty_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=rf"{empty} is empty: expected a header"):
        _load(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b,label\n\n")
    with pytest.raises(DataError, match="has a header line but no rows"):
        _load(header_only)


def test_non_numeric_features_are_named(tmp_path: Path) -> None:
    x, y, features, names = _wine()
    rows = [
        [names[t], "red" if i % 2 else "white", *r, "A"]
        for i, (r, t) in enumerate(zip(x.tolist(), y.tolist(), strict=True))
    ]
    path = _write_csv(tmp_path / "w.csv", ["label", "colour", *features, "grade"], rows)
    with pytest.raises(
        DataError,
        match=r"2 hold text: 'colour' \(e.g. 'white'\), 'grade' "
        r"\(e.g. 'A'\).*one-hot",
    ):
        _load(path)


@pytest.mark.parametrize("missing", ["", "nan", "inf"])
def test_nan_features(tmp_path: Path, missing: str) -> None:
    x, y, features, names = _wine()
    rows: list[list[Any]] = [[names[t], *r] for r, t in zip(x.tolist(), y.tolist(), strict=True)]
    rows[4][3] = missing  # third feature: ash
    rows[9][3] = missing
    path = _write_csv(tmp_path / "w.csv", ["label", *features], rows)
    with pytest.raises(
        DataError,
        match=r"2 rows have missing \(NaN\) or infinite feature values, "
        r"first rows 5, 10, in columns 'ash'",
    ):
        _load(path)


def test_nan_in_npz(tmp_path: Path) -> None:
    x, y, _, _ = _wine()
    x = x.copy()
    x[0, 1] = np.nan
    np.savez(tmp_path / "w.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"1 rows have missing.*first rows 1, in columns 'f1'"):
        _load(tmp_path / "w.npz")


def test_single_class(tmp_path: Path) -> None:
    x, _, features, _ = _wine()
    path = _write_csv(tmp_path / "w.csv", ["label", *features], [["red", *r] for r in x.tolist()])
    with pytest.raises(DataError, match="same label 'red'; a classifier needs at least two"):
        _load(path)


def test_other_bad_input(tmp_path: Path, cancer_npz: Path, wine_csv: Path) -> None:
    with pytest.raises(DataError, match=r"no array 'x', 'y'; it holds 'features', 'target'"):
        _load(cancer_npz)
    with pytest.raises(DataError, match=r"unknown option 'lable'; it takes path, label"):
        _load(wine_csv, lable="cultivar")
    with pytest.raises(DataError, match="task must be one of auto, binary, classification"):
        _load(wine_csv, label="cultivar", task="regression")
    with pytest.raises(DataError, match="standardize must be true or false, got 'no'"):
        _load(wine_csv, label="cultivar", standardize="no")
    with pytest.raises(DataError, match="task: binary needs exactly two classes, found 3"):
        _load(wine_csv, label="cultivar", task="binary")
    x, y, features, _ = _wine()
    regression = _write_csv(
        tmp_path / "r.csv",
        ["label", *features],
        [[t + 0.5, *r] for r, t in zip(x.tolist(), y, strict=True)],
    )
    with pytest.raises(DataError, match=r"not whole numbers.*not regression"):
        _load(regression)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n1,2,x\n3,y\n")
    with pytest.raises(DataError, match=r"data row 2 .* has 2 fields, but the header has 3"):
        _load(ragged)
    np.savez(tmp_path / "short.npz", x=x, y=y[:10])
    with pytest.raises(DataError, match=r"array 'y' has shape \(10,\), expected \(178,\)"):
        _load(tmp_path / "short.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"cannot read .*junk\.npz as an NPZ file"):
        _load(tmp_path / "junk.npz")
    tiny = _write_csv(tmp_path / "tiny.csv", ["a", "label"], [[1, "p"], [2, "q"], [3, "p"]])
    with pytest.raises(DataError, match="3 rows are too few to split"):
        _load(tiny)
