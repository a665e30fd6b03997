"""Service mode against a real PostgreSQL: many workers, exact budgets, faults survived.

Workers are real `hpo worker` subprocesses; trials train a tiny real Keras model on digits
(`fault_family`), so a trial takes about a second once its process is warm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import optuna
import psutil
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from optuna.trial import TrialState

from hpo.storage import open_storage
from hpo.storage.studies import counted_trials

from conftest import FAST_SPACE, FAULT_FAMILY_ENV, SLOW_SPACE, hpo
from services import fresh_database, wait_all, wait_for

pytestmark = pytest.mark.slow


def _env(storage: str) -> dict[str, str]:
    return {"HPO_STORAGE": storage, **FAULT_FAMILY_ENV, "TF_CPP_MIN_LOG_LEVEL": "2"}


class Workers:
    """Real `hpo worker` subprocesses with their logs in the test's directory."""

    def __init__(self, cwd: Path, storage: str, env: dict[str, str] | None = None) -> None:
        self.cwd, self.storage, self.env = cwd, storage, env or {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.cwd / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        env = {**os.environ, **_env(self.storage), **self.env}
        env.pop("MLFLOW_TRACKING_URI", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo", "worker", "--threads", "1", *args],
            cwd=self.cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def wait(self, timeout: float) -> list[int]:
        return wait_all(self.procs, timeout)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.cwd.glob("worker-*.log"))
        )

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


@pytest.fixture
def workers(tmp_path: Path, postgres_url: str) -> Iterator[Workers]:
    w = Workers(tmp_path, postgres_url)
    yield w
    w.stop_all()


