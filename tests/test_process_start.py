"""What hpo's processes import before their first trial, each in a fresh interpreter: the
study store's modules, which a worker imports while it waits for the study to be created and a
trial process while it warms up."""

from __future__ import annotations

import os
import subprocess
import sys

WARM_UP_PROBE = """
import sys
from hpo.workers.runner import warm_up
warm_up()
names = ("keras", "mlflow.tracking", "optuna.storages", "alembic")
print(sorted(n for n in names if n in sys.modules))
"""

STORE_PROBE = """
import sys
from hpo.storage import import_store_modules, open_storage
import_store_modules(sys.argv[1])
before = set(sys.modules)
open_storage(sys.argv[1])
roots = ("optuna", "sqlalchemy", "alembic", "psycopg")
print(sorted(m for m in set(sys.modules) - before if m.split(".")[0] in roots))
"""


def _probe(code: str, *args: str, **env: str) -> list[str]:
    run_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=run_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


def test_a_trial_process_warms_up_with_keras_mlflow_and_the_store() -> None:
    assert _probe(WARM_UP_PROBE) == ["['alembic', 'keras', 'mlflow.tracking', 'optuna.storages']"]


def test_opening_a_store_imports_nothing_import_store_modules_left_out(storage_url: str) -> None:
    """What a waiting worker imports is complete: opening the store (on each backend, its
    tables created) then imports no further Optuna, SQLAlchemy or Alembic module."""
    assert _probe(STORE_PROBE, storage_url) == ["[]"]
