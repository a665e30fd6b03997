"""A trial's checkpoint round-trips through its MLflow run: weights, optimizer state, history.

A tiny dense classifier on sklearn's digits, trained without shuffling so that training is
deterministic: 3 epochs, a checkpoint, 3 more epochs in a new model restored from it, equals 6
epochs straight through. A real ``hpo run`` checkpoints a trial after every epoch with
``checkpoint_interval: 0`` and not at all when its epochs end before the interval has passed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from hpo import tracking
from hpo.tracking.artifacts import CHECKPOINT_FILE
from hpo.workers import checkpoints

from conftest import hpo

keras = pytest.importorskip("keras")


def _data() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return (digits.data[:300] / 16.0).astype("float32"), digits.target[:300]


def _model(seed: int) -> Any:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    return model


def _fit(model: Any, epochs: int, initial_epoch: int = 0) -> list[dict[str, float]]:
    x, y = _data()
    history = model.fit(
        x, y, epochs=epochs, initial_epoch=initial_epoch, batch_size=32, shuffle=False, verbose=0
    )
    return [{"loss": float(v)} for v in history.history["loss"]]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    """One MLflow store (its set-up takes seconds), artifacts in the test's directory."""
    root = tmp_path_factory.mktemp("mlflow")
    client = tracking.new_client(f"sqlite:///{root / 'mlflow.db'}", root=root / "outbox")
    experiment = client.create_experiment("checkpoints", artifact_location=str(root / "runs"))
    return client, experiment


@pytest.fixture
def run(store: tuple[Any, str]) -> tuple[Any, str]:
    client, experiment = store
    return client, client.start_run(experiment, run_name="trial")


def _weights(model: Any) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_weights()]


def test_resumed_training_equals_training_straight_through(
    tmp_path: Path, run: tuple[Any, str]
) -> None:
    client, run_id = run
    straight = _model(0)
    _fit(straight, 6)

    first = _model(0)
    history = _fit(first, 3)
    checkpoints.save(client, run_id, first, 3, history, [0.1, 0.1, 0.1])
    found = checkpoints.load(client, run_id, tmp_path / "download")
    assert found is not None and found.epoch == 3 and found.history == history

    resumed = _model(1)  # other initial weights: all of them must come from the checkpoint
    assert checkpoints.restore(resumed, found)
    assert int(resumed.optimizer.iterations) == int(first.optimizer.iterations) == 30
    _fit(resumed, 6, initial_epoch=3)
    for a, b in zip(_weights(resumed), _weights(straight), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)

    # The model's weights alone (a fresh Adam) train to something else: the optimizer's
    # state is what made the resumed run equal.
    weights_only = _model(1)
    weights_only.set_weights(_weights(first))
    _fit(weights_only, 6, initial_epoch=3)
    gap = max(
        float(np.abs(a - b).max())
        for a, b in zip(_weights(weights_only), _weights(straight), strict=True)
    )
    assert gap > 1e-3


def test_a_checkpoint_whose_weights_do_not_match_its_hash_is_not_used(
    tmp_path: Path, run: tuple[Any, str]
) -> None:
    client, run_id = run
    model = _model(0)
    history = _fit(model, 1)
    checkpoints.save(client, run_id, model, 1, history, [0.1])
    found = checkpoints.load(client, run_id, tmp_path / "ok")
    assert found is not None
    # A writer killed while it uploaded epoch 2's weights into the file epoch 1's pointer names.
    tracking.log_artifact_files(client, run_id, {found.weights.name: b"half a file"})
    assert checkpoints.load(client, run_id, tmp_path / "torn") is None


def test_a_checkpoint_carries_an_earlier_best_epoch_and_a_torn_one_is_dropped(
    tmp_path: Path, run: tuple[Any, str]
) -> None:
    client, run_id = run
    model = _model(0)
    history = _fit(model, 1)
    best = [np.array(w, copy=True) for w in model.get_weights()]
    history += _fit(model, 3, initial_epoch=1)
    checkpoints.save(client, run_id, model, 3, history, [0.1] * 3, (1, best))
    found = checkpoints.load(client, run_id, tmp_path / "ok")
    assert found is not None and found.epoch == 3 and found.best_epoch == 1
    assert found.best_weights is not None
    for a, b in zip(found.best_weights, best, strict=True):
        np.testing.assert_array_equal(a, b)
    # The model's own (epoch 3) weights differ from the best epoch's: both were stored.
    assert any(not np.array_equal(a, b) for a, b in zip(_weights(model), best, strict=True))

    # A torn best-epoch file: the checkpoint itself is still used, without its best epoch.
    pointer = json.loads(
        Path(client.download_artifacts(run_id, CHECKPOINT_FILE, str(tmp_path / "p"))).read_text()
    )
    tracking.log_artifact_files(client, run_id, {pointer["best_weights"]: b"half a file"})
    torn = checkpoints.load(client, run_id, tmp_path / "torn")
    assert torn is not None and torn.epoch == 3
    assert torn.best_epoch is None and torn.best_weights is None


