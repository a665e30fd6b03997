"""MLflow outages: training goes on, writes wait in the local outbox and arrive exactly once.

A real ``mlflow server`` (SQLite backend store in a temporary folder, artifacts served by the
server) is stopped and started again on the same port and store; everything is checked back
through a plain ``MlflowClient`` over HTTP. The server is shared by the module and started only
when a test needs it up (its start is the slow part).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import pytest
import typer
from mlflow import MlflowClient

from hpo import tracking
from hpo.cli._sync import sync as sync_command
from hpo.storage import open_storage
from hpo.storage.studies import RUN_ID_ATTR
from hpo.tracking._outbox import Outbox, is_placeholder

from conftest import hpo
from services import DIGITS_SPACE, MlflowServer, started, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("outbox-mlflow")
    srv = MlflowServer(
        f"sqlite:///{root / 'mlflow.db'}",
        root,
        # The job runner is of no use here and costs a dozen processes on 2 cores.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    yield srv
    srv.stop()


@pytest.fixture
def outbox_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private outbox for the test (and for the ``hpo`` processes it starts)."""
    path = tmp_path / "outbox"
    monkeypatch.setenv("HPO_OUTBOX_DIR", str(path))
    monkeypatch.delenv(tracking.OFFLINE_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return path


def _append_many(root: str, tag: str, n: int) -> None:
    box = Outbox("http://127.0.0.1:9", Path(root))
    for i in range(n):
        box.add("batch", {"run_id": tag, "params": [[f"p{i}", "x" * 500]]}, {tag})


def test_the_journal_survives_torn_lines_and_concurrent_writers(tmp_path: Path) -> None:
    uri = "http://127.0.0.1:9"
    writer, reader = Outbox(uri, tmp_path), Outbox(uri, tmp_path)  # as two processes would
    first = writer.add("batch", {"run_id": "r", "metrics": [["m", 1.0, 1, 1]]}, {"r"})
    with open(writer.journal, "ab") as f:
        f.write(b'{"t":"op","id":"torn","ki')  # a process died in the middle of a write
    second = writer.add("batch", {"run_id": "r", "metrics": [["m", 2.0, 2, 2]]}, {"r"})
    reader.refresh()
    assert [op.id for op in reader.pending()] == [first.id, second.id]

    ctx = mp.get_context("fork")  # the children need nothing but hpo.tracking._outbox
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), t, 100)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    reader.refresh()  # reads only what was appended since
    assert len(reader.pending()) == 202
    for tag in "ab":  # each writer's operations in its own order
        ops = [op for op in reader.pending() if op.args["run_id"] == tag]
        assert [op.args["params"][0][0] for op in ops] == [f"p{i}" for i in range(100)]

    for op in reader.pending():
        writer.done(op)
    assert writer.compact() and not writer.journal.exists()
    third = writer.add("terminate", {"run_id": "r", "status": "FINISHED"}, {"r"})
    reader.refresh()  # a new journal: the reader notices and starts over
    assert [op.id for op in reader.pending()] == [third.id]


def _timed(timings: list[float], fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    timings.append(time.perf_counter() - t0)
    return out


def _runs(mc: MlflowClient, experiment_id: str) -> list[Any]:
    from mlflow.entities import ViewType

    return list(mc.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000))


