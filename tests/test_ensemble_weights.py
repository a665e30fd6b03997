"""Ensemble weights and metrics on small fixed arrays, and the memory of a large build.

No Keras here: greedy selection, the simplex fit and the metrics are plain numpy/scipy.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpo.ensemble import (
    PredictionSet,
    accuracy,
    average_weights,
    caruana_selection,
    caruana_weights,
    combine,
    evaluate,
    expected_calibration_error,
    fit_simplex_weights,
    fit_weights,
    nll,
    true_class_probs,
)
from hpo.ensemble._metrics import as_probabilities

# True-class probabilities of three candidates on four examples: A is right on the first half,
# B on the second, C hedges everywhere.
A = np.array([0.9, 0.9, 0.3, 0.3])
B = np.array([0.3, 0.3, 0.9, 0.9])
C = np.array([0.55, 0.55, 0.55, 0.55])
P = np.stack([A, B, C], axis=1)


def test_caruana_finds_the_known_greedy_path() -> None:
    # Round 1: C alone has the lowest loss (0.598 < 0.655). Round 2: C+A and C+B tie (0.589),
    # broken by the seed. Round 3: the other specialist (0.539) beats a second copy of anything.
    assert nll(C) < nll(A) == pytest.approx(nll(B))
    orders = {
        tuple(caruana_selection(lambda i: P[:, i], 3, size=3, loss=nll, seed=s)) for s in range(20)
    }
    assert orders == {(2, 0, 1), (2, 1, 0)}
    for s in range(5):
        w = caruana_weights(lambda i: P[:, i], 3, size=3, loss=nll, seed=s)
        np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3])
    assert caruana_selection(lambda i: P[:, i], 3, size=1, loss=nll) == [2]


def test_caruana_is_reproducible_and_weights_are_counts_over_size() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 1.0, size=(50, 8))
    runs = [caruana_selection(lambda i: p[:, i], 8, size=7, loss=nll, seed=3) for _ in range(2)]
    assert runs[0] == runs[1]
    w = caruana_weights(lambda i: p[:, i], 8, size=7, loss=nll, seed=3)
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w * 7, np.round(w * 7), atol=1e-12)


def test_simplex_fit_reaches_the_optimum_of_a_grid() -> None:
    w = fit_simplex_weights(P)
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)

    def loss(v: np.ndarray) -> float:
        return nll(P @ v)

    grid = [
        np.array([a, b, 1 - a - b])
        for a, b in itertools.product(np.linspace(0, 1, 201), repeat=2)
        if a + b <= 1 + 1e-12
    ]
    best = min(grid, key=loss)
    assert loss(w) <= loss(best) + 1e-7
    # The optimum here is A and B in equal parts (their mix is 0.6 everywhere), C unused.
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0], atol=1e-3)


def test_simplex_fit_picks_a_dominant_candidate_and_handles_one() -> None:
    p = np.array([[0.9, 0.5], [0.8, 0.5], [0.7, 0.6]])
    np.testing.assert_allclose(fit_simplex_weights(p), [1.0, 0.0], atol=1e-6)
    assert fit_simplex_weights(p[:, :1]).tolist() == [1.0]


def test_average_weights() -> None:
    assert average_weights(5, 2).tolist() == [0.5, 0.5, 0.0, 0.0, 0.0]
    assert average_weights(2, 10).tolist() == [0.5, 0.5]


def test_metrics_on_known_cases() -> None:
    probs = np.array([[0.5, 0.5], [0.75, 0.25], [0.25, 0.75], [0.1, 0.9]])
    y = np.array([0, 0, 0, 1])
    assert accuracy(probs, y) == 0.75  # argmax of a tie is class 0
    p_true = true_class_probs(probs, y)
    np.testing.assert_allclose(p_true, [0.5, 0.75, 0.25, 0.9], rtol=1e-6)
    expected = -np.mean(np.log([0.5, 0.75, 0.25, 0.9]))
    assert nll(p_true) == pytest.approx(expected)
    # A zero probability is clipped, not infinite.
    assert math.isfinite(nll(np.array([0.0, 1.0])))


def test_expected_calibration_error_known_cases() -> None:
    # Confidence 0.9 with half right (gap 0.4) and 0.6 always right (gap 0.4): ECE 0.4.
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert expected_calibration_error(p, np.array([0, 1, 0, 0]), bins=10) == pytest.approx(0.4)
    # Perfectly calibrated: confidence 0.75 and three of four right.
    q = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(q, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    # Bins matter: 0.55 and 0.95 in separate bins, each with its own gap.
    r = np.array([[0.55, 0.45], [0.95, 0.05]])
    assert expected_calibration_error(r, np.array([1, 0])) == pytest.approx((0.55 + 0.05) / 2)


def test_binary_and_language_model_metrics() -> None:
    sig = np.array([[0.8], [0.3], [0.6]])
    probs = as_probabilities(sig, "binary")
    np.testing.assert_allclose(probs, [[0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    m = evaluate(sig, np.array([1, 0, 0]), "binary")
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.4])))
    # Language model: 2 sequences x 3 tokens over a vocabulary of 4, uniform: 2 bits a token.
    lm = np.full((2, 3, 4), 0.25)
    out = evaluate(lm, np.zeros((2, 3), dtype=int), "language_model")
    assert out == {"loss": pytest.approx(math.log(4)), "bits_per_token": pytest.approx(2.0)}


def _write_candidates(
    directory: Path, n: int, examples: int, classes: int, seed: int
) -> tuple[list[Path], np.ndarray]:
    """Synthetic stored predictions: noisy copies of the truth, one npz per candidate."""
    rng = np.random.default_rng(seed)
    y_val = rng.integers(0, classes, examples)
    y_test = rng.integers(0, classes, examples)
    paths = []
    for i in range(n):
        arrays = {}
        for split, y in (("validation", y_val), ("test", y_test)):
            logits = rng.normal(size=(examples, classes)).astype(np.float32)
            logits[np.arange(examples), y] += rng.uniform(0.5, 2.0)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            arrays[split] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
            arrays[f"{split}_true"] = y
        path = directory / f"c{i}.npz"
        np.savez(path, **arrays)
        paths.append(path)
    return paths, y_val


def test_weights_ignore_the_test_split(tmp_path: Path) -> None:
    paths, _ = _write_candidates(tmp_path, 6, 300, 4, seed=1)
    preds = PredictionSet(paths, "classification")
    before = {m: fit_weights(preds, m, size=5, seed=0) for m in ("caruana", "weights", "average")}
    scores = combine(preds, "caruana", size=5).metrics["test"]["ensemble"]
    rng = np.random.default_rng(9)
    for path in paths:  # replace every test prediction with noise
        with np.load(path) as data:
            arrays = dict(data)
        arrays["test"] = rng.dirichlet(np.ones(4), size=300).astype(np.float32)
        np.savez(path, **arrays)
    fresh = PredictionSet(paths, "classification")
    for method, w in before.items():
        np.testing.assert_array_equal(fit_weights(fresh, method, size=5, seed=0), w)
    assert combine(fresh, "caruana", size=5).metrics["test"]["ensemble"] != scores


def test_combine_reports_what_recomputation_gives(tmp_path: Path) -> None:
    paths, _ = _write_candidates(tmp_path, 5, 200, 3, seed=2)
    preds = PredictionSet(paths, "classification")
    comb = combine(preds, "weights", size=3)
    for split in ("validation", "test"):
        arrays = [dict(np.load(p)) for p in paths]
        y = arrays[0][f"{split}_true"]
        mix = sum(
            w * a[split].astype(np.float64) for w, a in zip(comb.weights, arrays, strict=True)
        )
        got = comb.metrics[split]["ensemble"]
        assert got["accuracy"] == pytest.approx(np.mean(mix.argmax(1) == y))
        assert got["nll"] == pytest.approx(-np.mean(np.log(mix[np.arange(len(y)), y])), 1e-5)
        single = comb.metrics[split]["best_single"]
        assert single["accuracy"] == pytest.approx(np.mean(arrays[0][split].argmax(1) == y))
        avg = sum(a[split].astype(np.float64) for a in arrays[:3]) / 3
        assert comb.metrics[split]["average"]["nll"] == pytest.approx(
            -np.mean(np.log(avg[np.arange(len(y)), y])), 1e-5
        )
    # The simplex fit is at least as good on validation as any candidate and the average.
    val = comb.metrics["validation"]
    assert val["ensemble"]["nll"] <= min(val["best_single"]["nll"], val["average"]["nll"]) + 1e-6


MEMORY_SCRIPT = """
import json, sys, time
from pathlib import Path
from hpo.ensemble import PredictionSet, combine