def _create(
    tmp_path: Path, storage: str, name: str, trials: int, space: str = FAST_SPACE, *extra: str
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(space)
    result = hpo(
        "study",
        "create",
        str(path),
        "--name",
        name,
        "--trials",
        str(trials),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        *extra,
        cwd=tmp_path,
        env=_env(storage),
    )
    assert result.returncode == 0, result.stderr


_STORES: dict[str, object] = {}


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    # One store (one connection pool) per URL: a new pool per poll exhausts PostgreSQL.
    store = _STORES.setdefault(storage, open_storage(storage))
    return optuna.load_study(study_name=name, storage=store).get_trials()  # type: ignore[arg-type]


def _wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    wait_for(predicate, timeout, what)


def _connections(storage: str) -> int:
    """Sessions open on ``storage``'s database (only its workers' while no test reads it)."""
    url = sa.engine.make_url(storage)
    admin = sa.create_engine(url.set(database="test"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            query = "select count(*) from pg_stat_activity where datname = :d"
            return int(conn.execute(sa.text(query), {"d": url.database}).scalar() or 0)
    finally:
        admin.dispose()


def _mlflow_runs(tmp_path: Path, name: str) -> list:  # type: ignore[type-arg]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    return [
        r
        for r in client.search_runs([experiment.experiment_id], max_results=5000)
        if r.data.tags.get("hpo.kind") == "trial"
    ]


def test_four_workers_finish_exactly_the_budget(
    tmp_path: Path, postgres_url: str, workers: Workers
) -> None:
    n = 16  # enough for four workers to race for the last trials
    _create(tmp_path, postgres_url, "many", n)
    for _ in range(4):
        workers.start("--study", "many")
    assert workers.wait(timeout=900) == [0, 0, 0, 0], workers.logs()
    counted = counted_trials(_trials(postgres_url, "many"))
    assert len(counted) == n
    assert all(t.state == TrialState.COMPLETE for t in counted)
    assert len({t.number for t in counted}) == n
    runs = _mlflow_runs(tmp_path, "many")
    run_ids = {t.user_attrs["mlflow_run_id"] for t in counted}
    assert {r.info.run_id for r in runs} >= run_ids and len(run_ids) == n
    assert all(r.info.status == "FINISHED" for r in runs if r.info.run_id in run_ids)
    assert not [r for r in runs if r.info.status == "RUNNING"]


def _trial_processes(worker_pid: int) -> list[psutil.Process]:
    """The worker's trial processes (multiprocessing spawn children, not its resource tracker)."""
    found = []
    for child in psutil.Process(worker_pid).children(recursive=True):
        with suppress(psutil.Error):
            if any("spawn_main" in part for part in child.cmdline()):
                found.append(child)
    return found


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_killed_worker_trial_is_failed_retried_and_the_study_completes(
    tmp_path: Path, postgres_url: str, workers: Workers
) -> None:
    # Trials sleep 15 s: a trial process that outlived its worker would still be sleeping
    # (and would only notice the closed pipe afterwards) when the check below gives up.
    _create(
        tmp_path,
        postgres_url,
        "kill9",
        2,
        SLOW_SPACE.replace("SECONDS", "15"),
        "--max-retries",
        "2",
    )
    victim = workers.start("--study", "kill9", "--heartbeat", "1", "--grace-period", "4")

    def victim_running() -> bool:
        # With its parameters: a worker claims a trial before its trial process (still
        # importing Keras) suggests them, and a retry can only repeat parameters that exist.
        # And with its MLflow run, which the reaper must end FAILED.
        return any(
            t.state == TrialState.RUNNING
            and t.params
            and t.user_attrs.get("mlflow_run_id")
            and str(t.system_attrs.get("hpo:worker", "")).endswith(f":{victim.pid}")
            for t in _trials(postgres_url, "kill9")
        )

    _wait_for(victim_running, 120, "the first worker to run a trial with its parameters")
    children = _trial_processes(victim.pid)
    assert len(children) == 1, [c.cmdline() for c in children]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    # Its trial process dies with it (parent-death signal), not when its 15 s sleep ends.
    _wait_for(lambda: _gone(children[0]), 5, "the trial process to die with its worker")
    survivor = workers.start("--study", "kill9", "--heartbeat", "1", "--grace-period", "4")
    survivor.wait(timeout=300)
    assert survivor.returncode == 0, workers.logs()
    trials = _trials(postgres_url, "kill9")
    counted = counted_trials(trials)
    assert len(counted) == 2 and all(t.state == TrialState.COMPLETE for t in counted)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    reason = failed[0].user_attrs["fail_reason"]
    assert "heartbeat" in reason
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params
    assert retry[0].params["x"] == failed[0].params["x"]  # the sampled value, not a new draw
    runs = {r.info.run_id: r for r in _mlflow_runs(tmp_path, "kill9")}
    reaped = runs[failed[0].user_attrs["mlflow_run_id"]]
    assert reaped.info.status == "FAILED"
    assert (
        reaped.data.tags.get("hpo.fail_reason")
        == reason[: len(reaped.data.tags["hpo.fail_reason"])]
    )
    assert "heartbeat" in reaped.data.tags["hpo.fail_reason"]
    assert runs[retry[0].user_attrs["mlflow_run_id"]].info.status == "FINISHED"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


def test_sigterm_exits_cleanly_and_requeues_the_running_trial(
    tmp_path: Path, postgres_url: str, workers: Workers
) -> None:
    _create(tmp_path, postgres_url, "term", 2, SLOW_SPACE.replace("SECONDS", "60"))
    sleeping = tmp_path / "sleeping.txt"
    workers.env["HPO_TEST_SLEEPING"] = str(sleeping)
    proc = workers.start("--study", "term", "--stop-grace", "2")
    _wait_for(
        lambda: any(t.state == TrialState.RUNNING for t in _trials(postgres_url, "term")),
        120,
        "a running trial",
    )
    # The trial process is inside the trial's code (its MLflow run started before it).
    wait_for(
        sleeping.is_file,
        600,
        "the trial sleeping in its trial process",
        alive=[proc],
        logs=workers.logs,
    )
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 0, workers.logs()
    assert time.monotonic() - t0 < 30
    trials = _trials(postgres_url, "term")
    [interrupted] = [t for t in trials if t.state == TrialState.FAIL]
    assert "stopped" in interrupted.user_attrs["fail_reason"]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == interrupted.params
    assert not [r for r in _mlflow_runs(tmp_path, "term") if r.info.status == "RUNNING"]


def test_worker_without_study_serves_studies_created_after_it_started(tmp_path: Path) -> None:
    # Its own database: a worker without --study serves every active study it finds, and the
    # session's database holds the other tests' studies (a requeued 60 s trial among them).
    with fresh_database("hpo_later") as storage:
        workers = Workers(tmp_path, storage)
        try:
            proc = workers.start()  # no --study: serve everything, wait for work
            # It polls the store, empty yet: the studies below are created after it started.
            wait_for(
                lambda: _connections(storage) > 0,
                120,
                "the worker polling its store",
                alive=[proc],
                logs=workers.logs,
            )
            _create(tmp_path, storage, "later_a", 2)
            _create(tmp_path, storage, "later_b", 2, FAST_SPACE, "--priority", "5")

            def done(name: str) -> bool:
                return len([t for t in _trials(storage, name) if t.state.is_finished()]) == 2

            _wait_for(lambda: done("later_a") and done("later_b"), 400, "both studies")
            assert proc.poll() is None  # still serving
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            assert proc.returncode == 0, workers.logs()
        finally:
            workers.stop_all()
            store = _STORES.pop(storage, None)
            if store is not None:
                store.engine.dispose()  # type: ignore[attr-defined]


def test_paused_study_gets_no_trials_until_resumed(
    tmp_path: Path, postgres_url: str, workers: Workers
) -> None:
    _create(tmp_path, postgres_url, "paused", 2)
    env = _env(postgres_url)
    assert hpo("study", "pause", "paused", cwd=tmp_path, env=env).returncode == 0
    status = json.loads(hpo("study", "status", "paused", "--json", cwd=tmp_path, env=env).stdout)
    assert status["state"] == "paused"
    idle = workers.start("--study", "paused")
    idle.wait(timeout=120)
    assert idle.returncode == 0 and _trials(postgres_url, "paused") == []
    assert hpo("study", "resume", "paused", cwd=tmp_path, env=env).returncode == 0
    busy = workers.start("--study", "paused")
    busy.wait(timeout=300)
    assert busy.returncode == 0
    assert len([t for t in _trials(postgres_url, "paused") if t.state.is_finished()]) == 2
    assert hpo("study", "cancel", "paused", cwd=tmp_path, env=env).returncode == 0
    again = hpo("study", "resume", "paused", cwd=tmp_path, env=env)
    assert again.returncode == 2 and "cancelled" in again.stderr


def _nested_space(depth: int) -> str:
    """FAST_SPACE with ``depth`` conditionals nested in one another (hyperopt recurses on it)."""

    def nest(d: int, indent: str) -> str:
        if d == 0:
            return f"{indent}y: {{type: float, low: 0.0, high: 1.0}}\n"
        return (
            f"{indent}c{d}:\n{indent}  type: categorical\n{indent}  choices:\n"
            f"{indent}    a:\n{nest(d - 1, indent + '      ')}{indent}    b: {{}}\n"
        )

    return FAST_SPACE.replace("optuna-random", "hyperopt-tpe") + nest(depth, "  ")


def _store_space(storage: str, name: str, space: str) -> None:
    """Replace the space text stored with study ``name`` (what its workers parse)."""
    from hpo.storage.studies import CONFIG_ATTR

    store = open_storage(storage)
    study_id = store.get_study_id_from_name(name)
    config = json.loads(store.get_study_system_attrs(study_id)[CONFIG_ATTR])
    config["source"] = space
    store.set_study_system_attr(study_id, CONFIG_ATTR, json.dumps(config, sort_keys=True))
    store.engine.dispose()  # type: ignore[attr-defined]


def test_poison_studies_are_marked_broken_and_never_stop_a_service_worker(
    tmp_path: Path,
) -> None:
    """Studies whose sampler, family import or data loading raises: the worker serving every
    study fails their trials, marks each broken after 3 set-up failures in a row, and goes on
    serving the good study (issue #19)."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "poison_family.py").write_text('raise RuntimeError("poisoned family import")\n')
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    extra = {"PYTHONPATH": os.pathsep.join([str(mods), FAULT_FAMILY_ENV["PYTHONPATH"]])}
    env = {**_env(storage), **extra}
    spaces = {
        "deep": (_nested_space(150), 5),
        "badfamily": (FAST_SPACE.replace("fault_family:build", "poison_family:build"), 10),
        "baddata": (
            FAST_SPACE.replace(
                "{name: digits, subset: 200}",
                f"{{name: tabular, options: {{path: {tmp_path / 'gone.csv'}}}}}",
            ),
            10,
        ),
        "good": (FAST_SPACE, 3),
    }
    for name, (space, trials) in spaces.items():
        path = tmp_path / f"{name}.yaml"
        # Validation refuses such spaces and families now: the poison ones are stored as a
        # study created by an older hpo, or edited in the store, holds them.
        path.write_text(FAST_SPACE if name != "baddata" else space)
        priority = "0" if name == "good" else "5"  # the poison ones are tried first
        result = hpo(
            "study", "create", str(path), "--name", name, "--trials", str(trials),
            "--priority", priority, "--skip-data-check",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        _store_space(storage, name, space)
    workers = Workers(tmp_path, storage, extra)
    try:
        proc = workers.start()

        def status(name: str) -> dict:  # type: ignore[type-arg]
            out = hpo("study", "status", name, "--json", cwd=tmp_path, env=env)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)  # type: ignore[no-any-return]

        def settled() -> bool:
            assert proc.poll() is None, workers.logs()
            if len([t for t in _trials(storage, "good") if t.state.is_finished()]) < 3:
                return False
            return all(status(n)["state"] == "broken" for n in ("deep", "badfamily", "baddata"))

        _wait_for(settled, 400, "the good study's budget and three broken studies")
        assert proc.poll() is None, workers.logs()  # still serving
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 0, workers.logs()
    finally:
        workers.stop_all()
        store = _STORES.pop(storage, None)
        if store is not None:
            store.engine.dispose()  # type: ignore[attr-defined]
    good = _trials(storage, "good")
    assert len(good) == 3 and all(t.state == TrialState.COMPLETE for t in good)
    reasons = {n: status(n)["broken_reason"] for n in ("deep", "badfamily", "baddata")}
    # Today's validation refuses the stored space before hyperopt recurses on it.
    assert "characters long" in reasons["deep"] or "RecursionError" in reasons["deep"], reasons
    assert "poisoned family import" in reasons["badfamily"], reasons
    assert "gone.csv" in reasons["baddata"] and "does not exist" in reasons["baddata"], reasons
    # A broken study stops using its budget: 3 failed trials, not all 10 (a family that does
    # not import fails while the worker reads the space, before any trial exists).
    for name, most in (("badfamily", 0), ("baddata", 3)):
        failed = _trials(storage, name)
        assert len(failed) == most and all(t.state == TrialState.FAIL for t in failed), name
    listing = hpo("study", "list", cwd=tmp_path, env={**env, "COLUMNS": "200"})
    assert listing.returncode == 0, listing.stderr
    for name in ("deep", "badfamily", "baddata"):
        assert f"{name} is broken:" in listing.stdout, listing.stdout
    resumed = hpo("study", "resume", "deep", cwd=tmp_path, env=env)
    assert resumed.returncode == 0 and status("deep")["state"] == "active"


def test_a_service_worker_claims_by_priority_then_age(tmp_path: Path) -> None:
    """One service-mode worker, four studies waiting: highest --priority first, then oldest.

    Created oldest first: ``low`` (priority 0), ``tie_old`` and ``tie_new`` (priority 5),
    ``high`` (priority 9, the newest). One worker with one slot runs one trial at a time, so
    the order in which the trials started is the order in which they were claimed.
    """
    created = {"low": "0", "tie_old": "5", "tie_new": "5", "high": "9"}
    with fresh_database("hpo_priority") as storage:
        env = _env(storage)
        for name, priority in created.items():
            path = tmp_path / f"{name}.yaml"
            path.write_text(FAST_SPACE)
            result = hpo(
                "study", "create", str(path), "--name", name, "--trials", "2",
                "--priority", priority, "--skip-data-check",
                "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                cwd=tmp_path, env=env,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        workers = Workers(tmp_path, storage)
        try:
            proc = workers.start()  # no --study: every study, by priority

            def done() -> bool:
                assert proc.poll() is None, workers.logs()
                return all(
                    len([t for t in _trials(storage, n) if t.state.is_finished()]) == 2
                    for n in created
                )

            _wait_for(done, 400, "every study's two trials")
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            assert proc.returncode == 0, workers.logs()
            started = sorted(
                (t.datetime_start, name)
                for name in created
                for t in _trials(storage, name)
                if t.datetime_start is not None
            )
        finally:
            workers.stop_all()
            store = _STORES.pop(storage, None)
            if store is not None:
                store.engine.dispose()  # type: ignore[attr-defined]
    order = [name for _, name in started]
    assert order == ["high"] * 2 + ["tie_old"] * 2 + ["tie_new"] * 2 + ["low"] * 2, started
