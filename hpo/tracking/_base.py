"""The parts of MLflow tracking that every other part uses: environment variables, tags,
errors, the URI, what a replay did, and how a failed call is classified."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.errors import HpoError
from hpo.storage import has_password, mask_url
from hpo.tracking._outbox import (
    is_placeholder,
    normalize_uri,
)

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
# switch instead, which hpo's links set (hpo/tracking/mlflow_ui.py).
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

# How a failed call is classified (see _classify).
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