def high_water_mb():
    # This process's own peak (VmHWM): getrusage's ru_maxrss survives exec, so in a child of
    # a large process (a pytest worker) it would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


paths = sorted(Path(sys.argv[1]).glob("c*.npz"), key=lambda p: int(p.stem[1:]))
# The process before the build: Python, NumPy and hpo's imports.
before = high_water_mb()
t0 = time.perf_counter()
preds = PredictionSet(paths, "classification")
comb = combine(preds, "caruana", size=20, seed=0)
print(json.dumps({
    "peak_rss_mb": high_water_mb(),
    "before_mb": before,
    "seconds": time.perf_counter() - t0,
    "members": int((comb.weights > 0).sum()),
    "test_accuracy": comb.metrics["test"]["ensemble"]["accuracy"],
}))
"""


@pytest.mark.slow
def test_200_candidates_of_10000_examples_build_within_150_mb(tmp_path: Path) -> None:
    # Synthetic predictions (the memory test only): 200 candidates x 10,000 validation and
    # 10,000 test examples x 10 classes, float32 -- 160 MB on disk. Built in a fresh process
    # so that its peak resident memory is the build's alone.
    _write_candidates(tmp_path, 200, 10_000, 10, seed=3)
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(report)
    # docs/ensembles.md's claim: the whole process, imports included, under 150 MB (candidates
    # are read one at a time; all 200 at once would be 160 MB more).
    assert report["peak_rss_mb"] < 150, report
    assert report["members"] >= 2


def _probabilities(y: np.ndarray, right: np.ndarray, p_right: float, p_wrong: float) -> np.ndarray:
    """10-class predictions: where ``right``, the true class gets ``p_right`` (the rest share
    what is left); elsewhere the true class gets ``p_wrong`` and the next class the most."""
    n, k = len(y), 10
    p = np.zeros((n, k), np.float32)
    for i, label in enumerate(y):
        if right[i]:
            p[i] = (1 - p_right) / (k - 1)
            p[i, label] = p_right
        else:
            p[i] = (1 - p_wrong - 0.5) / (k - 2)
            p[i, label], p[i, (label + 1) % k] = p_wrong, 0.5
    return p


def test_a_build_says_when_the_ensemble_is_less_accurate_than_its_best_single(
    tmp_path: Path,
) -> None:
    """As in a real study: the best trial by accuracy was badly calibrated (flat
    probabilities), so caruana on log loss chose a calibrated, less accurate one."""
    from hpo.ensemble._combine import validation_shortfall

    y = np.arange(100) % 10
    index = np.arange(100)
    flat = _probabilities(y, index % 10 < 8, 0.2, 0.05)  # 80% right, log loss ~1.9
    sharp = _probabilities(y, index % 10 < 7, 0.9, 0.1)  # 70% right, log loss ~0.8
    paths = []
    for i, p in enumerate((flat, sharp)):  # candidate 0 is the best by the study's objective
        path = tmp_path / f"c{i}.npz"
        np.savez(path, validation=p, validation_true=y, test=p, test_true=y)
        paths.append(path)
    preds = PredictionSet(paths, "classification")
    by_nll = combine(preds, "caruana", size=5, metric="nll")
    assert by_nll.metrics["validation"]["best_single"]["accuracy"] == pytest.approx(0.8)
    assert by_nll.metrics["validation"]["ensemble"]["accuracy"] < 0.79
    message = validation_shortfall(by_nll, "nll")
    assert message is not None and "--metric accuracy" in message and "below" in message
    by_accuracy = combine(preds, "caruana", size=5, metric="accuracy")
    assert by_accuracy.metrics["validation"]["ensemble"]["accuracy"] == pytest.approx(0.8)
    assert validation_shortfall(by_accuracy, "accuracy") is None


@pytest.mark.parametrize(
    ("metric", "objectives", "task", "expected"),
    [
        ("auto", ["val_accuracy"], "classification", "accuracy"),
        ("auto", ["val_sparse_categorical_accuracy"], "binary", "accuracy"),
        ("auto", ["val_loss"], "classification", "nll"),
        ("auto", ["val_accuracy", "val_loss"], "classification", "nll"),  # mixed studies
        ("auto", ["val_accuracy"], "language_model", "nll"),  # no accuracy selection there
        ("nll", ["val_accuracy"], "classification", "nll"),  # asked for: kept
        ("accuracy", ["val_loss"], "classification", "accuracy"),
    ],
)
def test_the_selection_metric_follows_the_studies_objective(
    metric: str, objectives: list[str], task: str, expected: str
) -> None:
    from hpo.ensemble import selection_metric

    assert selection_metric(metric, objectives, task) == expected


def test_an_unknown_selection_metric_names_the_choices() -> None:
    from hpo.ensemble import EnsembleError, selection_metric

    with pytest.raises(EnsembleError, match="choose one of auto, nll, accuracy"):
        selection_metric("f1", ["val_accuracy"], "classification")
