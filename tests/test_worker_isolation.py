"""What workers import (issue #19): nothing from the working directory, and only the family
modules an operator allows (``--allow-family-module`` / ``$HPO_ALLOWED_FAMILY_MODULES``).

Real `hpo run` and `hpo worker` subprocesses on a SQLite store, tiny digits trials.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from hpo.storage import open_storage

from conftest import FAST_SPACE, REPO, hpo

pytestmark = pytest.mark.slow

# Appends who imported it to executed.txt next to it, then stays importable.
POISON = """import os, sys
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "executed.txt"), "a") as f:
    f.write(f"{__name__} imported by pid {os.getpid()}: {sys.argv}\\n")
"""


def _pythonpath(*extra: Path) -> str:
    # No empty entry: Python reads one as the working directory.
    parts = [str(p) for p in extra] + [str(REPO / "tests")]
    parts += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(parts)


def _env(storage: str, *extra: Path) -> dict[str, str]:
    return {"HPO_STORAGE": storage, "PYTHONPATH": _pythonpath(*extra), "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_hpo_run_and_its_workers_import_nothing_from_the_working_directory(
    tmp_path: Path,
) -> None:
    for name in ("typer", "json"):
        (tmp_path / f"{name}.py").write_text(POISON)
    space = tmp_path / "space.yaml"
    space.write_text(FAST_SPACE)
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    result = hpo(
        "run", str(space), "--study", "cwd", "--trials", "1", "--workers", "1",
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        cwd=tmp_path, env=_env(storage),
    )  # fmt: skip
    executed = tmp_path / "executed.txt"
    assert not executed.exists(), executed.read_text()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished 1/1: 1 complete" in result.stdout


def test_workers_import_only_allowed_family_modules(tmp_path: Path) -> None:
    mods = tmp_path / "mods"
    mods.mkdir()
    # A family (`study create` imports it to check it) whose import is recorded.
    (mods / "evil_family.py").write_text(
        POISON + "\n\ndef build(hp, data):\n    raise SystemExit(1)\n"
    )
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    env = _env(storage, mods)
    for name, space in (
        ("allowed", FAST_SPACE),
        ("denied", FAST_SPACE.replace("fault_family:build", "evil_family:build")),
    ):
        path = tmp_path / f"{name}.yaml"
        path.write_text(space)
        created = hpo(
            "study", "create", str(path), "--name", name, "--trials", "1", "--skip-data-check",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path, env=env,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
    # A worker serving every study skips the one whose family it may not import.
    served = subprocess.run(
        [sys.executable, "-m", "hpo", "worker", "--threads", "1", "--exit-when-idle",
         "--allow-family-module", "fault_family"],
        cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr[-3000:]
    assert "study denied skipped: its family 'evil_family:build' is not allowed" in served.stderr
    store = open_storage(storage)
    allowed = optuna.load_study(study_name="allowed", storage=store).get_trials()
    assert [t.state.name for t in allowed] == ["COMPLETE"]
    assert optuna.load_study(study_name="denied", storage=store).get_trials() == []
    # The environment variable does the same, and a worker for that one study refuses it.
    named = hpo(
        "worker", "--study", "denied", "--threads", "1", cwd=tmp_path,
        env={**env, "HPO_ALLOWED_FAMILY_MODULES": "fault_family,mypackage"},
    )  # fmt: skip
    assert named.returncode != 0 and "is not allowed" in named.stderr, named.stderr[-3000:]
    # Only the user's own `study create` imported it, no worker or trial process.
    importers = (mods / "executed.txt").read_text().splitlines()
    assert importers and all("'study', 'create'" in line for line in importers), importers
    store.engine.dispose()  # type: ignore[attr-defined]
