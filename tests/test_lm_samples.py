"""Text samples of char_lstm / word_lstm trials after chosen epochs, stored in their MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hpo.cli import app
from hpo.datasets import text_corpus as tc
from hpo.families.lm_samples import (
    DEFAULT_TEMPERATURES,
    MAX_LENGTH,
    SAMPLE_PARAMS,
    SampleOptionError,
    sample_file_name,
    sample_plan,
)

from conftest import hpo
from services import MlflowServer

CORPUS_CHARS = 800


def space_file(folder: Path, params: str, max_epochs: int = 3) -> Path:
    path = folder / "samples.yaml"
    path.write_text(
        dedent(
            f"""\
            name: samples
            family: char_lstm
            dataset:
              name: shakespeare
              validation_fraction: 0.15
              test_fraction: 0.15
              options: {{plays: [hamlet], max_chars: {CORPUS_CHARS}, maxlen: 10, step: 2}}
            objective: {{metric: val_loss, direction: minimize}}
            budget: {{max_epochs: {max_epochs}}}
            defaults: {{algorithm: optuna-random, pruner: none, seed: 0}}
            params:
              units: 16
              learning_rate: 0.01
              batch_size: 32
            """
        )
        + "".join(f"  {line}\n" for line in params.splitlines())
    )
    return path


def test_defaults_are_first_middle_last_at_the_course_temperatures() -> None:
    plan = sample_plan({}, "char")
    assert sorted(plan.epochs_of(10)) == [1, 5, 10] and sorted(plan.epochs_of(1)) == [1]
    assert plan.temperatures == DEFAULT_TEMPERATURES == (0.2, 0.5, 1.0, 1.2)
    assert (plan.length, sample_plan({}, "word").length) == (200, 50)
    assert sorted(sample_plan({"sample_epochs": "all"}, "char").epochs_of(3)) == [1, 2, 3]
    assert sample_plan({"sample_epochs": [2, "last"]}, "char").epochs_of(4) == {2, 4}
    assert sample_plan({"sample_epochs": 2, "sample_temperatures": [1, 0.5]}, "char") == (
        sample_plan({"sample_epochs": "2", "sample_temperatures": "1.0, 0.5"}, "char")
    )
    assert sample_file_name(12, 1) == "samples/epoch_012_t1.0.txt"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sample_epochs", "first, 0", "sample_epochs: expected epoch numbers"),
        ("sample_epochs", "halfway", "sample_epochs: expected epoch numbers"),
        ("sample_epochs", True, "sample_epochs: expected epoch numbers"),
        ("sample_epochs", " , ", "sample_epochs: no epoch given"),
        ("sample_temperatures", "0.5, -1", "sample_temperatures: temperatures must be"),
        ("sample_temperatures", "hot", "sample_temperatures: temperatures must be"),
        ("sample_temperatures", ".nan", "sample_temperatures: temperatures must be"),
        ("sample_temperatures", [0.1] * 11, "sample_temperatures: give 1 to 10"),
        ("sample_length", 0, "sample_length: expected a whole number of tokens from 1"),
        ("sample_length", 1001, "sample_length: expected a whole number of tokens from 1"),
        ("sample_length", 2.5, "sample_length: expected a whole number of tokens from 1"),
    ],
)
def test_bad_sampling_options_are_named(key: str, value: object, message: str) -> None:
    with pytest.raises(SampleOptionError, match=message):
        sample_plan({key: value}, "char")


# What YAML can hand over as a constant: scalars, text, lists of them.
_YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=12),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(SAMPLE_PARAMS), _YAML_VALUES))
@example({"sample_epochs": [3, 8, "last"], "sample_temperatures": "1e-3, 1e3"})
def test_any_sampling_value_is_a_plan_or_a_named_error(values: dict[str, object]) -> None:
    try:
        plan = sample_plan(values, "word")
    except SampleOptionError as exc:
        assert str(exc).split(":")[0] in values, exc
        return
    assert 1 <= plan.length <= MAX_LENGTH
    assert all(t > 0 for t in plan.temperatures) and len(plan.temperatures) <= 10
    assert all(1 <= e <= 7 for e in plan.epochs_of(7))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ('sample_epochs: "1, 5"', "params.sample_epochs: epoch 5 comes after the last one"),
        ("sample_length: {type: int, low: 10, high: 20}", "params.sample_length: give"),
        ("sample_temperatures: 0", "params.sample_temperatures: temperatures must be"),
    ],
)
def test_bad_sampling_options_stop_the_study_with_status_2(
    workdir: Path, params: str, message: str
) -> None:
    space = space_file(workdir, params)
    result = CliRunner().invoke(app, ["study", "create", str(space)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "\n" not in err and f"{space}: {message}" in err, err
    assert not (workdir / "hpo.db").exists()


@pytest.mark.slow
def test_char_lstm_trial_stores_samples_after_epochs_1_2_3(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    """A real study (800 characters of Hamlet, 3 epochs) against a real MLflow server."""
    from mlflow import MlflowClient

    space = space_file(
        workdir,
        'sample_epochs: "1, 2, last"\nsample_temperatures: "0.2, 1.0"\nsample_length: 40',
    )
    result = hpo(
        "run", str(space), "--trials", "1", "--workers", "1", "--json", cwd=workdir,
        env={"MLFLOW_TRACKING_URI": mlflow_server.url}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["complete"] == 1, summary
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([summary["experiment_id"]], "tags.hpo.trial_number = '0'")
    run_id = run.info.run_id
    stored = {a.path for a in client.list_artifacts(run_id, "samples")}
    expected = {f"samples/epoch_{e:03d}_t{t}.txt" for e in (1, 2, 3) for t in ("0.2", "1.0")}
    assert stored == expected
    # The characters the model could write: those of the corpus it was trained on.
    play = tc.shakespeare_files(["hamlet"])[0].read_text("utf-8")
    alphabet = set(tc.markdown_play_to_text(play)[:CORPUS_CHARS])
    vocabulary = json.loads(Path(client.download_artifacts(run_id, "vocabulary.json")).read_text())
    assert set(vocabulary["vocabulary"]) == alphabet
    texts = {}
    for name in sorted(expected):
        texts[name] = Path(client.download_artifacts(run_id, name, str(workdir))).read_text()
        assert len(texts[name]) == 40 and set(texts[name]) <= alphabet, (name, texts[name])
    assert len(set(texts.values())) > 1
