"""Studies: creation, the configuration every worker reads back, budget and claims, state.

A study's whole configuration (the search-space file's text, the overrides given on the
command line, algorithm, pruner, seed, trial budget, MLflow ids) is stored in the study
itself, so ``hpo worker --study NAME`` on any machine that reaches the store needs nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError, UsageError
from hpo.spaces import StudySpec, parse_spec
from hpo.storage._retry import is_transient, with_db_retry
from hpo.storage.deadlines import (
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
    # Optuna's RetryFailedTrialCallback marks a retry with the number of the trial it repeats;
    # a withdrawn retry (surplus) repeats nothing.
    return {
        int(t.system_attrs["failed_trial"])
        for t in trials
        if t.system_attrs.get("failed_trial") is not None and not t.system_attrs.get(SURPLUS_ATTR)
    }


def counted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that use up the study's budget: finished, running or queued.

    A failed trial that was retried does not count (its retry does), nor does a running one
    whose retry is already queued (it is being failed: see ``fail_trial``); neither does a
    surplus trial that a worker asked for after the budget was reached.
    """
    from optuna.trial import TrialState

    retried = _retried_numbers(trials)
    out = []
    for t in trials:
        if t.system_attrs.get(SURPLUS_ATTR):
            continue
        if t.state in (TrialState.FAIL, TrialState.RUNNING) and t.number in retried:
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
        from hpo.storage.trial_failures import fail_trial

        reason = f"the sampler failed: {type(exc).__name__}: {exc}"
        with_db_retry(lambda: fail_trial(study, trial_id, reason, retry=False))
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
