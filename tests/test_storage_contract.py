"""The study-store contract, run against every backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.storage import count_trials, mask_url, open_storage, studies
from hpo.storage.deadlines import DEADLINE_ATTR, DEADLINE_REASON, study_deadline
from hpo.storage.status import study_status
from hpo.storage.studies import (
    RETRY_ATTR,
    SURPLUS_ATTR,
    StudyConfig,
    StudyError,
    claim_trial,
    counted_trials,
    create_study,
    get_study_state,
    is_done,
    load_config,
    load_config_and_state,
    set_study_state,
)
from hpo.storage.trial_failures import fail_trial, reap_unstarted_trials

SPACE = """
family: image_cnn
dataset: {name: digits, subset: 100}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 2}
params:
  x: {type: float, low: -1.0, high: 1.0}
"""


def _config(n_trials: int, **kw: object) -> StudyConfig:
    return StudyConfig(
        name=f"s_{uuid.uuid4().hex[:8]}",
        source=SPACE,
        filename="x.yaml",
        algorithm="optuna-random",
        pruner="none",
        n_trials=n_trials,
        **kw,
    )  # type: ignore[arg-type]


def test_config_round_trips_through_the_store(storage_url: str) -> None:
    store = open_storage(storage_url)
    config = _config(5, seed=3, overrides={"subset": 50, "epochs": 1})
    create_study(store, config)
    loaded = load_config(store, config.name)
    assert loaded == config
    spec = loaded.spec()
    assert spec.dataset.subset == 50 and spec.budget.max_epochs == 1


def test_config_and_state_are_read_together(storage_url: str) -> None:
    store = open_storage(storage_url)
    config = _config(3)
    create_study(store, config)
    # Workers skip a study until its set-up is stored.
    assert load_config_and_state(store, config.name) == (config, "creating")
    for state in ("paused", "active", "cancelled"):
        set_study_state(store, config.name, state)
        assert load_config_and_state(store, config.name) == (config, state)
        assert get_study_state(store, config.name) == state
    with pytest.raises(StudyError, match="no study named 'nope'"):
        load_config_and_state(store, "nope")


def test_duplicate_and_unknown_study_names_are_clear_errors(storage_url: str) -> None:
    store = open_storage(storage_url)
    config = _config(2)
    create_study(store, config)
    with pytest.raises(StudyError, match="already exists"):
        create_study(store, config)
    with pytest.raises(StudyError, match="no study named 'nope'"):
        load_config(store, "nope")


def test_claims_stop_at_the_budget(storage_url: str) -> None:
    store = open_storage(storage_url)
    config = _config(3)
    study = create_study(store, config)
    claimed = []
    while (trial := claim_trial(study, config.n_trials)) is not None:
        claimed.append(trial.number)
        study.tell(trial, values=[0.5])
    assert claimed == [0, 1, 2]
    assert claim_trial(study, config.n_trials) is None
    status = study_status(store, config.name)
    assert (status.complete, status.finished, status.done) == (3, 3, True)


def test_the_first_claim_starts_the_deadline_and_none_is_claimed_after_it(
    storage_url: str,
) -> None:
    store = open_storage(storage_url)
    config = _config(5)
    study = create_study(store, config)
    assert study_deadline(store, study._study_id) is None  # created: the clock waits
    before = time.time()
    first = claim_trial(study, config.n_trials, study_timeout=3600)
    assert first is not None
    deadline = study_deadline(store, study._study_id)
    assert deadline is not None and before + 3600 <= deadline <= time.time() + 3600
    # Later claims (any worker: the deadline is in the store) keep it.
    second = claim_trial(study, config.n_trials, study_timeout=3600)
    assert second is not None and study_deadline(store, study._study_id) == deadline
    study.tell(first, values=[0.5])
    # The deadline passes (as every machine's clock reads it) with trial 1 still running.
    store.set_study_system_attr(study._study_id, DEADLINE_ATTR, time.time() - 1)
    assert claim_trial(study, config.n_trials, study_timeout=3600) is None
    deadline = study_deadline(store, study._study_id)
    status = study_status(store, config.name)
    assert (status.deadline, status.deadline_reached, status.done) == (deadline, True, False)
    assert not is_done(study, config.n_trials, deadline)
    study.tell(second, values=[0.25])
    status = study_status(store, config.name)
    assert status.done and status.end_reason == DEADLINE_REASON and status.finished == 2
    assert is_done(study, config.n_trials, deadline)
    assert not is_done(study, config.n_trials)  # without the deadline: 3 trials to go


def test_racing_claims_never_exceed_the_budget(storage_url: str) -> None:
    store = open_storage(storage_url)
    config = _config(7)
    create_study(store, config)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            own = optuna.load_study(study_name=config.name, storage=open_storage(storage_url))
            while (trial := claim_trial(own, config.n_trials)) is not None:
                own.tell(trial, values=[float(trial.number)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    study = optuna.load_study(study_name=config.name, storage=store)
    counted = counted_trials(study.get_trials())
    assert len(counted) == 7
    assert all(t.state == TrialState.COMPLETE for t in counted)
    assert len({t.number for t in counted}) == 7


def test_the_loser_of_the_race_for_the_last_trial_is_closed_as_surplus(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race forced: another worker takes the last trial between this claim's budget check
    and its ask, so this claim's trial is past the budget and must be closed, uncounted."""
    store = open_storage(storage_url)
    config = _config(2)
    study = create_study(store, config)
    first = claim_trial(study, config.n_trials)
    assert first is not None
    study.tell(first, values=[0.1])
    winner_study = optuna.load_study(study_name=config.name, storage=open_storage(storage_url))
    real_ask = studies._ask
    winners: list[optuna.Trial | None] = []

    def ask_after_the_winner(asking: optuna.Study) -> optuna.Trial:
        if asking is study and not winners:
            winners.append(claim_trial(winner_study, config.n_trials))
        return real_ask(asking)

    monkeypatch.setattr(studies, "_ask", ask_after_the_winner)
    assert claim_trial(study, config.n_trials) is None  # the loser gets nothing
    assert len(winners) == 1 and winners[0] is not None and winners[0].number == 1
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    surplus = trials[2]
    assert surplus.state == TrialState.FAIL and surplus.system_attrs.get(SURPLUS_ATTR) is True
    assert trials[1].state == TrialState.RUNNING  # the winner's trial runs on
    assert [t.number for t in counted_trials(trials)] == [0, 1]
    study.tell(winners[0], values=[0.2])
    assert is_done(study, config.n_trials)
    assert claim_trial(study, config.n_trials) is None


