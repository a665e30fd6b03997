"""The gan family, its Fréchet-distance objective (hpo.families.gan_quality), its failure
outcomes, and `hpo generate images` / `hpo ensemble build` on a GAN study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hpo.datasets import DataError, Dataset, Split, load_dataset
from hpo.families.gan_quality import class_shares, frechet_distance, gaussian
from hpo.spaces import Params

from conftest import REPO, hpo

keras = pytest.importorskip("keras")

from hpo.families import family_ensembles, get_family  # noqa: E402
from hpo.families.gan import GAN  # noqa: E402

SMALL_SPACE = REPO / "search_spaces" / "gan_small.yaml"
TINY: dict[str, object] = {
    "latent_dim": 4,
    "g_filters": 8,
    "d_filters": 4,
    "batch_size": 64,
    "fd_samples": 100,
}


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature-classifier cache for the module (none in the home folder)."""
    return tmp_path_factory.mktemp("hpo-cache")


@pytest.fixture(autouse=True)
def _cache_dir(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_CACHE_DIR", str(cache))


@pytest.fixture(scope="module")
def digits() -> Dataset:
    """gan_small's data: its feature classifier is trained once for the whole module."""
    from hpo.spaces import load_spec

    data = load_dataset(load_spec(SMALL_SPACE).dataset)
    data.validation = Split(data.validation.x[:100], data.validation.y[:100])
    return data


# -- the Fréchet distance ----------------------------------------------------------------------


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _reference_fd(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The 2-Wasserstein distance in its symmetric form, tr(S1 + S2 - 2 (S1^½ S2 S1^½)^½), with
    square roots from eigendecompositions (no scipy.linalg.sqrtm)."""
    root = _sqrt_psd(s1)
    cross = _sqrt_psd(root @ s2 @ root)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * cross))


def test_frechet_distance_of_known_gaussians() -> None:
    rng = np.random.default_rng(0)
    # Diagonal covariances: the closed form is |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.1, 4.0, 5), rng.uniform(0.1, 4.0, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    closed = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-9)
    # Full covariances that do not commute.
    m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(6), m2 @ m2.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = _reference_fd(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)
    # From samples: the estimate approaches the distance of the Gaussians they come from.
    x = rng.multivariate_normal(mu1, s1, size=20_000)
    y = rng.multivariate_normal(mu2, s2, size=20_000)
    assert frechet_distance(*gaussian(x), *gaussian(y)) == pytest.approx(expected, rel=0.05)
    # Fewer samples than features: a singular covariance still gives a finite distance.
    few = rng.normal(size=(3, 8))
    assert math.isfinite(frechet_distance(*gaussian(few), *gaussian(few + 1.0)))


def test_class_shares_see_mode_collapse() -> None:
    spread = np.eye(10)[np.arange(100) % 10]
    collapsed = np.eye(10)[np.r_[np.zeros(95, int), np.arange(5)]]
    assert class_shares(spread, 10) == pytest.approx({"max_class_share": 0.1, "class_entropy": 1.0})
    shares = class_shares(collapsed, 10)
    assert shares["max_class_share"] == pytest.approx(0.96)
    assert shares["class_entropy"] < 0.15


def test_the_kept_generator_is_the_lowest_distance_epochs() -> None:
    from hpo.families.gan_quality import KeptGenerator

    z = keras.Input((2,))
    generator = keras.Model(z, keras.layers.Dense(3)(z))
    kept = KeptGenerator(generator)
    logs = []
    for epoch, fd in enumerate([5.0, 3.0, 4.0], start=1):
        generator.set_weights([np.full_like(w, epoch) for w in generator.get_weights()])
        logs.append(kept.update(fd, epoch))
    # val_fd is the lowest distance so far (the objective), epoch_fd this epoch's own.
    assert [(d["epoch_fd"], d["val_fd"], d["kept_epoch"]) for d in logs] == [
        (5.0, 5.0, 1.0),
        (3.0, 3.0, 2.0),
        (4.0, 3.0, 2.0),
    ]
    assert kept.update(math.nan, 4) == {}  # a diverged epoch reports its NaN: the trial fails
    kept.restore()
    assert all(np.all(w == 2.0) for w in generator.get_weights())


# -- the family ----------------------------------------------------------------------------------


def test_family_is_registered_checks_its_data_and_is_not_ensembled(digits: Dataset) -> None:
    family = get_family("gan")
    assert isinstance(family, GAN) and family.raw_inputs is False
    assert not family_ensembles("gan") and family_ensembles("image_cnn")
    flat = Dataset(
        "flat", "classification", *(Split(np.zeros((4, 3), "float32"), np.zeros(4)),) * 3
    )
    with pytest.raises(DataError, match="images of shape"):
        family.check_data(flat)
    bright = Split(digits.train.x * 16, digits.train.y)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        family.check_data(Dataset("b", "classification", bright, digits.validation, digits.test))
    model = family.build(Params({**TINY, "conv_blocks": 2}), digits)
    fashion_like = Dataset(
        "f", "classification", *(Split(np.zeros((4, 28, 28, 1), "float32"), np.zeros(4)),) * 3
    )
    assert model.generator.output_shape == (None, 8, 8, 1)
    # 4x4 kernels at stride 2 cover every pixel evenly (3x3 ones print a checkerboard).
    assert model.discriminator.get_layer("conv1").kernel_size == (4, 4)
    assert family.build(Params(TINY), fashion_like).generator.output_shape == (None, 28, 28, 1)
    # Resize-convolution upsampling by default; the transposed convolution on request, with the
    # same shapes; an unknown way is refused by name.
    kinds = {type(layer).__name__ for layer in model.generator.layers}
    assert "UpSampling2D" in kinds and "Conv2DTranspose" not in kinds
    for data, shape in ((digits, (None, 8, 8, 1)), (fashion_like, (None, 28, 28, 1))):
        transposed = family.build(Params({**TINY, "g_upsampling": "transpose"}), data).generator
        assert transposed.output_shape == shape
        kinds = {type(layer).__name__ for layer in transposed.layers}
        assert "Conv2DTranspose" in kinds and "UpSampling2D" not in kinds
    with pytest.raises(ValueError, match=r"g_upsampling.*'bilinear'"):
        family.build(Params({**TINY, "g_upsampling": "bilinear"}), digits)


@pytest.mark.slow
def test_collapse_fails_the_trial_with_its_reason(digits: Dataset) -> None:
    from hpo.workers.epoch_callback import EpochCallback as _EpochCallback
    from hpo.workers.tasks import TrialFailedError

    family = GAN()
    # Any 10-class distribution has a largest share >= 0.1: a threshold of 0.05 forces collapse.
    hp = Params({**TINY, "collapse_share": 0.05, "collapse_epochs": 1})
    epochs: list[dict[str, float]] = []
    callback = _EpochCallback(lambda e, logs, s: bool(epochs.append(logs)))
    with pytest.raises(TrialFailedError, match=r"collapsed: \d+% of the generated samples"):
        family.fit(family.build(hp, digits), hp, digits, 2, [callback.keras_callback])
    # The collapsed epoch was still reported (its metrics logged) before the trial failed.
    assert len(epochs) == 1 and math.isfinite(epochs[0]["val_fd"])
    assert 0.0 < epochs[0]["classifier_test_accuracy"] <= 1.0


@pytest.mark.slow
def test_divergence_fails_the_trial_with_its_reason(digits: Dataset) -> None:
    from hpo.workers.epoch_callback import EpochCallback as _EpochCallback

    family = GAN()
    # An absurd learning rate blows the weights up to inf: the losses turn NaN.
    hp = Params({**TINY, "d_learning_rate": 1e30, "g_learning_rate": 1e30, "g_batchnorm": False})
    callback = _EpochCallback(lambda e, logs, s: False)
    family.fit(family.build(hp, digits), hp, digits, 1, [callback.keras_callback])
    assert callback.failure is not None and "nan" in callback.failure.lower(), callback.failure
    assert "loss" in callback.failure


# -- a real study ----------------------------------------------------------------------------


def _sample_cli(*args: str):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from hpo.cli import app

    return CliRunner().invoke(app, ["generate", "images", *args])


@pytest.mark.slow
def test_run_a_gan_study_then_sample_from_it(tmp_path: Path, cache: Path) -> None:
    import optuna
    from matplotlib.pyplot import imread
    from mlflow import MlflowClient

    env = {"HPO_CACHE_DIR": str(cache)}
    result = hpo("run", str(SMALL_SPACE), "--trials", "2", "--study", "g", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    # One feature classifier, cached, for both trials (and the in-process tests on this data).
    assert len(list(cache.glob("gan-classifier-digits-*.keras"))) == 1

    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.load_study(study_name="g", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        assert set(trial.intermediate_values) == {1}
        assert 0 < trial.intermediate_values[1] == trial.value < math.inf

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("g")
    assert experiment is not None
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("hpo.kind") == "trial"
    ]
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("hpo.fail_reason")
        for key in ("val_fd", "d_loss", "g_loss", "gen_max_class_share", "gen_class_entropy"):
            assert math.isfinite(run.data.metrics[key]), key
        assert 0.5 < run.data.metrics["classifier_test_accuracy"] <= 1.0
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model.keras", "gan.json", "samples_epoch_001.png"} <= files
    run = runs[0]
    grid = imread(
        client.download_artifacts(run.info.run_id, "samples_epoch_001.png", str(tmp_path))
    )
    assert grid.shape[:2] == (8 * 49 + 1, 8 * 49 + 1)  # 8x8 samples of 8x8 pixels enlarged 6 times
    info = json.loads(
        Path(client.download_artifacts(run.info.run_id, "gan.json", str(tmp_path))).read_text()
    )
    assert info["latent_dim"] == int(run.data.params["latent_dim"]) and info["class_latents"]

    best = study.best_trial.number
    out = tmp_path / "pics" / "g.png"
    assert sorted(info["class_latents"]) == [str(d) for d in range(10)]
    source, target = "3", "8"
    n, side = 4, 4 * 49 + 1
    result = _sample_cli(
        f"g:{best}",
        "--out",
        str(out),
        "--n",
        str(n),
        "--arithmetic",
        f"{source}-{target}",
        "--alphas",
        "0,1,2",
        "--storage",
        storage,
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["family"] == "gan" and report["arithmetic"] == {
        "from": target,
        "to": source,
        "alphas": [0.0, 1.0, 2.0],
    }
    expected = {
        "grid": (out, (side, side)),
        "interpolation": (tmp_path / "pics" / "g_interpolation.png", (side, side)),
        "arithmetic": (tmp_path / "pics" / "g_arithmetic.png", (side, 3 * 49 + 1)),
    }
    for key, (path, shape) in expected.items():
        assert report["files"][key] == str(path)
        assert imread(path).shape[:2] == shape, key

    from hpo.ensemble import EnsembleError, build_ensemble

    with pytest.raises(EnsembleError, match="'gan' study, whose trials are not ensembled"):
        build_ensemble(["g"], "gens", storage=storage)
