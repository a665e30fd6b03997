"""A new local MLflow store (``sqlite:///FILE``) is copied from the empty store hpo keeps in its
cache instead of MLflow running all its migrations again: the copy must be the store MLflow
would have made, and an existing file is never touched."""

from __future__ import annotations

import re
import shutil
import sqlite3
import string
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from hpo import tracking
from hpo.tracking import _new_store

# tmp_path and the cache are shared by a test's examples: each example sets up its own files.
FIXTURES = [HealthCheck.function_scoped_fixture]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("HPO_CACHE_DIR", str(path))
    return path


def uri(path: Path) -> str:
    return f"sqlite:///{path}"


def contents(path: Path) -> Counter[str]:
    """The store's schema and rows as SQL (times masked), in no particular order: two builds
    by MLflow differ in the order of their indexes, of a table's constraints and of the values
    a CHECK ... IN (...) lists."""
    con = sqlite3.connect(path)
    try:
        lines = list(con.iterdump())
    finally:
        con.close()

    def in_list(match: re.Match[str]) -> str:
        return "IN (" + ", ".join(sorted(match[1].split(", "))) + ")"

    out: Counter[str] = Counter()
    for line in lines:
        line = re.sub(r"IN \(([^()]*)\)", in_list, re.sub(r"\b1\d{12}\b", "<ms>", line))
        if line.startswith("CREATE TABLE"):
            head, _, body = line.partition("(")
            line = head + "(" + "\n".join(sorted(re.split(r",\s*\n", body)))
        out[line] += 1
    return out


def cached_stores(cache: Path) -> list[Path]:
    return sorted((cache / "mlflow-store").glob("*.db"))


def no_migrations(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.store.db.utils

    def refuse(engine: object) -> None:
        raise AssertionError("MLflow ran its migrations")

    monkeypatch.setattr(mlflow.store.db.utils, "_initialize_tables", refuse)


def test_a_store_copied_from_the_cache_is_the_one_mlflow_makes(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("mlflow", "first", "second"):
        (tmp_path / name).mkdir()
    MlflowClient(uri(tmp_path / "mlflow" / "mlflow.db")).search_experiments()
    tracking.new_client(uri(tmp_path / "first" / "mlflow.db"))  # builds the cached store
    assert len(cached_stores(cache)) == 1
    no_migrations(monkeypatch)
    second = tracking.new_client(uri(tmp_path / "second" / "mlflow.db"))

    expected = contents(tmp_path / "mlflow" / "mlflow.db")
    assert any('INSERT INTO "experiments"' in line for line in expected)  # Default experiment
    assert contents(tmp_path / "first" / "mlflow.db") == expected
    assert contents(tmp_path / "second" / "mlflow.db") == expected
    # and it works as a store: the Default experiment where MLflow puts it, runs logged
    default = second.get_experiment("0")
    assert (
        default.artifact_location
        == MlflowClient(uri(tmp_path / "mlflow" / "mlflow.db"))
        .get_experiment("0")
        .artifact_location
    )
    run = second.create_run(second.create_experiment("study"))
    second.log_metric(run.info.run_id, "val_accuracy", 0.5)
    assert second.get_run(run.info.run_id).data.metrics == {"val_accuracy": 0.5}
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == ["mlflow.db"]


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURES)
@given(content=st.binary(max_size=256))
def test_an_existing_file_is_never_replaced(tmp_path: Path, cache: Path, content: bytes) -> None:
    path = tmp_path / "mlflow.db"
    path.write_bytes(content)
    assert not _new_store.prepare_local_store(uri(path))
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir() if p != cache] == ["mlflow.db"]


