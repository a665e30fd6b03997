"""Passwords in store and tracking URLs never leave the processes that need them (issue #19).

A real `hpo run` (2 tiny digits trials) with a PostgreSQL study store and a PostgreSQL MLflow
store, both given with a unique marker password (the test server trusts local connections, so
any password works), then an ensemble build and `hpo ui`: the marker must appear in no output,
no log, no command line of a running process, no row of either database and no file written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from conftest import FAST_SPACE, FAULT_FAMILY_ENV, hpo
from services import clean_env, free_port, fresh_database, http_status, wait_for

pytestmark = pytest.mark.slow


def _with_password(url: str, password: str) -> str:
    return sa.engine.make_url(url).set(password=password).render_as_string(hide_password=False)


def _rows_with(url: str, marker: str) -> list[str]:
    """Every row of every table of database ``url`` whose text holds ``marker``."""
    engine = sa.create_engine(url)
    found = []
    try:
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f'select * from "{table}"')):
                    if marker in str(tuple(row)):
                        found.append(f"{table}: {tuple(row)}"[:300])
    finally:
        engine.dispose()
    return found


def _files_with(root: Path, marker: str) -> list[str]:
    needle = marker.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _cmdlines(root: psutil.Process) -> list[list[str]]:
    out = []
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            out.append(proc.cmdline())
    return out


def test_passwords_never_appear_in_output_logs_argv_stores_or_artifacts(
    tmp_path: Path,
) -> None:
    marker = f"pw{uuid.uuid4().hex}"
    space = tmp_path / "secret.yaml"
    space.write_text(FAST_SPACE)
    with fresh_database("hpo_secret_store") as store, fresh_database("hpo_secret_mlflow") as ml:
        store_url = _with_password(store, marker)
        tracking_uri = _with_password(ml, marker)
        env = clean_env({**FAULT_FAMILY_ENV, "HPO_STORAGE": store_url, "TF_CPP_MIN_LOG_LEVEL": "2"})
        run = subprocess.Popen(
            [sys.executable, "-m", "hpo", "run", str(space), "--study", "secret",
             "--trials", "2", "--workers", "1", "--tracking-uri", tracking_uri],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        seen: list[list[str]] = []
        worker_env_has_it = False
        parent = psutil.Process(run.pid)
        while run.poll() is None:
            for proc in parent.children(recursive=True):
                try:
                    cmdline = proc.cmdline()
                    seen.append(cmdline)
                    if "worker" in cmdline:
                        # The worker gets both URLs with their passwords through its environment.
                        environ = proc.environ()
                        worker_env_has_it = (
                            marker in environ.get("MLFLOW_TRACKING_URI", "")
                            and marker in environ.get("HPO_STORAGE", "")
                        ) or worker_env_has_it
                except psutil.Error:
                    pass
            time.sleep(0.3)
        out, err = run.communicate()
        assert run.returncode == 0, err[-3000:]
        assert any("worker" in c for c in seen), seen  # the workers were seen while they ran
        leaks = [c for c in seen if marker in " ".join(c)]
        assert not leaks, leaks
        assert marker not in out and marker not in err, (out[-2000:], err[-2000:])
        assert "finished 2/2" in out
        assert not _rows_with(store, marker)  # the study's stored configuration among them
        assert worker_env_has_it

        ensemble = hpo(
            "ensemble", "build", "secret", "--name", "secret-ens", "--top", "2",
            "--tracking-uri", tracking_uri, "--json", cwd=tmp_path, env=env,
        )  # fmt: skip
        assert ensemble.returncode == 0, ensemble.stderr[-3000:]
        assert marker not in ensemble.stdout + ensemble.stderr
        assert list(tmp_path.rglob("ensemble.json")), "no ensemble.json artifact written"

        # `hpo ui` with the password only in MLFLOW_TRACKING_URI: not printed, not on argv.
        ui = subprocess.Popen(
            [sys.executable, "-m", "hpo", "ui", "--port", str(port := free_port())],
            cwd=tmp_path, env={**env, "MLFLOW_TRACKING_URI": tracking_uri},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            ui_parent = psutil.Process(ui.pid)
            wait_for(
                lambda: any("mlflow" in c for c in _cmdlines(ui_parent)),
                60,
                "hpo ui starting mlflow",
                alive=[ui],
            )
            # Once the server answers, it has forked its own processes: their command lines too.
            wait_for(
                lambda: http_status(f"http://127.0.0.1:{port}/health", timeout=2.0) == 200,
                120,
                "the UI answering",
                alive=[ui],
            )
            ui_cmdlines = _cmdlines(ui_parent)
            assert not [c for c in ui_cmdlines if marker in " ".join(c)], ui_cmdlines
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            ui_out = ui.communicate(timeout=60)[0]
        assert "MLflow UI for" in ui_out and marker not in ui_out, ui_out[-2000:]

        assert not _rows_with(store, marker)
        assert not _rows_with(ml, marker)
    assert not _files_with(tmp_path, marker)  # worker logs, artifacts, ensemble.json
