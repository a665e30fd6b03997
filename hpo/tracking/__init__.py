"""MLflow tracking: one experiment per study, a parent run for the study, a child run per trial.

Only :class:`mlflow.MlflowClient` with explicit run ids is used, never the fluent "active run"
globals, which break with several trials per process and with threads.

Every MLflow write goes through :class:`TrackingClient` (what :func:`client` returns). When the
tracking server cannot be reached (connection refused, timeout, 5xx after MLflow's own short
retries), the write is kept in a durable local outbox (:mod:`hpo.tracking._outbox`) and the call
returns:
training goes on. A run or experiment created while the server is down gets a placeholder id
(``pending-run-…``, ``pending-exp-…``) that later writes can use; they wait behind its creation.
The outbox is replayed in order when a later call finds the server answering again, at the end
of each trial, and on demand by ``hpo sync`` (:func:`sync`). Replay is idempotent: a replay cut
short by a crash can run again without duplicating runs (each created run carries the tag
``hpo.client_id``, looked up before creating it again) or metrics (logged with their original
timestamps, which MLflow de-duplicates).

A write the server rejects (4xx: an invalid value, a changed parameter, a deleted run) is a real
error, not an outage: it is logged as a warning naming what was dropped, recorded in the
outbox's ``dropped.jsonl``, and never retried. Nothing is dropped silently.

Readers that find a placeholder in a trial's ``mlflow_run_id`` attribute map it with
:func:`resolve_run_id`; :class:`TrackingClient`'s read methods (``get_run``, ``list_artifacts``,
``download_artifacts``, ...) map placeholder arguments themselves.

Setting ``HPO_MLFLOW_OFFLINE=1`` keeps every write in the outbox without contacting the server
(for a machine without access to it); ``hpo sync`` sends them later.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from hpo.tracking._base import (
    CLIENT_ID_TAG,
    DEFAULT_TRACKING_FILE,
    EXPERIMENT_KIND_TAG,
    HTTP_DEFAULTS,
    MAX_PARAM_LENGTH,
    MAX_TAG_LENGTH,
    MODEL_TRAINING_KIND,
    NOTE_TAG,
    OFFLINE_ENV,
    RUN_STATUS,
    TRACKING_ENV,
    RunDroppedError,
    RunPendingError,
    SyncResult,
    _now_ms,
    _offline,
    describe,
    is_unreachable,
    resolve_tracking_uri,
    with_credentials,
)
from hpo.tracking._client import TrackingClient
from hpo.tracking._new_store import local_store_file, prepare_local_store
from hpo.tracking._outbox import (
    Outbox,
    is_placeholder,
    list_outboxes,
    normalize_uri,
    outbox_root,
)
from hpo.tracking._replay import (
    MAX_ATTEMPTS,
    PROBE_TIMEOUT_S,
    RETRY_MAX_S,
    RETRY_MIN_S,
)

__all__ = [
    "CLIENT_ID_TAG",
    "DEFAULT_TRACKING_FILE",
    "EXPERIMENT_KIND_TAG",
    "HTTP_DEFAULTS",
    "MAX_ATTEMPTS",
    "MAX_PARAM_LENGTH",
    "MAX_TAG_LENGTH",
    "MODEL_TRAINING_KIND",
    "NOTE_TAG",
    "OFFLINE_ENV",
    "PROBE_TIMEOUT_S",
    "RETRY_MAX_S",
    "RETRY_MIN_S",
    "RUN_STATUS",
    "TRACKING_ENV",
    "RunDroppedError",
    "RunPendingError",
    "SyncResult",
    "TrackingClient",
    "client",
    "describe",
    "end_dangling_runs",
    "end_orphan_run",
    "end_trial_run",
    "flatten_params",
    "is_placeholder",
    "is_unreachable",
    "local_store_file",
    "log_artifact_files",
    "log_metrics",
    "log_params",
    "new_client",
    "pending_operations",
    "prepare_local_store",
    "resolve_run_id",
    "resolve_tracking_uri",
    "start_study_run",
    "start_trial_run",
    "sync",
    "sync_all",
    "with_credentials",
]

log = logging.getLogger("hpo.tracking")

_CLIENTS: dict[tuple[str, str], TrackingClient] = {}
_CLIENTS_LOCK = threading.Lock()


def client(uri: str) -> TrackingClient:
    """The tracking client of ``uri`` for this process (shared, so it remembers an outage)."""
    key = (normalize_uri(uri), str(outbox_root()))
    with _CLIENTS_LOCK:
        found = _CLIENTS.get(key)
        if found is None:
            found = _CLIENTS[key] = new_client(uri)
        return found


_CLIENT_CLASS: type[TrackingClient] | None = None


def new_client(uri: str, root: Path | None = None) -> TrackingClient:
    """A new :class:`TrackingClient` (its own outage state; :func:`client` shares one)."""
    global _CLIENT_CLASS
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if _CLIENT_CLASS is None:
        from mlflow import MlflowClient

        # MLflow's database set-up messages are noise in a worker's log.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        _CLIENT_CLASS = type(
            "TrackingClient",
            (TrackingClient, MlflowClient),
            {"__module__": __name__, "__doc__": TrackingClient.__doc__},
        )
    prepare_local_store(uri)
    return _CLIENT_CLASS(uri, root)


# --- the functions the rest of hpo calls -----------------------------------------------------


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params as strings, by flat path name (conditional paths included)."""
    out = {}
    for k, v in params.items():
        text = json.dumps(v) if not isinstance(v, str) else v
        out[k] = text[:MAX_PARAM_LENGTH]
    return out


