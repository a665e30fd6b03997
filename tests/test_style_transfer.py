"""The style_transfer family, its style_images dataset, a real study through `hpo run` with
its Pareto grid (`hpo study pareto`), and `hpo ensemble build` refusing it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpo.datasets import DataError, load_dataset
from hpo.spaces import DatasetSpec, Params

from conftest import REPO, hpo

keras = pytest.importorskip("keras")

from hpo.families import family_ensembles, get_family  # noqa: E402
from hpo.families.style_transfer import (  # noqa: E402
    GENERATED_IMAGE_FILE,
    StyleTransfer,
    gram,
    total_variation,
)

SMALL_SPACE = REPO / "search_spaces" / "style_transfer_small.yaml"


def _images(size: int = 24) -> DatasetSpec:
    return DatasetSpec(name="style_images", options={"size": size})


# -- the dataset and its validation ------------------------------------------------------------


def test_default_images_ship_with_matplotlib_and_are_square_rgb() -> None:
    data = load_dataset(_images(40))
    assert data.task == "reconstruction" and data.input_shape == (40, 40, 3)
    for split in (data.train, data.validation, data.test):
        assert split.x.shape == split.y.shape == (1, 40, 40, 3)
    # Two different pictures in [0, 1]: the gift box's transparent corners became white.
    assert data.train.x.min() >= 0.0 and data.train.x.max() <= 1.0
    assert np.abs(data.train.x - data.train.y).mean() > 0.1
    assert data.train.y[0, 0, 0].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"content": "/no/such/face.jpg"},
            "option 'content': no such image file: /no/such/face.jpg",
        ),
        ({"style": "/no/such/art.png"}, "option 'style': no such image file: /no/such/art.png"),
        ({"style": ""}, "option 'style' must be the path of an image file"),
        ({"size": 8}, "option 'size' must be an integer from 16 to 1024"),
        ({"colour": "red"}, "unknown option 'colour'; it takes content, style, size"),
    ],
)
def test_bad_options_name_the_key_and_file(options: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match="dataset style_images: ") as info:
        load_dataset(DatasetSpec(name="style_images", options=options))
    assert message in str(info.value) and "\n" not in str(info.value)


@settings(max_examples=40, deadline=None)
@given(
    key=st.sampled_from(["content", "style", "size"]),
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**40), 2**40),
        st.floats(allow_nan=True),
        st.text(max_size=30),
        st.lists(st.integers(), max_size=3),
    ),
)
def test_any_option_value_loads_or_is_one_line_data_error(key: str, value: object) -> None:
    try:
        data = load_dataset(DatasetSpec(name="style_images", options={key: value}))
    except DataError as exc:
        assert str(exc).startswith("dataset style_images: option ") and "\n" not in str(exc)
    else:  # only values that mean a default, a real file or a valid size load
        assert data.input_shape[-1] == 3


def test_a_file_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(DataError, match=f"option 'content': {text} is not an image"):
        load_dataset(DatasetSpec(name="style_images", options={"content": str(text)}))


def test_hpo_run_with_a_missing_image_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        SMALL_SPACE.read_text().replace(
            "options: {size: 48}", "options: {size: 48, style: /no/such/painting.jpg}"
        )
    )
    result = hpo("run", str(space), "--trials", "1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "option 'style': no such image file: /no/such/painting.jpg" in lines[0]
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "hpo.db").exists() and not (tmp_path / "mlflow.db").exists()


# -- the family --------------------------------------------------------------------------------


def test_family_is_registered_checks_its_data_and_is_not_ensembled() -> None:
    assert isinstance(get_family("style_transfer"), StyleTransfer)
    assert not family_ensembles("style_transfer")
    digits = load_dataset(DatasetSpec(name="digits", subset=20))
    with pytest.raises(DataError, match="works on reconstruction data"):
        StyleTransfer().check_data(digits)


def test_artifact_name_matches_what_the_pareto_grid_reads() -> None:
    from hpo.tracking.artifacts import GENERATED_IMAGE_FILE as READ

    assert GENERATED_IMAGE_FILE == READ


def test_gram_and_total_variation_against_numpy() -> None:
    rng = np.random.default_rng(0)
    f = rng.random((1, 3, 4, 5)).astype(np.float32)
    flat = f.reshape(1, 12, 5)
    expected = flat[0].T @ flat[0] / 12
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gram(f))[0], expected, rtol=1e-5)
    image = rng.random((1, 4, 4, 3)).astype(np.float32)
    dy = (image[:, :-1, :-1] - image[:, 1:, :-1]) ** 2
    dx = (image[:, :-1, :-1] - image[:, :-1, 1:]) ** 2
    tv = float(keras.ops.convert_to_numpy(total_variation(image))[0])
    assert tv == pytest.approx(float(np.mean((dx + dy) ** 1.25)), rel=1e-5)


@pytest.mark.slow
def test_optimizing_lowers_the_weighted_loss_and_keeps_pixels_in_range() -> None:
    data = load_dataset(_images(32))
    hp = Params(
        {"image_size": 32, "style_weight": 100.0, "learning_rate": 0.03, "steps_per_epoch": 4}
    )
    family = StyleTransfer()
    model = family.build(hp, data)
    start = model.measure(model.image)
    assert start["content_loss"] == pytest.approx(0.0, abs=1e-6)  # it starts from the content

    history: list[dict[str, float]] = []

    class Record(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            history.append(dict(logs or {}))

    family.fit(model, hp, data, 2, [Record()])
    assert [sorted(h) for h in history] == [
        ["content_loss", "loss", "style_loss", "total_variation"]
    ] * 2
    assert history[1]["loss"] < history[0]["loss"]
    assert history[1]["style_loss"] < start["style_loss"]  # the style comes in ...
    assert history[1]["content_loss"] > 0.0  # ... at some cost to the content
    image = model.image
    assert image.shape == (32, 32, 3) and image.min() >= 0.0 and image.max() <= 1.0
    saved = family.saved_model(model, data)
    np.testing.assert_allclose(saved.predict(data.train.x, verbose=0)[0], image, atol=1e-6)
    assert model.count_params() == 32 * 32 * 3


# -- a real study ------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_a_style_transfer_study_then_draw_its_pareto_front(tmp_path: Path) -> None:
    import optuna
    from mlflow import MlflowClient
    from PIL import Image

    from hpo.tracking.pareto import CAPTION, PAD, PARETO_GRID_FILE

    result = hpo("run", str(SMALL_SPACE), "--study", "st", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout

    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.load_study(study_name="st", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for trial in study.trials:
        assert len(trial.values) == 2 and all(0 < v < math.inf for v in trial.values)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("st")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get("hpo.kind") == "trial"]
    assert len(trial_runs) == 3
    for run in trial_runs:
        metrics = run.data.metrics
        assert metrics["objective"] == metrics["final_content_loss"] > 0
        assert metrics["objective_2"] == metrics["final_style_loss"] > 0
        history = client.get_metric_history(run.info.run_id, "style_loss")
        assert sorted(m.step for m in history) == [1, 2]  # one value per epoch
        path = client.download_artifacts(run.info.run_id, GENERATED_IMAGE_FILE, str(tmp_path))
        with Image.open(path) as image:
            assert image.size == (48, 48) and image.mode == "RGB"

    front = sorted(t.number for t in study.best_trials)
    out = tmp_path / "front.png"
    result = hpo("study", "pareto", "st", "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Pareto trials" in result.stdout
    n = len(front)
    with Image.open(out) as grid:
        assert grid.size == (n * (48 + PAD) + PAD, 48 + 2 * PAD + CAPTION)

    parent = next(r for r in runs if r.data.tags.get("hpo.kind") == "study")
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert PARETO_GRID_FILE in names

    result = hpo("ensemble", "build", "st", cwd=tmp_path)
    assert result.returncode == 2
    assert "'style_transfer' study, whose trials are not ensembled" in result.stderr


def test_pareto_of_a_missing_study_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = hpo("study", "pareto", "nothing-here", "-o", str(tmp_path / "f.png"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


_JAX_SCRIPT = """
import json, keras, numpy as np
from hpo.spaces import DatasetSpec, Params
from hpo.datasets import load_dataset
from hpo.families.style_transfer import StyleTransfer
data = load_dataset(DatasetSpec(name="style_images", options={"size": 24}))
family, hp = StyleTransfer(), Params({"style_weight": 100.0, "learning_rate": 0.03,
                                      "steps_per_epoch": 3})
