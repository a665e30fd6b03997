"""Studies: creation, the configuration every worker reads back, budget and status.

A study's whole configuration (the search-space file's text, the overrides given on the
command line, algorithm, pruner, seed, trial budget, MLflow ids) is stored in the study
itself, so ``hpo worker --study NAME`` on any machine that reaches the store needs nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError, UsageError
from hpo.spaces import Params, StudySpec, parse_spec
from hpo.storage._retry import is_transient, with_db_retry
from hpo.storage.deadlines import (
    DEADLINE_ATTR,
    DEADLINE_REASON,
    deadline_passed,
    start_deadline,
    study_deadline,
)

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from hpo.catalog import Axis

CONFIG_ATTR = "hpo:config"
STATE_ATTR = "hpo:state"
STUDY_STATES = ("creating", "active", "paused", "cancelled", "broken")
# A study whose set-up fails (its sampler, data, family or trial process set-up raises) this
# many times in a row is marked broken: workers skip it, and the reason is shown by
# ``hpo study status`` and ``hpo study list``; ``hpo study resume`` serves it again.
BROKEN_AFTER = 3
SETUP_FAILURES_ATTR = "hpo:setup_failures"
BROKEN_REASON_ATTR = "hpo:broken_reason"
RETRY_ATTR = "hpo:retry"
SURPLUS_ATTR = "hpo:surplus"
FAIL_REASON_ATTR = "fail_reason"
RUN_ID_ATTR = "mlflow_run_id"
ENQUEUED_ATTR = "enqueued_from"  # a queued configuration's source (hpo study enqueue)
# Command-line overrides of the space's budget (hpo run and hpo study create).
BUDGET_OVERRIDES = ("trial_timeout", "study_timeout", "study_timeout_grace")


class StudyError(UsageError, RuntimeError):
    """A study cannot be created, found or used as asked."""


@dataclass
class StudyConfig:
    """Everything a worker needs to run trials of a study."""

    name: str
    source: str
    filename: str
    algorithm: str
    pruner: str
    n_trials: int
    seed: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    max_retries: int = 1
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    created_at: float = field(default_factory=time.time)

    def spec(self) -> StudySpec:
        """The validated spec with the command-line overrides applied.

        Parsed once per process for each (source, filename, overrides): a worker and its trial
        process ask for it several times per trial, and parsing costs milliseconds.
        """
        return _parsed_spec(self.source, self.filename, json.dumps(self.overrides, sort_keys=True))

    def family_name(self) -> str | None:
        """The space's ``family``, read without validating the space: validation imports a
        family's module, which a worker must not do before its allow-list said yes."""
        from hpo.spaces._yaml import YamlDocument

        try:
            data = YamlDocument.parse(self.source, self.filename).data
        except Exception:
            return None
        family = data.get("family") if isinstance(data, dict) else None
        return family if isinstance(family, str) else None

    def user_targets(self) -> dict[Axis, str | None]:
        """The study's own ``module:attribute`` objects by axis (None where it uses a built-in
        or the space cannot be read), read without validating the space (see
        :meth:`family_name`)."""
        from hpo.catalog import is_user_target
        from hpo.spaces._yaml import YamlDocument

        try:
            data = YamlDocument.parse(self.source, self.filename).data
        except Exception:
            data = None
        data = data if isinstance(data, dict) else {}
        dataset = self.overrides.get("dataset") or data.get("dataset")
        if isinstance(dataset, dict):
            dataset = dataset.get("name")
        found: dict[Axis, Any] = {
            "family": data.get("family"),
            "dataset": dataset,
            "algorithm": self.algorithm,
            "pruner": self.pruner,
        }
        return {
            k: v if isinstance(v, str) and is_user_target(v) else None for k, v in found.items()
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StudyConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@functools.lru_cache(maxsize=64)
def _parsed_spec(source: str, filename: str, overrides_json: str) -> StudySpec:
    # StudySpec is frozen, so one parsed copy can be shared.
    return apply_overrides(parse_spec(source, filename), json.loads(overrides_json))


def apply_overrides(spec: StudySpec, overrides: dict[str, Any]) -> StudySpec:
    """``spec`` with ``dataset``, ``subset``, ``epochs`` and time-limit overrides (see
    :data:`BUDGET_OVERRIDES`) from the command line."""
    dataset = spec.dataset
    if overrides.get("dataset"):
        dataset = dataset.model_copy(update={"name": overrides["dataset"]})
    if overrides.get("subset"):
        dataset = dataset.model_copy(update={"subset": int(overrides["subset"])})
    budget = spec.budget
    if overrides.get("epochs"):
        epochs = int(overrides["epochs"])
        budget = budget.model_copy(
            update={"max_epochs": epochs, "min_epochs": min(budget.min_epochs, epochs)}
        )
    limits = {k: float(overrides[k]) for k in BUDGET_OVERRIDES if overrides.get(k) is not None}
    if limits:
        budget = budget.model_copy(update=limits)
    return dataclasses.replace(spec, dataset=dataset, budget=budget)


def create_study(storage: BaseStorage, config: StudyConfig) -> optuna.Study:
    """Create the Optuna study and store ``config`` in it; fails if the name is taken."""
    import optuna

    from hpo.names import name_problem

    problem = name_problem(config.name, "study")
    if problem:
        raise StudyError(problem)
    spec = config.spec()
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=config.name,
            directions=spec.directions,  # type: ignore[arg-type]
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(
            f"study {config.name!r} already exists: continue it (hpo run --resume), or choose "
            "another name"
        ) from None
    # Workers skip the study until its set-up (MLflow experiment and run) is stored.
    storage.set_study_system_attr(study._study_id, STATE_ATTR, "creating")
    save_config(storage, study, config)
    return study


def save_config(storage: BaseStorage, study: optuna.Study, config: StudyConfig) -> None:
    """Store ``config`` in the study; never with a password (see ``strip_password``)."""
    from hpo.storage import strip_password

    if config.tracking_uri:
        config.tracking_uri = strip_password(config.tracking_uri)
    storage.set_study_system_attr(study._study_id, CONFIG_ATTR, config.to_json())


def load_config(storage: BaseStorage, name: str) -> StudyConfig:
    """The configuration stored with study ``name``."""
    return load_config_and_state(storage, name)[0]


def load_config_and_state(storage: BaseStorage, name: str) -> tuple[StudyConfig, str]:
    """The configuration stored with study ``name`` and its state, read together.

    Both live in the study's attributes: a worker reads them before every claim, once.
    """
    import optuna

    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StudyError(f"no study named {name!r}; known: {', '.join(known) or 'none'}") from None
    attrs = storage.get_study_system_attrs(study_id)
    raw = attrs.get(CONFIG_ATTR)
    if raw is None:
        raise StudyError(f"study {name!r} was not created by hpo (no stored configuration)")
    return StudyConfig.from_json(raw), state_from_attrs(attrs)


def load_study(
    storage: BaseStorage,
    config: StudyConfig,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    import optuna

    return optuna.load_study(
        study_name=config.name, storage=storage, sampler=sampler, pruner=pruner
    )


# -- budget -----------------------------------------------------------------------------------


def _retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    # Optuna's RetryFailedTrialCallback marks a retry with the number of the trial it repeats.
    return {
        int(t.system_attrs["failed_trial"])
        for t in trials
        if t.system_attrs.get("failed_trial") is not None
    }


def counted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that use up the study's budget: finished, running or queued.

    A failed trial that was retried does not count (its retry does); neither does a surplus
    trial that a worker asked for after the budget was reached.
    """
    from optuna.trial import TrialState

    retried = _retried_numbers(trials)
    out = []
    for t in trials:
        if t.system_attrs.get(SURPLUS_ATTR):
            continue
        if t.state == TrialState.FAIL and t.number in retried:
            continue
        out.append(t)
    return out


def claim_trial(
    study: optuna.Study, n_trials: int, study_timeout: float | None = None
) -> optuna.Trial | None:
    """Ask for a trial if the budget allows one; None when the study has all its trials.

    Trial numbers are handed out in order by the store, so a trial is within budget exactly
    when fewer than ``n_trials`` counted trials have a smaller number. A trial asked for past
    the budget (two workers racing for the last slot) is closed as surplus and not counted.

    With ``study_timeout`` (seconds) the first claim starts the study's clock (see
    :func:`start_deadline`), and no trial is claimed once the deadline has passed.
    """
    from optuna.trial import TrialState

    deadline = None
    if study_timeout:
        deadline = study_deadline(study._storage, study._study_id)
        if deadline_passed(deadline):
            return None
    trials = study.get_trials(deepcopy=False)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    if len(counted_trials(trials)) >= n_trials and not waiting:
        return None
    trial = _ask(study)
    if study_timeout and deadline is None:
        timeout = study_timeout
        with_db_retry(lambda: start_deadline(study._storage, study._study_id, timeout))
    if trial.number < n_trials:
        return trial  # at most trial.number trials are ahead of it: within budget, no scan

    # The trial exists now: a dropped connection from here on is retried in place, never by
    # asking again (that would leave this trial RUNNING with no worker).
    def surplus() -> bool:
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            return True  # an earlier attempt closed it
        trials = study.get_trials(deepcopy=False)
        ahead = [t for t in counted_trials(trials) if t.number < trial.number]
        if len(ahead) < n_trials:
            return False
        study._storage.set_trial_system_attr(trial._trial_id, SURPLUS_ATTR, True)
        study.tell(trial, state=TrialState.FAIL)
        return True

    return None if with_db_retry(surplus, what="checking the budget") else trial


class SamplerError(HpoError, RuntimeError):
    """The study's sampler raised while a trial was asked for; that trial was failed."""


def _ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``, except that a sampler that raises fails the trial it was asked for.

    Optuna creates the trial (or takes a queued one) before the sampler's ``before_trial``
    runs (hyperopt proposes there): a sampler that raised left that trial RUNNING with no
    worker, to be reaped and requeued for ever.
    """
    import optuna

    study._thread_local.cached_all_trials = None  # as ask() does: read the trials afresh
    trial_id = study._pop_waiting_trial_id()
    if trial_id is None:
        trial_id = study._storage.create_new_trial(study._study_id)
    try:
        return optuna.Trial(study, trial_id)
    except Exception as exc:
        if is_transient(exc):
            raise  # the store, not the sampler: retried as before (see reap_unstarted_trials)
        reason = f"the sampler failed: {type(exc).__name__}: {exc}"
        with_db_retry(lambda: fail_trial(study, trial_id, reason, retry=False, max_retries=0))
        raise SamplerError(reason) from exc


def is_done(study: optuna.Study, n_trials: int, deadline: float | None = None) -> bool:
    """Whether ``study`` has all its trials finished and none running or queued, or has
    passed its ``deadline`` (see :func:`study_deadline`) with no trial running.

    The same answer as ``study_status(...).done``, read through ``study``'s own storage: a
    study loaded once and kept (as a worker keeps it) reads only new and unfinished trials
    from the store, so this check does not grow with the study.
    """
    from optuna.trial import TrialState

    from hpo.storage import count_trials

    if deadline_passed(deadline):
        return not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    # Counted trials are a subset of all trials: until the study holds n_trials trials it
    # cannot be done, and one COUNT says so without reading any trial.
    total = count_trials(study._storage, study._study_id)
    if total is not None and total < n_trials:
        return False
    trials = counted_trials(study.get_trials(deepcopy=False))
    return len(trials) >= n_trials and all(t.state.is_finished() for t in trials)


@dataclass
class StudyStatus:
    """Counts and best value of a study, as ``hpo study status`` shows them."""

    name: str
    n_trials: int
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best_values: list[float] | None
    best_trial: int | None
    directions: list[str]
    algorithm: str
    pruner: str
    family: str
    dataset: str
    state: str = "active"
    broken_reason: str | None = None
    #: Parameters trials had that no family read (see :func:`unread_params`).
    unread_params: list[str] = field(default_factory=list)
    #: Finished trials (complete or stopped) that broke a constraint of the space: counted in
    #: ``complete`` or ``pruned`` too, never best.
    infeasible: int = 0
    #: Its wall-clock budget in seconds (``budget.study_timeout``; None: none).
    study_timeout: float | None = None
    #: The study's deadline (seconds since the epoch; None: no study_timeout, or not started).
    deadline: float | None = None
    #: Whether the deadline had passed when the status was read.
    deadline_reached: bool = False

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def budget_used(self) -> bool:
        return self.finished >= self.n_trials and self.running == 0 and self.waiting == 0

    @property
    def done(self) -> bool:
        """Every trial finished, or the deadline passed and no trial runs (queued trials
        that never started stay queued)."""
        return self.budget_used or (self.deadline_reached and self.running == 0)

    @property
    def end_reason(self) -> str | None:
        """Why the study ended (None while it has not)."""
        if self.budget_used:
            return "trial budget used"
        return DEADLINE_REASON if self.done else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "finished": self.finished,
            "done": self.done,
            "end_reason": self.end_reason,
        }


#: Trial user attributes: the parameters its family read, and those it did not.
PARAMS_READ_ATTR = "params_read"
PARAMS_UNREAD_ATTR = "params_unread"
#: Study user attribute: parameters of the space that trials had but no family read.
UNREAD_PARAMS_ATTR = "unread_params"


def record_params_read(storage: BaseStorage, trial_id: int, hp: Params) -> None:
    """Store on the trial which of its parameters ``hp`` saw read (see :class:`Params`)."""
    storage.set_trial_user_attr(trial_id, PARAMS_READ_ATTR, hp.read())
    storage.set_trial_user_attr(trial_id, PARAMS_UNREAD_ATTR, hp.unread())


def unread_params(trials: Iterable[FrozenTrial]) -> list[str]:
    """Parameters some trial had and no trial's family read, sorted.

    A conditional parameter counts once a trial had it active; until then it is not reported.

    Example:
        >>> import optuna
        >>> def trial(read, unread):
        ...     return optuna.trial.create_trial(value=0.0, user_attrs={
        ...         PARAMS_READ_ATTR: read, PARAMS_UNREAD_ATTR: unread})
        >>> unread_params([trial(["lr"], ["unitz", "opt.sgd.momentum"]),
        ...                trial(["lr", "opt.sgd.momentum"], ["unitz"])])
        ['unitz']
    """
    read: set[str] = set()
    unread: set[str] = set()
    for t in trials:
        read.update(t.user_attrs.get(PARAMS_READ_ATTR) or ())
        unread.update(t.user_attrs.get(PARAMS_UNREAD_ATTR) or ())
    return sorted(unread - read)


def note_unread_params(study: optuna.Study) -> list[str] | None:
    """Store :func:`unread_params` of the study's complete trials on it when it changed.

    Returns the names when they are stored for the first time (the study's first complete
    trial that reads less than it was given), so that the caller warns once; else None.
    """
    from optuna.trial import TrialState

    names = unread_params(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    before = study.user_attrs.get(UNREAD_PARAMS_ATTR)
    if names == before or (not names and before is None):
        return None
    study.set_user_attr(UNREAD_PARAMS_ATTR, names)
    return names if names and before is None else None


def describe_unread_params(names: list[str]) -> str:
    """The warning about parameters no family read.

    Example:
        >>> describe_unread_params(["unitz"])
        'searched but never read by the family: unitz (a misspelled key?)'
    """
    return f"searched but never read by the family: {', '.join(names)} (a misspelled key?)"


def study_status(storage: BaseStorage, name: str) -> StudyStatus:
    import optuna
    from optuna.trial import TrialState

    from hpo.storage.feasibility import best_trials, infeasible_count

    config = load_config(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    try:
        spec = config.spec()
        directions, family, dataset = spec.directions, spec.family, spec.dataset.name
        study_timeout = spec.budget.study_timeout
    except Exception as exc:  # e.g. its family module is not installed here: still shown
        spec = None
        study_timeout = None
        directions = [d.name.lower() for d in study.directions]
        family = dataset = f"? ({type(exc).__name__})"
    trials = counted_trials(study.get_trials(deepcopy=False))

    def n(state: TrialState) -> int:
        return sum(1 for t in trials if t.state == state)

    best_values: list[float] | None = None
    best_number: int | None = None
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    attrs = storage.get_study_system_attrs(study._study_id)
    state = state_from_attrs(attrs)
    deadline = float(attrs[DEADLINE_ATTR]) if attrs.get(DEADLINE_ATTR) is not None else None
    unread = unread_params(complete)
    if len(directions) == 1:
        best = best_trials(study)
        if best:
            best_values, best_number = list(best[0].values), best[0].number
    return StudyStatus(
        name=name,
        n_trials=config.n_trials,
        complete=len(complete),
        pruned=n(TrialState.PRUNED),
        failed=n(TrialState.FAIL),
        running=n(TrialState.RUNNING),
        waiting=n(TrialState.WAITING),
        best_values=best_values,
        best_trial=best_number,
        directions=directions,
        algorithm=config.algorithm,
        pruner=config.pruner,
        family=family,
        dataset=dataset,
        state=state,
        broken_reason=attrs.get(BROKEN_REASON_ATTR) if state == "broken" else None,
        unread_params=unread,
        infeasible=infeasible_count(t for t in trials if t.state.is_finished()),
        study_timeout=study_timeout,
        deadline=deadline,
        deadline_reached=deadline_passed(deadline),
    )


# -- study state: pause, resume, cancel while workers run --------------------------------------


def get_study_state(storage: BaseStorage, name: str) -> str:
    study_id = storage.get_study_id_from_name(name)
    return state_from_attrs(storage.get_study_system_attrs(study_id))


def state_from_attrs(attrs: dict[str, Any]) -> str:
    """A study's state (see :data:`STUDY_STATES`) from its system attributes."""
    return str(attrs.get(STATE_ATTR, "active"))


def set_study_state(storage: BaseStorage, name: str, state: str) -> None:
    """Pause, resume or cancel a study; workers check it before every claim."""
    if state not in STUDY_STATES:
        raise ValueError(f"unknown study state {state!r}")
    load_config(storage, name)  # a clear error for an unknown study
    current = get_study_state(storage, name)
    if current == "cancelled" and state != "cancelled":
        raise StudyError(f"study {name!r} was cancelled; create a new study instead")
    study_id = storage.get_study_id_from_name(name)
    if current == "broken" and state == "active":
        # Resumed after the cause was fixed: the count of set-up failures starts again.
        storage.set_study_system_attr(study_id, SETUP_FAILURES_ATTR, 0)
    storage.set_study_system_attr(study_id, STATE_ATTR, state)


def record_setup_failure(
    storage: BaseStorage, name: str, reason: str, threshold: int = BROKEN_AFTER
) -> bool:
    """Count one more set-up failure of study ``name`` in a row; True once it is broken.

    At ``threshold`` failures in a row the study is marked broken with ``reason``: workers skip
    it from then on. Workers racing may lose an increment; the study then breaks a little later.
    """
    study_id = storage.get_study_id_from_name(name)
    attrs = storage.get_study_system_attrs(study_id)
    if state_from_attrs(attrs) == "broken":
        return True
    count = int(attrs.get(SETUP_FAILURES_ATTR, 0)) + 1
    storage.set_study_system_attr(study_id, SETUP_FAILURES_ATTR, count)
    if count < threshold or state_from_attrs(attrs) != "active":
        return False
    storage.set_study_system_attr(
        study_id, BROKEN_REASON_ATTR, f"{count} set-up failures in a row; last: {reason}"[:2000]
    )
    storage.set_study_system_attr(study_id, STATE_ATTR, "broken")
    return True


def clear_setup_failures(storage: BaseStorage, name: str) -> None:
    """A trial of study ``name`` got past its set-up: the failures in a row start again at 0."""
    storage.set_study_system_attr(storage.get_study_id_from_name(name), SETUP_FAILURES_ATTR, 0)


# -- failed trials: requeue and reap -------------------------------------------------------------


def requeue(study: optuna.Study, trial: FrozenTrial, *, as_retry: bool = True) -> int | None:
    """Queue a retry of failed ``trial`` with the same parameters; returns the retry's count.

    The retry carries ``failed_trial`` (the number it repeats), as Optuna's own
    RetryFailedTrialCallback does, so the failed trial stops counting toward the budget.
    ``as_retry=False`` (a trial that never ran) keeps the retry count as it was.
    """
    import optuna as _optuna
    from optuna.trial import TrialState

    count = int(trial.system_attrs.get(RETRY_ATTR, 0)) + (1 if as_retry else 0)
    study.add_trial(
        _optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs={"failed_trial": trial.number, RETRY_ATTR: count},
        )
    )
    return count


