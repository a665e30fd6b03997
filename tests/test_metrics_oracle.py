"""hpo's ensemble metrics against oracles that share no code with them (tests/oracles.py).

The end-to-end checks (tests/test_export.py, tests/test_raw_inputs.py) compare what a build
reported on real data; their tiny models put most confidences in few bins. Here generated
probabilities fill every bin, so a wrong binning, clipping or mean cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpo.ensemble import evaluate

from oracles import calibration_error


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 300),
    classes=st.integers(2, 12),
    concentration=st.sampled_from([0.05, 0.3, 1.0, 5.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_accuracy_log_loss_and_ece_equal_sklearn_and_the_written_out_ece(
    n: int, classes: int, concentration: float, seed: int
) -> None:
    from sklearn.metrics import accuracy_score, log_loss

    rng = np.random.default_rng(seed)
    # Above 1e-6: hpo clips at 1e-7 as Keras does, scikit-learn at the float64 epsilon.
    probs = np.clip(rng.dirichlet(np.full(classes, concentration), size=n), 1e-6, None)
    probs /= probs.sum(axis=1, keepdims=True)
    y = rng.integers(0, classes, size=n)
    got = evaluate(probs, y, "classification")
    assert got["accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(axis=1)), abs=1e-12)
    expected_nll = log_loss(y, y_proba=probs, labels=list(range(classes)))
    # hpo keeps the true class's probability in float32 (documented): log error about 6e-8.
    assert got["nll"] == pytest.approx(expected_nll, abs=1e-6)
    assert got["ece"] == pytest.approx(calibration_error(probs, y), abs=1e-9)


def test_the_written_out_ece_on_a_worked_example() -> None:
    # Bins of width 1/15: confidences 0.9 (bin 13) with accuracy 1/2, 0.6 (bin 8) with 1.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    assert calibration_error(probs, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
