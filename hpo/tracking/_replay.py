"""How :class:`hpo.tracking.TrackingClient` sends a write: live while the server answers and
nothing it depends on is queued, else to the outbox (:mod:`hpo.tracking._outbox`); how it notices an
outage and the server's return, maps placeholder ids and replays the outbox in order."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.storage import mask_url, strip_password
from hpo.tracking._base import (
    _REJECTED,
    _UNREACHABLE,
    CLIENT_ID_TAG,
    RunPendingError,
    SyncResult,
    _artifact_file,
    _classify,
    _error_text,
    _offline,
    _refs,
    describe,
    with_credentials,
)
from hpo.tracking._outbox import (
    EXPERIMENT_PREFIX,
    Op,
    Outbox,
    is_placeholder,
    normalize_uri,
    placeholder_key,
)

log = logging.getLogger("hpo.tracking")

PROBE_TIMEOUT_S = 2.0
# After a failure, no call is sent live for RETRY_MIN_S, doubling up to RETRY_MAX_S; then a
# cheap probe of /health decides whether to replay and go live again.
RETRY_MIN_S = 5.0
RETRY_MAX_S = 30.0
# An operation failing with an error that is neither "unreachable" nor a rejection (a local
# file gone, an unexpected exception) is tried this many times, then dropped (and reported).
MAX_ATTEMPTS = 5
_REMOTE_LOOKUP_EVERY_S = 30.0


if TYPE_CHECKING:
    from mlflow import MlflowClient

    _ClientBase = MlflowClient
else:
    # The real base, MlflowClient, is added by client() when MLflow is first needed:
    # importing this module must not import MLflow (``import hpo.cli`` stays light).
    _ClientBase = object


class OutboxClient(_ClientBase):
    """The internals of :class:`hpo.tracking.TrackingClient`: its outage state, submission
    and replay."""

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
