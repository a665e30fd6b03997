"""The vae family, the sampling functions of hpo.families.vae_sampling and the `hpo generate images`
command."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpo.datasets import DataError, Dataset, Split, load_dataset
from hpo.spaces import DatasetSpec, Params

from conftest import REPO, hpo

keras = pytest.importorskip("keras")

from hpo.families import get_family  # noqa: E402
from hpo.families import vae_sampling as vs  # noqa: E402
from hpo.families.vae import VAE, BetaKLLoss, KLDivergence  # noqa: E402

SMALL_SPACE = REPO / "search_spaces" / "vae_small.yaml"
HP: dict[str, Any] = {
    "latent_dim": 3,
    "conv_blocks": 2,
    "filters": 4,
    "dense_units": 8,
    "learning_rate": 0.005,
    "batch_size": 32,
}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    data = load_dataset(DatasetSpec(name="digits", subset=160, seed=0))
    # 100 validation images keep an epoch short and still hold every class.
    data.validation = Split(data.validation.x[:100], data.validation.y[:100])
    return data


def _targets(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"reconstruction": x, "kl": np.zeros(len(x), np.float32)}


class _LinearDecoder:
    """A stand-in decoder: the image is the latent vector itself, (n, 1, d, 1)."""

    def __init__(self, d: int) -> None:
        self.input_shape = (None, d)
        self.output_shape = (None, 1, d, 1)

    def __call__(self, z: np.ndarray, training: bool = False) -> np.ndarray:
        return np.asarray(z).reshape(len(z), 1, -1, 1)


# -- family ------------------------------------------------------------------------------------


def test_family_is_registered_and_checks_its_data(digits: Dataset) -> None:
    family = get_family("vae")
    assert isinstance(family, VAE)
    x = np.zeros((4, 10), np.float32)
    flat = Dataset(
        "flat", "classification", Split(x, x[:, 0]), Split(x, x[:, 0]), Split(x, x[:, 0])
    )
    with pytest.raises(DataError, match="height, width, channels"):
        family.check_data(flat)
    loud = Dataset(
        "loud",
        "classification",
        Split(digits.train.x * 16, digits.train.y),
        digits.validation,
        digits.test,
    )
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        family.check_data(loud)
    text = Dataset("text", "language_model", digits.train, digits.validation, digits.test)
    with pytest.raises(DataError, match="classification or reconstruction"):
        family.check_data(text)


def test_decoder_mirrors_odd_image_sizes() -> None:
    # 28 -> 14 -> 7 -> 4 with three blocks: the decoder's 32x32 must be cropped back to 28x28.
    x = np.zeros((2, 28, 20, 1), np.float32)
    data = Dataset(
        "odd",
        "classification",
        Split(x, np.arange(2)),
        Split(x, np.arange(2)),
        Split(x, np.arange(2)),
        2,
        ["a", "b"],
    )
    model = VAE().build(Params({**HP, "conv_blocks": 3}), data)
    assert model.get_layer("decoder").output_shape == (None, 28, 20, 1)
    assert model.get_layer("encoder").output_shape == [(None, 3), (None, 3)]


@pytest.mark.slow
def test_one_epoch_trains_logs_both_terms_and_stores_latents(digits: Dataset) -> None:
    keras.utils.set_random_seed(0)
    family = VAE()
    hp = Params({**HP, "beta": 3.0})
    model = family.build(hp, digits)
    history = keras.callbacks.History()
    family.fit(model, hp, digits, 1, [history])
    logs = {k: v[-1] for k, v in history.history.items()}
    for key in ("loss", "reconstruction_loss", "kl_loss"):
        assert math.isfinite(logs[key]) and math.isfinite(logs[f"val_{key}"]), logs
    assert logs["val_reconstruction_loss"] > 0 and logs["val_kl_loss"] >= 0
    # The reported loss is the negative ELBO whatever beta: reconstruction + KL, unweighted.
    # (Not to the last digit: Keras averages the per-output losses over batches but the total
    # over examples, and the last validation batch is smaller.)
    assert logs["val_loss"] == pytest.approx(
        logs["val_reconstruction_loss"] + logs["val_kl_loss"], rel=1e-3
    )
    z = family.predict(model, hp, digits.validation.x)
    assert z.shape == (len(digits.validation), 3) and np.isfinite(z).all()

    info = json.loads(family.extra_artifacts(model, hp, digits)["vae.json"])
    assert info["image_shape"] == [8, 8, 1] and info["latent_dim"] == 3 and info["beta"] == 3.0
    assert list(info["class_means"]) == [str(d) for d in range(10)]
    mask = digits.validation.y == 7
    np.testing.assert_allclose(info["class_means"]["7"], z[mask].mean(axis=0), rtol=1e-5)
    assert sum(info["class_counts"].values()) == len(digits.validation)


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
def test_beta_scales_the_kl_gradient_but_not_the_reported_kl(beta: float) -> None:
    # One SGD step (learning rate 1) on a model whose only loss is the KL term: the weights move
    # by beta * dKL, while the loss it reports is the plain KL.
    x = keras.Input((1,))
    z_mean = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="ones")(x)
    z_log_var = keras.layers.Dense(2, kernel_initializer="zeros")(x)
    model = keras.Model(x, KLDivergence()([z_mean, z_log_var]))
    model.compile(keras.optimizers.SGD(1.0), loss=BetaKLLoss(beta))
    before = model.layers[1].get_weights()[1].copy()
    loss = model.train_on_batch(np.zeros((1, 1), np.float32), np.zeros(1, np.float32))
    # z_mean = (1, 1), z_log_var = 0: KL = 0.5 * (1 + 1) = 1, dKL/d bias = z_mean = 1.
    assert float(np.asarray(loss).reshape(-1)[0]) == pytest.approx(1.0)
    np.testing.assert_allclose(model.layers[1].get_weights()[1], before - beta, rtol=1e-6)


@pytest.mark.slow
def test_save_and_safe_mode_load_give_identical_decoder_outputs(
    digits: Dataset, tmp_path: Path
) -> None:
    from hpo.tracking.models import load_keras_model

    keras.utils.set_random_seed(1)
    family = VAE()
    hp = Params(HP)
    model = family.build(hp, digits)
    family.fit(model, hp, digits, 1, [])
    path = tmp_path / "model.keras"
    model.save(path)
    z = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    expected = vs.decode(model.get_layer("decoder"), z)
    for loaded in (keras.models.load_model(path, safe_mode=True), load_keras_model(path)):
        assert not any(type(layer).__name__ == "Lambda" for layer in loaded._flatten_layers())
        np.testing.assert_array_equal(vs.decode(loaded.get_layer("decoder"), z), expected)
        np.testing.assert_array_equal(
            family.predict(loaded, hp, digits.test.x[:20]),
            family.predict(model, hp, digits.test.x[:20]),
        )
    # The compiled model comes back too: same losses, same evaluation.
    reloaded = keras.models.load_model(path, safe_mode=True)
    a = model.evaluate(digits.test.x, _targets(digits.test.x), verbose=0, return_dict=True)
    b = reloaded.evaluate(digits.test.x, _targets(digits.test.x), verbose=0, return_dict=True)
    assert set(a) == set(b) == {"loss", "reconstruction_loss", "kl_loss"}
    assert b["reconstruction_loss"] == pytest.approx(a["reconstruction_loss"], rel=0.05)


# -- sampling functions ------------------------------------------------------------------------


def test_sampling_functions_give_image_grids(digits: Dataset) -> None:
    keras.utils.set_random_seed(2)
    decoder = VAE().build(Params(HP), digits).get_layer("decoder")
    rng = np.random.default_rng(0)
    grid = vs.sample_grid(decoder, 3, rng)
    assert grid.shape == (3, 3, 8, 8, 1) and grid.min() >= 0 and grid.max() <= 1

    base = rng.standard_normal(3)
    row = vs.latent_traversal(decoder, base, 1, [-2.0, base[1], 2.0])
    assert row.shape == (3, 8, 8, 1)
    np.testing.assert_allclose(row[1], vs.decode(decoder, base[np.newaxis])[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"dim must be in 0\.\.2"):
        vs.latent_traversal(decoder, base, 3, [0.0])

    z = rng.standard_normal((4, 3)).astype(np.float32)
    images = vs.apply_concept(decoder, z, np.ones(3, np.float32), [0.0, 0.5, 1.0])
    assert images.shape == (4, 3, 8, 8, 1)
    np.testing.assert_allclose(images[:, 0], vs.decode(decoder, z), atol=1e-6)

    picture = vs.tile(images, pad=1, scale=2)
    assert picture.shape == (4 * 17 + 1, 3 * 17 + 1)
    assert picture[0].min() == 1.0  # the white separator


def test_concept_vector_arithmetic() -> None:
    means = {"Sneaker": [1.0, 2.0, 3.0], "Sandal": [0.5, 2.0, -1.0], "T-shirt/top": [0.0] * 3}
    v = vs.concept_vector(means, "Sneaker", "Sandal")
    np.testing.assert_allclose(v, [0.5, 0.0, 4.0])
    np.testing.assert_allclose(vs.concept_vector(means, "Sandal", "Sneaker"), -v)
    with pytest.raises(vs.UnknownClassError, match="'Sneaker', 'Sandal', 'T-shirt/top'"):
        vs.concept_vector(means, "Sneaker", "Boot")

    # Adding alpha * (mean A - mean B) to the mean of B lands on the mean of A at alpha = 1.
    decoder = _LinearDecoder(3)
    start = np.asarray([means["Sandal"]], np.float32)
    out = vs.apply_concept(decoder, start, v, [0.0, 0.5, 1.0, 2.0])
    assert out.shape == (1, 4, 1, 3, 1)
    np.testing.assert_allclose(out[0, 0, 0, :, 0], means["Sandal"])
    np.testing.assert_allclose(out[0, 1, 0, :, 0], np.add(means["Sandal"], 0.5 * v))
    np.testing.assert_allclose(out[0, 2, 0, :, 0], means["Sneaker"])
    np.testing.assert_allclose(out[0, 3, 0, :, 0], np.add(means["Sneaker"], v))

    names = list(means)
    assert vs.parse_arithmetic("t-shirt/top-sandal", names) == ("T-shirt/top", "Sandal")
    assert vs.parse_arithmetic("Sandal-T-shirt/top", names) == ("Sandal", "T-shirt/top")
    assert vs.parse_arithmetic("0-1", names) == ("Sneaker", "Sandal")
    with pytest.raises(vs.UnknownClassError, match="known classes: 'Sneaker'"):
        vs.parse_arithmetic("Sneaker-Boot", names)
    with pytest.raises(vs.UnknownClassError, match="ambiguous"):
        vs.parse_arithmetic("a-b-c", ["a", "b", "c", "a-b", "b-c"])


# -- `hpo run` + `hpo generate images`, end to end ---------------------------------------------


def _sample_cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from hpo.cli import app

    return CliRunner().invoke(app, ["generate", "images", *args])


@pytest.mark.slow
def test_run_a_vae_study_then_sample_from_it(tmp_path: Path) -> None:
    from matplotlib.pyplot import imread
    from mlflow import MlflowClient

    result = hpo("run", str(SMALL_SPACE), "--trials", "1", "--study", "v", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("v")
    assert experiment is not None
    (run,) = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("hpo.kind") == "trial"
    ]
    assert run.info.status == "FINISHED", run.data.tags.get("hpo.fail_reason")
    for key in ("val_loss", "val_reconstruction_loss", "val_kl_loss", "kl_loss"):
        assert key in run.data.metrics
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.keras", "vae.json", "predictions.npz"} <= files
    latent = int(run.data.params["latent_dim"])
    preds = np.load(client.download_artifacts(run.info.run_id, "predictions.npz", str(tmp_path)))
    assert preds["validation"].shape == (len(preds["validation_true"]), latent)

    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    out = tmp_path / "pics" / "g.png"
    n, side = 4, 4 * (6 * 8 + 1) + 1  # 8x8 digits enlarged 6 times, 1-pixel separators
    result = _sample_cli(
        "v:0",
        "--out",
        str(out),
        "--n",
        str(n),
        "--arithmetic",
        "3-8",
        "--alphas",
        "0,1,2",
        "--storage",
        storage,
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["latent_dim"] == latent and report["arithmetic"]["to"] == "3"
    expected = {
        "grid": (out, (side, side)),
        "traversal": (tmp_path / "pics" / "g_traversal.png", (min(n, latent) * 49 + 1, side)),
        "arithmetic": (tmp_path / "pics" / "g_arithmetic.png", (side, 3 * 49 + 1)),
    }
    for key, (path, shape) in expected.items():
        assert report["files"][key] == str(path)
        assert imread(path).shape[:2] == shape, key

    unknown = _sample_cli("v", "--arithmetic", "3-cat", "--storage", storage, "--out", str(out))
    assert unknown.exit_code == 2
    assert "known classes: '0', '1', '2'" in unknown.output

    not_vae = tmp_path / "cnn" / "model.keras"
    not_vae.parent.mkdir()
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(not_vae)
    refused = _sample_cli(str(not_vae.parent), "--out", str(tmp_path / "x.png"))
    assert refused.exit_code == 2 and "neither a VAE nor a GAN generator" in refused.output
    assert not (tmp_path / "x.png").exists()
