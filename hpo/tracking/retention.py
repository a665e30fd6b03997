"""The retention policy: delete the model files of the trials a study no longer needs.

A study keeps the model files (:data:`~hpo.tracking.artifacts.RETAINABLE_FILES`: the model,
its validation predictions, the test predictions an ensemble build stored) of its ``keep_best``
best complete trials, ranked by the first objective, and of every trial that is a member of a
registered ensemble. The other finished trials (complete but worse, pruned, failed) lose those
files; their runs keep their metrics, parameters, dataset summary, history and curves, and are
tagged :data:`~hpo.tracking.artifacts.ARTIFACTS_DELETED_TAG` with why.

Files are deleted through MLflow's artifact repository of each run, so the same code serves a
local store (``mlflow.db`` with ``./mlruns``) and an ``mlflow server`` that proxies its
artifacts (``mlflow-artifacts:`` URIs, an HTTP ``DELETE`` per file). Trials still running or
queued are never touched, and a trial outside the best ``keep_best`` stays outside: trials are
only ever added, so its rank can only fall.

Example:
    >>> report = retain(store, config, keep_best=2, dry_run=True)  # doctest: +SKIP
    >>> report.removed_trials, report.bytes_freed  # doctest: +SKIP
    ([1, 3, 4, 5], 7340032)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError, UsageError
from hpo.tracking.artifacts import (
    ARTIFACTS_DELETED_TAG,
    ARTIFACTS_FREED_TAG,
    RETAINABLE_FILES,
)

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from hpo.storage.studies import StudyConfig
    from hpo.tracking import TrackingClient

MEMBER_TAG_PREFIX = "hpo.ensemble."  # hpo.ensemble.NAME on a member's run: the versions using it
_FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class RetentionError(HpoError):
    """Retention could not read or delete what it had to (MLflow down, a delete refused)."""


@dataclass
class RunFiles:
    """One finished trial's run and the files MLflow lists for it."""

    trial: int
    state: str
    run_id: str
    artifact_uri: str
    sizes: dict[str, int]  # every file (sub-folders walked), path -> bytes
    value: float | None = None  # the first objective (complete trials with a finite one)
    tags: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def retainable(self) -> dict[str, int]:
        return {name: self.sizes[name] for name in RETAINABLE_FILES if name in self.sizes}


@dataclass
class RetentionReport:
    """What :func:`retain` kept and deleted (or would delete, with ``dry_run``)."""

    study: str
    keep_best: int
    dry_run: bool
    best_trials: list[int]  # the keep_best best complete trials, best first
    member_trials: list[int]  # ensemble members outside the best, kept too
    removed_trials: list[int]  # whose model files were (or would be) deleted now
    removed_files: dict[int, list[str]]
    bytes_freed: int  # listed sizes of the files deleted now
    bytes_kept: int  # listed sizes of every file left in the study's trial runs
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["removed_files"] = {str(k): v for k, v in self.removed_files.items()}
        return out


def check_keep_best(keep_best: Any) -> int:
    """``keep_best`` as a whole number of at least 1 (:class:`UsageError` otherwise)."""
    if isinstance(keep_best, bool) or not isinstance(keep_best, int) or keep_best < 1:
        raise UsageError(
            f"keep_best (--keep-best) must be a whole number of at least 1, got {keep_best!r}"
        )
    return keep_best


