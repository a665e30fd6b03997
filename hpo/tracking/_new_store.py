"""A new local MLflow store (``sqlite:///FILE`` where FILE does not exist yet), copied from an
empty one kept in hpo's cache.

MLflow builds a new SQLite store by running every one of its Alembic migrations: about 1.5 s
of CPU, paid by the first study in each new folder. hpo lets MLflow build one empty store per
MLflow and SQLAlchemy version in ``$HPO_CACHE_DIR`` (``~/.cache/hpo``) and copies it, without
MLflow's Default experiment, whose artifact location names the folder it was made in (MLflow
adds it again at the copy's first open, as it would in a store it made there).

Anything that goes wrong here leaves the file alone for MLflow to create as usual: the copy is
only a shortcut. An existing file is never replaced (the copy is linked into place, which fails
if the name exists).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

log = logging.getLogger("hpo.tracking")


def local_store_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI, as SQLAlchemy (and so MLflow) reads it
    (relative to the working directory when the URI is); None for any other URI.

    >>> str(local_store_file("sqlite:////data/my%20runs.db?timeout=30"))
    '/data/my runs.db'
    >>> local_store_file("sqlite:///:memory:") is None, local_store_file("http://h:5000") is None
    (True, True)
    """
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except Exception:  # not a URL SQLAlchemy takes: MLflow reports it
        return None
    if not url.database or url.database == ":memory:" or url.query.get("uri"):
        return None
    return Path(url.database)


def template_file() -> Path:
    """The cached empty store for the MLflow and SQLAlchemy installed here."""
    import mlflow
    import sqlalchemy

    from hpo.cache import cache_dir

    name = f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}-empty.db"
    return cache_dir() / "mlflow-store" / name


def _build_template(target: Path) -> None:
    """Let MLflow make an empty store, drop its Default experiment, and keep it at ``target``."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        db = Path(tmp) / "mlflow.db"
        store = SqlAlchemyStore(f"sqlite:///{db}", (Path(tmp) / "mlruns").as_uri())
        store.engine.dispose()
        con = sqlite3.connect(db)
        try:
            with con:
                con.execute("DELETE FROM experiments WHERE experiment_id = 0")
            if con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] != 1:
                raise RuntimeError("MLflow's new store has no schema version")
        finally:
            con.close()
        os.replace(db, target)  # whole or not at all, for processes building it at once


def prepare_local_store(uri: str) -> bool:
    """Create the store file of ``uri`` from the cached empty store if ``uri`` is a local
    SQLite file that does not exist yet; True if it did."""
    path = local_store_file(uri)
    if path is None or path.exists() or not path.parent.is_dir():
        return False
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        template = template_file()
        if not template.is_file():
            _build_template(template)
        shutil.copyfile(template, partial)
        os.link(partial, path)  # fails if the store appeared meanwhile: never replaces one
        return True
    except Exception as exc:  # the shortcut failed: MLflow creates the store itself
        log.debug("MLflow store %s not made from the cached empty store: %s", path, exc)
        return False
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