model = family.build(hp, data)
logs = []
class Record(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, l=None):
        logs.append(l)
family.fit(model, hp, data, 2, [Record()])
print(json.dumps({"backend": keras.backend.backend(), "logs": logs,
                  "low": float(model.image.min()), "high": float(model.image.max())}))
"""


@pytest.mark.slow
def test_the_image_optimizes_on_jax_too() -> None:
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    first, last = report["logs"]
    assert last["loss"] < first["loss"] and math.isfinite(last["style_loss"])
    assert report["low"] >= 0.0 and report["high"] <= 1.0


@pytest.mark.slow
def test_vgg19_loads_a_local_weights_file_and_a_missing_one_fails_the_trial(
    tmp_path: Path,
) -> None:
    from hpo.workers.runner import TrialFailedError

    # A weights file of VGG19's shape (untrained here: this machine has no ImageNet weights).
    weights = tmp_path / "vgg19_notop.weights.h5"
    reference = keras.applications.VGG19(include_top=False, weights=None)
    reference.save_weights(weights)
    data = load_dataset(_images(32))
    hp = {"network": "vgg19", "vgg19_weights": str(weights), "steps_per_epoch": 1}
    model = StyleTransfer().build(Params(hp), data)
    vgg = model.measure.features
    for name in ("block1_conv1", "block5_conv2"):  # the file's weights, not fresh ones
        np.testing.assert_array_equal(
            vgg.get_layer(name).get_weights()[0], reference.get_layer(name).get_weights()[0]
        )
    measured = model.measure(model.image)
    assert measured["content_loss"] == pytest.approx(0.0, abs=1e-6) and measured["style_loss"] > 0

    missing = tmp_path / "nowhere.h5"
    with pytest.raises(TrialFailedError, match=f"vgg19_weights: no such weights file: {missing}"):
        StyleTransfer().build(Params({**hp, "vgg19_weights": str(missing)}), data)
