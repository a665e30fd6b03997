"""The tracking client: an :class:`mlflow.MlflowClient` whose run writes survive an unreachable
server (see :mod:`hpo.tracking`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.storage import mask_url
from hpo.tracking._base import (
    MAX_TAG_LENGTH,
    RunDroppedError,
    RunPendingError,
    SyncResult,
    _now_ms,
    _offline,
)
from hpo.tracking._outbox import (
    EXPERIMENT_PREFIX,
    is_placeholder,
    new_placeholder,
    placeholder_key,
)
from hpo.tracking._replay import (
    OutboxClient,
)

log = logging.getLogger("hpo.tracking")

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


class TrackingClient(OutboxClient):
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