def test_count_trials_and_is_done_follow_the_store(storage_url: str) -> None:
    store = open_storage(storage_url)
    config = _config(2)
    study = create_study(store, config)
    other = create_study(store, _config(5))  # another study's trials are not counted
    other.tell(other.ask(), values=[0.0])
    assert count_trials(study._storage, study._study_id) == 0
    first = claim_trial(study, 2)
    assert first is not None
    study.tell(first, state=TrialState.FAIL)  # failed, not retried: counts toward the budget
    running = claim_trial(study, 2)
    assert running is not None
    assert count_trials(study._storage, study._study_id) == 2
    assert count_trials(store, study._study_id) == 2
    assert not is_done(study, 2)  # two trials exist, one still running
    study.tell(running, values=[1.0])
    assert is_done(study, 2)
    assert not is_done(study, 3)  # fewer trials than the budget: the COUNT alone says so
    assert count_trials(optuna.storages.InMemoryStorage(), 0) is None


def test_failed_and_pruned_trials_count_toward_the_budget(storage_url: str) -> None:
    store = open_storage(storage_url)
    config = _config(3)
    study = create_study(store, config)
    t0 = claim_trial(study, 3)
    assert t0 is not None
    study.tell(t0, state=TrialState.FAIL)
    t1 = claim_trial(study, 3)
    assert t1 is not None
    t1.report(0.1, 1)
    study.tell(t1, state=TrialState.PRUNED)
    t2 = claim_trial(study, 3)
    assert t2 is not None
    study.tell(t2, values=[0.9])
    assert claim_trial(study, 3) is None
    st = study_status(store, config.name)
    assert (st.failed, st.pruned, st.complete, st.best_values) == (1, 1, 1, [0.9])