def fail_trial(
    study: optuna.Study, trial_id: int, reason: str, *, retry: bool, max_retries: int
) -> bool:
    """Mark a RUNNING trial FAIL with ``reason`` and requeue it if retries are left.

    Returns False when another process finished the trial first (nothing is done then), so
    several reapers can race safely: only the one whose state change wins requeues.
    """
    import optuna as _optuna
    from optuna.trial import TrialState

    storage = study._storage
    try:
        storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except _optuna.exceptions.UpdateFinishedTrialError:
        return False
    frozen = storage.get_trial(trial_id)
    if retry and int(frozen.system_attrs.get(RETRY_ATTR, 0)) < max_retries:
        requeue(study, frozen)
    return True


def reap_stale_trials(storage: BaseStorage, config: StudyConfig) -> list[int]:
    """Fail (and requeue) trials whose worker stopped sending heartbeats; returns their numbers.

    Their MLflow runs are ended as FAILED so that no run stays RUNNING.
    """
    import optuna

    if not getattr(storage, "heartbeat_interval", None):
        return []
    study = optuna.load_study(study_name=config.name, storage=storage)
    reaped = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):  # type: ignore[attr-defined]
        frozen = storage.get_trial(trial_id)
        reason = "the worker running this trial stopped sending heartbeats (died or lost)"
        if fail_trial(study, trial_id, reason, retry=True, max_retries=config.max_retries):
            reaped.append(frozen.number)
            run_id = frozen.user_attrs.get(RUN_ID_ATTR)
            if run_id and config.tracking_uri:
                from hpo import tracking

                try:  # queued in the local outbox when the server is down
                    tracking.end_orphan_run(config.tracking_uri, run_id, reason)
                except Exception as exc:
                    import logging

                    logging.getLogger("hpo.studies").warning(
                        "could not end MLflow run %s: %s", run_id, exc
                    )
    return reaped


