"""A durable local outbox of MLflow writes that could not be delivered yet.

When the tracking server cannot be reached, :mod:`hpo.tracking` appends the write here and
training goes on; the outbox is replayed, in order, once the server answers again. This module
knows nothing about MLflow (it never imports it): it stores operations and their state.

Layout of one outbox (one per tracking URI, under ``$HPO_OUTBOX_DIR`` or
``~/.cache/hpo/outbox``, in a folder named after a hash of the URI)::

    uri             the tracking URI, written once (``hpo sync`` lists outboxes by it)
    journal.jsonl   append-only: a header line, then operation records and their outcomes
    ids.jsonl       append-only: placeholder id -> real MLflow id (or why it never got one)
    dropped.jsonl   append-only: every operation given up on, with the error (never silent)
    blobs/<op>/     artifact files copied at the time of the call
    append.lock, replay.lock

Every record is one JSON line written with a single ``write`` on an ``O_APPEND`` descriptor
under ``append.lock`` and fsynced before the call returns, so a crash loses at most the write in
progress, never an acknowledged one. No state file is ever rewritten in place: an operation is
settled by appending a ``done`` (or ``dropped``) record that names it. Once nothing is pending,
the replayer deletes the journal (under both locks); the next write starts a new one with a new
generation in its header, which is how other processes notice that their read offset is stale.
``ids.jsonl`` is never deleted: trial attributes keep placeholder ids for good.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("hpo.tracking")

OUTBOX_ENV = "HPO_OUTBOX_DIR"
RUN_PREFIX = "pending-run-"
EXPERIMENT_PREFIX = "pending-exp-"
_PLACEHOLDER = re.compile(r"^pending-(run|exp)-[0-9a-f]{32}$")
_FORMAT = 1


def is_placeholder(value: object) -> bool:
    """Whether ``value`` is a local placeholder id (a run or experiment not created yet)."""
    return isinstance(value, str) and _PLACEHOLDER.match(value) is not None


def new_placeholder(kind: str) -> str:
    """A fresh placeholder id for a ``"run"`` or an ``"experiment"``."""
    return (RUN_PREFIX if kind == "run" else EXPERIMENT_PREFIX) + uuid.uuid4().hex


def placeholder_key(placeholder: str) -> str:
    """The hex part of a placeholder: the client id tagged on the MLflow object it becomes."""
    return placeholder.rsplit("-", 1)[-1]


def outbox_root() -> Path:
    """``$HPO_OUTBOX_DIR``, else ``$XDG_CACHE_HOME/hpo/outbox``, else ``~/.cache/hpo/outbox``."""
    env = os.environ.get(OUTBOX_ENV)
    if env:
        return Path(env).expanduser()
    from hpo.cache import user_cache_dir  # not $HPO_CACHE_DIR: queued writes stay where they were

    return user_cache_dir() / "outbox"


def normalize_uri(uri: str) -> str:
    """``uri`` as outboxes and clients are keyed and stored: without a password."""
    from hpo.storage import strip_password

    return strip_password(uri).rstrip("/")


def outbox_dir(uri: str, root: Path | None = None) -> Path:
    """The outbox folder of tracking URI ``uri``."""
    digest = hashlib.sha256(normalize_uri(uri).encode()).hexdigest()[:16]
    return (root or outbox_root()) / digest


@dataclass
class Op:
    """One MLflow write kept for later.

    ``keys`` name what the operation must stay ordered with (its run, its experiment): an
    operation is never sent while an earlier one with a common key is pending. A ``barrier``
    operation waits for every earlier operation. ``creates`` is the placeholder the operation
    turns into a real id when it succeeds.
    """

    id: str
    kind: str
    args: dict[str, Any]
    keys: frozenset[str]
    barrier: bool = False
    creates: str | None = None
    blob: str | None = None
    at: float = 0.0
    failures: int = 0
    last_error: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "t": "op",
            "id": self.id,
            "kind": self.kind,
            "args": self.args,
            "keys": sorted(self.keys),
            "barrier": self.barrier,
            "creates": self.creates,
            "blob": self.blob,
            "at": self.at,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Op:
        return cls(
            id=str(rec["id"]),
            kind=str(rec["kind"]),
            args=dict(rec["args"]),
            keys=frozenset(rec.get("keys") or ()),
            barrier=bool(rec.get("barrier")),
            creates=rec.get("creates"),
            blob=rec.get("blob"),
            at=float(rec.get("at") or 0.0),
        )


@dataclass
class _JournalState:
    gen: str | None = None
    ident: tuple[int, int] | None = None
    offset: int = 0
    ops: dict[str, Op] = field(default_factory=dict)  # pending ones, in journal order


class Outbox:
    """The outbox of one tracking URI (see the module docstring).

    Reading is incremental: :meth:`refresh` reads only what other processes appended since the
    last call, so checking the outbox before every MLflow call costs one ``stat``.
    """

    def __init__(self, uri: str, root: Path | None = None) -> None:
        self.uri = normalize_uri(uri)
        self.dir = outbox_dir(uri, root)
        self.journal = self.dir / "journal.jsonl"
        self.ids_file = self.dir / "ids.jsonl"
        self.dropped_file = self.dir / "dropped.jsonl"
        self.blobs = self.dir / "blobs"
        self._state = _JournalState()
        self._ids: dict[str, str | None] = {}
        self._id_errors: dict[str, str] = {}
        self._ids_offset = 0
        self._bad_lines = 0

    # --- reading -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Catch up with records appended (by any process) since the last call."""
        self._refresh_ids()
        try:
            st = os.stat(self.journal)
        except FileNotFoundError:
            self._state = _JournalState()
            return
        ident = (st.st_dev, st.st_ino)
        s = self._state
        if ident == s.ident and st.st_size == s.offset:
            return
        with open(self.journal, "rb") as f:
            header = f.readline()
            if not header.endswith(b"\n"):
                return  # being created right now
            gen = self._header_gen(header)
            if gen != s.gen or st.st_size < s.offset:
                # A new journal (the old one was emptied and deleted): start over.
                s = self._state = _JournalState(gen=gen, offset=len(header))
            s.ident = ident
            f.seek(s.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a last line without newline is still being written
        s.offset += end
        for line in data[:end].splitlines():
            rec = self._parse(line)
            if rec is not None:
                self._apply(rec)

    def _header_gen(self, line: bytes) -> str | None:
        rec = self._parse(line)
        return str(rec.get("gen")) if rec and rec.get("t") == "header" else None

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        if not line.strip():
            return None
        try:
            rec = json.loads(line)
        except ValueError:
            # A line torn by a crash in the middle of a write: that write was never
            # acknowledged to its caller, so nothing that was promised is lost.
            self._bad_lines += 1
            if self._bad_lines == 1:
                log.warning("outbox %s: skipping a torn journal line", self.dir)
            return None
        return rec if isinstance(rec, dict) else None

    def _apply(self, rec: dict[str, Any]) -> None:
        kind = rec.get("t")
        ops = self._state.ops
        if kind == "op":
            op = Op.from_record(rec)
            ops[op.id] = op
        elif kind in ("done", "dropped"):
            ops.pop(str(rec.get("id")), None)
        elif kind == "failed":
            op_failed = ops.get(str(rec.get("id")))
            if op_failed is not None:
                op_failed.failures += 1
                op_failed.last_error = str(rec.get("error"))

    def _refresh_ids(self) -> None:
        try:
            size = os.path.getsize(self.ids_file)
        except FileNotFoundError:
            return
        if size <= self._ids_offset:
            return
        with open(self.ids_file, "rb") as f:
            f.seek(self._ids_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._ids_offset += end
        for line in data[:end].splitlines():
            rec = self._parse(line)
            if rec and "placeholder" in rec:
                real = rec.get("id")
                self._ids[str(rec["placeholder"])] = str(real) if real else None
                if not real:
                    self._id_errors[str(rec["placeholder"])] = str(rec.get("error"))

    def pending(self) -> list[Op]:
        """Pending operations in the order they were written."""
        return list(self._state.ops.values())

    def has_pending(self) -> bool:
        return bool(self._state.ops)

    def pending_keys(self) -> set[str]:
        keys: set[str] = set()
        for op in self._state.ops.values():
            keys |= op.keys
        return keys

    def creator(self, placeholder: str) -> Op | None:
        """The pending operation that will create ``placeholder``, if any."""
        for op in self._state.ops.values():
            if op.creates == placeholder:
                return op
        return None

    def lookup(self, placeholder: str) -> tuple[bool, str | None]:
        """``(known, real_id)``: ``(True, None)`` means it will never exist (see :meth:`why`)."""
        if placeholder in self._ids:
            return True, self._ids[placeholder]
        return False, None

    def why(self, placeholder: str) -> str | None:
        """Why ``placeholder`` never became a real id (its creation was rejected)."""
        return self._id_errors.get(placeholder)

    def blob_path(self, op: Op) -> Path | None:
        return self.blobs / op.id / op.blob if op.blob else None

    # --- writing -------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        if self.dir.is_dir():
            return
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        uri_file = self.dir / "uri"
        if not uri_file.exists():
            tmp = self.dir / f".uri.{os.getpid()}.tmp"
            _write_synced(tmp, self.uri.encode())
            os.replace(tmp, uri_file)
        _fsync_dir(self.dir)
        _fsync_dir(self.dir.parent)

    @contextlib.contextmanager
    def _lock(self, name: str, wait: bool = True, timeout: float | None = None) -> Iterator[bool]:
        self._ensure_dir()
        fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    got = True
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                    if not wait or (deadline is not None and time.monotonic() > deadline):
                        got = False
                        break
                    time.sleep(0.1)
            yield got
        finally:
            os.close(fd)  # releases the lock

    def replay_lock(self, wait: bool, timeout: float | None = None) -> Any:
        """Held by the one process replaying this outbox (never by an appender)."""
        return self._lock("replay.lock", wait=wait, timeout=timeout)

    def _append(self, path: Path, records: list[dict[str, Any]], header: bool) -> None:
        data = b"".join(
            json.dumps(r, separators=(",", ":"), default=str).encode() + b"\n" for r in records
        )
        with self._lock("append.lock"):
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size == 0 and header:
                    head = {"t": "header", "gen": uuid.uuid4().hex, "format": _FORMAT}
                    data = json.dumps(head).encode() + b"\n" + data
                elif size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # end a line torn by a crash before adding ours
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if size == 0:
                _fsync_dir(self.dir)

    def add(
        self,
        kind: str,
        args: dict[str, Any],
        keys: set[str],
        *,
        barrier: bool = False,
        creates: str | None = None,
        blob: tuple[str, Path | bytes] | None = None,
    ) -> Op:
        """Keep an operation (and a copy of its artifact file) durably; returns it."""
        self._ensure_dir()
        op = Op(
            id=uuid.uuid4().hex,
            kind=kind,
            args=args,
            keys=frozenset(keys),
            barrier=barrier,
            creates=creates,
            at=time.time(),
        )
        if blob is not None:
            name, content = blob
            folder = self.blobs / op.id
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / name
            if isinstance(content, bytes):
                _write_synced(target, content)
            else:
                shutil.copyfile(content, target)
                _fsync_file(target)
            _fsync_dir(folder)
            op.blob = name
        self._append(self.journal, [op.record()], header=True)
        return op

    def done(self, op: Op) -> None:
        self._append(self.journal, [{"t": "done", "id": op.id}], header=True)
        self._remove_blob(op)

    def failed(self, op: Op, error: str) -> None:
        """An attempt failed with an error that is neither "unreachable" nor a rejection."""
        self._append(self.journal, [{"t": "failed", "id": op.id, "error": error}], header=True)

    def dropped(self, op: Op, error: str, in_journal: bool = True) -> None:
        """Give up on ``op`` for good; it is recorded in ``dropped.jsonl`` with ``error``.

        ``in_journal=False`` for an operation refused when first sent (never kept here).
        """
        rec = {**op.record(), "t": "dropped-op", "error": error, "dropped_at": time.time()}
        self._append(self.dropped_file, [rec], header=False)
        if op.creates:
            self.record_id(op.creates, None, error)
        if in_journal:
            self._append(self.journal, [{"t": "dropped", "id": op.id, "error": error}], True)
            self._remove_blob(op)

    def record_id(self, placeholder: str, real: str | None, error: str | None = None) -> None:
        """Remember what ``placeholder`` became (``None``: it never will, because ``error``)."""
        rec: dict[str, Any] = {"placeholder": placeholder, "id": real, "at": time.time()}
        if error:
            rec["error"] = error
        self._append(self.ids_file, [rec], header=False)
        self._ids[placeholder] = real
        if error:
            self._id_errors[placeholder] = error

    def _remove_blob(self, op: Op) -> None:
        if op.blob:
            shutil.rmtree(self.blobs / op.id, ignore_errors=True)

    def compact(self) -> bool:
        """Delete the journal when nothing in it is pending; call with the replay lock held."""
        with self._lock("append.lock"):
            self.refresh()
            if self.has_pending() or not self.journal.exists():
                return False
            self.journal.unlink()
            shutil.rmtree(self.blobs, ignore_errors=True)
            self._state = _JournalState()
            return True


def list_outboxes(root: Path | None = None) -> list[Outbox]:
    """Every outbox under ``root`` (default: :func:`outbox_root`), by the URI it belongs to."""
    base = root or outbox_root()
    found = []
    if base.is_dir():
        for folder in sorted(base.iterdir()):
            uri_file = folder / "uri"
            if uri_file.is_file():
                found.append(Outbox(uri_file.read_text(), base))
    return found


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync_file(path)