def start_study_run(
    uri: str,
    study_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    experiment_tags: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Create (or reuse) the study's experiment (with ``experiment_tags`` too) and start its
    parent run.

    Returns ``(experiment_id, parent_run_id)``; either may be a placeholder id while the
    server is unreachable.
    """
    c = client(uri)
    experiment_id = c.ensure_experiment(
        study_name,
        tags={
            "hpo.study": study_name,
            EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND,
            **(experiment_tags or {}),
        },
    )
    run_id = c.start_run(
        experiment_id,
        run_name=f"study {study_name}",
        tags={"hpo.study": study_name, "hpo.kind": "study", **tags},
    )
    log_params(c, run_id, params)
    return experiment_id, run_id


def log_params(c: TrackingClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = list(flatten_params(params).items())
    for i in range(0, len(items), 100):  # MLflow's batch limit
        c.write_batch(run_id, params=items[i : i + 100])


def log_metrics(c: TrackingClient, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log finite metrics at ``step``; non-finite values are skipped (MLflow rejects NaN)."""
    now = _now_ms()
    items = [
        (k, float(v), now, int(step))
        for k, v in metrics.items()
        if v is not None and math.isfinite(float(v))
    ]
    if items:
        c.write_batch(run_id, metrics=items)


def start_trial_run(
    c: TrackingClient,
    experiment_id: str,
    parent_run_id: str | None,
    study_name: str,
    trial_number: int,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
) -> str:
    """Start a trial's child run under the study run; returns its id (maybe a placeholder)."""
    run_tags = {
        "hpo.study": study_name,
        "hpo.kind": "trial",
        "hpo.trial_number": str(trial_number),
        "hpo.state": "RUNNING",
        **tags,
    }
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    run_id = c.start_run(experiment_id, run_name=f"trial {trial_number}", tags=run_tags)
    log_params(c, run_id, params)
    return run_id


def end_trial_run(
    c: TrackingClient,
    run_id: str,
    state: str,
    reason: str | None = None,
    note: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """End a trial's run with the status matching its Optuna ``state`` (and ``note`` as its
    description and ``tags``, in the same write); then replay the outbox.

    The end of a trial is a natural point to send what an outage left queued.
    """
    written = [("hpo.state", state)]
    if reason:
        written.append(("hpo.fail_reason", reason[:MAX_TAG_LENGTH]))
    if note:
        written.append((NOTE_TAG, note))
    written.extend((tags or {}).items())
    c.write_batch(run_id, tags=written)
    c.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))
    if not _offline():
        c.flush()


def log_artifact_files(c: TrackingClient, run_id: str, files: Mapping[str, Path | bytes]) -> None:
    """Log files (paths or bytes) under the names given; ``samples/a.txt`` goes in a folder."""
    for name, content in files.items():
        path = PurePosixPath(name)
        folder = str(path.parent) if str(path.parent) not in ("", ".") else None
        where = {"artifact_path": folder} if folder else {}  # top-level files: as before
        c.log_artifact_content(
            run_id, path.name, content if isinstance(content, bytes) else Path(content), **where
        )


def end_dangling_runs(uri: str, experiment_id: str, parent_run_id: str | None) -> int:
    """End every run of the study still RUNNING (a trial process that died); returns how many.

    While writes wait in the outbox this is queued behind them and returns 0.
    """
    return client(uri).end_dangling_runs(experiment_id, parent_run_id)


def end_orphan_run(uri: str, run_id: str, reason: str) -> None:
    """End a trial's run FAILED with ``reason`` if still RUNNING (its trial process died).

    Safe with placeholder ids and an unreachable server (the worker's replacement for
    ``get_run`` + ``end_trial_run``).
    """
    client(uri).end_orphan_run(run_id, reason)


def resolve_run_id(uri: str, run_id: str) -> str:
    """The real MLflow run id for ``run_id``, which may be a placeholder (``pending-run-…``).

    A trial whose run was created while the server was unreachable has a placeholder in its
    ``mlflow_run_id`` attribute; this maps it (from this machine's outbox, else by the run's
    ``hpo.client_id`` tag on the server). Raises :class:`RunPendingError` while the run is
    still queued, :class:`RunDroppedError` if the server rejected it.
    """
    return client(uri).resolve(run_id)


def pending_operations(uri: str) -> int:
    """How many writes to ``uri`` wait in this machine's outbox (0 when none)."""
    box = Outbox(uri)
    box.refresh()
    return len(box.pending())


def sync(uri: str, timeout: float = 300.0) -> SyncResult:
    """Replay the outbox of ``uri`` now, waiting up to ``timeout`` s for another replayer."""
    return client(uri).flush(wait=True, timeout=timeout)


def sync_all(timeout: float = 300.0) -> list[SyncResult]:
    """Replay every outbox on this machine (one per tracking URI)."""
    return [sync(box.uri, timeout) for box in list_outboxes()]
