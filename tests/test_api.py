"""The Python API (``hpo.create_study`` ...): what the CLI does, from Python, on a tiny study."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hpo
from hpo.errors import HpoError, UsageError

SPACE = {
    "family": "image_cnn",
    "dataset": {"name": "digits", "subset": 200, "validation_fraction": 0.2},
    "objective": {"metric": "val_accuracy", "direction": "maximize"},
    "budget": {"max_epochs": 1},
    "defaults": {"algorithm": "optuna-random", "pruner": "none", "trials": 2, "workers": 1},
    "params": {
        "conv_blocks": 1,
        "filters": 4,
        "kernel_size": 3,
        "conv_type": {"type": "categorical", "choices": ["Conv2D", "SeparableConv2D"]},
        "learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        "batch_size": 32,
    },
}


def test_import_hpo_imports_no_heavy_library() -> None:
    code = (
        "import sys, hpo; hpo.create_study; hpo.load_ensemble; hpo.Study; "
        "print([m for m in ('tensorflow', 'keras', 'mlflow', 'optuna', 'hyperopt', 'torch') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert {"create_study", "load_study", "build_ensemble", "HpoError"} <= set(dir(hpo))
    with pytest.raises(AttributeError):
        hpo.no_such_name  # noqa: B018


def test_spaces_from_a_file_a_string_or_a_dict(tmp_path: Path) -> None:
    import yaml

    text = yaml.safe_dump(SPACE)
    (tmp_path / "s.yaml").write_text(text)
    specs = [hpo.load_space(tmp_path / "s.yaml"), hpo.load_space(text), hpo.load_space(SPACE)]
    assert {s.family for s in specs} == {"image_cnn"}
    assert [s.filename for s in specs] == [str(tmp_path / "s.yaml"), "<string>", "<dict>"]
    with pytest.raises(UsageError, match=r"missing\.yaml"):
        hpo.load_space(tmp_path / "missing.yaml")


def test_errors_are_raised_not_exits(workdir: Path) -> None:
    with pytest.raises(UsageError, match="unknown dataset"):
        hpo.create_study(SPACE, name="x", dataset="nope", check_data=False)
    with pytest.raises(UsageError, match="seed"):
        hpo.create_study(SPACE, name="x", seed=-1, check_data=False)
    with pytest.raises(hpo.UsageError, match="no study named 'nosuch'"):
        hpo.load_study("nosuch")
    assert not (workdir / "hpo.db").exists()  # nothing written for invalid requests


@pytest.mark.slow
def test_create_run_read_and_ensemble_a_study(workdir: Path) -> None:
    study = hpo.create_study(SPACE, name="api", seed=0, check_data=False)
    assert repr(study).startswith("Study(name='api'")
    assert study.status().n_trials == 2 and study.trials == [] and study.best_trial is None
    with pytest.raises(UsageError, match="already exists"):
        hpo.create_study(SPACE, name="api", check_data=False)

    st = study.run(progress=False)
    assert st.done and st.complete == 2, st
    again = hpo.load_study("api")
    trials = again.trials
    assert [t.number for t in trials] == [0, 1] and all(t.complete for t in trials)
    best = again.best_trial
    assert best is not None and best.value == max(t.value or 0 for t in trials)
    assert best.mlflow_run_id and best.params["conv_type"] in ("Conv2D", "SeparableConv2D")
    assert {"val_accuracy", "epoch_seconds_median", "params_count"} <= set(best.metrics)
    rows = again.report(by="conv_type")
    assert sum(r["trials"] for r in rows) == 2
    with pytest.raises(UsageError, match="not a parameter"):
        again.report(by="nope")

    from sklearn.datasets import load_digits

    images = load_digits().images[:5]  # raw 8x8 intensities 0..16, as the dataset holds them
    model = best.load_model()
    assert model.predict(images.reshape(5, 8, 8, 1), verbose=0).shape == (5, 10)

    result = hpo.build_ensemble(study, "api-ens", size=2, top=2)
    assert result.name == "api-ens" and result.members
    ens = hpo.load_ensemble("api-ens")
    pred = ens.predict(images)
    assert pred.probabilities.shape == (5, 10)
    np.testing.assert_allclose(pred.probabilities.sum(axis=1), 1.0, rtol=1e-4)
    assert pred.labels is not None and len(pred.labels) == 5

    path = hpo.export_ensemble("api-ens", workdir / "ens.keras")
    exported = hpo.load_ensemble(path).predict(images)
    np.testing.assert_allclose(exported.probabilities, pred.probabilities, atol=1e-5)
    np.save(workdir / "x.npy", images)
    from_file = hpo.load_ensemble(path).predict(workdir / "x.npy")
    np.testing.assert_allclose(from_file.probabilities, pred.probabilities, atol=1e-5)
    with pytest.raises(HpoError):
        hpo.load_ensemble("no-such-ensemble")
