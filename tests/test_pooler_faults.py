"""Workers that reach the study store through PgBouncer in transaction mode survive what they
survive on PostgreSQL directly: a worker killed with SIGKILL (its trial reaped by heartbeats
and retried), the pooler and the database restarted mid-study, several workers racing for an
exact budget.

Every part is real: a PostgreSQL cluster of the test's own behind a real ``pgbouncer``
(``pooled_store`` in tests/services.py), real ``hpo study create`` and ``hpo worker``
subprocesses given only the pooler's URL, trials training a tiny Keras model
(``fault_family``). Results are read back from the database directly, not through the pooler.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from hpo.storage import open_storage
from hpo.storage.studies import counted_trials

from conftest import FAULT_FAMILY_ENV, SLOW_SPACE, hpo
from services import PooledStore, StartWorkers, WorkerGroup

pytest_plugins = ["services"]
pytestmark = pytest.mark.slow


def _create(tmp_path: Path, storage: str, name: str, trials: int, seconds: float) -> None:
    space = tmp_path / f"{name}.yaml"
    space.write_text(SLOW_SPACE.replace("SECONDS", str(seconds)))
    result = hpo(
        "study", "create", str(space), "--name", name, "--trials", str(trials), "--seed", "0",
        "--max-retries", "2", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        cwd=tmp_path,
        env={"HPO_STORAGE": storage, "HPO_OUTBOX_DIR": str(tmp_path / "outbox"),
             **FAULT_FAMILY_ENV},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


READER = "hpo-test-reader"  # the test's own connections, not counted as the pooler's


def _reader(store: PooledStore) -> Callable[[str], list[FrozenTrial]]:
    storage = open_storage(f"{store.direct}?application_name={READER}")

    def trials(name: str) -> list[FrozenTrial]:
        return optuna.load_study(study_name=name, storage=storage).get_trials()

    return trials


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str, group: WorkerGroup) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n{group.log_text()}")


def _server_connections(store: PooledStore) -> int:
    """Client connections PostgreSQL holds for the study store's database (the pooler's)."""
    engine = sa.create_engine(store.postgres.url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        query = (
            "select count(*) from pg_stat_activity where datname = 'hpo' and application_name <> :a"
        )
        return int(conn.execute(sa.text(query), {"a": READER}).scalar_one())


def test_workers_through_pgbouncer_finish_exactly_the_budget_across_pooler_and_store_restarts(
    tmp_path: Path, pooled_store: PooledStore, start_workers: StartWorkers
) -> None:
    n = 9
    _create(tmp_path, pooled_store.url, "pooled", n, 1.0)
    trials = _reader(pooled_store)
    group = start_workers(
        3, storage=pooled_store.url, args=["--study", "pooled"], env=FAULT_FAMILY_ENV
    )

    peak = 0

    def finished() -> int:
        return sum(t.state.is_finished() for t in trials("pooled"))

    def first_finished() -> bool:
        # PostgreSQL's connections before any restart (after one, the killed pooler's
        # connections may linger for a moment next to the new pooler's).
        nonlocal peak
        peak = max(peak, _server_connections(pooled_store))
        return finished() >= 1

    # Each restart lands while trials of the three workers are in flight.
    _wait_for(first_finished, 600, "a first finished trial", group)
    pooled_store.bouncer.restart()
    _wait_for(lambda: finished() >= 4, 600, "trials after the pooler's restart", group)
    pooled_store.postgres.restart()
    assert group.wait(timeout=600) == [0, 0, 0], group.log_text()
    every = trials("pooled")
    counted = counted_trials(every)
    assert len(counted) == n and len({t.number for t in counted}) == n
    assert all(t.state == TrialState.COMPLETE for t in counted), [
        t.user_attrs.get("fail_reason") for t in counted
    ]
    # Nothing ran twice: no COMPLETE trial outside the budget, and no retry was needed.
    assert sum(t.state == TrialState.COMPLETE for t in every) == n
    # Three workers and their trial processes, through 5 pooled server connections.
    assert 0 < peak <= 5


def test_killed_worker_behind_pgbouncer_is_reaped_and_its_trial_retried(
    tmp_path: Path, pooled_store: PooledStore, start_workers: StartWorkers
) -> None:
    _create(tmp_path, pooled_store.url, "kill9", 2, 15.0)
    trials = _reader(pooled_store)
    beat = ["--study", "kill9", "--heartbeat", "1", "--grace-period", "4"]
    victim = start_workers(1, storage=pooled_store.url, args=beat, env=FAULT_FAMILY_ENV)
    pid = victim.procs[0].pid

    def victim_running() -> bool:
        return any(
            t.state == TrialState.RUNNING
            and t.params
            and str(t.system_attrs.get("hpo:worker", "")).endswith(f":{pid}")
            for t in trials("kill9")
        )

    _wait_for(victim_running, 300, "the first worker to run a trial", victim)
    os.kill(pid, signal.SIGKILL)
    victim.procs[0].wait(timeout=10)
    survivor = start_workers(1, storage=pooled_store.url, args=beat, env=FAULT_FAMILY_ENV)
    assert survivor.wait(timeout=600) == [0], survivor.log_text()
    every = trials("kill9")
    counted = counted_trials(every)
    assert len(counted) == 2 and all(t.state == TrialState.COMPLETE for t in counted)
    [failed] = [t for t in every if t.state == TrialState.FAIL]
    assert "heartbeat" in failed.user_attrs["fail_reason"]
    [retry] = [t for t in every if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.params == failed.params and retry.state == TrialState.COMPLETE