def test_mask_url_hides_passwords() -> None:
    text = "could not connect to postgresql+psycopg://hpo:pa55@db:5432/hpo and mysql://u:x@h/d"
    masked = mask_url(text)
    assert "pa55" not in masked and ":x@" not in masked
    assert "postgresql+psycopg://hpo:***@db:5432/hpo" in masked
    assert mask_url("sqlite:///tmp/a.db") == "sqlite:///tmp/a.db"


def test_a_claimed_trial_that_never_got_a_heartbeat_is_requeued(storage_url: str) -> None:
    """A worker that lost the store (or died) between claiming a trial and its first heartbeat
    leaves a RUNNING trial that heartbeat reaping never sees: it is requeued after the grace."""
    store = open_storage(storage_url, heartbeat_interval=1, grace_period=60)
    config = _config(2)
    study = create_study(store, config)
    orphan = claim_trial(study, config.n_trials)  # ... and its worker is gone
    alive = claim_trial(study, config.n_trials)
    assert orphan is not None and alive is not None
    store.record_heartbeat(alive._trial_id)
    seen: dict[int, float] = {}
    assert reap_unstarted_trials(store, config, seen) == []  # first sight: only remembered
    assert set(seen) == {orphan._trial_id}
    seen[orphan._trial_id] -= 61  # as if the grace period had passed
    assert reap_unstarted_trials(store, config, seen) == [orphan.number]
    assert seen == {}
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert "never started" in trials[orphan.number].user_attrs["fail_reason"]
    assert trials[alive.number].state == TrialState.RUNNING  # it has a heartbeat
    [queued] = [t for t in trials if t.state == TrialState.WAITING]
    assert queued.system_attrs["failed_trial"] == orphan.number
    # The orphan no longer counts; its requeued copy does: still exactly the budget.
    assert sorted(t.number for t in counted_trials(trials)) == [alive.number, queued.number]
    assert claim_trial(study, config.n_trials) is not None  # the queued copy
    assert claim_trial(study, config.n_trials) is None


class _Watched:
    """The store, with a check run just before a trial is created or marked FAIL: what another
    worker would see at that moment (a worker's budget check can land between any two writes)."""

    def __init__(self, store: object, check: object) -> None:
        self._store, self._check = store, check

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: object = None):  # type: ignore[no-untyped-def]
        if state == TrialState.FAIL:
            self._check()  # type: ignore[operator]
        return self._store.set_trial_state_values(trial_id, state, values)  # type: ignore[attr-defined]

    def create_new_trial(self, study_id: int, template_trial: object = None) -> int:
        self._check()  # type: ignore[operator]
        return int(self._store.create_new_trial(study_id, template_trial))  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


@pytest.mark.parametrize("reaped_by", ["retry", "restart"])
def test_a_failing_trial_whose_retry_is_due_never_looks_finished(
    storage_url: str, reaped_by: str
) -> None:
    """A one-trial study whose only trial is failed and retried is never seen done by another
    worker: at every step the trial or its retry is unfinished, and no fresh trial is taken."""
    store = open_storage(storage_url)
    config = _config(1)
    study = create_study(store, config)
    trial = claim_trial(study, 1)
    assert trial is not None
    seen: list[tuple[bool, bool, bool]] = []

    def another_worker_looks() -> None:
        other = studies.load_study(store, config)
        seen.append(
            (
                is_done(other, 1),
                study_status(store, config.name).done,
                claim_trial(other, 1) is None,
            )
        )

    study._storage = _Watched(store, another_worker_looks)  # type: ignore[assignment]
    count = reaped_by == "retry"
    assert fail_trial(study, trial._trial_id, "lost", retry=True, max_retries=3, count_retry=count)
    study._storage = store
    # Before the retry was queued the other worker found the budget taken (by the running
    # trial); after, it claimed the retry, never a fresh trial; it never found the study done.
    assert seen == [(False, False, True), (False, False, False)]
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_reason"] == "lost"
    [retry] = trials[1:]
    assert retry.state == TrialState.RUNNING  # the one the other worker claimed
    assert retry.system_attrs["failed_trial"] == 0
    assert retry.system_attrs[RETRY_ATTR] == (1 if count else 0)
    assert [t.number for t in counted_trials(trials)] == [retry.number]
    assert claim_trial(study, 1) is None
    study.tell(retry.number, values=[0.5])
    assert is_done(study, 1)


