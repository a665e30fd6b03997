"""MLflow tracking: one experiment per study, a parent run for the study, a child run per trial.

Only :class:`mlflow.MlflowClient` with explicit run ids is used, never the fluent "active run"
globals, which break with several trials per process and with threads.

Every MLflow write goes through :class:`TrackingClient` (what :func:`client` returns). When the
tracking server cannot be reached (connection refused, timeout, 5xx after MLflow's own short
retries), the write is kept in a durable local outbox (:mod:`hpo._outbox`) and the call returns:
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

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo._outbox import (
    EXPERIMENT_PREFIX,
    Op,
    Outbox,
    is_placeholder,
    list_outboxes,
    new_placeholder,
    normalize_uri,
    outbox_root,
    placeholder_key,
)
from hpo.errors import HpoError
from hpo.storage import has_password, mask_url, strip_password

__all__ = [
    "RUN_STATUS",
    "RunDroppedError",
    "RunPendingError",
    "SyncResult",
    "TrackingClient",
    "client",
    "end_dangling_runs",
    "end_orphan_run",
    "end_trial_run",
    "flatten_params",
    "is_placeholder",
    "is_unreachable",
    "log_artifact_files",
    "log_metrics",
    "log_params",
    "new_client",
    "pending_operations",
    "resolve_run_id",
    "resolve_tracking_uri",
    "start_study_run",
    "start_trial_run",
    "sync",
    "sync_all",
]

log = logging.getLogger("hpo.tracking")

TRACKING_ENV = "MLFLOW_TRACKING_URI"
OFFLINE_ENV = "HPO_MLFLOW_OFFLINE"
DEFAULT_TRACKING_FILE = "mlflow.db"
# MLflow run statuses by final Optuna trial state.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000
# Tag with a client-side id on every run (and, after a replay, on the experiment) created here:
# replay looks it up before creating, so a run is never created twice, and any machine can map
# a placeholder to the real id through it.
CLIENT_ID_TAG = "hpo.client_id"
# MLflow 3's experiment kind (the ``ExperimentKind`` values of its JS bundle:
# ``genai_development``, ``custom_model_development``, ...); 3.17's UI goes by its sidebar
# switch instead, which hpo's links set (hpo/mlflow_ui.py).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# A run's description in the UI (Markdown).
NOTE_TAG = "mlflow.note.content"
# MLflow's own defaults (7 retries with backoff factor 2, 120 s timeout) stall every call for
# minutes when the server is down; with the outbox a failed call costs little, so fail fast.
# Values the user set win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # MLflow prints "View run ... at" to stdout at each set_terminated, after one more request:
    # noise in worker logs, and it would corrupt the JSON that `hpo run/sync --json` print.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
PROBE_TIMEOUT_S = 2.0
# After a failure, no call is sent live for RETRY_MIN_S, doubling up to RETRY_MAX_S; then a
# cheap probe of /health decides whether to replay and go live again.
RETRY_MIN_S = 5.0
RETRY_MAX_S = 30.0
# An operation failing with an error that is neither "unreachable" nor a rejection (a local
# file gone, an unexpected exception) is tried this many times, then dropped (and reported).
MAX_ATTEMPTS = 5
_REMOTE_LOOKUP_EVERY_S = 30.0

_UNREACHABLE = "unreachable"
_REJECTED = "rejected"
_OTHER = "other"


class RunPendingError(HpoError, LookupError):
    """A placeholder id whose MLflow run or experiment does not exist yet (still queued)."""


class RunDroppedError(HpoError, LookupError):
    """A placeholder id whose creation the server rejected: it will never exist."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the working directory."""
    uri = uri or os.environ.get(TRACKING_ENV)
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_TRACKING_FILE}"


def with_credentials(uri: str) -> str:
    """``uri`` with the password of ``$MLFLOW_TRACKING_URI`` when that names the same server.

    Studies store their tracking URI without a password (see :func:`hpo.storage.strip_password`):
    a worker gets it from its own environment, as ``$MLFLOW_TRACKING_URI`` with the password
    (or, for an HTTP server, ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, which
    MLflow reads itself; for a database, ``PGPASSWORD`` or ``~/.pgpass``).
    """
    if has_password(uri):
        return uri
    env = os.environ.get(TRACKING_ENV, "")
    if has_password(env) and normalize_uri(env) == normalize_uri(uri):
        return env
    return uri


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
    return _CLIENT_CLASS(uri, root)


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class SyncResult:
    """What one replay of an outbox did and what is left."""

    uri: str
    outbox: str
    replayed: Counter[str] = field(default_factory=Counter)
    mapped: dict[str, str] = field(default_factory=dict)
    dropped: list[dict[str, str]] = field(default_factory=list)
    pending: int = 0
    pending_runs: int = 0
    error: str | None = None
    busy: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "tracking_uri": mask_url(self.uri),
            "outbox": self.outbox,
            "replayed": sum(self.replayed.values()),
            "replayed_by_kind": dict(self.replayed),
            "mapped": self.mapped,
            "dropped": self.dropped,
            "pending": self.pending,
            "pending_runs": self.pending_runs,
            "error": self.error,
            "busy": self.busy,
        }


