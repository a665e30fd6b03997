"""Where studies live: an Optuna RDB storage (SQLite by default, any SQLAlchemy URL).

Example:
    >>> mask_url("postgresql+psycopg://hpo:s3cret@db:5432/hpo")
    'postgresql+psycopg://hpo:***@db:5432/hpo'
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

STORAGE_ENV = "HPO_STORAGE"
DEFAULT_STORAGE_FILE = "hpo.db"
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.\-]*://[^:/@\s]*:)(?P<password>[^@\s]*)@")


class StorageError(HpoError, RuntimeError):
    """The study store cannot be opened; ``exit_code`` 2 for a bad URL, 1 for a store that
    does not answer. The message names the problem in one line, passwords masked."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(mask_url(message))
        self.exit_code = exit_code


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None for another database or SQLite in memory.

    Example:
        >>> sqlite_path("sqlite:////tmp/hpo.db"), sqlite_path("sqlite://")
        (PosixPath('/tmp/hpo.db'), None)
    """
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1] if "///" in url else ""
    path = path.split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def store_exists(url: str) -> bool:
    """False only for a SQLite file that does not exist yet (read-only commands must not
    create it); a server database is assumed to exist."""
    path = sqlite_path(url)
    return path is None or path.exists()


def check_storage_url(url: str) -> None:
    """Refuse a study-store URL that is not a SQLAlchemy URL of an installed database driver.

    Raises:
        StorageError: with exit code 2, naming the problem.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "e.g. sqlite:///hpo.db or postgresql+psycopg://user@host:5432/db"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(f"invalid --storage URL {url!r}: expected {example}", 2) from None
    if parsed.drivername.startswith("sqlite") and parsed.database == "":
        raise StorageError(f"--storage {url!r}: give the SQLite file, {example}", 2)
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise StorageError(
            f"invalid --storage URL {url!r}: unknown database {parsed.drivername!r} ({example})",
            2,
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise StorageError(
            f"--storage {url!r}: the database driver {parsed.drivername!r} is not installed "
            f"({exc})",
            2,
        ) from None


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's own error
    text = str(orig if orig is not None else exc) or type(exc).__name__
    return " ".join(text.split())


def resolve_storage(url: str | None = None) -> str:
    """The storage URL: ``url``, else ``$HPO_STORAGE``, else ``hpo.db`` in the working dir."""
    url = url or os.environ.get(STORAGE_ENV)
    if url:
        return url
    return f"sqlite:///{Path.cwd() / DEFAULT_STORAGE_FILE}"


def mask_url(text: str) -> str:
    """Replace passwords in database URLs inside ``text`` with ``***``."""
    return _PASSWORD.sub(lambda m: f"{m.group('head')}***@", text)


def has_password(url: str) -> bool:
    """Whether ``url`` holds a password (``scheme://user:password@host``)."""
    return _PASSWORD.match(url) is not None


def strip_password(url: str) -> str:
    """``url`` as it may be stored or shown: without its password.

    A database URL keeps its user (``postgresql+psycopg://hpo@db/hpo``: the password then
    comes from ``PGPASSWORD`` or ``~/.pgpass``, which psycopg reads); an HTTP URL loses user
    and password (MLflow reads ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``).

    Example:
        >>> strip_password("postgresql+psycopg://hpo:s3cret@db:5432/hpo")
        'postgresql+psycopg://hpo@db:5432/hpo'
        >>> strip_password("https://admin:s3cret@mlflow:5000")
        'https://mlflow:5000'
    """
    match = _PASSWORD.match(url)
    if match is None:
        return url
    head = match.group("head")[:-1]  # scheme://user
    if head.lower().startswith(("http://", "https://")):
        head = head.split("://", 1)[0] + "://"
    else:
        head += "@"
    return head + url[match.end() :]


def _ignore_heartbeat_warnings() -> None:
    """Silence Optuna's two warnings about heartbeats, which hpo uses on purpose.

    Workers drive trials with ``ask``/``tell`` (not ``Study.optimize``) and keep them alive with
    their own heartbeat thread; Optuna warns about both in every process, on every trial.
    """
    import warnings

    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings(
        "ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning
    )
    for argument in ("heartbeat_interval", "grace_period"):
        warnings.filterwarnings(
            "ignore", message=f"Argument ``{argument}``", category=ExperimentalWarning
        )


# What opening a store imports: Optuna imports its RDB storage's modules, SQLAlchemy's ORM and
# Alembic lazily, when the first storage is opened (its models module is private: a later
# Optuna may move it, which tests/test_process_start.py notices).
STORE_MODULES = (
    "optuna.storages",
    "optuna.storages._rdb.models",
    "sqlalchemy.orm",
    "alembic.command",
    "alembic.config",
    "alembic.migration",
    "alembic.script",
)


def import_store_modules(url: str | None = None) -> None:
    """Import what :func:`open_storage` will import (about 0.5 s of CPU), and the database
    driver of ``url``, for a process that has to wait before it may open the store (a worker
    of ``hpo run`` waits for the study to be created) and would otherwise pay them after the
    wait, before its first trial. Anything that fails to import is left for the open to report.
    """
    import importlib

    for name in STORE_MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    if url:
        with contextlib.suppress(Exception):
            from sqlalchemy.engine import make_url

            make_url(url).get_dialect().import_dbapi()


def open_storage(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> RDBStorage:
    """An Optuna RDB storage with settings that survive several processes and dropped links.

    SQLite waits for locks instead of failing at once (several local workers share the file);
    server databases check each pooled connection before use, so a connection the server
    dropped is replaced instead of failing a trial.
    """
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _ignore_heartbeat_warnings()
    check_storage_url(url)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"cannot open the study store {url}: {exc.strerror or exc}", 1
                ) from None
        engine_kwargs: dict[str, object] = {"connect_args": {"timeout": 60}}
    else:
        # A worker needs at most a few connections at once (main loop, heartbeat, reaper);
        # a small pool keeps many workers within the server's connection limit.
        engine_kwargs = {
            "pool_pre_ping": True,
            "pool_recycle": 300,
            "pool_size": 2,
            "max_overflow": 6,
        }
        if url.startswith("postgresql+psycopg:"):
            # psycopg 3 prepares a statement on its server connection after 5 uses; through a
            # transaction-mode pooler (PgBouncer, see docs/service.md) the next transaction
            # may run on another server connection, which lacks it. Optuna's statements are
            # short, and plain ones work both directly and through a pooler.
            engine_kwargs["connect_args"] = {"prepare_threshold": None}
    # Heartbeats let any worker find the trials of a worker that died (kill -9, power loss).
    for attempt in range(5):
        try:
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
            )
            if url.startswith("sqlite") and ":memory:" not in url:
                _use_sqlite_wal(storage)
            return storage
        except Exception as exc:
            # Several processes opening an empty database race to create its tables; the
            # losers see a unique violation and find the tables there on the next try.
            text = f"{exc} {exc.__cause__}"
            if attempt == 4 or not any(
                k in text for k in ("UniqueViolation", "already exists", "IntegrityError")
            ):
                raise StorageError(
                    f"cannot open the study store {url}: {_one_line(exc)}", 1
                ) from exc
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _use_sqlite_wal(storage: RDBStorage) -> None:
    """SQLite in write-ahead-log mode with ``synchronous=NORMAL`` on every connection.

    A worker commits some 25 times per trial; in SQLite's default mode each commit waits for
    the disk twice (about 6 ms here, most of a no-training trial's time). With WAL a commit is
    an append, readers do not block the writer (local workers share the file), and a power
    loss can lose the last commits but never corrupts the file: a trial whose result was lost
    is failed and requeued by the reaper. WAL needs a local file system (not NFS), as SQLite
    does for several processes anyway.
    """
    from sqlalchemy import event

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened while creating the tables lack the pragmas


def count_trials(storage: Any, study_id: int) -> int | None:
    """How many trials ``study_id`` has, in every state, by one ``COUNT`` query.

    Optuna's own ``get_n_trials`` reads every trial to count them. ``storage`` may be an
    :class:`~optuna.storages.RDBStorage` or Optuna's cache around one; None for any other
    storage, which callers treat as "unknown".
    """
    import sqlalchemy as sa
    from optuna.storages._rdb.models import TrialModel

    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    if engine is None:
        return None
    table = TrialModel.__table__
    query = sa.select(sa.func.count()).select_from(table).where(table.c.study_id == study_id)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