def retain(
    storage: BaseStorage, config: StudyConfig, keep_best: int, *, dry_run: bool = False
) -> RetentionReport:
    """Delete the model files of ``config``'s finished trials that are neither among its
    ``keep_best`` best nor members of a registered ensemble.

    Raises:
        UsageError: ``keep_best`` is not a whole number of at least 1, or the study has no
            MLflow tracking store.
        RetentionError: MLflow does not answer (nothing is deleted).
    """
    keep_best = check_keep_best(keep_best)
    client = _client(config)
    runs, problems = study_runs(storage, config, client)
    best = _best(runs, config, keep_best)
    members = ensemble_member_runs(client)
    candidates = [r for r in runs if r.trial not in best and r.retainable]
    member_trials = sorted(r.trial for r in candidates if _is_member(r, members))
    doomed = [r for r in candidates if r.trial not in member_trials]
    removed: dict[int, list[str]] = {}
    freed = 0
    if dry_run:
        for run in doomed:
            removed[run.trial] = sorted(run.retainable)
            freed += sum(run.retainable.values())
    else:
        # Read the registry again just before deleting: an ensemble registered since counts.
        members = ensemble_member_runs(client)
        for run in doomed:
            fresh = client.get_run(run.run_id).data.tags
            if _is_member(RunFiles(run.trial, run.state, run.run_id, "", {}, tags=fresh), members):
                member_trials.append(run.trial)
                continue
            try:
                _delete(client, run, keep_best)
            except Exception as exc:
                problems.append(f"trial {run.trial} (run {run.run_id}): {exc}")
                continue
            removed[run.trial] = sorted(run.retainable)
            freed += sum(run.retainable.values())
    total = sum(r.bytes for r in runs)
    return RetentionReport(
        study=config.name,
        keep_best=keep_best,
        dry_run=dry_run,
        best_trials=best,
        member_trials=sorted(member_trials),
        removed_trials=sorted(removed),
        removed_files=removed,
        bytes_freed=freed,
        bytes_kept=total - freed,
        problems=problems,
    )


def artifact_usage(storage: BaseStorage, config: StudyConfig) -> dict[str, Any]:
    """The bytes of the files MLflow lists in the study's trial runs, how many runs hold them,
    how many lost their model files to the retention policy and the bytes that freed.

    A study none of whose trials has a run yet reads nothing from MLflow.
    """
    usage: dict[str, Any] = {
        "bytes": 0,
        "runs": 0,
        "runs_with_model": 0,
        "removed_runs": 0,
        "freed_bytes": 0,
        "problems": [],
    }
    if not _trial_runs(storage, config, None):
        return usage
    runs, problems = study_runs(storage, config, _client(config), states=None)
    removed = [r for r in runs if r.tags.get(ARTIFACTS_DELETED_TAG)]
    usage.update(
        bytes=sum(r.bytes for r in runs),
        runs=len(runs),
        runs_with_model=sum(1 for r in runs if RETAINABLE_FILES[0] in r.sizes),
        removed_runs=len(removed),
        freed_bytes=sum(_int(r.tags.get(ARTIFACTS_FREED_TAG)) for r in removed),
        problems=problems,
    )
    return usage


def removal_note(tags: dict[str, str]) -> str | None:
    """Why a run holds no model files, when the retention policy deleted them (else None)."""
    why = tags.get(ARTIFACTS_DELETED_TAG)
    return f"its model files were removed by the retention policy ({why})" if why else None


def study_runs(
    storage: BaseStorage,
    config: StudyConfig,
    client: TrackingClient,
    states: tuple[str, ...] | None = _FINISHED,
) -> tuple[list[RunFiles], list[str]]:
    """The study's trial runs (of trials in ``states``; None: every trial) with their listed
    files and tags, and the trials whose run could not be read."""
    from hpo.tracking._outbox import is_placeholder

    runs: list[RunFiles] = []
    problems: list[str] = []
    for t, run_id in _trial_runs(storage, config, states):
        try:
            if is_placeholder(run_id):
                run_id = client.resolve(run_id)
            run = client.get_run(run_id)
            sizes = dict(_listed(client, run_id))
        except Exception as exc:
            if _unreachable(exc):
                raise _down(config) from None
            problems.append(f"trial {t.number}: its run cannot be read: {exc}")
            continue
        runs.append(
            RunFiles(
                t.number,
                t.state.name,
                run_id,
                str(run.info.artifact_uri),
                sizes,
                _first_value(t.values),
                dict(run.data.tags),
            )
        )
    return runs, problems


