"""What the MLflow UI reads from hpo's runs: the experiment's kind, the study and trial runs'
descriptions (``mlflow.note.content``) and the ``objective`` metric, against a real local
MLflow store (SQLite), through ``hpo``'s tracking layer and its outbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from hpo import tracking
from hpo.storage.studies import StudyConfig
from hpo.tracking import mlflow_ui
from hpo.tracking._outbox import new_placeholder
from hpo.tracking.notes import run_link, study_note, trial_note

from conftest import FAST_SPACE, FAULT_FAMILY_ENV, hpo

W = "?workflowType=machine_learning"

SPACE = """
name: notes
family: fault_family:build
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
params:
  mode: ok
  x: {type: float, low: 0.0, high: 1.0}
"""


def _config(**kw: object) -> StudyConfig:
    base: dict[str, object] = dict(
        name="notes", source=SPACE, filename="notes.yaml", algorithm="optuna-random",
        pruner="median", n_trials=4, seed=0, tracking_uri="sqlite:///x.db", experiment_id="7",
        parent_run_id="p",
    )  # fmt: skip
    base.update(kw)
    return StudyConfig(**base)  # type: ignore[arg-type]


def test_the_study_note_summarizes_space_counts_best_trial_and_ensembles() -> None:
    import optuna
    from optuna.distributions import BaseDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    dist: dict[str, BaseDistribution] = {"x": FloatDistribution(0.0, 1.0)}
    trials = []
    for number, (state, value, x) in enumerate(
        [("COMPLETE", 0.5, 0.1), ("COMPLETE", 0.9, 0.2), ("PRUNED", None, 0.3)]
    ):
        t = create_trial(
            state=TrialState[state],
            value=value,
            params={"x": x},
            distributions=dist,
            user_attrs={"mlflow_run_id": f"run{number}", "epochs": 3},
            intermediate_values={1: 0.1},
        )
        t.number = number
        trials.append(t)
    note = study_note(_config(), trials, ["notes-ens:2"])
    assert "**hpo study `notes`**" in note
    assert "maximize `val_accuracy`" in note
    assert "`notes.yaml`, 1 searched parameters: `x`" in note  # `mode` is fixed: not searched
    assert "optuna-random" in note and "**pruner:** median" in note
    assert "**Trials:** 3 of 4: 2 complete, 1 pruned, 0 failed" in note
    # Links open the UI's training pages (its GenAI pages otherwise, in a fresh browser).
    assert f"**Best trial:** [trial 1](#/experiments/7/runs/run1{W}): `val_accuracy` = 0.9" in note
    assert "- `x` = 0.2" in note
    assert f"[notes-ens version 2](#/models/notes-ens/versions/2{W})" in note
    assert f"[the trials, best first](#/experiments/7/runs{W}&viewStateShareKey=hpo)" in note
    assert f"(#/experiments/7/runs{W}&viewStateShareKey=hpo&compareRunsMode=CHART)" in note
    # A trial that ended but is not told to the study yet counts as it ended.
    running = create_trial(
        state=TrialState.RUNNING, params={}, distributions={}, user_attrs={"mlflow_run_id": "r3"}
    )
    running.number = 3
    note = study_note(_config(), [*trials, running], overrides={3: ("COMPLETE", [0.95])})
    assert "4 of 4: 3 complete" in note and "[trial 3]" in note and "0.95" in note
    assert "No trial has completed yet." in study_note(_config(), [])
    del optuna


def test_trial_notes_and_links_say_how_a_trial_ended() -> None:
    assert trial_note(1, "COMPLETE", "val_accuracy", 0.91234, 2) == (
        "Trial 1: **complete** after 2 epochs (val_accuracy 0.9123)."
    )
    assert "pruned** by the median pruner after epoch 1" in trial_note(
        0, "PRUNED", "val_accuracy", 0.4, 1, pruner="median"
    )
    assert trial_note(3, "FAIL", "val_accuracy", reason="boom") == "Trial 3: **failed**: boom"
    # Ids still queued in the outbox (placeholders) are not linked.
    assert run_link("1", "pending-run-" + "a" * 32, "trial 2") == "trial 2"
    note = study_note(_config(experiment_id=new_placeholder("experiment")), [])
    assert "**Compare:**" not in note and "#/experiments/" not in note


def test_an_existing_experiment_gets_the_model_training_kind(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = MlflowClient(uri)
    old = raw.create_experiment("old")  # made before hpo tagged experiments
    chosen = raw.create_experiment(
        "chosen", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"}
    )
    c = tracking.new_client(uri, tmp_path / "outbox")
    assert c.ensure_experiment("old", {tracking.EXPERIMENT_KIND_TAG: "custom_model_development"})
    assert c.ensure_experiment("chosen", {tracking.EXPERIMENT_KIND_TAG: "custom_model_development"})
    assert raw.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # A kind someone chose is left alone.
    assert raw.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


def test_a_note_written_while_the_server_is_unreachable_waits_in_the_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = MlflowClient(uri)
    run = raw.create_run(raw.create_experiment("e")).info.run_id
    c = tracking.new_client(uri, tmp_path / "outbox")
    monkeypatch.setenv(tracking.OFFLINE_ENV, "1")
    c.set_tag(run, tracking.NOTE_TAG, "**queued**")
    assert tracking.NOTE_TAG not in raw.get_run(run).data.tags
    monkeypatch.delenv(tracking.OFFLINE_ENV)
    result = c.flush(wait=True, timeout=30)
    assert result.pending == 0 and not result.dropped, result.to_dict()
    assert raw.get_run(run).data.tags[tracking.NOTE_TAG] == "**queued**"


@pytest.mark.slow
def test_a_study_marks_its_experiment_and_describes_its_runs(tmp_path: Path) -> None:
    (tmp_path / "notes.yaml").write_text(FAST_SPACE)
    result = hpo(
        "run", "notes.yaml", "--study", "notes", "--trials", "3", "--seed", "3", "--json",
        cwd=tmp_path, env={**FAULT_FAMILY_ENV, "HPO_OUTBOX_DIR": str(tmp_path / "outbox")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("notes")
    assert experiment is not None
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # The runs page's saved view: the objective and the searched parameter as columns, best
    # first; the parallel-coordinates chart of them and the learning curves.
    view = json.loads(experiment.tags[mlflow_ui.VIEW_STATE_TAG])
    assert view["selectedColumns"] == ["metrics.`objective`", "params.`x`"], view
    assert view["orderByKey"] == "metrics.`objective`" and view["orderByAsc"] is False, view
    charts = {c["type"]: c for c in view["compareRunCharts"]}
    assert charts["PARALLEL"]["selectedParams"] == ["x"], charts
    assert charts["PARALLEL"]["selectedMetrics"] == ["objective"], charts
    curves = [c["metricKey"] for c in view["compareRunCharts"] if c["type"] == "LINE"]
    assert {"val_accuracy", "val_loss", "loss"} <= set(curves), curves
    runs = client.search_runs([experiment.experiment_id])
    (study,) = [r for r in runs if r.data.tags["hpo.kind"] == "study"]
    trials = {
        int(r.data.tags["hpo.trial_number"]): r for r in runs if r.data.tags["hpo.kind"] == "trial"
    }
    states = {n: r.data.tags["hpo.state"] for n, r in trials.items()}
    assert len(trials) == 3 and set(states.values()) == {"COMPLETE"}, states
    for n, run in trials.items():
        note = run.data.tags[tracking.NOTE_TAG]
        if states[n] == "COMPLETE":
            assert note.startswith(f"Trial {n}: **complete** after 1 epoch (val_accuracy "), note
            # The objective under one name, whatever the study optimizes.
            assert run.data.metrics["objective"] == run.data.metrics["val_accuracy"]
    note = study.data.tags[tracking.NOTE_TAG]
    assert "**Trials:** 3 of 3: 3 complete, 0 pruned, 0 failed" in note, note
    assert "`notes.yaml`, 1 searched parameters: `x`" in note
    best = max(
        trials.values(),
        key=lambda r: (r.data.metrics["val_accuracy"], -int(r.data.tags["hpo.trial_number"])),
    )
    link = f"(#/experiments/{experiment.experiment_id}/runs/{best.info.run_id}{W})"
    assert f"**Best trial:** [trial {best.data.tags['hpo.trial_number']}]{link}" in note, note
    assert f"- `x` = {best.data.params['x'][:5]}" in note, note


@given(
    params=st.lists(st.text(min_size=1, max_size=250), max_size=200, unique=True),
    directions=st.lists(st.sampled_from(["minimize", "maximize"]), min_size=1, max_size=3),
)
@settings(max_examples=50, deadline=None)
def test_the_saved_view_fits_mlflows_tag_limit_whatever_the_space(
    params: list[str], directions: list[str]
) -> None:
    metrics = [f"m{i}" for i in range(len(directions))]
    text = mlflow_ui.view_state(params, metrics, directions)
    assert len(text) <= mlflow_ui.MAX_VIEW_STATE_CHARS
    view = json.loads(text)
    shown = [c.removeprefix("params.`")[:-1] for c in view["selectedColumns"][len(metrics) :]]
    assert shown == params[: len(shown)]  # the first parameters, in order
    assert view["orderByAsc"] is (directions[0] == "minimize")