UNSTARTED_REASON = "claimed but never started: its worker died or lost the database right after"


def reap_unstarted_trials(
    storage: BaseStorage, config: StudyConfig, seen: dict[int, float]
) -> list[int]:
    """Requeue RUNNING trials that have had no heartbeat at all for the grace period.

    A worker records a trial's first heartbeat right after claiming it; a trial without one was
    claimed by a worker that died or lost its database connection in between (a database
    restart, kill -9). Heartbeat-based reaping never sees such a trial: it would stay RUNNING
    for ever and keep the study from finishing. It is failed with :data:`UNSTARTED_REASON` and
    queued again (it never ran, so this is not counted as a retry). ``seen`` is the caller's
    memory between calls (trial id -> monotonic time it was first found without a heartbeat),
    so no two machines' clocks are ever compared. Returns the numbers of the requeued trials.
    """
    import optuna
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    interval = getattr(storage, "heartbeat_interval", None)
    if not interval:
        return []
    grace = getattr(storage, "grace_period", None) or 2 * interval
    study = optuna.load_study(study_name=config.name, storage=storage)
    trial_model, beat = models.TrialModel, models.TrialHeartbeatModel
    with _create_scoped_session(storage.scoped_session) as session:  # type: ignore[attr-defined]
        found = [
            int(trial_id)
            for (trial_id,) in session.query(trial_model.trial_id)
            .outerjoin(beat, beat.trial_id == trial_model.trial_id)
            .filter(trial_model.study_id == study._study_id)
            .filter(trial_model.state == TrialState.RUNNING)
            .filter(beat.trial_heartbeat_id.is_(None))
            .all()
        ]
    now = time.monotonic()
    first_seen = {t: seen.get(t, now) for t in found}
    seen.clear()
    seen.update(first_seen)
    reaped = []
    for trial_id, since in first_seen.items():
        if now - since < grace:
            continue
        del seen[trial_id]
        if fail_trial(study, trial_id, UNSTARTED_REASON, retry=False, max_retries=0):
            requeue(study, storage.get_trial(trial_id), as_retry=False)
            reaped.append(storage.get_trial(trial_id).number)
    return reaped