def test_a_store_that_appears_meanwhile_is_kept(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs" / "mlflow.db"
    path.parent.mkdir()
    template = _new_store._template

    def read_then_another_process_creates() -> bytes:
        data = template()
        path.write_bytes(b"made by another process")
        return data

    monkeypatch.setattr(_new_store, "_template", read_then_another_process_creates)
    assert not _new_store.prepare_local_store(uri(path))
    assert path.read_bytes() == b"made by another process"
    assert sorted(p.name for p in path.parent.iterdir()) == ["mlflow.db"]  # no partial copy


def test_the_cached_store_is_named_by_mlflow_schema_revision(tmp_path: Path, cache: Path) -> None:
    """Two builds of MLflow with one version string but different migrations never share it."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    assert _new_store.prepare_local_store(uri(tmp_path / "mlflow.db"))
    (cached,) = cached_stores(cache)
    assert f"-schema-{_get_latest_schema_revision()}-" in cached.name
    con = sqlite3.connect(cached)
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (_get_latest_schema_revision(),)
        ]
    finally:
        con.close()


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the empty store, built once for the tests that damage it."""
    folder = tmp_path_factory.mktemp("built-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPO_CACHE_DIR", str(folder))
        assert _new_store.prepare_local_store(uri(folder / "first.db"))
    return folder


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(data=st.data())
def test_a_changed_cached_store_is_never_copied(
    tmp_path: Path, built_cache: Path, monkeypatch: pytest.MonkeyPatch, data: st.DataObject
) -> None:
    """Edited, cut short or grown, a cached store no longer matching the digest in its name is
    not handed out (and is removed, to be made again)."""
    cache = tmp_path / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(built_cache, cache)
    monkeypatch.setenv("HPO_CACHE_DIR", str(cache))
    (cached,) = cached_stores(cache)
    good = cached.read_bytes()
    change = data.draw(st.sampled_from(["flip", "cut", "append"]))
    if change == "flip":
        at = data.draw(st.integers(0, len(good) - 1))
        bad = good[:at] + bytes([good[at] ^ data.draw(st.integers(1, 255))]) + good[at + 1 :]
    elif change == "cut":
        bad = good[: data.draw(st.integers(0, len(good) - 1))]
    else:
        bad = good + data.draw(st.binary(min_size=1, max_size=64))
    cached.write_bytes(bad)
    prefix = cached.name[: cached.name.rindex("-") + 1]
    assert _new_store._cached_template(prefix) is None
    assert cached_stores(cache) == []


def test_a_changed_cached_store_is_made_again(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _new_store.prepare_local_store(uri(tmp_path / "first.db"))
    (cached,) = cached_stores(cache)
    con = sqlite3.connect(cached)
    try:
        with con:  # an edit that leaves a valid SQLite file at the right schema revision
            con.execute("DROP TABLE tags")
    finally:
        con.close()
    folder = tmp_path / "runs"
    folder.mkdir()
    c = tracking.new_client(uri(folder / "mlflow.db"))
    run = c.create_run(c.create_experiment("study"))
    c.set_tag(run.info.run_id, "k", "v")
    assert c.get_run(run.info.run_id).data.tags["k"] == "v"
    (remade,) = cached_stores(cache)
    assert remade != cached
    assert contents(remade) == contents(tmp_path / "first.db")


def test_a_cache_that_cannot_be_written_leaves_the_store_to_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("HPO_CACHE_DIR", str(blocker))
    folder = tmp_path / "runs"
    folder.mkdir()
    c = tracking.new_client(uri(folder / "mlflow.db"))
    assert [e.name for e in c.search_experiments()] == ["Default"]
    assert sorted(p.name for p in folder.iterdir()) == ["mlflow.db"]


def test_no_store_is_made_where_its_folder_is_missing(tmp_path: Path, cache: Path) -> None:
    assert not _new_store.prepare_local_store(uri(tmp_path / "missing" / "mlflow.db"))
    assert not (tmp_path / "missing").exists()


FILE_CHARS = string.ascii_letters + string.digits + " %#@:;,+=~éß_-."


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURES)
@given(name=st.text(FILE_CHARS, min_size=1, max_size=30).filter(lambda n: n not in (".", "..")))
def test_the_store_is_made_at_the_file_the_uri_names(
    tmp_path: Path, cache: Path, name: str
) -> None:
    """Any file name, percent-encoded in the URI as SQLAlchemy decodes it."""
    folder = tmp_path / "store"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    assert _new_store.prepare_local_store(uri(folder / quote(name)))
    assert [p.name for p in folder.iterdir()] == [name]
    con = sqlite3.connect(folder / name)
    try:
        assert con.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM experiments").fetchone() == (0,)
    finally:
        con.close()