@pytest.mark.slow
def test_writes_made_while_the_server_is_down_arrive_exactly_once(
    server: MlflowServer,
    outbox_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Short windows between tries, so that the next ordinary call notices the server is back.
    monkeypatch.setattr("hpo.tracking._replay.RETRY_MIN_S", 0.2)  # where the client reads it
    monkeypatch.setattr("hpo.tracking._replay.RETRY_MAX_S", 0.5)
    started(server)
    uri = server.url
    experiment_id, parent = tracking.start_study_run(uri, "outage", {"hpo.family": "f"}, {"s": 1})
    assert not is_placeholder(experiment_id) and not is_placeholder(parent)
    c = tracking.client(uri)
    before = tracking.start_trial_run(c, experiment_id, parent, "outage", 0, {}, {"lr": 0.1})
    tracking.log_metrics(c, before, {"acc": 0.5}, 1)

    server.stop()
    timings: list[float] = []
    # A run that existed before the outage goes on logging.
    _timed(timings, lambda: tracking.log_metrics(c, before, {"acc": 0.6}, 2))
    # A run created during the outage: a placeholder id, usable at once.
    run_id = _timed(
        timings,
        lambda: tracking.start_trial_run(
            c, experiment_id, parent, "outage", 1, {"hpo.family": "f"}, {"lr": 0.01, "opt": "adam"}
        ),
    )
    assert is_placeholder(run_id)
    for step in range(1, 6):
        _timed(timings, partial(tracking.log_metrics, c, run_id, {"acc": step / 10}, step))
    model = tmp_path / "model.keras"
    content = os.urandom(300_000)
    model.write_bytes(content)
    _timed(
        timings,
        lambda: tracking.log_artifact_files(
            c, run_id, {"model.keras": model, "history.json": b'{"acc": [0.1]}'}
        ),
    )
    model.unlink()  # the outbox keeps a copy of its own
    _timed(timings, lambda: tracking.end_trial_run(c, run_id, "COMPLETE"))
    _timed(timings, lambda: tracking.end_trial_run(c, before, "PRUNED"))
    print(f"\ncall durations with the server down (s): {[round(t, 3) for t in timings]}")
    # The first call pays MLflow's (shortened) retry; every later one is a local append.
    assert timings[0] < 20, timings
    assert max(timings[1:]) < 3, timings

    queued = c.get_run(run_id)  # what the outbox knows of a run not created yet
    assert queued.info.status == "FINISHED" and queued.data.params["opt"] == "adam"
    assert tracking.pending_operations(uri) > 0
    with pytest.raises(tracking.RunPendingError):
        tracking.resolve_run_id(uri, run_id)
    down = tracking.sync(uri, timeout=5)
    assert down.pending > 0 and down.error and down.replayed.total() == 0
    capsys.readouterr()
    with pytest.raises(typer.Exit) as exit_info:
        sync_command(tracking_uri=uri, wait=5.0, json_out=False)
    assert exit_info.value.exit_code == 1  # still pending: the server is still down
    assert "still pending" in capsys.readouterr().err

    started(server)  # same port, same backend store, same artifact folder
    # Until the client's window between tries ends, calls go to the outbox without trying.
    wait_for(
        lambda: time.monotonic() >= max(c._retry_at, c._next_replay),
        10,
        "the end of the client's retry window",
        every=0.05,
    )
    # The next ordinary call finds the server answering: it replays the outbox, then goes on.
    tracking.log_metrics(c, before, {"acc": 0.7}, 3)
    assert tracking.pending_operations(uri) == 0
    real = tracking.resolve_run_id(uri, run_id)
    assert not is_placeholder(real)

    mc = MlflowClient(uri)
    runs = {r.info.run_id: r for r in _runs(mc, experiment_id)}
    assert set(runs) == {parent, before, real}  # nothing created twice
    run = runs[real]
    assert run.info.status == "FINISHED"
    assert run.data.tags["hpo.state"] == "COMPLETE"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params == {"lr": "0.01", "opt": "adam"}
    history = mc.get_metric_history(real, "acc")
    assert [(m.step, m.value) for m in history] == [(s, s / 10) for s in range(1, 6)]
    local = mc.download_artifacts(real, "model.keras", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == content
    assert json.loads(Path(mc.download_artifacts(real, "history.json")).read_text())
    assert runs[before].info.status == "KILLED"
    assert [m.step for m in mc.get_metric_history(before, "acc")] == [1, 2, 3]

    again = tracking.sync(uri)
    assert again.replayed.total() == 0 and again.pending == 0
    assert not Outbox(uri).journal.exists()  # emptied once everything arrived


class _Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it)."""


@pytest.mark.slow
def test_a_replay_cut_short_by_a_crash_duplicates_nothing(
    server: MlflowServer, outbox_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(server)
    uri = server.url
    monkeypatch.setenv(tracking.OFFLINE_ENV, "1")  # everything waits in the outbox
    experiment_id, parent = tracking.start_study_run(uri, "crashes", {}, {"s": 1})
    c = tracking.client(uri)
    run_id = tracking.start_trial_run(c, experiment_id, parent, "crashes", 0, {}, {"lr": 0.1})
    for step in (1, 2, 3):
        tracking.log_metrics(c, run_id, {"acc": step / 10, "loss": 1.0 / step}, step)
    tracking.log_artifact_files(c, run_id, {"notes.txt": b"hello"})
    tracking.end_trial_run(c, run_id, "COMPLETE")
    n_ops = tracking.pending_operations(uri)
    monkeypatch.delenv(tracking.OFFLINE_ENV)

    # Each operation is carried out by the server, then the replaying process "dies" before
    # recording it: the worst moment. The next sync must recognize what is already there.
    real_execute = tracking.TrackingClient._execute
    real_done = Outbox.done
    seen: set[str] = set()
    crashed_after_mapping: list[str] = []

    def execute_then_crash(self: Any, kind: str, args: Any, path: Any, replaying: bool) -> Any:
        out = real_execute(self, kind, args, path, replaying)
        key = kind + json.dumps(args, sort_keys=True)
        if key not in seen:
            seen.add(key)
            raise _Crash(kind)
        return out

    def done_then_crash(self: Outbox, op: Any) -> None:
        # Also die once between "id recorded" and "operation done" for a run creation.
        if op.creates and op.kind == "run" and not crashed_after_mapping:
            crashed_after_mapping.append(op.id)
            raise _Crash("after mapping")
        real_done(self, op)

    monkeypatch.setattr(tracking.TrackingClient, "_execute", execute_then_crash)
    monkeypatch.setattr(Outbox, "done", done_then_crash)
    crashes = 0
    for _ in range(3 * n_ops):
        try:
            result = tracking.sync(uri)
        except _Crash:
            crashes += 1
            continue
        break
    assert crashes == n_ops + 1, (crashes, n_ops)
    assert result.pending == 0 and not result.dropped

    mc = MlflowClient(uri)
    experiments = [e for e in mc.search_experiments() if e.name == "crashes"]
    assert len(experiments) == 1
    real_experiment = experiments[0].experiment_id
    assert tracking.resolve_run_id(uri, experiment_id) == real_experiment
    runs = _runs(mc, real_experiment)
    assert len(runs) == 2, [r.data.tags for r in runs]  # study run and trial run, once each
    real = tracking.resolve_run_id(uri, run_id)
    for key in ("acc", "loss"):
        assert [m.step for m in mc.get_metric_history(real, key)] == [1, 2, 3]
    trial = mc.get_run(real)
    assert trial.info.status == "FINISHED" and trial.data.params == {"lr": "0.1"}
    assert trial.data.tags["mlflow.parentRunId"] == tracking.resolve_run_id(uri, parent)
    assert [a.path for a in mc.list_artifacts(real)] == ["notes.txt"]


@pytest.mark.slow
def test_a_write_the_server_rejects_is_reported_and_not_retried(
    server: MlflowServer,
    outbox_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    started(server)
    uri = server.url
    _, parent = tracking.start_study_run(uri, "rejects", {}, {"seed": 1})
    c = tracking.client(uri)
    # Sent at once: MLflow refuses to change a parameter (HTTP 400). Warned, dropped, not kept.
    with caplog.at_level(logging.WARNING, logger="hpo.tracking"):
        tracking.log_params(c, parent, {"seed": 2})
    assert "rejected" in caplog.text and "seed='2'" in caplog.text, caplog.text
    assert tracking.pending_operations(uri) == 0

    # Kept while offline, refused at replay: reported once, the rest goes through.
    monkeypatch.setenv(tracking.OFFLINE_ENV, "1")
    tracking.log_params(c, parent, {"seed": 3})
    tracking.log_metrics(c, parent, {"ok": 1.0}, 0)
    monkeypatch.delenv(tracking.OFFLINE_ENV)
    result = tracking.sync(uri)
    assert result.pending == 0
    assert [d["operation"] for d in result.dropped] == [f"params seed='3' of run {parent}"]
    assert "INVALID_PARAMETER_VALUE" in result.dropped[0]["error"], result.dropped
    assert tracking.sync(uri).replayed.total() == 0  # not retried

    mc = MlflowClient(uri)
    run = mc.get_run(parent)
    assert run.data.params["seed"] == "1" and run.data.metrics["ok"] == 1.0
    dropped = Outbox(uri).dropped_file.read_text().splitlines()
    assert [json.loads(line)["args"]["params"] for line in dropped] == [
        [["seed", "2"]],
        [["seed", "3"]],
    ]


@pytest.mark.slow
def test_a_study_runs_with_the_server_down_and_arrives_after_hpo_sync(
    server: MlflowServer,
    outbox_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server.stop()  # down for the whole study
    uri = server.url
    began = time.monotonic()
    result = hpo(
        "run",
        str(DIGITS_SPACE),
        "--trials",
        "2",
        "--workers",
        "1",
        "--study",
        "offline",
        "--seed",
        "0",
        "--tracking-uri",
        uri,
        "--json",
        cwd=tmp_path,
        env={"HPO_OUTBOX_DIR": str(outbox_dir)},
    )
    seconds = time.monotonic() - began
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert summary["finished"] == 2 and summary["failed"] == 0, summary
    assert is_placeholder(summary["experiment_id"]) and is_placeholder(summary["parent_run_id"])
    store = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    trials = optuna.load_study(study_name="offline", storage=store).get_trials()
    placeholders = {t.number: t.user_attrs[RUN_ID_ATTR] for t in trials}
    assert all(is_placeholder(p) for p in placeholders.values()), placeholders
    durations = [
        round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
        for t in trials
        if t.datetime_complete and t.datetime_start
    ]
    assert tracking.pending_operations(uri) > 0

    started(server)
    capsys.readouterr()
    with pytest.raises(typer.Exit) as exit_info:
        sync_command(tracking_uri=uri, wait=60.0, json_out=True)
    out = json.loads(capsys.readouterr().out)
    assert exit_info.value.exit_code == 0, out
    [box] = out["outboxes"]
    assert box["pending"] == 0 and not box["dropped"] and box["replayed"] > 0, box

    mc = MlflowClient(uri)
    experiment = mc.get_experiment_by_name("offline")
    assert experiment is not None
    runs = _runs(mc, experiment.experiment_id)
    [parent] = [r for r in runs if r.data.tags.get("hpo.kind") == "study"]
    trial_runs = {r.info.run_id: r for r in runs if r.data.tags.get("hpo.kind") == "trial"}
    assert len(trial_runs) == 2 and parent.info.status == "FINISHED"
    assert tracking.resolve_run_id(uri, summary["parent_run_id"]) == parent.info.run_id
    expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for number, placeholder in placeholders.items():
        real = tracking.resolve_run_id(uri, placeholder)
        run = trial_runs[real]
        assert run.data.tags["hpo.trial_number"] == str(number)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == expected[run.data.tags["hpo.state"]]
        history = mc.get_metric_history(real, "val_accuracy")
        assert [m.step for m in history] == list(range(1, len(history) + 1)) and history
        if run.data.tags["hpo.state"] == "COMPLETE":
            names = {a.path for a in mc.list_artifacts(real)}
            assert {"model.keras", "predictions.npz", "history.json"} <= names, names
    # finalize_study named the best run by placeholder; replay wrote the real id.
    assert parent.data.tags["hpo.best_run_id"] in trial_runs
    print(f"\nhpo run with MLflow down: {seconds:.1f} s; trial durations (s): {durations}")