def _trial_runs(
    storage: BaseStorage, config: StudyConfig, states: tuple[str, ...] | None
) -> list[tuple[Any, str]]:
    """``(trial, run id)`` of the study's trials in ``states`` (None: all) that have a run."""
    import optuna

    from hpo.storage.studies import RUN_ID_ATTR

    study = optuna.load_study(study_name=config.name, storage=storage)
    return [
        (t, str(t.user_attrs[RUN_ID_ATTR]))
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(RUN_ID_ATTR) and (states is None or t.state.name in states)
    ]


def ensemble_member_runs(client: TrackingClient) -> set[str]:
    """The run ids of every member of every version of every registered hpo ensemble."""
    raw = client.raw
    members: set[str] = set()
    for model in _paged(raw.search_registered_models):
        if model.tags.get("hpo.kind") != "ensemble":
            continue
        name = model.name.replace("'", "\\'")
        for version in _paged(raw.search_model_versions, f"name = '{name}'"):
            members.update(r for r in version.tags.get("hpo.member_runs", "").split(",") if r)
    return members


def _is_member(run: RunFiles, members: set[str]) -> bool:
    # The registry's versions list their members; the members' own tags are the reverse link
    # (written after registration, so either may be missing when a build was cut short).
    return run.run_id in members or any(k.startswith(MEMBER_TAG_PREFIX) for k in run.tags)


def _best(runs: list[RunFiles], config: StudyConfig, keep_best: int) -> list[int]:
    """The ``keep_best`` best complete trials by the first objective (ties: lower number)."""
    sign = -1.0 if config.spec().directions[0] == "maximize" else 1.0
    ranked = sorted(
        (r for r in runs if r.state == "COMPLETE" and r.value is not None),
        key=lambda r: (sign * (r.value or 0.0), r.trial),
    )
    return [r.trial for r in ranked[:keep_best]]


def _delete(client: TrackingClient, run: RunFiles, keep_best: int) -> None:
    """Tag the run with why, then delete its model files through its artifact repository."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    files = run.retainable
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    client.set_tag(
        run.run_id,
        ARTIFACTS_DELETED_TAG,
        f"keep_best {keep_best}, {when}: {', '.join(sorted(files))}",
    )
    repo = get_artifact_repository(run.artifact_uri, tracking_uri=client.uri)
    for name in files:
        repo.delete_artifacts(name)
    already = _int(run.tags.get(ARTIFACTS_FREED_TAG))
    client.set_tag(run.run_id, ARTIFACTS_FREED_TAG, str(already + sum(files.values())))


def _listed(
    client: TrackingClient, run_id: str, path: str | None = None
) -> Iterator[tuple[str, int]]:
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            yield from _listed(client, run_id, info.path)
        else:
            yield info.path, int(info.file_size or 0)


def _paged(search: Any, filter_string: str | None = None) -> Iterator[Any]:
    token = None
    while True:
        page = search(filter_string=filter_string, max_results=100, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _client(config: StudyConfig) -> TrackingClient:
    from hpo import tracking

    if not config.tracking_uri:
        raise UsageError(f"study {config.name!r} has no MLflow tracking store: no model files")
    client = tracking.client(config.tracking_uri)
    if not client.answers():
        raise _down(config)
    return client


def _down(config: StudyConfig) -> RetentionError:
    from hpo.storage import mask_url

    return RetentionError(
        f"MLflow at {mask_url(config.tracking_uri or '')} does not answer: nothing was "
        "deleted; run it again once the server answers"
    )


def _unreachable(exc: Exception) -> bool:
    from hpo import tracking

    return bool(tracking.is_unreachable(exc))


def _first_value(values: Any) -> float | None:
    if not values or not math.isfinite(values[0]):
        return None
    return float(values[0])


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0
