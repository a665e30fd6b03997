"""bench/vs_keras_tuner.py: the Keras Tuner side searches exactly the hpo space."""

from __future__ import annotations

import sys
from pathlib import Path

import keras_tuner as kt
import pytest

from hpo.datasets import load_dataset
from hpo.families import get_family
from hpo.spaces import DatasetSpec, Params, load_spec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import vs_keras_tuner  # noqa: E402


@pytest.mark.slow
def test_keras_tuner_hyperparameters_mirror_the_space_file() -> None:
    spec = load_spec(REPO / "search_spaces" / "image_cnn.yaml")
    data = load_dataset(DatasetSpec(name="digits", subset=200))
    family = get_family(spec.family)
    hypermodel = vs_keras_tuner.kt_hypermodel(spec, data, family)
    hp = kt.HyperParameters()
    hypermodel.build(hp)

    found = {h.name: h for h in hp.space}
    assert set(found) == {n.name for n in spec.space.searched_nodes()}
    lr = found["learning_rate"]
    assert (lr.min_value, lr.max_value, lr.sampling) == (1e-4, 1e-1, "log")
    filters = found["filters"]
    assert (filters.min_value, filters.max_value, filters.sampling) == (8, 32, "log")
    assert found["conv_blocks"].step == 1
    assert list(found["batch_size"].values) == [32, 64, 128]
    assert list(found["optimizer"].values) == ["adam", "rmsprop", "sgd"]
    assert isinstance(found["optimizer.sgd.nesterov"], kt.engine.hyperparameters.Boolean)

    # Only the chosen optimizer's sub-parameters reach the model, by hpo's path names, and the
    # model is the one hpo's family builds for those values.
    hp.values.update(
        {"optimizer": "sgd", "optimizer.sgd.momentum": 0.5, "optimizer.sgd.nesterov": True}
    )
    hp.values["conv_blocks"] = 3
    model = hypermodel.build(hp)
    params = hypermodel.params
    assert params["optimizer"] == "sgd" and params.children("optimizer").keys() == {
        "momentum",
        "nesterov",
    }
    assert "optimizer.adam.beta_1" not in params
    same = family.build(Params(params.to_dict()), data)
    assert model.count_params() == same.count_params()
    assert type(model.optimizer).__name__ == "SGD"
    assert float(model.optimizer.momentum) == 0.5


def test_a_space_copy_changes_only_the_first_rung_and_the_kept_epoch(tmp_path: Path) -> None:
    space = REPO / "search_spaces" / "dense_bn.yaml"
    copy = vs_keras_tuner.with_budget(space, 2, load_spec(space).budget.max_epochs, tmp_path)

    original, changed = load_spec(space), load_spec(copy)
    assert copy.parent == tmp_path / "spaces" and changed.budget.min_epochs == 2
    for section in ("family", "dataset", "objectives", "defaults", "constraints"):
        assert getattr(changed, section) == getattr(original, section)
    assert changed.space.names() == original.space.names()
    assert changed.budget.max_epochs == original.budget.max_epochs
    assert vs_keras_tuner.with_budget(space, 1, 4, tmp_path) == space  # already epoch 1, best
    assert changed.budget.restore_best_epoch and original.budget.restore_best_epoch
    last = load_spec(vs_keras_tuner.with_budget(space, 1, 4, tmp_path, "last"))
    assert not last.budget.restore_best_epoch and last.budget.min_epochs == 1
    assert last.space.names() == original.space.names()
    # A space of one epoch a trial, run with --epochs 4: its copy takes the run's epochs.
    short = REPO / "search_spaces" / "text_conv1d_small.yaml"
    assert load_spec(short).budget.max_epochs == 1
    budget = load_spec(vs_keras_tuner.with_budget(short, 2, 4, tmp_path)).budget
    assert (budget.min_epochs, budget.max_epochs) == (2, 4)
