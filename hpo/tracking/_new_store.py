"""A new local MLflow store (``sqlite:///FILE`` where FILE does not exist yet), copied from an
empty one kept in hpo's cache.

MLflow builds a new SQLite store by running every one of its Alembic migrations: about 1.5 s
of CPU, paid by the first study in each new folder. hpo lets MLflow build one empty store per
MLflow version, schema revision and SQLAlchemy version in ``$HPO_CACHE_DIR``
(``~/.cache/hpo``) and copies it, without MLflow's Default experiment, whose artifact location
names the folder it was made in (MLflow adds it again at the copy's first open, as it would in
a store it made there). The cached file's name ends with a digest of its bytes: a file that no
longer matches it (edited, cut short, damaged) is never copied, and is made again.

Anything that goes wrong here leaves the file alone for MLflow to create as usual: the copy is
only a shortcut. An existing file is never replaced (the copy is linked into place, which fails
if the name exists).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
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


def template_folder() -> Path:
    """Where the cached empty stores are kept."""
    from hpo.cache import cache_dir

    return cache_dir() / "mlflow-store"


def _template_prefix(schema: str) -> str:
    """The name of the cached empty store for the MLflow and SQLAlchemy installed here, but
    for its digest: the schema revision tells apart builds of MLflow that share a version."""
    import mlflow
    import sqlalchemy

    return f"mlflow-{mlflow.__version__}-schema-{schema}-sqlalchemy-{sqlalchemy.__version__}-empty-"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _cached_template(prefix: str) -> bytes | None:
    """The bytes of a cached empty store whose digest is the one in its name. Cached files
    that fail it are removed: they are hpo's own copies, which it makes again."""
    for path in sorted(template_folder().glob(f"{prefix}*.db")):
        data = path.read_bytes()
        if path.name == f"{prefix}{_digest(data)}.db":
            return data
        log.warning("hpo's cached empty MLflow store %s was changed; making it again", path)
        with contextlib.suppress(OSError):
            path.unlink()
    return None


def _build_template(prefix: str, schema: str) -> bytes:
    """Let MLflow make an empty store at ``schema``, drop its Default experiment, keep it in
    the cache and return its bytes."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = template_folder()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        db = Path(tmp) / "mlflow.db"
        store = SqlAlchemyStore(f"sqlite:///{db}", (Path(tmp) / "mlruns").as_uri())
        store.engine.dispose()
        con = sqlite3.connect(db)
        try:
            with con:
                con.execute("DELETE FROM experiments WHERE experiment_id = 0")
            versions = con.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            con.close()
        if versions != [(schema,)]:
            raise RuntimeError(f"MLflow's new store is at schema {versions}, not {schema}")
        data = db.read_bytes()
        # whole or not at all; processes building it at once each keep their own digest's file
        os.replace(db, folder / f"{prefix}{_digest(data)}.db")
    return data


def _template() -> bytes:
    """The bytes of the empty store for this MLflow, from the cache or built there."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    schema = _get_latest_schema_revision()  # the revision MLflow requires of a store it opens
    prefix = _template_prefix(schema)
    data = _cached_template(prefix)
    return _build_template(prefix, schema) if data is None else data


def prepare_local_store(uri: str) -> bool:
    """Create the store file of ``uri`` from the cached empty store if ``uri`` is a local
    SQLite file that does not exist yet; True if it did."""
    path = local_store_file(uri)
    if path is None or path.exists() or not path.parent.is_dir():
        return False
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        data = _template()  # read once: what is copied is what was checked
        with partial.open("xb") as out:
            out.write(data)
        os.link(partial, path)  # fails if the store appeared meanwhile: never replaces one
        return True
    except Exception as exc:  # the shortcut failed: MLflow creates the store itself
        log.debug("MLflow store %s not made from the cached empty store: %s", path, exc)
        return False
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