def test_a_retry_queued_for_a_trial_its_worker_finished_is_withdrawn(storage_url: str) -> None:
    """Two reapers, or a reaper and the trial's own worker, race: the one that loses the race
    to finish the trial takes its queued retry back, and the budget holds."""
    store = open_storage(storage_url)
    config = _config(1)
    study = create_study(store, config)
    trial = claim_trial(study, 1)
    assert trial is not None

    def its_worker_finishes_first() -> None:
        if store.get_trial(trial._trial_id).state == TrialState.RUNNING:
            studies.load_study(store, config).tell(trial.number, values=[0.9])

    study._storage = _Watched(store, its_worker_finishes_first)  # type: ignore[assignment]
    assert not fail_trial(study, trial._trial_id, "lost", retry=True, max_retries=3)
    study._storage = store
    first, withdrawn = study.get_trials()
    assert first.state == TrialState.COMPLETE and first.values == [0.9]
    assert withdrawn.state == TrialState.FAIL and withdrawn.system_attrs[SURPLUS_ATTR] is True
    assert [t.number for t in counted_trials([first, withdrawn])] == [0]
    assert is_done(study, 1) and claim_trial(study, 1) is None


def test_failing_a_trial_twice_queues_one_retry(storage_url: str) -> None:
    """A reaper retried after a dropped connection (with_db_retry) fails the trial again: the
    retry its first attempt queued is reused, not doubled."""
    store = open_storage(storage_url)
    config = _config(2)
    study = create_study(store, config)
    trial = claim_trial(study, 2)
    assert trial is not None
    calls: list[str] = []

    def connection_drops_once() -> None:
        calls.append("write")
        if len(calls) == 2:  # the retry is queued, the trial not yet failed
            raise ConnectionError("server closed the connection unexpectedly")

    study._storage = _Watched(store, connection_drops_once)  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        fail_trial(study, trial._trial_id, "lost", retry=True, max_retries=3)
    assert fail_trial(study, trial._trial_id, "lost", retry=True, max_retries=3)
    study._storage = store
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert len(counted_trials(trials)) == 1


def test_sqlite_stores_commit_to_a_write_ahead_log(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL on every pooled connection: commits are appends (a no-training
    trial's time was mostly SQLite waiting for the disk), readers never block the writer."""
    import sqlalchemy as sa

    store = open_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    for _ in range(2):  # a fresh connection as well as a pooled one
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(sa.text("PRAGMA synchronous")).scalar_one() == 1  # NORMAL
        store.engine.dispose()


def test_a_heartbeat_store_claims_trials_without_optuna_warnings(storage_url: str) -> None:
    # Workers use heartbeats with ask/tell on purpose; Optuna's warnings about that filled
    # every worker log, once per trial.
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        store = open_storage(storage_url, heartbeat_interval=5, grace_period=10)
        config = _config(1)
        study = create_study(store, config)
        trial = claim_trial(study, config.n_trials)
        assert trial is not None
        study.tell(trial, values=[0.5])
    optuna_warnings = [w for w in seen if "optuna" in w.filename or "eartbeat" in str(w.message)]
    assert optuna_warnings == [], [str(w.message) for w in optuna_warnings]
