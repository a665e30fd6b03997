"""The retention policy on a real study through a real ``mlflow server`` over HTTP.

One digits study (6 trials of 1 epoch, ``retention: {keep_best: 5}`` in its space) is trained
by ``hpo run``; an ensemble of its 3 best trials is built; ``hpo study retain --keep-best 2``
then deletes the model files of every finished trial that is neither among the best 2 nor an
ensemble member. Every check reads MLflow through the server, as a user elsewhere would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from hpo.errors import UsageError
from hpo.spaces import SpaceError, parse_spec
from hpo.tracking.artifacts import ARTIFACTS_DELETED_TAG, RETAINABLE_FILES
from hpo.tracking.retention import check_keep_best

from conftest import hpo
from services import DIGITS_SPACE, MlflowServer

pytest_plugins = ["services"]

SPACE = DIGITS_SPACE.read_text().replace("defaults:", "retention: {keep_best: 5}\ndefaults:", 1)
STUDY = "retained_digits"
TRIALS = 6


def _listed(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out.update(_listed(client, run_id, info.path))
        else:
            out[info.path] = int(info.file_size or 0)
    return out


def _runs(client: MlflowClient, storage: str) -> dict[int, str]:
    study = optuna.load_study(study_name=STUDY, storage=storage)
    return {t.number: t.user_attrs["mlflow_run_id"] for t in study.get_trials()}


def _ranked(storage: str) -> list[int]:
    """Complete trials, best first (val_accuracy maximized; ties: the lower number)."""
    study = optuna.load_study(study_name=STUDY, storage=storage)
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    return [t.number for t in sorted(done, key=lambda t: (-t.values[0], t.number))]


def _with_model(client: MlflowClient, runs: dict[int, str]) -> set[int]:
    return {n for n, r in runs.items() if "model.keras" in _listed(client, r)}


def _total(client: MlflowClient, runs: dict[int, str]) -> int:
    return sum(sum(_listed(client, r).values()) for r in runs.values())


def _ok(result: Any) -> Any:
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    return json.loads(result.stdout) if result.stdout.lstrip().startswith(("{", "[")) else None


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_retention_keeps_the_best_and_the_members_through_the_server(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    env = {
        "HPO_STORAGE": storage,
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "HPO_OUTBOX_DIR": str(tmp_path / "outbox"),
    }

    def cli(*args: str) -> Any:
        return hpo(*args, cwd=tmp_path, env=env, timeout=1200)

    run = ["--study", STUDY, "--trials", str(TRIALS), "--epochs", "1", "--subset", "300"]
    _ok(cli("run", str(space), *run, "--pruner", "none", "--workers", "1", "--seed", "0", "--json"))
    client = MlflowClient(mlflow_server.url)
    runs = _runs(client, storage)
    ranked = _ranked(storage)
    assert len(runs) == len(ranked) == TRIALS

    # 1. The space's policy ran when the study finished: only the worst trial lost its files.
    assert _with_model(client, runs) == set(ranked[:5])
    worst = client.get_run(runs[ranked[5]])
    assert "keep_best 5" in worst.data.tags[ARTIFACTS_DELETED_TAG]
    left = _listed(client, runs[ranked[5]])
    assert not set(RETAINABLE_FILES) & set(left)
    # Its metrics, parameters and curves stay.
    assert {"params.json", "history.json", "learning_curves.png", "dataset.json"} <= set(left)
    assert "val_accuracy" in worst.data.metrics and worst.data.params

    # 2. An ensemble of the 3 best; its predictions before retention.
    built = _ok(cli("ensemble", "build", STUDY, "--name", "retained-ens", "--method", "average",
                    "--top", "3", "--size", "3", "--json"))  # fmt: skip
    members = {m["trial"] for m in built["members"]}
    assert members == set(ranked[:3]), built["members"]
    from sklearn.datasets import load_digits

    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=load_digits().data.reshape(-1, 8, 8).astype(np.float32)[:32])
    before = _ok(cli("predict", "retained-ens:1", "--input", str(inputs), "--json"))

    # 3. --dry-run reports and deletes nothing.
    expected = set(ranked[2:5]) - members  # ranks 3-5, less the members: ranks 4 and 5
    assert expected == set(ranked[3:5])
    listed_before = {n: _listed(client, r) for n, r in runs.items()}
    dry = _ok(cli("study", "retain", STUDY, "--keep-best", "2", "--dry-run", "--json"))
    assert dry["dry_run"] and set(dry["removed_trials"]) == expected, dry
    assert dry["best_trials"] == ranked[:2] and dry["member_trials"] == [ranked[2]], dry
    assert {n: _listed(client, r) for n, r in runs.items()} == listed_before

    # 4. Retention for real: exactly the expected runs lose their files, bytes add up.
    total = _total(client, runs)
    report = _ok(cli("study", "retain", STUDY, "--keep-best", "2", "--json"))
    assert set(report["removed_trials"]) == expected and report["problems"] == [], report
    assert report["bytes_freed"] == dry["bytes_freed"] > 0
    freed_listed = sum(
        size
        for n in expected
        for name, size in listed_before[n].items()
        if name in RETAINABLE_FILES
    )
    assert report["bytes_freed"] == freed_listed == total - _total(client, runs)
    assert report["bytes_kept"] == _total(client, runs)
    assert _with_model(client, runs) == set(ranked[:3])
    experiment = client.get_run(runs[ranked[0]]).info.experiment_id
    for n in expected:  # gone from the server's disk too
        stored = mlflow_server.artifacts_dir / experiment / runs[n] / "artifacts"
        assert not (stored / "model.keras").exists() and (stored / "params.json").is_file()

    # 5. The registered ensemble still predicts the same; a new one builds from what is kept.
    after = _ok(cli("predict", "retained-ens:1", "--input", str(inputs), "--json"))
    assert after["predicted"] == before["predicted"]
    np.testing.assert_allclose(after["probabilities"], before["probabilities"], atol=1e-6)
    again = _ok(cli("ensemble", "build", STUDY, "--name", "retained-ens2", "--method", "average",
                    "--top", "6", "--size", "3", "--json"))  # fmt: skip
    assert {m["trial"] for m in again["members"]} == set(ranked[:3])
    reasons = {s["trial"]: s["reason"] for s in again["skipped"]}
    assert set(reasons) == set(ranked[3:]), reasons
    assert all("removed by the retention policy" in r for r in reasons.values()), reasons

    # 6. hpo study status shows the bytes; a removed trial's model says why it is gone.
    status = _ok(cli("study", "status", STUDY, "--json"))
    assert status["artifacts"]["bytes"] == _total(client, runs)
    assert status["artifacts"]["removed_runs"] == 3
    auto_freed = int(worst.data.tags["hpo.artifacts_freed_bytes"])
    parent = client.get_run(worst.data.tags["mlflow.parentRunId"]).data.metrics
    assert parent["retention_freed_bytes"] == auto_freed > 0
    assert status["artifacts"]["freed_bytes"] == report["bytes_freed"] + auto_freed
    text = cli("study", "status", STUDY)
    assert text.returncode == 0, text.stderr
    assert f"{status['artifacts']['bytes']:,} bytes" in " ".join(text.stdout.split())
    import hpo as api

    trial = next(t for t in api.load_study(STUDY, storage).trials if t.number == ranked[4])
    with pytest.raises(Exception, match="removed by the retention policy"):
        trial.load_model()

    # 7. Bad values: one line, exit 2, nothing deleted.
    for bad in ("0", "-1", "two", "1.5"):
        result = cli("study", "retain", STUDY, "--keep-best", bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr
    assert _with_model(client, runs) == set(ranked[:3])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{keep_best: 0}", "greater than 0"),
        ("{keep_best: -3}", "greater than 0"),
        ("{keep_best: '2'}", "valid integer"),
        ("{keep_best: 2.5}", "valid integer"),
        ("{keep_bset: 2}", "did you mean 'keep_best'"),
        ("{}", "required key is missing"),
        ("5", "retention"),
        ("", "keep_best: 10"),
    ],
)
def test_bad_retention_values_name_the_key(value: str, message: str) -> None:
    text = DIGITS_SPACE.read_text().replace("defaults:", f"retention: {value}\ndefaults:", 1)
    with pytest.raises(SpaceError) as caught:
        parse_spec(text, "space.yaml")
    shown = str(caught.value)
    assert "retention" in shown and message in shown, shown


def test_the_retention_key_is_read() -> None:
    assert parse_spec(SPACE, "space.yaml").retention.keep_best == 5  # type: ignore[union-attr]
    assert parse_spec(DIGITS_SPACE.read_text(), "space.yaml").retention is None


def test_bad_keep_best_is_one_line_exit_2_before_any_store(tmp_path: Path) -> None:
    for bad in ("0", "x"):
        result = hpo("study", "retain", "nope", "--keep-best", bad, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "--keep-best" in result.stderr
    assert not (tmp_path / "hpo.db").exists()


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
@settings(max_examples=60, deadline=None)
def test_keep_best_is_accepted_exactly_from_1(value: int) -> None:
    text = DIGITS_SPACE.read_text().replace(
        "defaults:", f"retention: {{keep_best: {value}}}\ndefaults:", 1
    )
    if value >= 1:
        assert parse_spec(text, "space.yaml").retention.keep_best == value  # type: ignore[union-attr]
        assert check_keep_best(value) == value
    else:
        with pytest.raises(SpaceError, match=r"retention\.keep_best"):
            parse_spec(text, "space.yaml")
        with pytest.raises(UsageError, match="at least 1"):
            check_keep_best(value)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_space_policy_deletes_from_a_local_mlflow_store(tmp_path: Path) -> None:
    """``mlflow.db`` with ``./mlruns``: the files go from the local folder, the rest stays."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("keep_best: 5", "keep_best: 1"))
    env = {"HPO_OUTBOX_DIR": str(tmp_path / "outbox")}
    run = ["--study", STUDY, "--trials", "3", "--epochs", "1", "--subset", "200"]
    _ok(hpo("run", str(space), *run, "--pruner", "none", "--workers", "1", "--seed", "0",
            "--json", cwd=tmp_path, env=env, timeout=1200))  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = _runs(client, storage)
    best = _ranked(storage)[0]
    assert _with_model(client, runs) == {best}
    for number, run_id in runs.items():
        folder = next((tmp_path / "mlruns").glob(f"*/{run_id}/artifacts"))
        assert (folder / "model.keras").is_file() == (number == best), number
        assert (folder / "params.json").is_file() and (folder / "history.json").is_file()
    status = _ok(hpo("study", "status", STUDY, "--json", cwd=tmp_path, env=env))
    assert status["artifacts"]["bytes"] == _total(client, runs)
    assert status["artifacts"]["removed_runs"] == 2 and status["artifacts"]["runs_with_model"] == 1
    again = _ok(hpo("study", "retain", STUDY, "--json", cwd=tmp_path, env=env))
    assert again["removed_trials"] == [] and again["bytes_freed"] == 0
    assert again["bytes_kept"] == _total(client, runs)
