"""Shared fixtures: a private working directory, SQLite and PostgreSQL study stores."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from hpo.datasets import Dataset

pytest_plugins = ["services"]

REPO = Path(__file__).resolve().parents[1]
POSTGRES_ENV = "HPO_TEST_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# The tests' own family (tests/fault_family.py, ``family: fault_family:build``): the hpo
# processes that run its trials import it through this PYTHONPATH.
FAULT_FAMILY_ENV = {
    "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
}
# Its trials train one epoch on 200 digits (about a second once the trial process is warm);
# SLOW_SPACE's sleep SECONDS first (replace it), so that faults land while trials run.
FAST_SPACE = """
family: fault_family:build
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
defaults: {algorithm: optuna-random, pruner: none}
params:
  mode: ok
  x: {type: float, low: 0.0, high: 1.0}
"""
SLOW_SPACE = FAST_SPACE.replace("mode: ok", "mode: sleep\n  sleep_seconds: SECONDS")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory so hpo.db, mlflow.db and logs land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _admin_url() -> str:
    return os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end.

    In CI (CI=true) an unreachable server fails the tests instead of skipping them.
    """
    import sqlalchemy as sa

    admin = _admin_url()
    try:
        # pre-ping: a test may restart the server under this engine's pooled connection.
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but unreachable at {admin}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {admin}: {exc}")
    name = f"hpo_test_{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    url = admin.rsplit("/", 1)[0] + "/" + name
    yield url
    with engine.connect() as conn:
        conn.execute(
            sa.text("select pg_terminate_backend(pid) from pg_stat_activity where datname = :d"),
            {"d": name},
        )
        conn.execute(sa.text(f'drop database if exists "{name}"'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every study-store backend: the contract tests run once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def hpo(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real ``hpo`` command line in a subprocess."""
    full_env = dict(os.environ)
    full_env.pop("HPO_STORAGE", None)
    full_env.pop("MLFLOW_TRACKING_URI", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def quiet_optuna() -> Iterator[None]:
    """Optuna and hyperopt at WARNING: hyperopt's TPE logs two INFO lines per proposal."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hyperopt").setLevel(logging.WARNING)
    yield


@pytest.fixture
def sqlite_without_fsync() -> Iterator[None]:
    """SQLite stores of this test skip fsync.

    A study commits a dozen times per trial, and an fsync can take 10-30 ms on a CI disk.
    Tests do not need durability across power loss; everything else about SQLite stays.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def no_sync(dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute("PRAGMA synchronous = OFF")

    event.listen(Engine, "connect", no_sync)
    yield
    event.remove(Engine, "connect", no_sync)


@pytest.fixture(scope="module")
def small_digits() -> Dataset:
    """128 training images of scikit-learn's digits and a 64-image validation slice.

    Small enough that one epoch of a tiny model takes well under a second.
    """
    from hpo.datasets import Split, load_dataset
    from hpo.spaces import DatasetSpec

    data = load_dataset(DatasetSpec(name="digits", subset=128, seed=0))
    data.validation = Split(data.validation.x[:64], data.validation.y[:64])
    return data


# Small text and language-model studies, trained once per session by `hpo run` into one shared
# folder (only those a test asks for): test_language_models, test_text_families and
# test_ensemble_text_lm use the same trials instead of training their own.
SMALL_TEXT_STUDIES = {"char_lstm_small": 2, "text_conv1d_small": 1, "text_dense_small": 1}
_SMALL_TEXT: dict[str, Any] = {}


def small_text_studies(
    factory: pytest.TempPathFactory, *names: str
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The shared folder (hpo.db, mlflow.db, mlruns) and the `hpo run --json` summary of each
    of ``names`` (keys of :data:`SMALL_TEXT_STUDIES`: the trials each gets)."""
    if "root" not in _SMALL_TEXT:
        _SMALL_TEXT["root"] = factory.mktemp("small-text-studies")
        _SMALL_TEXT["summaries"] = {}
    root: Path = _SMALL_TEXT["root"]
    summaries: dict[str, dict[str, Any]] = _SMALL_TEXT["summaries"]
    cache = factory.getbasetemp() / "hpo-cache"  # the Reuters parse, shared by the session
    for name in names:
        if name in summaries:
            continue
        trials = SMALL_TEXT_STUDIES[name]
        result = hpo(
            "run", str(REPO / "search_spaces" / f"{name}.yaml"), "--trials", str(trials),
            "--workers", "1", "--json", cwd=root, env={"HPO_CACHE_DIR": str(cache)}, timeout=900,
        )  # fmt: skip
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}{result.stdout[-2000:]}"
        summaries[name] = json.loads(result.stdout)
    return root, {n: summaries[n] for n in names}


# `make test` runs two test processes (pytest-xdist, --dist loadgroup); tests of one group run
# in one process, one after another:
# - "postgres": every file that uses the test PostgreSQL. test_service_faults restarts the
#   server, which would cut the connections of a PostgreSQL test running beside it, and the
#   worker tests time real processes against heartbeats and signals.
# - the others: files that share a session fixture (the ensemble studies; the small text
#   studies), or whose tests share module fixtures that train studies (raw inputs, refit),
#   which would otherwise be built once in each process.
# Tests of no group go to whichever process is free.
XDIST_GROUPS = {
    "test_worker_service.py": "postgres",
    "test_service_faults.py": "postgres",
    "test_worker_slots.py": "postgres",
    "test_storage_contract.py": "postgres",
    "test_mlflow_server.py": "postgres",
    "test_ui_browser.py": "postgres",
    "test_secrets.py": "postgres",
    "test_ensemble.py": "ensemble_studies",
    "test_export.py": "ensemble_studies",
    "test_language_models.py": "small_text_studies",
    "test_text_families.py": "small_text_studies",
    "test_ensemble_text_lm.py": "small_text_studies",
    "test_raw_inputs.py": "raw_inputs",
    "test_refit.py": "refit",
}


# A test that asks for one of these joins the "postgres" group wherever its file is.
POSTGRES_FIXTURES = {"postgres_url", "storage_url", "mlflow_server", "served_study"}


# tryfirst: xdist's own hook reads the markers to form the groups, so they must be set before it.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = XDIST_GROUPS.get(item.path.name)
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            group = "postgres"
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Under ``--dist loadgroup``, stop at once if the groups did not apply.

    xdist forms them by renaming each grouped test ``name@group`` in its worker; if a pytest
    or xdist upgrade breaks that, the PostgreSQL restart would run beside other PostgreSQL tests.
    """
    if node.config.getvalue("dist") != "loadgroup":
        return
    grouped = [i for i in ids if i.split("::", 1)[0].rsplit("/", 1)[-1] in XDIST_GROUPS]
    if grouped and not any("@" in i for i in grouped):
        pytest.exit(
            f"pytest-xdist's groups did not apply (e.g. {grouped[0]} has no @group): check "
            "the pytest and pytest-xdist versions in requirements.lock",
            returncode=3,
        )