def test_no_checkpoint_means_none(tmp_path: Path, run: tuple[Any, str]) -> None:
    client, run_id = run
    assert checkpoints.load(client, run_id, tmp_path) is None
    tracking.log_artifact_files(client, run_id, {CHECKPOINT_FILE: b"{not json"})
    assert checkpoints.load(client, run_id, tmp_path / "bad") is None


def test_a_vae_resumes_and_a_gan_trains_from_epoch_0(tmp_path: Path, run: tuple[Any, str]) -> None:
    """The VAE (base ``fit``, sub-models, two losses) restores whole and trains on from its
    checkpoint's epoch; the GAN's loop keeps state outside its weights, so it never resumes."""
    from hpo.datasets import load_dataset
    from hpo.families.gan import GAN
    from hpo.families.vae import VAE
    from hpo.spaces import DatasetSpec, Params

    client, run_id = run
    data = load_dataset(DatasetSpec(name="digits", subset=160, seed=0))
    hp = Params({"latent_dim": 3, "conv_blocks": 2, "filters": 4, "dense_units": 8})
    family = VAE()
    assert checkpoints.can_resume(family) and not checkpoints.can_resume(GAN())

    class Epochs(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[int] = []

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seen.append(epoch + 1)

    keras.utils.set_random_seed(0)
    first = family.build(hp, data)
    family.fit(first, hp, data, 1, [])
    checkpoints.save(client, run_id, first, 1, [{"loss": 1.0}], [0.1])
    keras.utils.set_random_seed(1)
    resumed = family.build(hp, data)
    found = checkpoints.load(client, run_id, tmp_path)
    assert found is not None and checkpoints.restore(resumed, found)
    for a, b in zip(_weights(resumed), _weights(first), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.optimizer.iterations) == int(first.optimizer.iterations) > 0
    epochs = Epochs()
    family.fit(resumed, hp, data, 2, [epochs], initial_epoch=1)
    assert epochs.seen == [2]


def test_restore_keeps_the_learning_rate_the_model_was_built_with(
    tmp_path: Path, run: tuple[Any, str]
) -> None:
    """A schedule callback (sorted_seq's cosine) had lowered the rate when the checkpoint was
    written; it computes each epoch's rate from the built one, which must not be the lowered."""
    client, run_id = run
    model = _model(0)
    history = _fit(model, 1)
    model.optimizer.learning_rate = 0.001
    checkpoints.save(client, run_id, model, 1, history, [0.1])
    resumed = _model(1)
    found = checkpoints.load(client, run_id, tmp_path)
    assert found is not None and checkpoints.restore(resumed, found)
    assert float(resumed.optimizer.learning_rate) == pytest.approx(0.01)
    assert int(resumed.optimizer.iterations) == int(model.optimizer.iterations)


SPACE = """
family: image_cnn
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 3, checkpoint_interval: INTERVAL}
defaults: {algorithm: optuna-random, pruner: none}
params:
  conv_blocks: 1
  filters: 8
  kernel_size: 3
  dense_units: 16
  learning_rate: 1.0e-3
  batch_size: 32
  x: {type: float, low: 0.0, high: 1.0}
"""


@pytest.mark.parametrize(("interval", "last_epoch"), [(0, 2), (3600, None)])
def test_a_trial_checkpoints_once_its_interval_has_passed(
    tmp_path: Path, interval: int, last_epoch: int | None
) -> None:
    import json

    import optuna
    from mlflow import MlflowClient

    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("INTERVAL", str(interval)))
    result = hpo("run", str(space), "--study", "c", "--trials", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    trial = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path / 'hpo.db'}").trials[0]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["epochs"] == 3
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = trial.user_attrs["mlflow_run_id"]
    names = {f.path for f in client.list_artifacts(run_id)}
    if last_epoch is None:  # 3 epochs of a tiny model take seconds, far less than the interval
        assert CHECKPOINT_FILE not in names
        assert "checkpoint_seconds" not in trial.user_attrs
    else:  # epochs 1 and 2 checkpointed (never the last): the pointer names epoch 2
        pointer = json.loads(
            Path(client.download_artifacts(run_id, CHECKPOINT_FILE, str(tmp_path))).read_text()
        )
        assert pointer["epoch"] == last_epoch
        assert trial.user_attrs["checkpoint_seconds"] > 0