if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Metric, Param, Run, RunTag
    from mlflow.entities.file_info import FileInfo
    from mlflow.store.entities.paged_list import PagedList
    from mlflow.utils.async_logging.run_operations import RunOperations

    _ClientBase = MlflowClient
else:
    # The real base, MlflowClient, is added by client() when MLflow is first needed:
    # importing this module must not import MLflow (``import hpo.cli`` stays light).
    _ClientBase = object


class TrackingClient(_ClientBase):
    """An :class:`mlflow.MlflowClient` whose run writes survive an unreachable server.

    Run writes (``log_batch``, ``log_metric``, ``log_param``, ``set_tag``, ``set_terminated``,
    ``log_artifact``, ``log_artifacts`` and the ``log_text``/``log_dict``/... built on it, plus
    :meth:`start_run`, :meth:`ensure_experiment`, :meth:`write_batch`) are sent at once when the
    server answers and nothing they depend on is still queued; otherwise they go to the outbox
    (see the module docstring). Reads of a run or experiment (``get_run``, ``list_artifacts``,
    ``download_artifacts``, ``get_metric_history``, ``search_runs``, ...) map placeholder ids;
    ``get_run`` of a run still queued returns what the outbox knows of it. Other MlflowClient
    methods (``create_run``, ``create_experiment``, the Model Registry) talk to the server
    directly, as before: callers check :meth:`answers` first and fail clearly (see
    :func:`hpo.ensemble.build_ensemble`).

    Get one with :func:`client`, never by calling the class.
    """

    def __init__(self, uri: str, root: Path | None = None) -> None:
        self._connect_uri = with_credentials(uri)
        super().__init__(tracking_uri=self._connect_uri, registry_uri=self._connect_uri)
        self.uri = strip_password(uri)  # what it shows and stores
        self.outbox = Outbox(self.uri, root)
        self._plain: MlflowClient | None = None
        self._lock = threading.RLock()
        self._delay = 0.0  # > 0 while the server is believed down
        self._answering = False  # the server answered since the last failure
        self._retry_at = 0.0  # monotonic time before which nothing is sent live
        self._next_replay = 0.0
        self._looked_up: dict[str, float] = {}  # foreign placeholders: next remote lookup

    @property
    def raw(self) -> MlflowClient:
        """A plain MlflowClient for the same URI, without the outbox: what replays use."""
        if self._plain is None:
            from mlflow import MlflowClient

            self._plain = MlflowClient(
                tracking_uri=self._connect_uri, registry_uri=self._connect_uri
            )
        return self._plain

    # --- hpo's writes --------------------------------------------------------------------

    def ensure_experiment(self, name: str, tags: Mapping[str, str] | None = None) -> str:
        """The id of experiment ``name`` (created, or restored if deleted), or a placeholder."""
        placeholder = new_placeholder("experiment")
        args = {"name": name, "tags": dict(tags or {}), "key": placeholder_key(placeholder)}
        return self._submit("experiment", args, {placeholder}, creates=placeholder) or placeholder

    def start_run(
        self,
        experiment_id: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        start_time: int | None = None,
    ) -> str:
        """Create a run; returns its id, or a placeholder id if the server cannot be reached.

        Unlike :meth:`mlflow.MlflowClient.create_run` this returns the id, not a ``Run``.
        """
        placeholder = new_placeholder("run")
        args = {
            "experiment_id": experiment_id,
            "run_name": run_name,
            "tags": dict(tags or {}),
            "start_time": start_time if start_time is not None else _now_ms(),
            "key": placeholder_key(placeholder),
        }
        return self._submit("run", args, {placeholder}, creates=placeholder) or placeholder

    def write_batch(
        self,
        run_id: str,
        *,
        metrics: Iterable[tuple[str, float, int, int]] = (),
        params: Iterable[tuple[str, str]] = (),
        tags: Iterable[tuple[str, str]] = (),
    ) -> None:
        """One ``log_batch``: metrics ``(key, value, timestamp_ms, step)``, params, tags."""
        args: dict[str, Any] = {"run_id": run_id}
        for name, items in (("metrics", metrics), ("params", params), ("tags", tags)):
            values = [list(item) for item in items]
            if values:
                args[name] = values
        if len(args) > 1:
            self._submit("batch", args, {run_id})

    def log_artifact_content(
        self,
        run_id: str,
        name: str,
        content: Path | bytes,
        artifact_path: str | None = None,
    ) -> None:
        """Log ``content`` (a file or bytes) as the artifact file ``name``."""
        args = {"run_id": run_id, "name": name, "artifact_path": artifact_path}
        self._submit("artifact", args, {run_id}, blob=(name, content))

    # --- MlflowClient's run writes, through the outbox -----------------------------------

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
        synchronous: bool | None = None,
    ) -> RunOperations | None:
        self.write_batch(
            run_id,
            metrics=[(m.key, float(m.value), int(m.timestamp), int(m.step)) for m in metrics],
            params=[(p.key, str(p.value)) for p in params],
            tags=[(t.key, str(t.value)) for t in tags],
        )
        return None

    def log_metric(
        self,
        run_id: str,
        key: str,
        value: float,
        timestamp: int | None = None,
        step: int | None = None,
        synchronous: bool | None = None,
        dataset_name: str | None = None,
        dataset_digest: str | None = None,
        model_id: str | None = None,
    ) -> RunOperations | None:
        if dataset_name or dataset_digest or model_id:
            # Links to datasets and logged models are not kept in the outbox.
            return super().log_metric(
                self.resolve(run_id),
                key,
                value,
                timestamp,
                step,
                synchronous,
                dataset_name,
                dataset_digest,
                model_id,
            )
        ts = timestamp if timestamp is not None else _now_ms()
        self.write_batch(run_id, metrics=[(key, float(value), ts, int(step or 0))])
        return None

    def log_param(self, run_id: str, key: str, value: Any, synchronous: bool | None = None) -> Any:
        self.write_batch(run_id, params=[(key, str(value))])
        return value

    def set_tag(
        self, run_id: str, key: str, value: Any, synchronous: bool | None = None
    ) -> RunOperations | None:
        self.write_batch(run_id, tags=[(key, str(value))])
        return None

    def set_terminated(
        self, run_id: str, status: str | None = None, end_time: int | None = None
    ) -> None:
        args = {
            "run_id": run_id,
            "status": status or "FINISHED",
            "end_time": end_time if end_time is not None else _now_ms(),
        }
        self._submit("terminate", args, {run_id})

    def log_artifact(
        self, run_id: str, local_path: str | Path, artifact_path: str | None = None
    ) -> None:
        """Log a file (or a folder); while the server is unreachable a copy is kept."""
        path = Path(local_path)
        if path.is_dir():
            self.log_artifacts(
                run_id, str(path), "/".join(filter(None, [artifact_path, path.name]))
            )
            return
        self.log_artifact_content(run_id, path.name, path, artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        """Log every file under ``local_dir``, one outbox operation per file."""
        root = Path(local_dir)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            sub = path.parent.relative_to(root).as_posix()
            where = "/".join(x for x in (artifact_path, sub) if x and x != ".")
            self.log_artifact_content(run_id, path.name, path, where or None)

    # --- MlflowClient's reads, with placeholder ids mapped -------------------------------

    def get_run(self, run_id: str) -> Run:
        """The run; for a run still queued in the outbox, what the outbox knows of it."""
        if is_placeholder(run_id):
            with self._lock:
                self.outbox.refresh()
                if self.outbox.creator(run_id) is not None and not self._replayed(run_id):
                    return self._queued_run(run_id)
        return super().get_run(self.resolve(run_id))

    def get_parent_run(self, run_id: str) -> Run | None:
        return super().get_parent_run(self.resolve(run_id))

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        return super().get_metric_history(self.resolve(run_id), key)

    def list_artifacts(self, run_id: str, path: Any = None) -> list[FileInfo]:
        return super().list_artifacts(self.resolve(run_id), path)

    def download_artifacts(self, run_id: str, path: str, dst_path: str | None = None) -> str:
        return super().download_artifacts(self.resolve(run_id), path, dst_path)

    def get_experiment(self, experiment_id: str) -> Experiment:
        return super().get_experiment(self.resolve(experiment_id))

    def search_runs(
        self,
        experiment_ids: list[str],
        filter_string: str = "",
        run_view_type: int = 1,
        max_results: int = 1000,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Run]:
        ids = [self.resolve(e) for e in experiment_ids]
        return super().search_runs(
            ids, filter_string, run_view_type, max_results, order_by, page_token
        )

    def _replayed(self, placeholder: str) -> bool:
        """Try to send the queued creation of ``placeholder``; whether it exists now."""
        if not _offline():
            self._replay(wait=False, timeout=None)
        return self.outbox.lookup(placeholder)[1] is not None

    def _queued_run(self, placeholder: str) -> Run:
        """A Run built from the outbox, for a run whose creation is still queued."""
        from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

        create = self.outbox.creator(placeholder)
        assert create is not None
        args = create.args
        status, end_time = "RUNNING", None
        tags = {str(k): str(v) for k, v in args["tags"].items()}
        params: dict[str, str] = {}
        metrics: list[Metric] = []
        for op in self.outbox.pending():
            if op.args.get("run_id") != placeholder:
                continue
            if op.kind == "terminate":
                status, end_time = str(op.args["status"]), int(op.args["end_time"])
            elif op.kind == "batch":
                tags.update({str(k): str(v) for k, v in op.args.get("tags", [])})
                params.update({str(k): str(v) for k, v in op.args.get("params", [])})
                metrics += [Metric(k, v, t, s) for k, v, t, s in op.args.get("metrics", [])]
        info = RunInfo(
            run_id=placeholder,
            experiment_id=str(args["experiment_id"]),
            user_id="",
            status=status,
            start_time=int(args["start_time"]),
            end_time=end_time,
            lifecycle_stage="active",
            artifact_uri=None,
            run_name=args.get("run_name"),
        )
        data = RunData(
            metrics=metrics,
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        return Run(info, data)

    # --- hpo's run life cycle ------------------------------------------------------------

    def end_orphan_run(self, run_id: str, reason: str) -> None:
        """End run ``run_id`` FAILED with ``reason`` if it is still RUNNING (its process died)."""
        args = {"run_id": run_id, "reason": reason[:MAX_TAG_LENGTH], "end_time": _now_ms()}
        self._submit("end_orphan", args, {run_id})

    def end_dangling_runs(self, experiment_id: str, parent_run_id: str | None) -> int:
        """End every run of the experiment left RUNNING but the parent; how many (0 if queued).

        It waits behind every queued write (runs still queued close themselves when replayed).
        """
        args = {"experiment_id": experiment_id, "parent_run_id": parent_run_id}
        result = self._submit("end_dangling", args, {experiment_id}, barrier=True)
        return int(result) if result and result.isdigit() else 0

    # --- replay, ids ---------------------------------------------------------------------

    def answers(self) -> bool:
        """Whether writes can go to the server now: not offline, and it answers a probe.

        For writes that have no outbox (the Model Registry): check before doing the work.
        """
        return not _offline() and self._probe()

    def flush(self, wait: bool = False, timeout: float | None = None) -> SyncResult:
        """Replay the outbox now if the server answers (``wait``: for another replayer)."""
        with self._lock:
            return self._replay(wait=wait, timeout=timeout)

    def resolve(self, value: str) -> str:
        """The real MLflow id of ``value`` (returned as is unless it is a placeholder).

        Raises:
            RunPendingError: the run or experiment is still queued (server unreachable).
            RunDroppedError: its creation was rejected by the server; it will never exist.
        """
        if not is_placeholder(value):
            return value
        with self._lock:
            self.outbox.refresh()
            known, real = self.outbox.lookup(value)
            if not known and self.outbox.creator(value) is not None and not _offline():
                self._replay(wait=False, timeout=None)
                known, real = self.outbox.lookup(value)
            if not known:
                real = self._remote_lookup(value, force=True)
                if real:
                    return real
                raise RunPendingError(
                    f"{value} is a placeholder for an MLflow "
                    f"{'experiment' if value.startswith(EXPERIMENT_PREFIX) else 'run'} that is "
                    f"still waiting in the outbox of {mask_url(self.uri)} (the server was "
                    "unreachable); run `hpo sync` on the machine that ran it"
                )
            if real is None:
                raise RunDroppedError(
                    f"{value} never became an MLflow object: {self.outbox.why(value)}"
                )
            return real

    # --- internals -----------------------------------------------------------------------

    def _submit(
        self,
        kind: str,
        args: dict[str, Any],
        keys: set[str],
        *,
        barrier: bool = False,
        creates: str | None = None,
        blob: tuple[str, Path | bytes] | None = None,
    ) -> str | None:
        """Send one operation now, or keep it; returns its result (a created id) if sent."""
        with self._lock:
            self._check()
            refs = _refs(args)
            dead = next((r for r in refs if self._is_dead(r)), None)
            if dead is not None:
                error = f"{dead} was never created ({self.outbox.why(dead)})"
                self._reject(Op("-", kind, args, frozenset(keys), creates=creates), error)
                return creates
            if self._ready(refs, keys, barrier):
                try:
                    with _artifact_file(blob) as path:
                        return self._execute(kind, args, path, replaying=False)
                except Exception as exc:
                    verdict = _classify(exc)
                    if verdict == _REJECTED:
                        op = Op("-", kind, args, frozenset(keys), creates=creates)
                        self._reject(op, _error_text(exc))
                        return creates
                    if verdict == _UNREACHABLE:
                        self._went_down(exc)
                    else:
                        log.warning(
                            "MLflow: %s failed (%s); kept in the outbox %s to try again",
                            describe(kind, args),
                            _error_text(exc),
                            self.outbox.dir,
                        )
                        self._next_replay = time.monotonic() + RETRY_MIN_S
            try:
                self.outbox.add(kind, args, keys, barrier=barrier, creates=creates, blob=blob)
            except OSError as exc:
                # Losing a log line must not stop a training run: say loudly what is lost.
                log.error(
                    "MLflow: cannot keep %s in the outbox %s (%s): this write is LOST",
                    describe(kind, args),
                    self.outbox.dir,
                    exc,
                )
            return creates

    def _check(self) -> None:
        """The cheap check before every call: replay if writes wait and the server may answer."""
        self.outbox.refresh()
        if not self.outbox.has_pending() or _offline():
            return
        if time.monotonic() < max(self._next_replay, self._retry_at):
            return
        self._replay(wait=False, timeout=None)

    def _ready(self, refs: list[str], keys: set[str], barrier: bool) -> bool:
        """Whether an operation can be sent now rather than queued behind others."""
        if _offline() or time.monotonic() < self._retry_at:
            return False
        if not self._answering and not self._probe():
            # A quick probe first: a hung server would hold the call for MLflow's timeout.
            self._went_down(ConnectionError(f"no answer from {mask_url(self.uri)}"))
            return False
        self._answering = True
        if barrier and self.outbox.has_pending():
            return False
        if keys & self.outbox.pending_keys():
            return False
        return all(self._lookup(r) is not None for r in refs)

    def _is_dead(self, placeholder: str) -> bool:
        known, real = self.outbox.lookup(placeholder)
        return known and real is None

    def _lookup(self, placeholder: str) -> str | None:
        """The real id of ``placeholder``, or None while it does not exist yet."""
        known, real = self.outbox.lookup(placeholder)
        if known:
            return real
        if self.outbox.creator(placeholder) is not None:
            return None
        # Not created from this machine's outbox: another machine queued it, so ask the server.
        return self._remote_lookup(placeholder)

    def _remote_lookup(self, placeholder: str, force: bool = False) -> str | None:
        now = time.monotonic()
        if not force and (now < self._looked_up.get(placeholder, 0.0) or now < self._retry_at):
            return None
        self._looked_up[placeholder] = now + _REMOTE_LOOKUP_EVERY_S
        try:
            if placeholder.startswith(EXPERIMENT_PREFIX):
                real = self._find_experiment(placeholder_key(placeholder))
            else:
                real = self._find_run(None, placeholder_key(placeholder))
        except Exception as exc:
            if _classify(exc) == _UNREACHABLE:
                self._went_down(exc)
            return None
        if real:
            self.outbox.record_id(placeholder, real)
        return real

    def _find_experiment(self, key: str) -> str | None:
        from mlflow.entities import ViewType

        found = self.raw.search_experiments(
            view_type=ViewType.ALL, filter_string=f"tags.`{CLIENT_ID_TAG}.{key}` != ''"
        )
        return str(found[0].experiment_id) if found else None

    def _find_run(self, experiment_id: str | None, key: str) -> str | None:
        from mlflow.entities import ViewType

        if experiment_id is not None:
            experiment_ids = [experiment_id]
        else:
            experiment_ids = [
                e.experiment_id for e in self.raw.search_experiments(view_type=ViewType.ALL)
            ]
        for i in range(0, len(experiment_ids), 100):
            runs = self.raw.search_runs(
                experiment_ids[i : i + 100],
                filter_string=f"tags.`{CLIENT_ID_TAG}` = '{key}'",
                run_view_type=ViewType.ALL,
                max_results=1,
            )
            if runs:
                return str(runs[0].info.run_id)
        return None

    def _real(self, value: str | None) -> str | None:
        if value is None or not is_placeholder(value):
            return value
        real = self._lookup(value)
        if real is None:
            raise RunPendingError(f"{value} does not exist in MLflow yet")
        return real

    def _tag_value(self, value: str) -> str:
        # Tags may name other runs (mlflow.parentRunId, hpo.best_run_id) by placeholder.
        if not is_placeholder(value):
            return value
        return self._real(value) or value

    def _execute(
        self, kind: str, args: Mapping[str, Any], path: Path | None, replaying: bool
    ) -> str | None:
        """Perform one operation against the server; returns a created id or a count."""
        raw = self.raw
        if kind == "experiment":
            return self._do_experiment(args, replaying)
        if kind == "run":
            experiment_id = self._real(args["experiment_id"])
            assert experiment_id is not None
            if replaying:
                # A replay cut short may already have created it: never create a run twice.
                found = self._find_run(experiment_id, args["key"])
                if found:
                    return found
            tags = {k: self._tag_value(str(v)) for k, v in args["tags"].items()}
            tags[CLIENT_ID_TAG] = args["key"]
            run = raw.create_run(
                experiment_id,
                start_time=args.get("start_time"),
                tags=tags,
                run_name=args.get("run_name"),
            )
            return str(run.info.run_id)
        if kind == "end_dangling":
            return self._do_end_dangling(args)
        run_id = self._real(args["run_id"])
        assert run_id is not None
        if kind == "batch":
            from mlflow.entities import Metric, Param, RunTag

            raw.log_batch(
                run_id,
                metrics=[
                    Metric(k, float(v), int(t), int(s)) for k, v, t, s in args.get("metrics", [])
                ],
                params=[Param(k, str(v)) for k, v in args.get("params", [])],
                tags=[RunTag(k, self._tag_value(str(v))) for k, v in args.get("tags", [])],
            )
        elif kind == "terminate":
            raw.set_terminated(run_id, args["status"], end_time=args["end_time"])
        elif kind == "artifact":
            if path is None or not path.exists():
                raise FileNotFoundError(f"the copy of artifact {args['name']} is missing")
            raw.log_artifact(run_id, str(path), args.get("artifact_path"))
        elif kind == "end_orphan":
            return str(self._end_if_running(run_id, args["reason"], args["end_time"]))
        else:
            raise ValueError(f"unknown outbox operation {kind!r}")
        return None

    def _do_experiment(self, args: Mapping[str, Any], replaying: bool) -> str:
        from mlflow.exceptions import MlflowException

        raw = self.raw
        name = args["name"]
        experiment = raw.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = str(raw.create_experiment(name, tags=dict(args["tags"])))
            except MlflowException:
                experiment = raw.get_experiment_by_name(name)  # created meanwhile elsewhere
                if experiment is None:
                    raise
                experiment_id = str(experiment.experiment_id)
        else:
            experiment_id = str(experiment.experiment_id)
            if experiment.lifecycle_stage == "deleted":
                raw.restore_experiment(experiment_id)
            # An experiment made before hpo tagged experiments (or by hand) gets the tags it
            # lacks; a tag already set (a kind chosen in the UI) is left as it is.
            for key, value in dict(args["tags"]).items():
                if key not in experiment.tags:
                    raw.set_experiment_tag(experiment_id, key, value)
        if replaying:
            # Lets any machine map the placeholder it holds (in a study's config) to this id.
            raw.set_experiment_tag(experiment_id, f"{CLIENT_ID_TAG}.{args['key']}", name)
        return experiment_id

    def _end_if_running(self, run_id: str, reason: str, end_time: int | None) -> int:
        from mlflow.entities import RunTag

        if self.raw.get_run(run_id).info.status != "RUNNING":
            return 0
        self.raw.log_batch(
            run_id, tags=[RunTag("hpo.state", "FAIL"), RunTag("hpo.fail_reason", reason)]
        )
        self.raw.set_terminated(run_id, "FAILED", end_time=end_time)
        return 1

    def _do_end_dangling(self, args: Mapping[str, Any]) -> str:
        experiment_id = self._real(args["experiment_id"])
        assert experiment_id is not None
        parent = self._real(args.get("parent_run_id"))
        # Runs with writes still queued are closed by their own queued writes.
        queued = set()
        for op in self.outbox.pending():
            for key in op.keys:
                queued.add(self._lookup_local(key) or key)
        runs = self.raw.search_runs(
            [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000
        )
        reason = "the trial's process ended without closing its run"
        n = 0
        for run in runs:
            run_id = run.info.run_id
            if run_id == parent or run_id in queued:
                continue
            n += self._end_if_running(run_id, reason, None)
        return str(n)

    def _lookup_local(self, value: str) -> str | None:
        return self.outbox.lookup(value)[1] if is_placeholder(value) else value

    def _probe(self) -> bool:
        """Whether the server answers at all: one quick request, no retries."""
        if not self.uri.startswith(("http://", "https://")):
            return True
        import requests

        try:
            response = requests.get(normalize_uri(self.uri) + "/health", timeout=PROBE_TIMEOUT_S)
        except requests.exceptions.SSLError:
            return True  # it answers; TLS settings are the MLflow client's business
        except requests.RequestException:
            return False
        return response.status_code < 500

    def _went_down(self, exc: BaseException) -> None:
        self._answering = False
        first = self._delay == 0
        self._delay = RETRY_MIN_S if first else min(self._delay * 2, RETRY_MAX_S)
        self._retry_at = time.monotonic() + self._delay
        self._next_replay = self._retry_at
        if first:
            log.warning(
                "MLflow at %s is unreachable (%s): training goes on; writes are kept in %s "
                "and sent when the server answers again (or run `hpo sync`)",
                mask_url(self.uri),
                _error_text(exc),
                self.outbox.dir,
            )

    def _came_up(self) -> None:
        self._answering = True
        if self._delay:
            log.warning("MLflow at %s answers again", mask_url(self.uri))
        self._delay = 0.0
        self._retry_at = 0.0

    def _reject(self, op: Op, error: str, result: SyncResult | None = None) -> None:
        """The server refused ``op`` (or it can never succeed): drop it, loudly, for good."""
        what = describe(op.kind, op.args)
        self.outbox.dropped(op, error, in_journal=op.id != "-")
        log.warning(
            "MLflow rejected %s: %s; dropped (not retried; recorded in %s)",
            what,
            error,
            self.outbox.dropped_file,
        )
        if result is not None:
            result.dropped.append({"operation": what, "error": error})

    def _replay(self, wait: bool, timeout: float | None) -> SyncResult:
        result = SyncResult(uri=self.uri, outbox=str(self.outbox.dir))
        self.outbox.refresh()
        if self.outbox.has_pending():
            if not self._probe():
                error = ConnectionError(f"no answer from {mask_url(self.uri)}")
                self._went_down(error)
                result.error = f"the server does not answer: {error}"
            else:
                with self.outbox.replay_lock(wait, timeout) as got:
                    if not got:
                        result.busy = True
                    elif not self._replay_locked(result):
                        self.outbox.compact()
                left = self.outbox.has_pending()
                self._next_replay = time.monotonic() + (RETRY_MIN_S if left else 0.0)
        pending = self.outbox.pending()
        result.pending = len(pending)
        result.pending_runs = sum(op.kind == "run" for op in pending)
        return result

    def _replay_locked(self, result: SyncResult) -> bool:
        """Send pending operations in order; True if stopped because the server went away."""
        while True:
            self.outbox.refresh()
            progressed = False
            blocked: set[str] = set()
            waiting = False
            for op in self.outbox.pending():
                if op.keys & blocked or (op.barrier and waiting):
                    blocked |= op.keys
                    waiting = True
                    continue
                refs = _refs(op.args)
                dead = next((r for r in refs if self._is_dead(r)), None)
                if dead is not None:
                    self._reject(op, f"{dead} was never created ({self.outbox.why(dead)})", result)
                    progressed = True
                    continue
                if any(self._lookup(r) is None for r in refs):
                    blocked |= op.keys  # waits for an object queued on another machine
                    waiting = True
                    continue
                if op.creates and self.outbox.lookup(op.creates)[1]:
                    self.outbox.done(op)  # created before a crash cut the last replay short
                    result.replayed[op.kind] += 1
                    progressed = True
                    continue
                try:
                    real = self._execute(op.kind, op.args, self.outbox.blob_path(op), True)
                except Exception as exc:
                    verdict = _classify(exc)
                    text = _error_text(exc)
                    if verdict == _UNREACHABLE:
                        self._went_down(exc)
                        result.error = f"the server went away: {text}"
                        return True
                    progressed = True
                    if verdict == _REJECTED:
                        self._reject(op, text, result)
                    elif op.failures + 1 >= MAX_ATTEMPTS:
                        self._reject(op, f"failed {MAX_ATTEMPTS} times, last: {text}", result)
                    else:
                        self.outbox.failed(op, text)
                        log.warning(
                            "MLflow: %s failed (%s); will try again",
                            describe(op.kind, op.args),
                            text,
                        )
                        blocked |= op.keys
                        waiting = True
                        result.error = text
                    continue
                self._came_up()
                if op.creates and real:
                    # Recorded before the operation is marked done: a crash in between
                    # finds the id here instead of creating the object again.
                    self.outbox.record_id(op.creates, real)
                    result.mapped[op.creates] = real
                self.outbox.done(op)
                result.replayed[op.kind] += 1
                progressed = True
            if not progressed:
                return False


def _refs(args: Mapping[str, Any]) -> list[str]:
    """Placeholder ids an operation depends on (its run, experiment, parent, tag values)."""
    refs = [
        args[k] for k in ("run_id", "experiment_id", "parent_run_id") if is_placeholder(args.get(k))
    ]
    tags = args.get("tags") or ()
    values = tags.values() if isinstance(tags, Mapping) else (v for _, v in tags)
    refs.extend(v for v in values if is_placeholder(v))
    return refs


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking server could not be reached (or was overloaded),
    as opposed to a rejection of the request: the outbox keeps such writes."""
    return _classify(exc) == _UNREACHABLE


def _classify(exc: BaseException) -> str:
    """``unreachable`` (keep and retry), ``rejected`` (4xx: drop) or ``other``."""
    import requests
    import urllib3

    network = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.RetryError,
        urllib3.exceptions.HTTPError,
        ConnectionError,
        TimeoutError,
    )
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, network) and not isinstance(cause, requests.exceptions.HTTPError):
            return _UNREACHABLE
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    status: int | None = None
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        status = exc.response.status_code
    else:
        from mlflow.exceptions import MlflowException

        if isinstance(exc, MlflowException):
            status = exc.get_http_status_code()
    if status is None:
        return _OTHER
    if status in (408, 429, 502, 503, 504):
        return _UNREACHABLE
    if 400 <= status < 500:
        return _REJECTED
    return _OTHER


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return mask_url(f"{type(exc).__name__}: {first}"[:500])


@contextlib.contextmanager
def _artifact_file(blob: tuple[str, Path | bytes] | None) -> Iterator[Path | None]:
    """A file named as the artifact should be, for sending ``blob`` now."""
    if blob is None:
        yield None
        return
    name, content = blob
    if isinstance(content, Path) and content.name == name:
        yield content
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            shutil.copyfile(content, path)
        yield path


def describe(kind: str, args: Mapping[str, Any]) -> str:
    """A short human description of an outbox operation."""
    run = args.get("run_id")
    if kind == "experiment":
        return f"creating experiment {args['name']!r}"
    if kind == "run":
        return f"creating run {args.get('run_name')!r} in experiment {args['experiment_id']}"
    if kind == "batch":
        parts = []
        if args.get("metrics"):
            steps = sorted({int(m[3]) for m in args["metrics"]})
            keys = ", ".join(sorted({str(m[0]) for m in args["metrics"]}))
            parts.append(f"metrics {keys} at step {', '.join(map(str, steps))}")
        if args.get("params"):
            parts.append("params " + ", ".join(f"{k}={v!r}" for k, v in args["params"]))
        if args.get("tags"):
            parts.append("tags " + ", ".join(str(k) for k, _ in args["tags"]))
        return f"{'; '.join(parts)} of run {run}"
    if kind == "terminate":
        return f"ending run {run} as {args['status']}"
    if kind == "artifact":
        return f"artifact {args['name']} of run {run}"
    if kind == "end_orphan":
        return f"closing the orphan run {run}"
    if kind == "end_dangling":
        return f"closing the runs left RUNNING in experiment {args['experiment_id']}"
    return f"{kind} {json.dumps(args, default=str)[:200]}"


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
) -> None:
    """End a trial's run with the status matching its Optuna ``state`` (and ``note`` as its
    description, in the same write); then replay the outbox.

    The end of a trial is a natural point to send what an outage left queued.
    """
    tags = [("hpo.state", state)]
    if reason:
        tags.append(("hpo.fail_reason", reason[:MAX_TAG_LENGTH]))
    if note:
        tags.append((NOTE_TAG, note))
    c.write_batch(run_id, tags=tags)
    c.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))
    if not _offline():
        c.flush()


def log_artifact_files(c: TrackingClient, run_id: str, files: Mapping[str, Path | bytes]) -> None:
    """Log files (paths or bytes) under the names given, flat in the run's artifact root."""
    for name, content in files.items():
        c.log_artifact_content(
            run_id, Path(name).name, content if isinstance(content, bytes) else Path(content)
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
